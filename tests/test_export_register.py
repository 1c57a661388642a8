"""The export register: two outputs of the same data whose counts differ by a few persons give
those persons away, so the second export (or the first of two sibling variants) is held for
an output checker, with both named, and nothing is copied until the checker releases it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import EXAMPLES, run_cli

from hpcstudy.secure import exports as X

# a criterion that removes 4 persons from example 3's cohort on small_data (found by trying
# codes and windows; the test checks the 4 on the outputs themselves)
EXTRA_CODELIST = "  breast_cancer: {system: icd10, codes: [C50*]}\n"
EXTRA_CRITERION = "  - exclude: {codelist: breast_cancer, window: [-730, 0]}\n"


def _study(tmp_path: Path, criterion: bool, variants: str = "") -> Path:
    text = (EXAMPLES / "diabetes_incidence.yaml").read_text()
    text = text.replace("codelists:\n", "codelists:\n" + EXTRA_CODELIST)
    if criterion:
        text = text.replace("criteria:\n", "criteria:\n" + EXTRA_CRITERION)
    path = tmp_path / ("narrower.yaml" if criterion else "wider.yaml")
    path.write_text(text + variants)
    return path


def _cohort(out: Path) -> int:
    return json.loads((out / "results.json").read_text())["cohort"][0]["persons"]


@pytest.fixture(scope="module")
def variants(small_data, tmp_path_factory):
    """Two variants of one study, laid out as a job array writes them (OUT/VARIANT)."""
    tmp = tmp_path_factory.mktemp("variants")
    study = _study(tmp, False, "variants:\n  - {name: all, set: {seed: 1}}\n"
                               "  - {name: no_breast_cancer, set: {criteria: ["
                               "{exclude: {codelist: diabetes, window: [null, 0]}}, "
                               "{exclude: {codelist: breast_cancer, window: [-730, 0]}}]}}\n")
    array = tmp / "array"
    for v in ("all", "no_breast_cancer"):
        r = run_cli("run", study, "--variant", v, "--data", small_data, "--out", array / v,
                    "--quiet")
        assert r.returncode == 0, r.stderr
    assert _cohort(array / "all") - _cohort(array / "no_breast_cancer") == 4
    return array


@pytest.fixture(scope="module")
def two_runs(variants, tmp_path_factory):
    """The same two outputs, each on its own (no sibling next to it): runs of the same data
    with and without one rare exclusion, as two separate runs would leave them."""
    import shutil

    tmp = tmp_path_factory.mktemp("register")
    wider, narrower = tmp / "a" / "wider", tmp / "b" / "narrower"
    shutil.copytree(variants / "all", wider)
    shutil.copytree(variants / "no_breast_cancer", narrower)
    return wider, narrower


@pytest.fixture
def register(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "exports.jsonl"
    monkeypatch.setenv("HPCSTUDY_EXPORT_REGISTER", str(path))
    return path


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]



def _four_apart(stderr: str) -> bool:
    """The 4 persons named: by the counts, or (where both runs sketched the persons behind
    them) by the persons, one population inside the other."""
    return "a difference of 4 persons" in stderr or any(
        x in stderr for x in ("differ by 0 person(s) only here and 4 only there",
                              "differ by 4 person(s) only here and 0 only there"))

def test_an_export_four_persons_away_from_an_earlier_one_is_held(two_runs, register, tmp_path):
    wider, narrower = two_runs
    r = run_cli("export", wider, tmp_path / "first")
    assert r.returncode == 0, r.stderr
    first = _records(register)
    assert [x["event"] for x in first] == ["export"]
    assert first[0]["published"]["counts"]["cohort[label=cohort].persons"] == _cohort(wider)
    assert first[0]["data_manifest_sha256"] == json.loads(
        (wider / "outputs.json").read_text())["data_manifest_sha256"]
    # with the sketches of the persons behind the counts it published (secure/sketches.py),
    # those of the run's private folder, and no others
    sets = first[0]["sketches"]["sets"]
    assert "cohort[label=cohort].persons" in sets and "cohort[label=cohort].events" in sets
    assert set(sets) <= set(first[0]["published"]["counts"])
    kept = json.loads((wider / "private" / "sketches.json").read_text())["sets"]
    assert all(kept[k] == v for k, v in sets.items())

    r = run_cli("export", narrower, tmp_path / "second")
    assert r.returncode == 1, r.stdout + r.stderr
    assert not (tmp_path / "second").exists()                       # nothing copied
    held = [x for x in r.stderr.splitlines() if x.startswith("held for review")]
    assert any(f"cohort[label=cohort].persons is {_cohort(narrower)} here and "
               f"{_cohort(wider)} in export #1" in x for x in held), r.stderr
    assert any(str(wider) in x and str(narrower) in x for x in held)  # both exports named
    assert _four_apart(r.stderr)
    assert "hpcstudy exports release" in r.stderr
    # check-outputs says the same before anyone tries
    r = run_cli("check-outputs", narrower)
    assert r.returncode == 1 and "held for review" in r.stderr
    assert [x["event"] for x in _records(register)] == ["export", "held"]


def test_an_output_checker_releases_a_held_export(two_runs, register, tmp_path):
    wider, narrower = two_runs
    assert run_cli("export", wider, tmp_path / "first").returncode == 0
    assert run_cli("export", narrower, tmp_path / "second").returncode == 1
    r = run_cli("exports", "release", narrower, "--reason", "")
    assert r.returncode == 2 and "--reason is empty" in r.stderr
    r = run_cli("exports", "release", narrower, "--reason",
                "the 4 are published by the authority's own statistics")
    assert r.returncode == 0, r.stderr
    r = run_cli("export", narrower, tmp_path / "second")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "second" / "results.json").is_file()
    events = [x["event"] for x in _records(register)]
    assert events == ["export", "held", "release", "export"]
    r = run_cli("exports", "list")
    assert r.returncode == 0 and r.stdout.count("\n") == 4 and "release" in r.stdout


def test_the_same_outputs_again_and_equal_counts_are_not_held(two_runs, register, tmp_path,
                                                               local_run):
    wider, _ = two_runs
    assert run_cli("export", wider, tmp_path / "a").returncode == 0
    assert run_cli("export", wider, tmp_path / "b").returncode == 0     # the same again
    # another study file giving the same counts: nothing new is revealed
    assert run_cli("export", local_run, tmp_path / "c").returncode == 0
    assert [x["event"] for x in _records(register)] == ["export"] * 3


@pytest.mark.parametrize("first", ["all", "no_breast_cancer"])
def test_variants_are_checked_against_each_other_before_any_leaves(variants, register,
                                                                    tmp_path, first):
    r = run_cli("export", variants / first, tmp_path / "dest")
    assert r.returncode == 1, r.stdout + r.stderr
    other = "no_breast_cancer" if first == "all" else "all"
    assert f"sibling run 'diabetes_incidence.{other}' in {variants / other}" in r.stderr
    assert _four_apart(r.stderr)
    assert not (tmp_path / "dest").exists()
    assert [x["event"] for x in _records(register)] == ["held"]


@pytest.mark.parametrize("here, there, held", [
    (703, 699, True), (703, 702, True), (703, 703, False), (703, 698, False), (5, 9, True),
])
def test_a_difference_is_held_between_1_and_threshold_minus_1(here, there, held):
    mine = {"counts": {"cohort[label=a].persons": here}, "sizes": []}
    theirs = {"counts": {"cohort[label=a].persons": there}, "sizes": []}
    assert bool(X.differences(mine, theirs, 5, "the other")) is held
    # the sizes of arms are compared whatever their labels: renaming an arm does not hide it
    assert bool(X.differences({"counts": {}, "sizes": [here]},
                              {"counts": {}, "sizes": [there]}, 5, "the other")) is held


def test_where_the_register_lives(monkeypatch, tmp_path):
    monkeypatch.setenv("HPCSTUDY_EXPORT_REGISTER", str(tmp_path / "r.jsonl"))
    assert X.default_path() == tmp_path / "r.jsonl"
    monkeypatch.delenv("HPCSTUDY_EXPORT_REGISTER")
    monkeypatch.setenv("HPCSTUDY_AUDIT_LOG", str(tmp_path / "log" / "audit.jsonl"))
    assert X.default_path() == tmp_path / "log" / "exports.jsonl"


def test_a_damaged_register_is_a_one_line_error(two_runs, register, tmp_path):
    register.write_text("{not json\n")
    r = run_cli("export", two_runs[0], tmp_path / "d")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert "export register is damaged" in r.stderr and not (tmp_path / "d").exists()


def test_the_same_persons_repartitioned_are_the_same_data(two_runs, small_data, register,
                                                          tmp_path):
    """An outside tester's attack: the same extract written with another number of partitions
    has another manifest, and was other data to the register — 4 persons recovered again."""
    from hpcstudy.registers.generate import generate

    src = json.loads((small_data / "manifest.json").read_text())["source"]
    again = tmp_path / "p2"
    generate(again, src["persons"], src["seed"], 2, jobs=1)   # small_data has 3 partitions
    wider, _ = two_runs
    narrower = tmp_path / "narrower"
    study = _study(tmp_path, True)
    r = run_cli("run", study, "--data", again, "--out", narrower, "--quiet")
    assert r.returncode == 0, r.stderr
    assert _cohort(wider) - _cohort(narrower) == 4
    a, b = (json.loads((o / "outputs.json").read_text()) for o in (wider, narrower))
    assert a["data_manifest_sha256"] != b["data_manifest_sha256"]
    assert run_cli("export", wider, tmp_path / "first").returncode == 0
    r = run_cli("export", narrower, tmp_path / "second")
    assert r.returncode == 1 and _four_apart(r.stderr), r.stdout + r.stderr
    assert not (tmp_path / "second").exists()


def test_a_population_shown_under_another_table_is_still_paired():
    """An outside tester's attack: 226 women in a rates row of one export, 223 in the cohort of
    another study (the same women less an exclusion) — 3 persons, unpaired because the names
    differed. Every count of persons is now compared with every other."""
    from hpcstudy.secure import exports as X

    def pub(path, section, kind, rows):
        return X.published({path: (kind, rows)},
                           {"files": [{"path": path, "section": section}]})

    rates = pub("tables/rates.csv", "rates", "rates",
                [{"sex": 1, "persons": 241, "events": 18}, {"sex": 2, "persons": 226,
                                                             "events": 18}])
    cohort = pub("tables/cohort.csv", "cohort", "cohort",
                 [{"label": "women", "persons": 223, "events": 18}])
    found = X.differences(cohort, rates, 5, "export #1")
    assert [(d.here, d.there) for d in found] == [(223, 226)], found
    assert "a difference of 3 persons" in str(found[0])
    # 5 or more apart, or the same: nothing to hold
    far = pub("tables/cohort.csv", "cohort", "cohort",
              [{"label": "women", "persons": 221, "events": 18}])
    assert X.differences(far, rates, 5, "export #1") == []
