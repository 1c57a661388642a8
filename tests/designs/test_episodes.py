"""As-treated follow-up: a spec table of hand-made persons, each with its episode end worked out
by hand from the rules in docs/comparative.md, run on both engines (and the partition engine on
the stand-in device); the kernel against a plain loop on random dispensings; bad keys refused."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import run_cli

from hpcstudy.designs import episodes as E
from hpcstudy.devices import get_device
from hpcstudy.engines import partition
from hpcstudy.engines import run as R
from hpcstudy.study import StudyErrors, study_from_text
from tests.study.builder import Registers


def d(iso: str) -> int:
    return int(np.datetime64(iso, "D").astype(np.int64))


SGLT2, DPP4, GLP1 = "A10BK01", "A10BH01", "A10BJ02"

STUDY = {
    "name": "as_treated_spec", "seed": 1,
    "codelists": {"sglt2": {"system": "atc", "codes": ["A10BK"]},
                  "dpp4": {"system": "atc", "codes": ["A10BH"]},
                  "glp1": {"system": "atc", "codes": ["A10BJ"]},
                  "hf": {"system": "icd10", "codes": ["I50"]}},
    "exposure": {"name": "sglt2", "first_event": {"codelist": "sglt2"},
                 "between": ["2014-01-01", "2020-12-31"], "washout_days": 365},
    "comparator": {"active": {"first_event": {"codelist": "dpp4"},
                              "between": ["2014-01-01", "2020-12-31"], "washout_days": 365},
                   "both_arms": "first"},
    "covariates": ["age", "sex"],
    "outcome": {"name": "hf", "codelist": "hf"},
    "follow_up": {"as_treated": {"grace_days": 15, "add_on": ["glp1"]}},
}


def registers() -> Registers:
    """Dispensings of 30 DDDs a pack (volume 30) unless said; grace 15 days; 1 DDD a day."""
    r = Registers()
    for p in range(1, 15):
        r.person(p, "M" if p % 2 else "F", "1950-01-01")
    # 1: refills on the day the supply runs out: covered to 03-31; + 15
    r.rx(1, "2015-01-01", SGLT2, volume=30).rx(1, "2015-01-31", SGLT2, volume=30)
    r.rx(1, "2015-03-02", SGLT2, volume=30)
    # 2: an early refill: stockpiled, covered 01-01..03-01; without stockpiling to 02-09
    r.rx(2, "2015-01-01", SGLT2, volume=30).rx(2, "2015-01-11", SGLT2, volume=30)
    # 3: a gap of exactly 15 days (01-31..02-14 uncovered): the episode goes on to 03-16
    r.rx(3, "2015-01-01", SGLT2, volume=30).rx(3, "2015-02-15", SGLT2, volume=30)
    # 4: a gap of 16 days: the episode ended on 01-30 (+ 15); the later refill is not in it
    r.rx(4, "2015-01-01", SGLT2, volume=30).rx(4, "2015-02-16", SGLT2, volume=30)
    # 5: switches to a DPP-4 inhibitor on 02-01 while covered to 03-31 (apk 3)
    r.rx(5, "2015-01-01", SGLT2, apk=3, volume=30).rx(5, "2015-02-01", DPP4, volume=30)
    # 6: adds a GLP-1 agonist on 02-10 while covered to 03-31
    r.rx(6, "2015-01-01", SGLT2, apk=3, volume=30).rx(6, "2015-02-10", GLP1, volume=30)
    # 7: heart failure within the episode
    r.rx(7, "2015-01-01", SGLT2, volume=30).contact(7, "2015-01-20", "DI500")
    # 8: heart failure after the episode ended: not counted as-treated (counted by ITT)
    r.rx(8, "2015-01-01", SGLT2, volume=30).contact(8, "2015-06-01", "DI500")
    # 9: DPP-4 (comparator), one pack of 98 DDDs; starts SGLT2 a year later (after the episode)
    r.rx(9, "2015-01-01", DPP4, volume=98).rx(9, "2016-01-01", SGLT2, volume=30)
    # 10: 45.5 DDDs: 45 days of supply (rounded down): covered to 02-14
    r.rx(10, "2015-01-01", SGLT2, volume=45.5)
    # 11: two packs the same day as two dispensings: 60 days stockpiled, to 03-01
    r.rx(11, "2015-01-01", SGLT2, volume=30).rx(11, "2015-01-01", SGLT2, volume=30)
    # 12: dies within the episode
    r.rx(12, "2015-01-01", SGLT2, apk=2, volume=30).death(12, "2015-02-01")
    # 13: DPP-4 with a switch to SGLT2 within the episode (censored the day before)
    r.rx(13, "2015-01-01", DPP4, volume=98).rx(13, "2015-03-01", SGLT2, volume=30)
    # 14: three early refills stockpiled (4 × 30 days = 01-01..04-30), then one 20 days late
    for day in ("2015-01-01", "2015-01-10", "2015-01-20", "2015-02-01"):
        r.rx(14, day, SGLT2, volume=30)
    r.rx(14, "2015-05-21", SGLT2, volume=30)
    return r


# (person) -> (exit day, status) by hand: the last covered day + 15 (status 5), the day
# before a switch (6) or add-on (7), the outcome (1), death (2)
EXPECT = {
    1: ("2015-04-15", 5), 2: ("2015-03-16", 5), 3: ("2015-03-31", 5), 4: ("2015-02-14", 5),
    5: ("2015-01-31", 6), 6: ("2015-02-09", 7), 7: ("2015-01-20", 1), 8: ("2015-02-14", 5),
    9: ("2015-04-23", 5), 10: ("2015-03-01", 5), 11: ("2015-03-16", 5), 12: ("2015-02-01", 2),
    13: ("2015-02-28", 6),
    # stockpiled to 04-30: the refill on 05-21 leaves a gap of 20 > 15 days: 04-30 + 15
    14: ("2015-05-15", 5),
}
# without stockpiling each supply starts on its dispensing day: 14 is covered to 02-01 + 29
NO_STOCKPILE = {2: ("2015-02-24", 5), 11: ("2015-02-14", 5), 14: ("2015-03-17", 5)}
# person 5 also started DPP-4: both_arms first keeps them in the SGLT2 arm only; 9, 13 are DPP-4
COMPARATOR = {9, 13}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return registers().write(tmp_path_factory.mktemp("episodes") / "data")


def _rows(spec: dict, data, engine: str) -> dict:
    s = study_from_text(yaml.safe_dump(spec))
    _, plan, ds = R.prepare(s, data)
    tables, _, _ = R.person_table(plan, ds, engine)
    t = R.combined(plan, tables)
    return {int(p): (int(t["exit_date"][i]), int(t["status"][i]), int(t["group"][i]),
                     int(t["time"][i]))
            for i, p in enumerate(t["pnr"])}


@pytest.mark.parametrize("engine", ["reference", "dask"])
def test_episode_ends_by_hand(engine, data):
    rows = _rows(STUDY, data, engine)
    assert set(rows) == set(EXPECT)
    for p, (day, status) in EXPECT.items():
        exit_, st, group, time = rows[p]
        assert (exit_, st) == (d(day), status), p
        assert group == (0 if p in COMPARATOR else 1), p
        assert time == d(day) - d("2015-01-01") + 1, p


@pytest.mark.parametrize("engine", ["reference", "dask"])
def test_without_stockpiling(engine, data):
    spec = yaml.safe_load(yaml.safe_dump(STUDY))
    spec["follow_up"]["as_treated"]["stockpile"] = False
    rows = _rows(spec, data, engine)
    for p, (day, status) in {**EXPECT, **NO_STOCKPILE}.items():
        assert rows[p][:2] == (d(day), status), p


def test_options_switch_off_and_units(data):
    spec = yaml.safe_load(yaml.safe_dump(STUDY))
    # no switch, no add-on: 5 and 6 followed to their episode end (03-31 + 15); 13 to its
    spec["follow_up"]["as_treated"] = {"grace_days": 15, "switch": False}
    rows = _rows(spec, data, "dask")
    assert rows[5][:2] == rows[6][:2] == (d("2015-04-15"), 5)
    assert rows[13][:2] == (d("2015-04-23"), 5)
    # units: 100 units a pack (the builder's packsize), 4 a day: 25 days of supply
    spec["follow_up"]["as_treated"] = {"supply": "units", "per_day": 4, "grace_days": 0,
                                       "add_on": ["glp1"]}
    for engine in ("reference", "dask"):
        rows = _rows(spec, data, engine)
        assert rows[10][:2] == (d("2015-01-25"), 5), engine
        assert rows[4][:2] == (d("2015-01-25"), 5), engine


def test_intention_to_treat_stays_the_default(data):
    spec = yaml.safe_load(yaml.safe_dump(STUDY))
    del spec["follow_up"]
    rows = _rows(spec, data, "dask")
    assert rows[8][:2] == (d("2015-06-01"), 1)   # the outcome after the episode counts
    assert {st for _, st, _, _ in rows.values()} <= {0, 1, 2}
    # the shorthand follow_up: as_treated is as_treated: true (grace 30 days)
    spec["follow_up"] = "as_treated"
    rows = _rows(spec, data, "dask")
    assert rows[10][:2] == (d("2015-02-14") + 30, 5)


def test_partition_engine_on_the_standin_device(data):
    s = study_from_text(yaml.safe_dump(STUDY))
    _, plan, ds = R.prepare(s, data)
    dev = get_device("standin")
    got = {}
    for part in range(ds.partitions):
        loaded = partition.load(str(data), part, plan.reads, dev)
        t, _ = partition.person_table(loaded, plan, dev)
        got.update({int(p): (int(e), int(st)) for p, e, st in
                    zip(t["pnr"], t["exit_date"], t["status"], strict=True)})
    assert got == {p: (d(day), st) for p, (day, st) in EXPECT.items()}


def _loop(rows, days, supply, n, grace, stockpile):
    """The rule dispensing by dispensing, per person."""
    out = np.full(n, 2**31 - 1, np.int64)
    for p in range(n):
        sel = rows == p
        if sel.any():
            out[p] = E._last_day_exposed(days[sel], supply[sel], grace, stockpile)
    return out


@pytest.mark.parametrize("stockpile", [True, False])
def test_kernel_equals_the_loop_on_random_dispensings(stockpile):
    rng = np.random.default_rng(7)
    n, m = 60, 900
    rows = np.sort(rng.integers(0, n, m))
    days = np.zeros(m, np.int64)
    for p in range(n):   # sorted days per person, with ties, early refills and long gaps
        sel = rows == p
        days[sel] = np.sort(rng.integers(0, 2000, sel.sum()))
    supply = rng.integers(1, 120, m)
    for name in ("cpu", "standin"):
        dev = get_device(name)
        got = dev.to_host(E.episode_last_days(dev.xp, dev.to_device(rows), dev.to_device(days),
                                              dev.to_device(supply), n, 20, stockpile))
        np.testing.assert_array_equal(got, _loop(rows, days, supply, n, 20, stockpile))


BAD = [
    ({"grace_days": -1}, "follow_up.as_treated.grace_days: must be a whole number"),
    ({"grace_dayz": 3}, "follow_up.as_treated.grace_dayz: unknown field — did you mean "
                        "'grace_days'?"),
    ({"per_day": 0}, "follow_up.as_treated.per_day: must be a number above 0"),
    ({"supply": "dd"}, "follow_up.as_treated.supply: must be one of ddd | units"),
    ({"add_on": ["hf"]}, "follow_up.as_treated.add_on: hf holds icd10 codes"),
    ({"add_on": ["glp"]}, "did you mean 'glp1'?"),
    ({"episode_end": False, "switch": False},
     "follow_up.as_treated: censors at nothing"),
]


@pytest.mark.parametrize("options,message", BAD, ids=[str(o) for o, _ in BAD])
def test_bad_options_name_file_line_and_fix(options, message):
    spec = yaml.safe_load(yaml.safe_dump(STUDY))
    spec["follow_up"]["as_treated"] = options
    with pytest.raises(StudyErrors) as e:
        study_from_text(yaml.safe_dump(spec, sort_keys=False), "s.yaml")
    line = next(x for x in e.value.lines() if message in x)
    assert line.startswith("s.yaml:") and " — " in line    # file:line, and a fix


def test_bad_input_on_the_command_line_one_line_exit_2(tmp_path, data):
    spec = yaml.safe_load(yaml.safe_dump(STUDY))
    spec["exposure"]["first_event"] = {"codelist": "hf"}
    spec["comparator"] = {"non_users": True}
    spec["follow_up"]["as_treated"] = {"switch": True, "grace_days": "a month"}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec, sort_keys=False))
    r = run_cli("check", str(f), "--data", str(data))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    err = r.stderr
    assert "exposure is not a first dispensing (register lmdb)" in err
    assert "follow_up.as_treated.switch: a switch is to the other arm's drug: the study has " \
        "no active comparator" in err
    assert "follow_up.as_treated.grace_days: must be a whole number" in err
    assert all(x.startswith(("hpcstudy: error:", f"{f}:")) or not x.strip()
               for x in err.splitlines()), err
