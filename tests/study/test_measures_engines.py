"""Measures and hospital comparisons on both engines, which compute them independently (the
reference engine with pandas in engines/reference_measures.py, the partition engine with the
one-pass reduction of hpcstudy/measures): a spec table of persons whose follow-up crosses a
split, starts before a lag or ends on a boundary, counted here day by day; and generated
studies on which the two agree."""

from __future__ import annotations

import datetime as dt
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcstudy.engines import run as R
from hpcstudy.study import study_from_text

from .builder import Registers
from .strategies import analyses, measure_time, studies
from .test_engines_agree import compare

ENGINES = ["reference", "dask"]
SPEC = """
name: spec
codelists:
  copd: {system: icd10, codes: [J44*]}
  statins: {system: atc, codes: [C10AA*]}
index: {date: 2012-01-01}
covariates:
  - age
  - {name: statin, codelist: statins, time_varying: true}
outcome: {name: copd, codelist: copd}
follow_up: {start_day: 100, end_date: 2013-12-31}
analyses:
  measures:
    - {name: year_age, by: [age_band], interval: year, age_bands: [0, 62, 150]}
    - {name: since, by: [time_band, statin], time_bands: [0, 30, 365]}
"""


def day(iso: str) -> int:
    return dt.date.fromisoformat(iso).toordinal()


INDEX = day("2012-01-01")
START = INDEX + 100      # 2012-04-10: the lag's first day at risk
# pnr: born, last day at risk, outcome on it, the day statin switches on (None: never; the
# start day: on at index), in the cohort (False: left in the lag)
PEOPLE = {
    1: ("1950-06-15", "2013-12-31", 0, "2013-02-01", True),   # turns 62, crosses the year
    2: ("1940-01-01", None, 0, None, False),                  # outcome in the lag: gone
    3: ("1960-01-01", "2012-12-31", 1, None, True),           # outcome on day 365
    4: ("1955-05-05", "2012-12-31", 0, None, True),           # emigrates 2013-01-01
    5: ("1945-01-01", "2013-06-01", 1, "2012-01-01", True),   # on a statin since before index
    6: ("1950-01-01", "2013-12-31", 0, "2012-03-01", True),   # switches on during the lag
    7: ("1962-04-10", "2012-04-10", 1, None, True),           # outcome on the start day
}


def spec_registers() -> Registers:
    r = Registers()
    for p, (born, *_rest) in PEOPLE.items():
        r.person(p, "MF"[p % 2], born)
    r.rx(1, "2013-02-01", "C10AA01")
    r.contact(2, "2012-02-01", "DJ441")
    r.contact(3, "2012-12-31", "DJ441")
    r.move(4, "U", "2013-01-01")
    r.rx(5, "2011-06-01", "C10AA05")
    r.contact(5, "2013-06-01", "DJ449")
    r.rx(6, "2012-03-01", "C10AA01")
    r.contact(7, "2012-04-10", "DJ441")
    return r


def by_hand(key) -> dict:
    """{row key: [persons, events, days]} counted day by day from PEOPLE and docs/measures.md:
    age a is reached on the day birth + ceil(a × 365.25); day 0 is the index day."""
    cells: dict = {}
    for born, last, event, on, kept in PEOPLE.values():
        if not kept:
            continue
        for d in range(START, day(last) + 1):
            ages = [a for a in (0, 62) if d >= day(born) + math.ceil(a * 365.25)]
            since = d - INDEX
            state = int(on is not None and d >= day(on))
            c = cells.setdefault(key(d, ages[-1], since, state), [set(), 0, 0])
            c[0].add(born)
            c[1] += int(event and d == day(last))
            c[2] += 1
    return {k: [len(p), e, n] for k, (p, e, n) in cells.items()}


@pytest.fixture(scope="module")
def spec_data(tmp_path_factory):
    return spec_registers().write(tmp_path_factory.mktemp("spec") / "data", partitions=3)


@pytest.mark.parametrize("engine", ENGINES)
def test_measures_spec_table(engine, spec_data):
    _, plan, ds = R.prepare(study_from_text(SPEC), spec_data)
    _, attrition, parts = R.person_table(plan, ds, engine)
    assert dict(attrition["cohort"])["no copd before day 100"] == 6
    got = R.analyse(plan, parts, attrition, ds=ds)["measures"]

    def table(rows, keys):
        return {tuple(r[k] for k in keys): [r["persons"], r["events"],
                                             round(r["person_years"] * 365.25)] for r in rows}

    year_age = by_hand(lambda d, a, s, on: (f"{a:g}-{62 if a == 0 else 150:g}",
                                            str(dt.date.fromordinal(d).year)))
    assert table(got["year_age"], ("age_band", "interval")) == year_age
    # the hand table itself, to read: person 1 turns 62 on 2012-06-15 (ceil(62 × 365.25) =
    # 22646 days after birth) and is followed into 2013; 3 and 4 end on 2012-12-31
    assert year_age[("0-62", "2012")] == [4, 2, (day("2012-06-15") - START) + 2 * 266 + 1]
    since = by_hand(lambda d, a, s, on: ("30-364" if s < 365 else "365+", on))
    assert table(got["since"], ("time_band", "statin")) == since
    # nobody has time in 0-29: follow-up starts on day 100 (the lag)
    assert not any(r["time_band"] == "0-29" for r in got["since"])
    # day 365 (2012-12-31) is the first of 365+: person 3's outcome and person 4's last day
    assert since[("365+", 0)][1] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_the_engines_refuse_bands_that_miss_the_cohort_alike(engine, spec_data):
    from hpcstudy.errors import UserError

    text = SPEC.replace("age_bands: [0, 62, 150]}", "age_bands: [62, 150], indirect: true}")
    _, plan, ds = R.prepare(study_from_text(text), spec_data)
    _, attrition, parts = R.person_table(plan, ds, engine)
    with pytest.raises(UserError, match=r"age bands \[62, 150\) do not cover the cohort "
                                        r"\(\d+\.\d person-years at other ages\)"):
        R.analyse(plan, parts, attrition, ds=ds)


@st.composite
def measured_studies(draw):
    s = draw(studies())
    a = draw(analyses(s))
    s["analyses"] = {k: v for k, v in a.items() if k in ("measures", "hospitals")}
    if "measures" not in s["analyses"]:
        m = {"name": "m", **draw(measure_time())}
        m["by"] = ["time_band"] if "time_bands" in m else []
        s["analyses"]["measures"] = [m]
    return s


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large])
@given(spec=measured_studies())
def test_engines_agree_on_measures_of_generated_studies(spec, small_data):
    from hpcstudy.errors import UserError

    study = study_from_text(yaml.safe_dump(spec))
    _, plan, ds = R.prepare(study, small_data)
    ref, att, p_ref = R.person_table(plan, ds, "reference")
    _, _, p_dsk = R.person_table(plan, ds, "dask")
    from hpcstudy.engines import reference_measures as RM
    from hpcstudy.measures import compute, hospitals

    assert p_ref.frame is not None   # the reference engine's own code runs on its frame
    pairs = [(lambda: RM.measures(plan, p_ref.frame, ds),
              lambda: compute.measures(plan, p_dsk, ds))]
    if plan.study.analyses.hospitals is not None:
        pairs.append((lambda: RM.hospitals(plan, p_ref.frame),
                      lambda: hospitals.hospitals(plan, p_dsk)))
    for pair in pairs:
        out = []
        for fn in pair:
            try:
                out.append(fn())
            except UserError as e:   # the same refusal, word for word
                out.append(str(e))
        compare(out[0], out[1])


SHARES = """
name: shares
codelists:
  mi: {system: icd10, codes: [I21*]}
index:
  first_event: {codelist: mi}
  between: [2012-01-01, 2013-12-31]
covariates: [age]
outcome: {name: death, death: true, window: [0, 30]}
analyses:
  measures:
    - {name: since, by: [time_band], interval: year, time_bands: [0, 7, 30]}
    - {name: ages, by: [age_band], age_bands: [0, 60, 150]}
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_proportions_spec_table(engine, tmp_path):
    """30-day mortality: each person once, in the year of the index day, the band of their age
    at index and the time band of the day they left (day 30 is the window's last)."""
    r = Registers()
    r.person(1, "M", "1950-01-01").contact(1, "2012-03-01", "DI219").death(1, "2012-03-05")
    r.person(2, "F", "1960-01-01").contact(2, "2012-12-31", "DI219").death(2, "2013-01-20")
    r.person(3, "M", "1955-01-01").contact(3, "2013-06-01", "DI219")          # survives
    r.person(4, "F", "1940-06-01").contact(4, "2013-02-01", "DI219").move(4, "U", "2013-02-10")
    r.person(5, "M", "1952-01-01").contact(5, "2012-07-01", "DI219").death(5, "2012-07-31")
    data = r.write(tmp_path / "d", partitions=2)
    _, plan, ds = R.prepare(study_from_text(SHARES), data)
    _, attrition, parts = R.person_table(plan, ds, engine)
    got = R.analyse(plan, parts, attrition, ds=ds)["measures"]
    since = {(x["time_band"], x["interval"]): (x["persons"], x["events"], x["proportion"])
             for x in got["since"]}
    assert since == {("0-6", "2012"): (1, 1, 1.0), ("7-29", "2012"): (1, 1, 1.0),
                     ("30+", "2012"): (1, 1, 1.0), ("7-29", "2013"): (1, 0, 0.0),
                     ("30+", "2013"): (1, 0, 0.0)}
    ages = {x["age_band"]: (x["persons"], x["events"]) for x in got["ages"]}
    assert ages == {"0-60": (2, 1), "60-150": (3, 2)}
    assert not any("person_years" in x for x in got["since"] + got["ages"])


def test_the_danish_population_counted_twice_agrees(small_data):
    """The reference engine's own count of the Danish standard population and the one the
    partition engine uses, on years across the data."""
    from hpcstudy.engines.reference_measures import danish_population
    from hpcstudy.measures.standard import danish_population as shared
    from hpcstudy.registers.store import Dataset

    ds = Dataset.open(small_data)
    for year in (2000, 2015, 2022):
        bands = (0, 30, 50, 70, 150)
        own = danish_population(ds, year, bands)
        assert own == shared(ds, year, bands) and sum(own) > 1000
