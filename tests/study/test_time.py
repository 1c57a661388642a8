"""Spec tests of follow-up in time: a lag (follow_up.start_day) and a calendar end
(follow_up.end_date), on small readable registers, on every engine. Expected values are worked
out by hand from the rows below (docs/time.md states the rules)."""

from __future__ import annotations

import numpy as np
import pytest

from hpcstudy.engines import run as R
from hpcstudy.study import study_from_text

from .builder import Registers

ENGINES = ["reference", "dask"]


def d(iso: str) -> int:
    return int(np.datetime64(iso, "D").astype(np.int64))


INDEX = d("2012-01-01")
LAG = 365
START = INDEX + LAG               # 2012-12-31 (2012 is a leap year): the first day at risk

LAGGED = """
name: lagged
codelists:
  copd: {system: icd10, codes: [J44*]}
index: {date: 2012-01-01}
covariates: [age, sex]
outcome: {name: copd, codelist: copd}
follow_up: {start_day: 365, max_days: 1000}
"""


def lag_registers() -> Registers:
    r = Registers()
    r.person(1, "M", "1950-01-01").contact(1, "2012-06-01", "DJ441")   # outcome in the lag
    r.person(2, "F", "1950-01-01").contact(2, "2013-03-01", "DJ441")   # outcome after it
    r.person(3, "M", "1950-01-01").death(3, "2012-10-01")              # dies in the lag
    r.person(4, "F", "1950-01-01")                                     # to the 1000-day cap
    r.person(5, "M", "1950-01-01").contact(5, "2012-12-31", "DJ441")   # outcome on day 365
    r.person(6, "F", "1950-01-01").contact(6, "2012-12-30", "DJ441")   # outcome on day 364
    r.person(7, "M", "1950-01-01").move(7, "U", "2012-12-31")          # last day at risk 364
    r.person(8, "F", "1950-01-01").move(8, "U", "2013-01-01")          # last day at risk 365
    # outcome in the lag and again after it: the later one is no new outcome
    r.person(9, "M", "1950-01-01").contact(9, "2012-03-01", "DJ441").contact(
        9, "2014-01-01", "DJ449")
    return r


@pytest.fixture(scope="module")
def lag_data(tmp_path_factory):
    return lag_registers().write(tmp_path_factory.mktemp("lag") / "data", partitions=3)


def _table(text, data, engine):
    _, plan, ds = R.prepare(study_from_text(text), data)
    tables, attrition, parts = R.person_table(plan, ds, engine)
    t = R.combined(plan, tables)
    rows = {int(p): {k: int(t[k][i]) for k in ("index_date", "exit_date", "status", "time")}
            for i, p in enumerate(t["pnr"])}
    return plan, rows, attrition, parts


@pytest.mark.parametrize("engine", ENGINES)
def test_a_lag_drops_earlier_outcomes_and_time(engine, lag_data):
    _, rows, attrition, _ = _table(LAGGED, lag_data, engine)
    assert sorted(rows) == [2, 4, 5, 8]
    assert rows[2] == {"index_date": INDEX, "exit_date": d("2013-03-01"), "status": 1,
                       "time": d("2013-03-01") - START + 1}
    assert rows[4] == {"index_date": INDEX, "exit_date": INDEX + 999, "status": 0,
                       "time": 1000 - 365}
    assert rows[5] == {"index_date": INDEX, "exit_date": START, "status": 1, "time": 1}
    assert rows[8] == {"index_date": INDEX, "exit_date": START, "status": 3, "time": 1}
    steps = dict(attrition["cohort"])
    assert list(steps)[-2:] == ["no copd before day 365", "still followed on day 365"]
    assert steps["no copd before day 365"] == 6         # 1, 6, 9 leave
    assert steps["still followed on day 365"] == 4      # 3 (died), 7 (emigrated) leave


def docs_text() -> str:
    from pathlib import Path

    return (Path(__file__).resolve().parents[2] / "docs" / "time.md").read_text()


def docs_example(name: str) -> str:
    """The YAML block of docs/time.md whose first line names ``name``."""
    import re

    text = docs_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    return next(b for b in blocks if b.startswith(f"# docs/time.md: {name}"))


@pytest.mark.parametrize("engine", ENGINES)
def test_the_docs_lag_example_gives_the_hand_counts(engine, lag_data):
    """docs/time.md: person-time and events of the lagged cohort, worked out by hand."""
    text = docs_example("the lag example")
    assert "start_day: 365" in text
    plan, _, attrition, parts = _table(text, lag_data, engine)
    res = R.analyse(plan, parts, attrition)
    cohort = res["cohort"][0]
    days = (d("2013-03-01") - START + 1) + 635 + 1 + 1
    assert (cohort["persons"], cohort["events"]) == (4, 2)
    assert cohort["person_years"] == pytest.approx(days / 365.25, rel=1e-12)
    assert days == 698 and "698 days" in docs_text()     # the figure docs/time.md states


def test_without_a_lag_the_same_people_stay(lag_data):
    text = LAGGED.replace("start_day: 365, ", "")
    _, rows, attrition, _ = _table(text, lag_data, "reference")
    assert sorted(rows) == list(range(1, 10))
    assert rows[1]["status"] == 1 and rows[1]["time"] == d("2012-06-01") - INDEX + 1
    assert not any("before day" in s for s, _ in attrition["cohort"])


ENDED = """
name: ended
codelists:
  copd: {system: icd10, codes: [J44*]}
index:
  first_event: {codelist: copd}
  between: [2010-01-01, 2015-12-31]
outcome: {name: death, death: true}
follow_up: {end_date: 2012-06-30}
"""


def end_registers() -> Registers:
    r = Registers()
    r.person(1, "M", "1950-01-01").contact(1, "2011-01-01", "DJ441")   # censored at the end
    r.person(2, "F", "1950-01-01").contact(2, "2011-01-01", "DJ441").death(2, "2012-06-30")
    r.person(3, "M", "1950-01-01").contact(3, "2011-01-01", "DJ441").death(3, "2012-07-01")
    r.person(4, "F", "1950-01-01").contact(4, "2012-06-30", "DJ441")   # index on the end day
    r.person(5, "M", "1950-01-01").contact(5, "2013-01-01", "DJ441")   # index after the end
    return r


@pytest.mark.parametrize("engine", ENGINES)
def test_a_calendar_end(engine, tmp_path):
    data = end_registers().write(tmp_path / "d", partitions=2)
    _, rows, attrition, _ = _table(ENDED, data, engine)
    end = d("2012-06-30")
    assert sorted(rows) == [1, 2, 3, 4]
    assert rows[1] == {"index_date": d("2011-01-01"), "exit_date": end, "status": 0,
                       "time": end - d("2011-01-01") + 1}
    assert rows[2]["status"] == 1 and rows[2]["exit_date"] == end     # death on the end day
    assert rows[3]["status"] == 0 and rows[3]["exit_date"] == end     # the day after: none
    assert rows[4] == {"index_date": end, "exit_date": end, "status": 0, "time": 1}
    steps = attrition["cohort"]
    assert steps[-1] == ("index on or before follow_up.end_date", 4)


def test_the_new_keys_round_trip():
    s = study_from_text(LAGGED.replace("max_days: 1000", "max_days: 1000, end_date: 2015-01-01"))
    assert (s.follow_up_start, s.follow_up_end) == (365, "2015-01-01")
    import yaml

    again = study_from_text(yaml.safe_dump(s.to_dict(), sort_keys=False))
    assert again == s
