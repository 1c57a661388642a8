"""Disclosure control: properties of the suppression rules, over random tables and random
studies, and planted violations that check-outputs must catch and export must withhold."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcstudy.outputs import checks as C
from hpcstudy.outputs import disclosure as D

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def margins_ok(rows, keys):
    hidden = [r.get("persons") is None for r in rows]
    for size in range(len(keys)):
        for subset in itertools.combinations(keys, size):
            groups = {}
            for i, r in enumerate(rows):
                groups.setdefault(tuple(r[k] for k in subset), []).append(i)
            for members in groups.values():
                if len(members) > 1 and sum(hidden[i] for i in members) == 1:
                    return False
    return True


@settings(max_examples=200, deadline=None)
@given(min_cell=st.integers(2, 11),
       cells=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(0, 40),
                                st.integers(0, 40)), min_size=1, max_size=20,
                      unique_by=lambda c: (c[0], c[1])))
def test_suppressed_tables_hold_no_small_or_recoverable_cell(min_cell, cells):
    rows = [{"a": a, "b": b, "persons": max(p, e), "events": e} for a, b, p, e in cells]
    out = D.suppress(rows, min_cell)
    for r in out:
        for f in ("persons", "events"):
            assert r[f] is None or r[f] == 0 or r[f] >= min_cell
    assert margins_ok(out, ("a", "b"))
    # the gate's independent re-checker finds nothing either (the old file checker's test)
    assert C.check_kind("rates", out, min_cell, "t") == []
    # nothing was hidden without need: a table without small cells is left alone
    # (nor one whose complements, persons without the event, are 0 persons or ≥ min_cell)
    if all(r["persons"] in (0,) or r["persons"] >= min_cell for r in rows) and \
            all(r["events"] == 0 or r["events"] >= min_cell for r in rows) and \
            all(r["persons"] - r["events"] >= min_cell or r["persons"] == 0 for r in rows):
        assert out == rows


@settings(max_examples=200, deadline=None)
@given(min_cell=st.integers(2, 11), drops=st.lists(st.integers(0, 30), max_size=12),
       start=st.integers(0, 200))
def test_attrition_differences_are_never_small(min_cell, drops, start):
    n, rows = start, []
    for d in drops:
        n = max(0, n - d)
        rows.append({"step": f"s{len(rows)}", "persons": n})
    out = D.attrition([{"step": "start", "persons": start}, *rows], min_cell)
    assert C.check_kind("attrition", out, min_cell, "a") == []


def test_curves_show_no_small_event_count():
    rows = [{"group": 1, "day": d, "at_risk": 100 - d, "events": 1, "survival": 0.9}
            for d in range(1, 30)]
    out = D.curve(rows, 5)
    assert all(r["events"] >= 5 and r["at_risk"] % 5 == 0 for r in out)
    # 29 events: a point at day 25 would leave 4 after it (29 − 25), given the group's total
    assert [r["day"] for r in out] == [5, 10, 15, 20]
    assert 29 - sum(r["events"] for r in out) >= 5


@pytest.fixture(scope="module")
def run_dir(statins_run):
    """Example 1 on small_data (conftest's statins_run: copy it before editing)."""
    return statins_run


def test_a_real_run_passes_check_outputs(run_dir):
    r = run_cli("check-outputs", run_dir)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("plant, words", [
    (lambda d: _edit_csv(d / "tables" / "cohort.csv", 1, "events", "3"),
     ["tables/cohort.csv: row 1, column 'events': 3 is below 5"]),
    (lambda d: _edit_csv(d / "tables" / "cohort.csv", 1, "events", ""),
     ["tables/cohort.csv: row 1: withheld, but recoverable exactly from the totals"]),
    (lambda d: (d / "tables" / "extra.csv").write_text("age,max\n40,99\n"),
     ["tables/extra.csv: column 'max'"]),
    (lambda d: (d / "tables" / "leak.csv").write_text("who\n1234567890123456789\n"),
     ["tables/leak.csv: line 2: a long integer"]),
    (lambda d: (d / "notes.txt").write_text("patient 010203-1234 had an MI\n"),
     ["notes.txt: line 1: something shaped like a CPR number"]),
])
def test_planted_violations_are_caught_and_withheld(run_dir, tmp_path, plant, words):
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    plant(bad)
    r = run_cli("check-outputs", bad)
    assert r.returncode == 1, r.stderr
    assert all(w in r.stderr for w in words), r.stderr
    dest = tmp_path / "dest"
    r = run_cli("export", bad, dest)
    assert r.returncode == 1 and "withheld" in r.stderr
    culprit = words[0].split(":")[0]
    assert not (dest / culprit).exists()
    assert (dest / "results.json").exists() and not (dest / "private").exists()


def _edit_csv(path, row, column, value):
    lines = path.read_text().splitlines()
    head = lines[0].split(",")
    cells = lines[row].split(",")
    cells[head.index(column)] = value
    lines[row] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


def test_json_counts_are_checked_too(run_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    res = json.loads((bad / "results.json").read_text())
    res["models"]["cox"]["events"] = 2
    (bad / "results.json").write_text(json.dumps(res))
    r = run_cli("check-outputs", bad)
    assert r.returncode == 1 and "results.json:models.cox: column 'events': 2 is below 5" \
        in r.stderr


from study.test_engines_agree import studies  # noqa: E402  (reuse the study generator)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(spec=studies(), min_cell=st.sampled_from([5, 11, 30]))
def test_no_generated_study_exports_a_violation(spec, min_cell, small_data, tmp_path):
    from hpcstudy.engines.run import run
    from hpcstudy.study import study_from_text

    spec = {**spec, "disclosure": {"min_cell": min_cell},
            "analyses": {"rates": {"by": ["group", "sex", "region"]}, "curves": True}}
    out = tmp_path / f"o{abs(hash(yaml.safe_dump(spec))) % 10**8}"
    run(study_from_text(yaml.safe_dump(spec)), small_data, out, overwrite=True)  # replays
    from hpcstudy.outputs import gate

    verdict = gate.check(out)
    assert verdict.held == {}
    # and the re-checker over every exported file and across them (what check_outputs did)
    assert C.check_run({p: c for p, c in verdict.contents.items()}, min_cell) == []


def test_optional_rounding_rounds_counts_and_what_is_derived(small_data, tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text((EXAMPLES / "diabetes_incidence.yaml").read_text() +
                     "disclosure: {min_cell: 5, round_to: 5}\n")
    out = tmp_path / "out"
    assert run_cli("run", study, "--data", small_data, "--out", out, "--quiet").returncode == 0
    res = json.loads((out / "results.json").read_text())
    rows = res["cohort"] + res["rates"] + [r for r in res["lexis"] if not r.get("suppressed")]
    for r in rows:
        if r.get("events") is not None:
            assert r["events"] % 5 == 0
            assert r["rate_per_1000py"] == pytest.approx(1000 * r["events"] / r["person_years"])
    for r in res["attrition"]["cohort"]:
        assert r["persons"] is None or r["persons"] % 5 == 0
    assert run_cli("check-outputs", out).returncode == 0
