"""Hospital codes under the project's disclosure settings: ``disclosure.identify_hospitals`` in
the approval replaces them by ranks (or anonymous numbers) whatever the study says, and refuses
a study that would show them elsewhere; without it the study's ``identify:`` decides."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from conftest import run_cli

from hpcstudy.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PROJECT = """\
project: FSEID-00000016
title: hospital comparisons
registers: {bef: "*", dod: "*", dodsaarsag: "*", vnds: "*", lpr_adm: "*", lpr_diag: "*",
            lmdb: "*"}
period: [1968-04-02, 2023-12-31]
disclosure: {min_cell: 5, identify_hospitals: rank}
"""


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """cli.main turns SIGTERM/SIGUSR1 into KeyboardInterrupt; give pytest its own back."""
    import signal

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


class Done:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


def cli(capsys, *args) -> Done:
    """``hpcstudy ARGS`` in this process (fast); a few tests run the real CLI process."""
    rc = main([str(a) for a in args])
    return Done(rc, capsys.readouterr().err)


def study(tmp_path, identify: str | None, measure: bool = False) -> Path:
    text = (EXAMPLES / "mi_hospitals.yaml").read_text()
    if not measure:   # the example's measure by hospital shows codes: kept only when asked
        text = text.replace("  measures:\n    - {name: mortality_by_hospital, by: [hospital]}\n",
                            "")
    if identify is not None:
        text = text.replace("adjust: [age, sex, charlson]}",
                            f"adjust: [age, sex, charlson], identify: {identify}}}")
    f = tmp_path / "study.yaml"
    f.write_text(text)
    return f


def project(tmp_path, text: str = PROJECT) -> Path:
    f = tmp_path / "project.yaml"
    f.write_text(text)
    return f


def shown(out: Path) -> list[int]:
    with open(out / "tables" / "hospitals.csv") as f:
        return [int(r["hospital"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def approved(small_data, tmp_path_factory):
    """The study asking for codes (the attacker: identify: code), run under the approval."""
    tmp = tmp_path_factory.mktemp("approved")
    out = tmp / "out"
    r = run_cli("run", study(tmp, "code"), "--data", small_data, "--out", out, "--engine",
                "dask", "--quiet", "--project", project(tmp))
    assert r.returncode == 0, r.stderr
    return out


def test_the_approval_replaces_codes_by_ranks_whatever_the_study_says(approved):
    import pandas as pd

    hidden = shown(approved)
    assert sorted(hidden) == list(range(1, len(hidden) + 1)) and len(hidden) >= 5
    # the codes the study asked to show: in the private per-person table only
    codes = set(pd.read_parquet(approved / "private" / "person_table.parquet")["hospital"])
    assert len(codes) == len(hidden) and not codes & set(hidden)
    res = json.loads((approved / "results.json").read_text())
    assert res["run"]["approval"]["identify_hospitals"] == "rank"
    rows = [r for r in res["hospitals"] if r["oe"] is not None]
    assert [r["oe"] for r in rows] == sorted(r["oe"] for r in rows)   # ranked by O/E
    # no hospital code anywhere in the exported files (the private folder is never exported)
    text = " ".join(p.read_text() for p in approved.rglob("*")
                    if p.is_file() and "private" not in p.parts and p.suffix in
                    (".csv", ".json", ".md", ".txt", ".html"))
    # hashes (random hex, file hashes of run.json differ per run) and run.json's times are
    # not numbers a reader sees as such
    text = re.sub(r"[0-9a-f]{8,}|\d{4}-\d\d-\d\dT[\d:.]+Z?", " ", text)
    whole = {int(n) for n in re.findall(r"(?<![\d.])\d+(?![\d.])", text)}  # whole numbers
    assert not codes & whole


def test_a_study_may_hide_more_than_the_approval(tmp_path, small_data):
    from hpcstudy.engines import run as R
    from hpcstudy.secure.approval import load_approval

    approval = load_approval(project(tmp_path))
    for asked, got in (("code", "rank"), ("rank", "rank"), ("none", "none")):
        _, plan, _ = R.prepare(study(tmp_path, asked), small_data, approval)
        assert plan.study.analyses.hospitals.identify == got, asked
    strict = load_approval(project(tmp_path, PROJECT.replace("identify_hospitals: rank",
                                                             "identify_hospitals: none")))
    _, plan, _ = R.prepare(study(tmp_path, "rank"), small_data, strict)
    assert plan.study.analyses.hospitals.identify == "none"
    _, plan, _ = R.prepare(study(tmp_path, None), small_data)    # no approval: the study's
    assert plan.study.analyses.hospitals.identify == "code"


@pytest.mark.parametrize("change, field, commands", [
    (None, "analyses.measures.mortality_by_hospital.by", ("check", "run")),
    (("adjust: [age, sex, charlson]}", "adjust: [age, sex, charlson]}\n  cox: "
      "{adjust: [age, hospital]}"), "analyses.cox.adjust", ("check",)),
])
def test_codes_shown_elsewhere_are_refused(tmp_path, small_data, change, field, commands,
                                          capsys):
    s = study(tmp_path, None, measure=True)
    if change is not None:
        s.write_text(s.read_text().replace(
            "  measures:\n    - {name: mortality_by_hospital, by: [hospital]}\n", "")
            .replace(*change))
    for cmd in commands:
        extra = ["--out", str(tmp_path / "out")] if cmd == "run" else []
        run = run_cli if cmd == "run" else lambda *a: cli(capsys, *a)   # run: a real process
        r = run(cmd, s, "--data", small_data, "--project", project(tmp_path), *extra)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert field in r.stderr and "would show hospital codes" in r.stderr, r.stderr
        assert "FSEID-00000016 hides" in r.stderr
    assert not (tmp_path / "out").exists()


def test_without_the_setting_the_same_study_passes(tmp_path, small_data):
    from hpcstudy.engines import run as R
    from hpcstudy.secure.approval import load_approval

    free = load_approval(project(tmp_path, PROJECT.replace(", identify_hospitals: rank", "")))
    _, plan, _ = R.prepare(study(tmp_path, None, measure=True), small_data, free)
    assert plan.study.analyses.hospitals.identify == "code"


@pytest.mark.parametrize("disclosure, words", [
    ("{min_cell: 5, identify_hospital: rank}", ["disclosure.identify_hospital",
                                               "did you mean 'identify_hospitals'?"]),
    ("{min_cell: 5, identify_hospitals: ranks}", ["disclosure.identify_hospitals",
                                                 "'ranks' is not code, rank or none"]),
])
def test_bad_settings_are_one_line_with_file_and_line(tmp_path, small_data, disclosure, words,
                                                      capsys):
    p = project(tmp_path, PROJECT.replace("{min_cell: 5, identify_hospitals: rank}",
                                          disclosure))
    r = cli(capsys, "check", study(tmp_path, None), "--data", small_data, "--project", p)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"{p}:6" in r.stderr and all(w in r.stderr for w in words), r.stderr


def test_the_export_gate_holds_codes_a_run_showed_without_the_project(approved, small_data,
                                                                       tmp_path, capsys):
    """The attacker runs without --project (the codes are shown), then exports under it."""
    from hpcstudy.engines import run as R

    p = project(tmp_path)
    r = cli(capsys, "check-outputs", approved, "--project", p)
    assert r.returncode == 0, r.stderr            # the approved run's ranks pass
    free = tmp_path / "free"
    R.run(study(tmp_path, "code", measure=True), small_data, free, engine="reference")
    r = cli(capsys, "check-outputs", free, "--project", p)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    held = r.stderr
    for f in ("tables/hospitals.csv", "results.json:hospitals", "report.html",
              "tables/hospitals.md"):
        assert f"withheld {f}" in held, held
    assert "shows hospital codes, which project FSEID-00000016 hides" in held
    # the measure by hospital too: its key column is the codes
    assert "withheld tables/measure_mortality_by_hospital.csv: column 'hospital'" in held
    assert "results.json:measures.mortality_by_hospital: column 'hospital'" in held
