"""The export register against rows of one export that sum to a row of another, rows that
session 7 left unsketched (Lexis rows, measure rows), and three exports together.

A measure by sex and a time-varying statin in one export, beside rates by sex in another:
each sex's rows, summed over statin, count the persons who started a statin twice, so the sum
minus the rates row is the switchers of that sex. Sketches are linear (the sketch of a union
of disjoint sets is the sum of theirs; a person in two rows counts twice), so the register
sums the rows' sketches and compares the sum with the other export's rows. The truths come
from the runs' private person tables (pandas, Python sets), never from the code under test;
each test asserts the line that names its own difference, so it fails if that hold goes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

YEAR = 365.25
HEAD = """codelists:
  statins: {system: atc, codes: [C10AA*]}
  circulatory: {system: icd10, codes: [I*, C*, E*, J*]}
  diabetes: {system: icd10, codes: [E1*]}
index: {date: 2010-01-01}
"""
STUDIES = {
    # switchers: a split by a time-varying statin; the same persons' rates by sex
    "split": "population: {age: [40, 90]}\ncovariates: [age, sex, {name: statin, codelist: "
             "statins, time_varying: true}]\noutcome: {name: circulatory, codelist: "
             "circulatory}\nfollow_up: {end_date: 2010-03-01}\nanalyses:\n  measures:\n"
             "    - {name: by_statin, by: [sex, statin]}\n",
    "by_sex": "population: {age: [40, 90]}\ncovariates: [age, sex]\noutcome: {name: "
              "circulatory, codelist: circulatory}\nfollow_up: {end_date: 2010-03-01}\n"
              "analyses:\n  rates: {by: [sex]}\n",
    # a Lexis band narrowed by one year (aged under 89 at index: a year later nobody is 90)
    "lexis_90": "population: {age: [40, 89]}\ncovariates: [age]\noutcome: {name: circulatory, "
                "codelist: circulatory}\nfollow_up: {end_date: 2010-12-31}\nanalyses:\n"
                "  lexis: {age_bands: [40, 70, 90], periods: [2010, 2011]}\n",
    "lexis_89": "population: {age: [40, 89]}\ncovariates: [age]\noutcome: {name: circulatory, "
                "codelist: circulatory}\nfollow_up: {end_date: 2010-12-31}\nanalyses:\n"
                "  lexis: {age_bands: [40, 70, 89], periods: [2010, 2011]}\n",
    # a measure by region, its population restricted by a few persons (one in some regions)
    "region_90": "population: {age: [40, 90]}\ncovariates: [age, region]\noutcome: {name: "
                 "circulatory, codelist: circulatory}\nfollow_up: {end_date: 2010-03-01}\n"
                 "analyses:\n  measures:\n    - {name: by_region, by: [region]}\n"
                 "  cox: {adjust: [age, region]}\n",
    "region_89": "population: {age: [40, 89]}\ncovariates: [age, region]\noutcome: {name: "
                 "circulatory, codelist: circulatory}\nfollow_up: {end_date: 2010-03-01}\n"
                 "analyses:\n  measures:\n    - {name: by_region, by: [region]}\n"
                 "  cox: {adjust: [age, region]}\n",
    # three exports: all aged 40-90 (region_90), the men, the women aged 40-89
    "men": "population: {age: [40, 90], sex: male}\ncovariates: [age]\noutcome: {name: "
           "circulatory, codelist: circulatory}\nfollow_up: {end_date: 2010-03-01}\n",
    "women_89": "population: {age: [40, 89], sex: female}\ncovariates: [age]\noutcome: {name: "
                "circulatory, codelist: circulatory}\nfollow_up: {end_date: 2010-03-01}\n",
    # a curve of a year's follow-up: its events to each shown day
    "curves": "population: {age: [40, 90]}\ncovariates: [age]\noutcome: {name: circulatory, "
              "codelist: circulatory}\nfollow_up: {end_date: 2010-12-31}\nanalyses:\n"
              "  curves: true\n",
    # unrelated: another outcome of the same persons; two age groups of one size
    "diabetes": "population: {age: [40, 90]}\ncovariates: [age, region]\noutcome: {name: "
                "diabetes, codelist: diabetes}\nfollow_up: {end_date: 2010-03-01}\n"
                "analyses:\n  measures:\n    - {name: by_region, by: [region]}\n",
}


@pytest.fixture(scope="module")
def runs(small_data, tmp_path_factory) -> dict[str, Path]:
    """Each study run in a folder of its own (no siblings)."""
    tmp = tmp_path_factory.mktemp("sums")
    out = {}
    for name, body in STUDIES.items():
        study = tmp / f"{name}.yaml"
        study.write_text(f"name: {name}\n" + HEAD + body)
        out[name] = tmp / name / "out"
        r = run_cli("run", study, "--data", small_data, "--out", out[name], "--quiet")
        assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def register(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "exports.jsonl"
    monkeypatch.setenv("HPCSTUDY_EXPORT_REGISTER", str(path))
    return path


def _table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "private" / "person_table.parquet")


def _held(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if x.startswith("held for review")]


def _rows(out: Path, section: str) -> list[dict]:
    doc = json.loads((out / "results.json").read_text())
    head, _, name = section.partition(".")
    return doc[head][name] if name else doc[head]


def test_switchers_per_sex_from_a_split_beside_rates_by_sex_are_held(runs, register, tmp_path):
    t = _table(runs["split"])
    start = t["exit_date"] - t["time"] + 1
    switched = t[(t["statin"] == 0) & (t["statin@from"] > start) &
                 (t["statin@from"] <= t["exit_date"])]
    truth = {s: int((switched["sex"] == s).sum()) for s in (0, 1)}
    # the planted situation: 5 or more in all (the split passes its own rules), a few per sex
    assert sum(truth.values()) >= 5 and any(1 <= k <= 4 for k in truth.values()), truth
    women = {r["sex"]: r["persons"] for r in _rows(runs["by_sex"], "rates")}
    split = _rows(runs["split"], "measures.by_statin")
    assert all(sum(r["persons"] for r in split if r["sex"] == s) - women[s] == truth[s]
               for s in (0, 1))
    for first, then in (("split", "by_sex"), ("by_sex", "split")):
        register.unlink(missing_ok=True)
        assert run_cli("export", runs[first], tmp_path / first).returncode == 0
        r = run_cli("export", runs[then], tmp_path / then)
        assert r.returncode == 1 and not (tmp_path / then).exists(), r.stderr
        held = _held(r.stderr)
        for s, k in truth.items():
            if not 1 <= k <= 4:
                continue
            row, total = f"rates[sex={s}].persons", \
                f"measures.by_statin[sex={s},statin=*].persons"
            if then == "by_sex":
                line = f"{row} is {women[s]} here and {total} is {women[s] + k} in export #1"
                size = f"differ by 0 person(s) only here and {k} only there"
            else:
                line = f"{total} is {women[s] + k} here and {row} is {women[s]} in export #1"
                size = f"differ by {k} person(s) only here and 0 only there"
            assert any(line in x and size in x for x in held), r.stderr
        shutil.rmtree(tmp_path / first)   # (and the register: both orders from scratch)


def _events_in_band(t: pd.DataFrame, lo: float, hi: float) -> set:
    """The persons with their event at ages [lo, hi) (as a Lexis cell counts them: within
    follow-up, which here lies in the one period)."""
    birth = t["index_date"] - t["age"] * YEAR
    day = t["exit_date"]
    inside = (t["event"] == 1) & (day >= birth + lo * YEAR) & (day < birth + hi * YEAR)
    return set(t.loc[inside, "pnr"])


def test_a_lexis_band_narrowed_by_one_year_is_held(runs, register, tmp_path):
    t = _table(runs["lexis_90"])
    wide, narrow = _events_in_band(t, 70, 90), _events_in_band(t, 70, 89)
    assert narrow < wide and 1 <= len(wide - narrow) <= 4
    assert run_cli("export", runs["lexis_90"], tmp_path / "a").returncode == 0
    r = run_cli("export", runs["lexis_89"], tmp_path / "b")
    assert r.returncode == 1, r.stderr
    line = (f"lexis[group=1,age_band=70-89,period=2010-2010].events is {len(narrow)} here and "
            f"lexis[group=1,age_band=70-90,period=2010-2010].events is {len(wide)} in export #1")
    size = f"differ by 0 person(s) only here and {len(wide - narrow)} only there"
    assert any(line in x and size in x for x in _held(r.stderr)), r.stderr


def test_a_measure_restricted_by_one_person_is_held(runs, register, tmp_path):
    wide, narrow = _table(runs["region_90"]), _table(runs["region_89"])
    gone = wide[~wide["pnr"].isin(set(narrow["pnr"]))]
    assert set(narrow["pnr"]) < set(wide["pnr"])
    by_region = gone["region"].value_counts().to_dict()
    ones = [int(g) for g, k in by_region.items() if k == 1]
    assert ones, by_region   # a region that lost exactly one person
    assert run_cli("export", runs["region_90"], tmp_path / "a").returncode == 0
    r = run_cli("export", runs["region_89"], tmp_path / "b")
    assert r.returncode == 1, r.stderr
    for g in ones:   # (the Cox model's term of that region: the same two numbers, named once)
        n = int((wide["region"] == g).sum())
        line = f"measures.by_region[region={g}].persons is {n - 1} here and {n} in export #1"
        assert any(line in x and "differ by 0 person(s) only here and 1 only there" in x
                   for x in _held(r.stderr)), r.stderr
    # the persons in the other regions, by the model's terms alone (no table shows them)
    for g, k in by_region.items():
        rest = int((wide["region"] != g).sum())
        if 1 <= len(gone) - k <= 4 and f"region={g}" in {
                t["term"] for t in _rows(runs["region_89"], "models")["cox"]["terms"]
                if t["persons"] is not None}:
            line = (f"models.cox[term=region={g}].persons_other is "
                    f"{rest - (len(gone) - k)} here and {rest} in export #1")
            assert any(line in x for x in _held(r.stderr)), r.stderr


def test_three_exports_together_are_held(runs, register, tmp_path):
    """All aged 40-90 in one export, the men in a second, the women aged 40-89 in a third:
    no two of them are nested, but the first minus the second holds the third and a few."""
    everyone, men, women = (set(_table(runs[k])["pnr"]) for k in ("region_90", "men",
                                                                  "women_89"))
    assert not men & women and men | women < everyone
    few = len(everyone - men - women)
    assert 1 <= few <= 4
    assert run_cli("export", runs["region_90"], tmp_path / "a").returncode == 0
    assert run_cli("export", runs["men"], tmp_path / "b").returncode == 0
    r = run_cli("export", runs["women_89"], tmp_path / "c")
    assert r.returncode == 1 and not (tmp_path / "c").exists(), r.stderr
    line = (f"cohort[label=cohort].persons is {len(women)} here and cohort[label=cohort]"
            ".persons in export #1")
    assert any(line in x and "minus cohort[label=cohort].persons in export #2" in x and
               f"is {len(everyone) - len(men)} in those outputs together" in x and
               f"differ by 0 person(s) only here and {few} only there" in x
               for x in _held(r.stderr)), r.stderr


def test_unrelated_studies_pass(runs, register, tmp_path):
    """The same persons with another outcome (their rows' persons equal, the events unrelated)
    and the men among them (578 persons only in the others): nothing held."""
    for i, name in enumerate(("region_90", "diabetes", "men")):
        r = run_cli("export", runs[name], tmp_path / str(i))
        assert r.returncode == 0, r.stderr


def test_a_curve_to_a_day_beside_a_shorter_follow_up_is_held(runs, register, tmp_path):
    """The persons with the event in 59 days of follow-up (rates by sex's cohort), and a
    curve of a year's: its events to its last shown day before day 59 are theirs but for the
    few after that day."""
    short = _table(runs["by_sex"])
    events = set(short.loc[short["event"] == 1, "pnr"])
    long = _table(runs["curves"])
    cases = []
    for row in _rows(runs["curves"], "curves"):
        before = set(long.loc[(long["status"] == 1) & (long["time"] <= row["day"]), "pnr"])
        if before < events and 1 <= len(events - before) <= 4:
            cases.append((row["day"], len(before), len(events - before)))
    assert cases   # the planted situation
    assert run_cli("export", runs["curves"], tmp_path / "a").returncode == 0
    r = run_cli("export", runs["by_sex"], tmp_path / "b")
    assert r.returncode == 1, r.stderr
    for day, n, k in cases:
        line = (f"cohort[label=cohort].events is {len(events)} here and "
                f"curves[group=1,day<={day}].events is {n} in export #1")
        assert any(line in x and f"differ by {k} person(s) only here and 0 only there" in x
                   for x in _held(r.stderr)), r.stderr


def test_a_count_nested_in_another_of_the_same_export_is_held(runs, register, tmp_path):
    """A Lexis model's events are those inside its bands: with the band ending at 89, the
    cohort's events beside them give those at 89 or older (no disclosure rule pairs the two
    tables), held before anything leaves, with no earlier export."""
    t = _table(runs["lexis_89"])
    inside = _events_in_band(t, 40, 89)
    all_events = set(t.loc[t["event"] == 1, "pnr"])
    k = len(all_events - inside)
    assert inside < all_events and 1 <= k <= 4
    r = run_cli("export", runs["lexis_89"], tmp_path / "a")
    assert r.returncode == 1 and not (tmp_path / "a").exists(), r.stderr
    line = (f"cohort[label=cohort].events is {len(all_events)} here and lexis_model.events is "
            f"{len(inside)} in this export itself")
    assert any(line in x and f"differ by {k} person(s) only here and 0 only there" in x
               for x in _held(r.stderr)), r.stderr


def test_the_sketches_are_of_the_persons_behind_the_rows(runs, small_data):
    """Not only of as many persons: each row's sketch is the sketch of the persons the person
    table says are behind it (pandas), made again here with the data's key."""
    from hpcstudy.registers.store import Dataset
    from hpcstudy.secure import sketches as S

    secret = S.data_secret(Dataset.open(small_data))

    def check(out: Path, truths: dict) -> None:
        doc = json.loads((out / S.NAME).read_text())
        public = json.loads((out / "outputs.json").read_text())["data_persons_sha256"]
        keyed = S.Keyed(public, doc["cells"], secret)
        _, sets = S.load(doc)
        for name, pnr in truths.items():
            want = keyed.sketch(np.array(sorted(pnr), dtype=np.int64))
            assert sets[name].n == len(pnr) and np.array_equal(sets[name].ids, want.ids) \
                and np.array_equal(sets[name].count, want.count), name

    t = _table(runs["split"])
    start = t["exit_date"] - t["time"] + 1
    on = (t["statin"] == 1) | ((t["statin@from"] > start) & (t["statin@from"] <= t["exit_date"]))
    off = t["statin"] == 0
    check(runs["split"], {f"measures.by_statin[sex={s},statin={v}].persons":
                          set(t.loc[(t["sex"] == s) & m, "pnr"])
                          for s in (0, 1) for v, m in ((0, off), (1, on))})
    t = _table(runs["lexis_90"])
    check(runs["lexis_90"], {
        "lexis[group=1,age_band=70-90,period=2010-2010].events": _events_in_band(t, 70, 90),
        "lexis[group=1,age_band=40-70,period=2010-2010].events": _events_in_band(t, 40, 70)})
    t = _table(runs["region_90"])
    terms = [x["term"] for x in _rows(runs["region_90"], "models")["cox"]["terms"]
             if x["term"].startswith("region=") and x["persons"] is not None]
    assert terms
    check(runs["region_90"], {
        **{f"models.cox[term={x}].persons": set(t.loc[t["region"] == int(x[7:]), "pnr"])
           for x in terms},
        **{f"models.cox[term={x}].persons_other": set(t.loc[t["region"] != int(x[7:]), "pnr"])
           for x in terms}})
    t = _table(runs["curves"])
    rows = _rows(runs["curves"], "curves")[:3]
    days = [0] + [r["day"] for r in rows]
    check(runs["curves"], {f"curves[group=1,day={days[i + 1]}].events": set(
        t.loc[(t["status"] == 1) & (t["time"] > days[i]) & (t["time"] <= days[i + 1]), "pnr"])
        for i in range(len(rows))})
