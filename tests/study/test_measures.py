"""Open-population measures on small readable registers: person-time and events per calendar
interval × group × attained-age band, direct standardisation to the ESP 2013 and to the
Danish population, indirect standardisation (SIR). Every expected value is computed here
day by day from the register rows and the rules in docs/measures.md, with the ESP weights
typed in from Eurostat's table, never from the code under test."""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest
from conftest import run_cli
from scipy.stats import chi2

from hpcstudy.engines import run as R
from hpcstudy.study import study_from_text

from .builder import Registers

# Eurostat 2013, ESP 2013, per 100 000: 0-4, 5-9, …, 85-89, 90+
ESP = [5000, 5500, 5500, 5500, 6000, 6000, 6500, 7000, 7000, 7000, 7000, 6500, 6000, 5500,
       5000, 4000, 2500, 1500, 1000]
BANDS = [0, 50, 70, 150]
STUDY = """
name: measures
codelists:
  diabetes: {system: icd10, codes: [E11*]}
index: {date: 2010-01-01}
covariates: [age, sex]
outcome: {name: diabetes, codelist: diabetes}
follow_up: {end_date: 2011-12-31}
analyses:
  measures:
    - {name: yearly, by: [sex], interval: year, standardise: esp2013, indirect: true,
       age_bands: [0, 50, 70, 150]}
    - {name: by_age, by: [age_band], age_bands: [0, 50, 70, 150]}
"""
PEOPLE = {  # pnr: (sex, born)
    1: ("M", "1960-06-15"), 2: ("F", "1940-03-01"), 3: ("M", "1980-01-01"),
    4: ("F", "1945-01-01"), 5: ("M", "1930-01-01"), 6: ("F", "1961-02-10"),
}


def registers() -> Registers:
    r = Registers()
    for p, (sex, born) in PEOPLE.items():
        r.person(p, sex, born)
    r.contact(1, "2011-03-01", "DE119")     # turns 50 in 2010, event in 2011
    r.contact(3, "2010-05-05", "DE110")     # event in 2010
    r.death(4, "2011-06-30")
    r.move(5, "U", "2011-01-01")            # last day at risk 2010-12-31
    r.contact(6, "2011-02-10", "DE119")     # event on her 50th birthday
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return registers().write(tmp_path_factory.mktemp("measures") / "data", partitions=3)


def day(iso):
    return dt.date.fromisoformat(iso).toordinal()


def hand_cells():
    """{(sex, year, band): [days, events]}, counted day by day: age a is reached on the day
    birth + ceil(a × 365.25) (docs/measures.md)."""
    ends = {1: ("2011-03-01", 1), 2: ("2011-12-31", 0), 3: ("2010-05-05", 1),
            4: ("2011-06-30", 0), 5: ("2010-12-31", 0), 6: ("2011-02-10", 1)}
    cells: dict = {}
    for p, (sex, born) in PEOPLE.items():
        exit_, status = ends[p]
        cuts = [day(born) + math.ceil(a * 365.25) for a in BANDS]
        for d in range(day("2010-01-01"), day(exit_) + 1):
            band = max(i for i, c in enumerate(cuts[:-1]) if d >= c)
            year = dt.date.fromordinal(d).year
            c = cells.setdefault((int(sex == "F"), year, band), [0, 0])
            c[0] += 1
            c[1] += int(status == 1 and d == day(exit_))
    return cells


@pytest.fixture(params=["reference", "dask"])
def result(request, data):
    _, plan, ds = R.prepare(study_from_text(STUDY), data)
    tables, attrition, parts = R.person_table(plan, ds, request.param)
    return R.analyse(plan, parts, attrition, ds=ds)


def test_person_time_and_events_per_interval(result):
    cells = hand_cells()
    rows = {(r["sex"], r["interval"]): r for r in result["measures"]["yearly"]}
    assert set(rows) == {(0, "2010"), (0, "2011"), (1, "2010"), (1, "2011")}
    for (sex, year), r in rows.items():
        mine = [v for k, v in cells.items() if k[:2] == (sex, int(year))]
        days, events = sum(v[0] for v in mine), sum(v[1] for v in mine)
        assert r["events"] == events
        assert r["person_years"] == pytest.approx(days / 365.25, rel=1e-12)
        assert r["rate"] == pytest.approx(1000 * events / (days / 365.25), rel=1e-12)
        lo = chi2.ppf(0.025, 2 * events) / 2 if events else 0.0
        hi = chi2.ppf(0.975, 2 * events + 2) / 2
        assert r["lower_95"] == pytest.approx(1000 * lo / (days / 365.25), rel=1e-6)
        assert r["upper_95"] == pytest.approx(1000 * hi / (days / 365.25), rel=1e-6)
    assert rows[(0, "2011")]["persons"] == 1     # person 5 left in 2010, 3 had the outcome
    assert rows[(0, "2010")]["persons"] == 3


def test_direct_standardisation_to_the_esp_equals_the_hand_computation(result):
    cells = hand_cells()
    w = [sum(ESP[0:10]), sum(ESP[10:14]), sum(ESP[14:])]
    assert w == [61000, 25000, 14000]
    w = [x / 100_000 for x in w]
    for r in result["measures"]["yearly"]:
        k = (r["sex"], int(r["interval"]))
        rate, counts, weights = 0.0, [], []
        for band in range(3):
            days, events = cells.get((*k, band), [0, 0])
            if days:
                rate += w[band] * events / (days / 365.25)
                counts.append(events)
                weights.append(w[band] / (days / 365.25))
        assert r["standardised_rate"] == pytest.approx(1000 * rate, rel=1e-12)
        # Fay & Feuer's gamma interval, from its formula
        y = sum(a * b for a, b in zip(weights, counts, strict=True))
        v = sum(a * a * b for a, b in zip(weights, counts, strict=True))
        wm = max(weights)
        lo = v / (2 * y) * chi2.ppf(0.025, 2 * y * y / v) if y else 0.0
        hi = (v + wm ** 2) / (2 * (y + wm)) * chi2.ppf(0.975, 2 * (y + wm) ** 2 / (v + wm ** 2))
        assert r["standardised_lower_95"] == pytest.approx(1000 * lo, rel=1e-6, abs=1e-12)
        assert r["standardised_upper_95"] == pytest.approx(1000 * hi, rel=1e-6)


def test_indirect_standardisation_expected_and_sir(result):
    cells = hand_cells()
    ref = []
    for band in range(3):
        days = sum(v[0] for k, v in cells.items() if k[2] == band)
        events = sum(v[1] for k, v in cells.items() if k[2] == band)
        ref.append(events / days if days else 0.0)
    total_o = total_e = 0.0
    for r in result["measures"]["yearly"]:
        k = (r["sex"], int(r["interval"]))
        expected = sum(ref[b] * cells.get((*k, b), [0, 0])[0] for b in range(3))
        assert r["expected"] == pytest.approx(expected, rel=1e-12)
        if expected:
            assert r["sir"] == pytest.approx(r["events"] / expected, rel=1e-12)
            assert r["sir_upper_95"] == pytest.approx(chi2.ppf(0.975, 2 * r["events"] + 2) / 2
                                                      / expected, rel=1e-6)
        total_o += r["events"]
        total_e += r["expected"]
    assert total_e == pytest.approx(total_o, rel=1e-12)   # internal standard: O = E overall


def test_by_attained_age_band(result):
    cells = hand_cells()
    rows = {r["age_band"]: r for r in result["measures"]["by_age"]}
    assert set(rows) == {"0-50", "50-70", "70-150"}
    for band, label in enumerate(["0-50", "50-70", "70-150"]):
        days = sum(v[0] for k, v in cells.items() if k[2] == band)
        assert rows[label]["person_years"] == pytest.approx(days / 365.25, rel=1e-12)
        assert rows[label]["events"] == sum(v[1] for k, v in cells.items() if k[2] == band)
    # person 6 has her outcome on her 50th calendar birthday, the day before the day the
    # rule says she reaches 50 (birth + ceil(50 × 365.25) days): it counts in 0-50
    assert (rows["0-50"]["events"], rows["50-70"]["events"]) == (2, 1)
    assert rows["0-50"]["persons"] == 3 and rows["50-70"]["persons"] == 3


def test_the_engines_give_the_same_measures(data):
    out = []
    for engine in ("reference", "dask"):
        _, plan, ds = R.prepare(study_from_text(STUDY), data)
        tables, attrition, parts = R.person_table(plan, ds, engine)
        out.append(json.dumps(R.analyse(plan, parts, attrition, ds=ds)["measures"]))
    assert out[0] == out[1]


def test_danish_standard_population_counts_bef(data, tmp_path):
    """danish_2011: persons alive and resident on 2011-01-01 per band, from the rows above:
    0-50: 3 (born 1980), 6 (1961); 50-70: 1 (1960), 4 (1945); 70+: 2 (1940); 5 emigrated."""
    from hpcstudy.measures.standard import danish_population
    from hpcstudy.registers.store import Dataset

    assert danish_population(Dataset.open(data), 2011, (0, 50, 70, 150)) == [2, 2, 1]
    text = STUDY.replace("standardise: esp2013, indirect: true", "standardise: danish_2011")
    _, plan, ds = R.prepare(study_from_text(text), data)
    tables, attrition, parts = R.person_table(plan, ds, "reference")
    rows = R.analyse(plan, parts, attrition, ds=ds)["measures"]["yearly"]
    cells = hand_cells()
    w = [2 / 5, 2 / 5, 1 / 5]
    for r in rows:
        k = (r["sex"], int(r["interval"]))
        want = sum(w[b] * cells[(*k, b)][1] / (cells[(*k, b)][0] / 365.25)
                   for b in range(3) if (*k, b) in cells)
        assert r["standardised_rate"] == pytest.approx(1000 * want, rel=1e-12)


def test_bands_that_miss_the_cohort_are_one_line(data, tmp_path):
    text = STUDY.replace("age_bands: [0, 50, 70, 150]}\n    - {name: by_age",
                         "age_bands: [40, 50, 70, 90]}\n    - {name: by_age")
    path = tmp_path / "s.yaml"
    path.write_text(text)
    r = run_cli("run", path, "--data", data, "--out", tmp_path / "o", "--engine", "reference")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    line = next(i for i, x in enumerate(text.splitlines(), 1) if "age_bands: [40" in x)
    assert lines[0].startswith(f"hpcstudy: error: {path}:{line}: measure 'yearly': the "
                               "standard population's age bands [40, 90) do not cover the "
                               "cohort"), lines[0]
    assert "—" in lines[0] and not (tmp_path / "o").exists()


def test_the_docs_example_runs(small_data, tmp_path):
    """docs/measures.md's example runs on the synthetic data, on both engines alike."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "measures.md").read_text()
    text = next(b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)
                if b.startswith("# docs/measures.md: the measures example"))
    got = []
    for engine in ("reference", "dask"):
        _, plan, ds = R.prepare(study_from_text(text), small_data)
        tables, attrition, parts = R.person_table(plan, ds, engine)
        got.append(R.analyse(plan, parts, attrition, ds=ds)["measures"])
    assert got[0] == got[1]
    m = got[0]
    assert {r["interval"] for r in m["by_year"]} == {"2010", "2011", "2012", "2013", "2014"}
    assert all(r["standardised_rate"] >= 0 for r in m["by_year"])
    assert sum(r["events"] for r in m["by_year"]) == pytest.approx(
        sum(r["expected"] for r in m["by_year"]), rel=1e-9)
    assert {r["age_band"] for r in m["by_age"]} <= {"30-50", "50-70", "70-90", "90-150"}
    assert all("standardised_rate" in r for r in m["by_region"])


@pytest.mark.parametrize("engine", ["reference", "dask"])
def test_by_time_since_index(engine, data):
    """Person-time and events per band of days since index, counted day by day."""
    text = STUDY.replace("    - {name: by_age, by: [age_band], age_bands: [0, 50, 70, 150]}",
                         "    - {name: by_time, by: [time_band], time_bands: [0, 100, 400]}")
    _, plan, ds = R.prepare(study_from_text(text), data)
    tables, attrition, parts = R.person_table(plan, ds, engine)
    rows = {r["time_band"]: r for r in R.analyse(plan, parts, attrition)["measures"]["by_time"]}
    ends = {1: ("2011-03-01", 1), 2: ("2011-12-31", 0), 3: ("2010-05-05", 1),
            4: ("2011-06-30", 0), 5: ("2010-12-31", 0), 6: ("2011-02-10", 1)}
    want: dict = {}
    for exit_, status in ends.values():
        for t in range(day(exit_) - day("2010-01-01") + 1):
            band = "0-99" if t < 100 else "100-399" if t < 400 else "400+"
            c = want.setdefault(band, [0, 0])
            c[0] += 1
            c[1] += int(status == 1 and t == day(exit_) - day("2010-01-01"))
    assert set(rows) == set(want)
    for band, (days, events) in want.items():
        assert rows[band]["person_years"] == pytest.approx(days / 365.25, rel=1e-12)
        assert rows[band]["events"] == events
    assert rows["0-99"]["persons"] == 6 and rows["400+"]["persons"] == 4
