"""An outsider's attacks on the project's promises (session 8): each test is a break found by
running the real CLI on small synthetic data, kept so it stays fixed (or, marked xfail, so the
owner sees it)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
STATINS = (ROOT / "examples" / "statins_mi.yaml").read_text()
M = 5


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _small(n) -> bool:
    return 0 < n < M


def _design_run(root: Path, small_data, propensity: str, extra: str = "") -> Path:
    study = root / "s.yaml"
    study.write_text(STATINS.replace("analyses:", f"propensity:\n{propensity}\nanalyses:")
                     .replace("  min_cell: 5\n", f"  min_cell: 5\n{extra}"))
    out = root / "out"
    r = run_cli("run", study, "--data", small_data, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return out


# -- the equipoise share with bins that do not end at 0.3 and 0.7 ---------------------------
def test_the_equipoise_share_counts_no_persons_the_bins_do_not(small_data, tmp_path):
    # three bins (0-0.33, 0.33-0.67, 0.67-1): the share was 0.99791 of 959 persons, so 2
    # persons had a preference score above 0.7, of the 15 shown in the bin 0.67-1
    out = _design_run(tmp_path, small_data, "  covariates: [charlson, sex]\n"
                      "  method: weighting\n  bins: 3\n")
    doc = json.loads((out / "results.json").read_text())
    persons = sum(r["persons"] for r in doc["cohort"])
    share = doc["design"]["equipoise_share"]
    if share is not None:
        inside = round(share * persons)
        assert not _small(inside) and not _small(persons - inside), (share, persons)
    assert run_cli("check-outputs", out).returncode == 0
    # the checker, from the published numbers: a share beside bins not ending at 0.3 and 0.7
    from hpcstudy.outputs import checks

    doc["design"]["equipoise_share"] = 0.9979144942648592
    assert any("equipoise_share" in p for p in checks.smd_of_withheld(doc, "r"))
