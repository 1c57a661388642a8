"""`hpcstudy check`: every error names file:line and the field, says how to fix it, all errors
at once, exit code 2, never a traceback. And YAML ↔ model round-trips."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from conftest import run_cli

from hpcstudy.study import StudyErrors, load_study, parse, study_from_text
from hpcstudy.study.yamlio import loads

GOOD = """\
name: ok
codelists:
  mi: {system: icd10, codes: [I21*]}
  statins: {system: atc, codes: [C10AA]}
index:
  first_event: {codelist: mi}
  between: [2010-01-01, 2020-12-31]
covariates: [age, sex]
outcome: {name: death, death: true, window: [0, 30]}
analyses:
  logistic: {adjust: [age, sex]}
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(StudyErrors) as e:
        study_from_text(textwrap.dedent(text), "s.yaml")
    return e.value.lines()


def test_a_good_study_parses():
    s = study_from_text(GOOD)
    assert s.name == "ok" and s.outcome.death and s.analyses.logistic.adjust == ("age", "sex")


@pytest.mark.parametrize("change, line, field, words", [
    (("codes: [I21*]", "codes: [I21*, 'I2X!']"), 3, "codelists.mi.codes", "malformed icd10"),
    (("system: atc", "system: snomed"), 4, "codelists.statins.system", "unknown code system"),
    (("{codelist: mi}", "{codelist: mi, register: lrp}"), 6, "index.first_event.register",
     "unknown register"),
    (("{codelist: mi}", "{codelist: mx}"), 6, "index.first_event.codelist", "'mx' is not defined"),
    (("{codelist: mi}", "{codelist: mii}"), 6, "index.first_event.codelist", "did you mean 'mi'"),
    (("[2010-01-01, 2020-12-31]", "[2020-12-31, 2010-01-01]"), 7, "index.between", "reversed"),
    (("[2010-01-01, 2020-12-31]", "[2010-13-01, 2020-12-31]"), 7, "index.between",
     "not a calendar date"),
    (("window: [0, 30]", "window: [30, 0]"), 9, "outcome.window", "reversed window"),
    (("adjust: [age, sex]", "adjust: [age, bmi]"), 11, "analyses.logistic.adjust",
     "'bmi' is used but not defined"),
    (("covariates: [age, sex]", "covariates: [age, sexx]"), 8, "covariates[1]",
     "did you mean 'sex'"),
    (("name: ok", "name: ok\npopulation: {age: [90, 40]}"), 2, "population.age",
     "impossible age range"),
    (("{codelist: mi}", "{codelist: mi, filter: {c_colour: 1}}"), 6,
     "index.first_event.filter.c_colour", "unknown column"),
    (("{codelist: mi}", "{codelist: statins, register: lpr}"), 6, "index.first_event.codelist",
     "holds atc codes"),
    (("analyses:", "analysis:"), 10, "analysis", "did you mean 'analyses'"),
])
def test_each_error_names_line_field_and_fix(change, line, field, words):
    text = GOOD.replace(*change)
    errs = errors_of(text)
    hit = [e for e in errs if e.startswith(f"s.yaml:{line}: {field}:")]
    assert hit, errs
    assert words in hit[0], hit


def test_all_errors_at_once():
    text = GOOD.replace("codes: [I21*]", "codes: ['I2X!']").replace("system: atc", "system: x") \
        .replace("adjust: [age, sex]", "adjust: [bmi]")
    errs = errors_of(text)
    assert len(errs) == 3, errs


def test_missing_parts_are_named():
    errs = errors_of("name: x\n")
    assert any("index" in e and "exposure: or index:" in e for e in errs)
    assert any("outcome" in e and "missing" in e for e in errs)


def test_yaml_syntax_error_names_the_line():
    from hpcstudy.errors import UserError

    with pytest.raises(UserError, match=r"s.yaml:4: not valid YAML.*opened at line 3"):
        loads("name: x\nindex:\n  date: [2010\n", "s.yaml")


def test_cli_check_exit_codes(tmp_path, small_data):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("codes: [I21*]", "codes: [I21*, '12']").replace(
        "adjust: [age, sex]", "adjust: [bmi]"))
    r = run_cli("check", bad)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith(f"hpcstudy: error: {bad}:") for ln in lines)
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    r = run_cli("check", good, "--data", small_data)
    assert r.returncode == 0, r.stderr


def test_index_rule_that_can_never_match_needs_the_data(tmp_path, small_data):
    f = tmp_path / "s.yaml"
    f.write_text(GOOD.replace("codes: [I21*]", "codes: [Q99]"))
    assert run_cli("check", f).returncode == 0       # the language alone cannot know
    r = run_cli("check", f, "--data", small_data)
    assert r.returncode == 2
    assert "matches no code in the data" in r.stderr and "index.first_event.codelist" in r.stderr


def test_codelist_from_csv(tmp_path):
    (tmp_path / "mi.csv").write_text("code,label\nI21,acute MI\nI22,subsequent MI\n")
    f = tmp_path / "s.yaml"
    f.write_text(GOOD.replace("mi: {system: icd10, codes: [I21*]}",
                              "mi: {system: icd10, file: mi.csv}"))
    s = load_study(f)
    assert s.codelist("mi").prefixes() == ("DI21", "DI22")
    f.write_text(GOOD.replace("mi: {system: icd10, codes: [I21*]}",
                              "mi: {system: icd10, file: nope.csv}"))
    with pytest.raises(StudyErrors, match="nope.csv does not exist"):
        load_study(f)


@pytest.mark.parametrize("example", ["statins_mi", "diabetes_incidence", "mi_mortality"])
def test_yaml_and_model_round_trip(example):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / f"{example}.yaml"
    s = load_study(path)
    again, problems = parse(loads(yaml.safe_dump(s.to_dict(), sort_keys=False)), str(path))
    assert problems == []
    assert again == s


def test_who_and_danish_codes_are_the_same():
    s = study_from_text(GOOD.replace("[I21*]", "[I21*, DI22, I23.1, D12]"))
    assert s.codelist("mi").prefixes() == ("DI21", "DI22", "DI231", "DD12")


VARIANTS = GOOD + """\
variants:
  - {name: later, set: {index.between: [2015-01-01, 2020-12-31]}}
  - {name: no_match, set: {codelists.mi.codes: [Q99]}}
"""


def test_check_and_plan_take_a_variant(tmp_path, small_data):
    f = tmp_path / "v.yaml"
    f.write_text(VARIANTS)
    r = run_cli("check", f, "--variant", "later")
    assert r.returncode == 0 and "study 'ok.later' is valid" in r.stdout, r.stderr
    r = run_cli("plan", f, "--data", small_data, "--variant", "later")
    assert r.returncode == 0 and "in [2015-01-01, 2020-12-31]" in r.stdout, r.stderr
    r = run_cli("plan", f, "--data", small_data)
    assert r.returncode == 0 and "in [2010-01-01, 2020-12-31]" in r.stdout, r.stderr
    r = run_cli("check", f, "--variant", "earlier")
    assert r.returncode == 2 and "no variant 'earlier'" in r.stderr and "later, no_match" in \
        r.stderr


def test_check_with_data_checks_every_variant(tmp_path, small_data):
    f = tmp_path / "v.yaml"
    f.write_text(VARIANTS)
    assert run_cli("check", f).returncode == 0          # the language alone cannot know
    r = run_cli("check", f, "--data", small_data)
    assert r.returncode == 2, r.stderr
    # the line of the variant's set:, where the codes that match nothing were written
    set_line = VARIANTS.splitlines().index(
        "  - {name: no_match, set: {codelists.mi.codes: [Q99]}}") + 1
    assert r.stderr.strip().splitlines() == [
        f"hpcstudy: error: {f}:{set_line}: variant no_match: index.first_event.codelist: "
        "codelist 'mi' "
        "matches no code in the data, so the index rule can never match — check the codes "
        "against the data's code dictionary"]


def test_warnings_are_printed_and_recorded_in_results(tmp_path, small_data):
    from hpcstudy.engines.run import run

    text = GOOD.replace("  statins: {system: atc, codes: [C10AA]}\n", "  statins: {system: atc, "
                        "codes: [C10AA]}\n  spare: {system: atc, codes: [C09]}\n")
    f = tmp_path / "w.yaml"
    f.write_text(text)
    r = run_cli("check", f)
    assert r.returncode == 0
    assert r.stderr.splitlines() == [
        f"hpcstudy: warning: {f}:4: codelists.statins: is never used — drop it, or use it",
        f"hpcstudy: warning: {f}:5: codelists.spare: is never used — drop it, or use it"]
    res = run(load_study(f), small_data, tmp_path / "out", engine="reference")
    # the outputs carry each warning without its file:line (free text the export gate cannot
    # vouch for)
    assert res["run"]["study_warnings"] == [
        x.removeprefix(f"hpcstudy: warning: {f}:").split(": ", 1)[1]
        for x in r.stderr.splitlines()]
