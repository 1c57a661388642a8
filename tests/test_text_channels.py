"""Free text cannot carry a count out: labels, step names, terms, keys, section names and
plan.txt lines may hold only the study's own words, numbers and codes, in a grammar with no
number words and no digits of other scripts (hpcstudy/outputs/text.py, docs/secure.md).

An outside attacker labelled a criterion "3 died" and the gate let it through. Each channel
is tried here the two ways an attacker would: written into the study before the run (the
label travels into the attrition table and plan.txt), and written into the files after the
run with every hash in outputs.json recomputed (so only the content rules stand)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import EXAMPLES, run_cli

from hpcstudy.outputs import manifest as M
from hpcstudy.outputs import text as T

VOCAB = T.Vocabulary(frozenset({"0", "1", "5", "40", "90", "365", "2010", "01"}),
                     frozenset({"I21", "DI21", "C10AA"}), frozenset({"region", "sex"}))


@pytest.mark.parametrize("value", [
    "3 died", "died: 3", "3died", "died3", "three died", "Three_Died", "threeDied",
    "tre døde", "fem patienter", "a handful died", "twice", "a dozen",
    "３ died",            # fullwidth digit
    "died ³",             # superscript
    "½ survived",         # vulgar fraction
    "Ⅲ died",             # roman numeral character
    "𝟑 died",             # mathematical bold digit
    "٣ died",             # Arabic-Indic digit
    "died\u200b",         # zero-width space: invisible marks can count too
    "C3 excluded",        # digits hidden in something shaped like a code
    "X21 excluded",       # a code-like token no codelist declares
    "died=3",             # a 'level' of nothing the study declares
    "region=1084 and 4 more",
    "x" * (T.MAX_VALUE + 1),
])
def test_text_that_could_state_a_count_is_refused(value):
    assert T.problems(value, VOCAB, "f"), value


@pytest.mark.parametrize("value", [
    "age in [40, 90)", "exclude mi in [start, 0]", "no event in the 365 days before",
    "resident ≥ 5 years", "prior I21", "lpr[DI21*] and lmdb[C10AA*]", "region=1084",
    "first lmdb[C10AA*] in [2010-01-01, 2010-01-01]", "none had a prior MI", "Ærø, Søby",
])
def test_the_study_s_own_numbers_codes_and_words_pass(value):
    assert T.problems(value, VOCAB, "f") == [], value


def test_the_vocabulary_comes_from_the_study_values_not_its_labels():
    doc = {"name": "type2_study", "description": "3 deaths expected",
           "codelists": {"mi": {"system": "icd10", "codes": ["I21*"]}},
           "population": {"age": [40, 90]},
           "criteria": [{"exclude": {"codelist": "mi", "window": [None, 0]},
                         "label": "died4"}]}
    v = T.vocabulary(doc, 5)
    assert {"0", "40", "90", "5"} <= v.numbers
    assert "3" not in v.numbers and "4" not in v.numbers
    assert {"I21", "DI21"} <= v.codes and "type2_study" in v.names
    assert "died4" not in v.names
    assert T.problems("type2_study", v, "f") == []
    assert T.problems("died4", v, "f") and T.problems("3 deaths expected", v, "f")
    # a declared name vouches for itself, not for its digits elsewhere
    assert T.problems("2 died", v, "f")


# -- through the real CLI -------------------------------------------------------------------
# a label with digits passes `check` (whether they are the study's numbers is the gate's to
# judge); number words and other scripts' digits `check` refuses before anything runs
LABELS = {"3 died": "['3']", "died 17": "['17']"}
REFUSED = {"three died": "number word", "３ died": "FULLWIDTH DIGIT THREE"}


def _labelled_study(tmp: Path, labels) -> Path:
    text = (EXAMPLES / "diabetes_incidence.yaml").read_text()
    extra = "".join(f"  - {{exclude: {{codelist: diabetes, window: [-{d}, -{d}]}}, "
                    f"label: \"{lb}\"}}\n" for d, lb in zip((10, 20, 30), labels, strict=False))
    study = tmp / "study.yaml"
    study.write_text(text.replace("criteria:\n", "criteria:\n" + extra))
    return study


def test_a_criterion_label_the_gate_would_hold_is_refused_by_check(tmp_path):
    for label, why in REFUSED.items():
        r = run_cli("check", _labelled_study(tmp_path, [label]))
        assert r.returncode == 2 and why in r.stderr and "criteria[" in r.stderr, r.stderr


@pytest.fixture(scope="module")
def labelled(small_data, tmp_path_factory) -> Path:
    """Example 3 with more criteria, each labelled with a count, run for real."""
    tmp = tmp_path_factory.mktemp("labels")
    study = _labelled_study(tmp, LABELS)
    out = tmp / "out"
    r = run_cli("run", study, "--data", small_data, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def test_a_criterion_label_stating_a_count_is_held_wherever_it_appears(labelled, tmp_path):
    steps = [s["step"] for rows in json.loads((labelled / "results.json").read_text())
             ["attrition"].values() for s in rows]
    assert set(LABELS) <= set(steps)     # the labels did reach the outputs
    r = run_cli("check-outputs", labelled)
    assert r.returncode == 1, r.stderr
    for label, why in LABELS.items():
        for f in ("results.json", "tables/attrition_cohort.csv"):
            assert any(f in x and why in x for x in r.stderr.splitlines()), (label, f, r.stderr)
    dest = tmp_path / "dest"
    r = run_cli("export", labelled, dest)
    assert r.returncode == 1
    for f in ("results.json", "tables/attrition_cohort.csv"):
        assert not (dest / f).exists()


# -- after the run, with the hashes recomputed --------------------------------------------------
@pytest.fixture
def out(local_run, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HPCSTUDY_EXPORT_REGISTER", str(tmp_path / "exports.jsonl"))
    copy = tmp_path / "run"
    shutil.copytree(local_run, copy)
    return copy


def redeclare(out: Path, change=lambda doc: None) -> None:
    doc = json.loads((out / M.NAME).read_text())
    change(doc)
    for e in doc["files"]:
        e["sha256"] = M.sha256((out / e["path"]).read_bytes())
    doc["manifest_sha256"] = M.sha256(M.canonical(doc))
    (out / M.NAME).write_text(json.dumps(doc))


def held(out: Path, path: str, *words: str) -> None:
    r = run_cli("check-outputs", out)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if path in x]
    assert lines, r.stderr
    for w in words:
        assert any(w in x for x in lines), (w, r.stderr)
    assert "Traceback" not in r.stderr


def test_a_clean_run_s_text_passes(out):
    r = run_cli("check-outputs", out)
    assert r.returncode == 0, r.stderr


def _edit(out: Path, path: str, old: str, new: str) -> None:
    p = out / path
    text = p.read_text(encoding="utf-8")
    assert old in text, (path, old)
    p.write_text(text.replace(old, new), encoding="utf-8")


@pytest.mark.parametrize("path,old,new,why", [
    ("tables/attrition_cohort.csv", "alive on the index day", "alive and 4 died", "['4']"),
    ("tables/attrition_cohort.csv", "alive on the index day", "alive and four died",
     "number word"),
    ("tables/attrition_cohort.csv", "alive on the index day", "alive and ٤ died", "ARABIC-INDIC"),
    ("results.json", '"step": "alive on the index day"', '"step": "alive and 4 died"', "['4']"),
    ("results.json", '"study": "diabetes_incidence"', '"study": "diabetes_incidence_4"',
     "['4']"),
    ("plan.txt", "analyses:", "analyses (2 died):", "['2']"),
    ("tables/model_poisson.csv", "\nsex,", "\nsex_3,", "['3']"),
])
def test_text_edited_into_the_files_is_held(out, path, old, new, why):
    _edit(out, path, old, new)
    if path == "results.json" and "study" in old:   # the study name is in the manifest too
        redeclare(out, lambda d: d["study"].update(name="diabetes_incidence_4"))
    else:
        redeclare(out)
    held(out, path, why)


def test_a_json_key_is_text_too(out):
    """A section named by the attacker ("models.died_3") is refused for its name."""
    res = json.loads((out / "results.json").read_text())
    res["attrition"]["died 3"] = res["attrition"].pop("cohort")
    (out / "results.json").write_text(json.dumps(res, indent=1))

    def rename(doc):
        e = next(e for e in doc["files"] if e["path"] == "results.json")
        e["sections"]["attrition.died 3"] = e["sections"].pop("attrition.cohort")
    redeclare(out, rename)
    held(out, "results.json", "['3']")


def test_the_kept_study_vouches_and_cannot_be_changed(out):
    """Adding the number to the study after the run, or to the manifest's record of it, or
    removing the study, leaves the text unvouched: every file is held."""
    _edit(out, "tables/attrition_cohort.csv", "alive on the index day", "alive and 4 died")
    redeclare(out)
    kept = out / T.KEPT
    kept.write_text(kept.read_text() + "\nextra: 4\n")
    held(out, "tables/attrition_cohort.csv", "differs from the study")
    kept.unlink()
    held(out, "results.json", "missing")
    # with the study gone, a recorded vocabulary holding 4 vouches for nothing
    redeclare(out, lambda d: d["study"]["vocabulary"]["numbers"].append("4"))
    held(out, "tables/attrition_cohort.csv", "missing")


def test_the_manifest_s_own_text_is_checked(out):
    redeclare(out, lambda d: d["study"].update(variants=["only 3 left"]))
    held(out, "outputs.json", "['3']")
    r = run_cli("check-outputs", out)
    assert "results.json" in r.stderr   # nothing leaves without its manifest


def test_an_exported_copy_passes_a_second_gate(out, tmp_path):
    dest = tmp_path / "dest"
    r = run_cli("export", out, dest)
    assert r.returncode == 0, r.stderr
    assert not (dest / "private").exists()
    assert run_cli("check-outputs", dest).returncode == 0
