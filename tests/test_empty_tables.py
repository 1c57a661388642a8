"""A table with nothing shown still has its header: a researcher's script that reads
curves.csv gets the columns and no rows, not an empty file, and the gate passes it."""
import csv
import json
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, run_cli

CURVE_COLUMNS = ["group", "day", "at_risk", "events", "survival", "lower_95", "upper_95",
                 "cumulative_incidence"]


@pytest.fixture(scope="module")
def no_curve_points(small_data, tmp_path_factory) -> Path:
    """Example 1 without its models and a threshold of 1000 persons: no curve point."""
    root = tmp_path_factory.mktemp("empty")
    text = (EXAMPLES / "statins_mi.yaml").read_text()
    lines = [x for x in text.splitlines() if not x.startswith(("  cox:", "  poisson:"))]
    study = root / "study.yaml"
    study.write_text("\n".join(lines).replace("min_cell: 5", "min_cell: 1000") + "\n")
    out = root / "out"
    r = run_cli("run", study, "--data", small_data, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def test_an_empty_curves_table_keeps_its_header(no_curve_points):
    out = no_curve_points
    assert json.loads((out / "results.json").read_text())["curves"] == []
    with open(out / "tables" / "curves.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [CURVE_COLUMNS]
    declared = next(e for e in json.loads((out / "outputs.json").read_text())["files"]
                    if e["path"] == "tables/curves.csv")
    assert [c["name"] for c in declared["columns"]] == CURVE_COLUMNS
    r = run_cli("check-outputs", out)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_forged_header_on_an_empty_table_is_withheld(no_curve_points, tmp_path):
    """The header is part of what the run declared: another one (a column dropped) is not it."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(no_curve_points, out)
    (out / "tables" / "curves.csv").write_text(",".join(CURVE_COLUMNS[:-1]) + "\n")
    r = run_cli("check-outputs", out)
    assert r.returncode == 1
    assert "tables/curves.csv" in r.stdout + r.stderr
