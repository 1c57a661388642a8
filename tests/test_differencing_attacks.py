"""Attacks by subtraction between exported files, found by trying to recover withheld counts
from the example studies' outputs on a small synthetic dataset (without reading the other
tests). Each expected value is read off the exported files by this test itself."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from hpcstudy.outputs import manifest as M


@pytest.fixture(scope="module")
def statins(statins_run) -> Path:
    """Example 1 on small_data (conftest's statins_run: copy it before editing)."""
    return statins_run


def curve_tails(out: Path) -> dict[str, tuple[int, int]]:
    """{label: (events in the cohort table, events its curve shows)}: the difference is the
    number of events after the curve's last point."""
    res = json.loads((out / "results.json").read_text())
    plan = (out / "plan.txt").read_text()
    labels = dict(re.findall(r"group=(\d+) (\w+):", plan))
    cohort = {r["label"]: r["events"] for r in res["cohort"]}
    shown: dict[str, int] = {}
    for r in res.get("curves", []):
        label = labels[str(r["group"])]
        shown[label] = shown.get(label, 0) + r["events"]
    return {lb: (cohort[lb], n) for lb, n in shown.items() if cohort.get(lb) is not None}


def test_the_events_after_a_curve_s_last_point_are_not_a_small_count(statins):
    """The cohort table's events of an arm minus the events its curve shows are the events
    after the last shown point: on 3 000 persons, 9 − 5 gave 4 MIs among statin users after
    day 1672."""
    tails = curve_tails(statins)
    assert tails
    for label, (total, shown) in tails.items():
        assert not 0 < total - shown < 5, (label, total, shown)


def redeclare(out: Path) -> None:
    doc = json.loads((out / M.NAME).read_text())
    for e in doc["files"]:
        e["sha256"] = M.sha256((out / e["path"]).read_bytes())
    doc["manifest_sha256"] = M.sha256(M.canonical(doc))
    (out / M.NAME).write_text(json.dumps(doc))


def test_the_gate_holds_a_curve_whose_tail_gives_a_small_count(statins, tmp_path):
    """Outputs with 2 events after a curve's last point (planted: the cohort table's events
    set to the curve's plus 2, every hash recomputed) are held by the gate's re-checker."""
    out = tmp_path / "run"
    shutil.copytree(statins, out)
    label, (_, shown) = next(iter(curve_tails(out).items()))
    res = json.loads((out / "results.json").read_text())
    row = next(r for r in res["cohort"] if r["label"] == label)
    row["events"] = shown + 2
    (out / "results.json").write_text(json.dumps(res, indent=1))
    lines = (out / "tables" / "cohort.csv").read_text().splitlines()
    head = lines[0].split(",")
    for n, line in enumerate(lines[1:], 1):
        cells = line.split(",")
        if cells[head.index("label")] == label:
            cells[head.index("events")] = str(shown + 2)
            lines[n] = ",".join(cells)
    (out / "tables" / "cohort.csv").write_text("\n".join(lines) + "\n")
    redeclare(out)
    r = run_cli("check-outputs", out)
    assert r.returncode == 1
    assert "2 after its last point" in r.stderr, r.stderr
