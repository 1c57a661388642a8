"""Issue 10's attacks by a curious researcher, each as a test: model outputs that give counts
back, differences between published numbers, key columns that collapse. Each was reproduced on
the code before the fix (the numbers in the comments are what it published on ``small_data``).
Expected values come from the private per-person table or from arithmetic in the test, never
from the writer's own counts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from hpcstudy.engines import analyses as A
from hpcstudy.engines import run as R
from hpcstudy.models.partitions import LocalPartitions
from hpcstudy.outputs import checks as C
from hpcstudy.outputs import disclosure as D
from hpcstudy.outputs.gate import _parse_csv
from hpcstudy.study import study_from_text

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
M = 5

MI_30D = {
    "name": "mi_small",
    "codelists": {"mi": {"system": "icd10", "codes": ["I21*"]}},
    "population": {"age": [18, 120]},
    "index": {"first_event": {"codelist": "mi", "diagnosis_type": ["A"],
                              "patient_type": ["inpatient"]},
              "between": ["2000-01-01", "2013-12-31"]},
    "criteria": [{"exclude": {"codelist": "mi", "window": [None, -1]}}],
    "covariates": ["age", "sex"],
    "outcome": {"name": "death_30d", "death": True, "window": [0, 30]},
}


def run_study(spec: dict, data, out: Path) -> dict:
    R.run(study_from_text(yaml.safe_dump(spec)), data, out)
    return json.loads((out / "results.json").read_text())


def files_of(out: Path) -> dict:
    """Every exported file of a run as (kind, parsed data), for checks.check_run."""
    files = {"results.json": ("results", json.loads((out / "results.json").read_text())),
             "plan.txt": ("plan", (out / "plan.txt").read_text())}
    for p in sorted((out / "tables").glob("*.csv")):
        n = p.stem
        kind = ("attrition" if n.startswith("attrition") else "model" if n.startswith("model_")
                else "measure" if n.startswith("measure_") else n)
        files[f"tables/{p.name}"] = (kind, _parse_csv(p.read_text())[1])
    return files


def private(out: Path) -> dict:
    t = pq.read_table(out / "private" / "person_table.parquet").to_pydict()
    return {k: np.asarray(v) for k, v in t.items()}


def expit(x):
    return 1 / (1 + math.exp(-x))


# -- model outputs --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def intercept_only(small_data, tmp_path_factory):
    spec = {**MI_30D, "analyses": {"logistic": {"adjust": []}, "poisson": {"adjust": []}}}
    out = tmp_path_factory.mktemp("io") / "out"
    return run_study(spec, small_data, out), out


def test_intercept_only_models_give_no_small_event_count_back(intercept_only):
    res, out = intercept_only
    t = private(out)
    events = int(t["event"].sum())
    assert 0 < events < M  # the attack's premise: 69 persons, 4 deaths
    for name, m in res["models"].items():
        if "terms" not in m:
            continue  # withheld whole
        b0, se0 = m["terms"][0]["coef"], m["terms"][0]["se"]
        # logistic: n·expit(b0); Poisson: 1/se² (the code before gave 4 and 1/0.5² = 4)
        guesses = [g for g in (m.get("persons") and b0 is not None and
                               m["persons"] * expit(b0),
                               se0 and 1 / se0 ** 2) if g]
        assert all(round(g) >= M for g in guesses), (name, guesses)
    assert C.check_run(files_of(out), M) == []


@pytest.fixture(scope="module")
def statin_models(small_data, tmp_path_factory):
    spec = yaml.safe_load((EXAMPLES / "statins_mi.yaml").read_text())
    spec["analyses"] = {"poisson": {"adjust": ["metformin_last_year"]},
                        "cox": {"adjust": ["age", "metformin_last_year"]}}
    out = tmp_path_factory.mktemp("st") / "out"
    return run_study(spec, small_data, out), out


def test_a_rare_binary_covariate_is_not_given_back_by_standard_errors(statin_models):
    res, out = statin_models
    t = private(out)
    rare = t["metformin_last_year"] == 1
    exposed_events = int(t["event"][rare].sum())
    assert 0 < exposed_events < M  # the premise: a few events among metformin users
    for name, m in res["models"].items():
        terms = {r["term"]: r for r in m.get("terms", [])}
        if "intercept" in terms and "metformin_last_year" in terms:
            s0, s1 = terms["intercept"]["se"], terms["metformin_last_year"]["se"]
            # 1/(se1² − se0²) = events among the exposed (unadjusted Poisson)
            assert s0 is None or s1 is None, name
        row = terms.get("metformin_last_year")
        if row is not None:
            assert row["coef"] is None and row["se"] is None and row["withheld"]
            assert row["events"] is None and row["persons"] is None


def test_cox_terms_carry_and_are_checked_on_their_counts(statin_models):
    res, out = statin_models
    t = private(out)
    cox = res["models"]["cox"]
    assert cox["persons"] == len(t["pnr"]) and cox["events"] == int(t["event"].sum())
    statin = next(r for r in cox["terms"] if r["term"] == "statin")
    exposed = t["group"] == 1
    assert (statin["persons"], statin["events"]) == (int(exposed.sum()),
                                                     int(t["event"][exposed].sum()))
    assert (statin["persons_other"], statin["events_other"]) == (
        int((~exposed).sum()), int(t["event"][~exposed].sum()))
    age = next(r for r in cox["terms"] if r["term"] == "age")
    assert age["coef"] is not None and age["persons"] is None  # continuous: no cell
    assert C.check_run(files_of(out), M) == []


def test_a_withheld_lexis_band_is_not_given_back_by_the_model(small_data, tmp_path):
    spec = yaml.safe_load((EXAMPLES / "diabetes_incidence.yaml").read_text())
    spec["analyses"] = {"lexis": spec["analyses"]["lexis"]}
    res = run_study(spec, small_data, tmp_path / "out")
    study, plan, ds = R.prepare(study_from_text(yaml.safe_dump(spec)), small_data)
    tables, attrition, parts = R.person_table(plan, ds, "reference")
    raw = A.lexis(plan, parts)
    bands: dict = {}
    for r in raw:
        bands[("age", r["age_band"])] = bands.get(("age", r["age_band"]), 0) + r["events"]
        bands[("period", r["period"])] = bands.get(("period", r["period"]), 0) + r["events"]
    small = [k for k, e in bands.items() if 0 < e < M]
    assert small  # the premise: a band with 1 to 4 events
    terms = {r["term"]: r for r in res["lexis_model"].get("terms", [])}
    for var, band in small:
        row = terms.get(f"{var} {band}")
        assert row is None or row["se"] is None
    assert all(r.get("persons") is not None or r.get("suppressed") for r in res["lexis"])
    assert C.check_run(files_of(tmp_path / "out"), M) == []


def test_model_rules_on_hand_made_results():
    term = {"coef": 0.1, "se": 0.2, "RR": 1.1, "lower_95": 0.9, "upper_95": 1.3, "z": 0.5,
            "p": 0.6}
    base = {"persons": 100, "events": 20, "loglik": -50.0, "newton_steps": 4}
    # saturated: one indicator, 2 patterns for 2 parameters, a pattern with 3 events
    m = {**base, "terms": [{"term": "intercept", **term, **dict.fromkeys(D.TERM_COUNTS)},
                           {"term": "x", **term, "persons": 40, "events": 17,
                            "persons_other": 60, "events_other": 3}],
         "_patterns": [[60, 3], [40, 17]]}
    assert set(D.model(m, M)) == {"withheld"}
    # the complement: 11 persons with x, 10 of them with the event → 1 without
    m["terms"][1].update(persons=11, events=10, persons_other=89, events_other=10)
    m["terms"].append({"term": "age", **term, **dict.fromkeys(D.TERM_COUNTS)})
    m["_patterns"] = None
    out = D.model(m, M)
    x = next(r for r in out["terms"] if r["term"] == "x")
    assert x["withheld"] and x["coef"] is None and x["persons"] is None
    assert next(r for r in out["terms"] if r["term"] == "intercept")["se"] is None
    assert next(r for r in out["terms"] if r["term"] == "age")["se"] == 0.2
    assert "_patterns" not in out
    # a model with 3 events overall is withheld whole
    assert set(D.model({**base, "events": 3, "terms": []}, M)) == {"withheld"}
    # levels of one categorical go together
    m = {**base, "_variables": {"region=2": "region", "region=3": "region"},
         "terms": [{"term": "region=2", **term, "persons": 30, "events": 2,
                    "persons_other": 70, "events_other": 18},
                   {"term": "region=3", **term, "persons": 30, "events": 9,
                    "persons_other": 70, "events_other": 11},
                   {"term": "age", **term, **dict.fromkeys(D.TERM_COUNTS)}]}
    out = D.model(m, M)
    assert [r.get("withheld") is not None for r in out["terms"]] == [True, True, False]


# -- differences between published numbers ------------------------------------------------------
def test_attrition_differences_across_withheld_steps_and_the_cohort_table():
    steps = [{"step": s, "persons": n} for s, n in
             zip("abcde", [720, 707, 705, 704, 703], strict=True)]
    # the cohort table publishes 703: 707 two steps earlier would give 4 excluded
    out = D.attrition(steps, M, last_elsewhere=True)
    shown = [r["persons"] for r in out[:-1] if r["persons"] is not None] + [703]
    assert all(a - b == 0 or a - b >= M for a, b in zip(shown, shown[1:], strict=False))
    assert out[0]["persons"] == 720
    # without the cohort row the last step is withheld too
    assert D.attrition(steps, M, last_elsewhere=False)[-1]["persons"] is None
    # the checker finds the same leak in files made without the rule
    bad = [{"step": "a", "persons": 707}, {"step": "b", "persons": None},
           {"step": "c", "persons": None}]
    cohort = [{"label": "cohort", "persons": 703, "events": 40}]
    v = C.check_run({"tables/attrition_cohort.csv": ("attrition", bad),
                     "tables/cohort.csv": ("cohort", cohort)}, M)
    assert any("4 persons left" in x for x in v), v


def _part(n, seed):
    rng = np.random.default_rng(seed)
    return {"pnr": np.arange(n), "event": (rng.random(n) < 0.3).astype(np.int8),
            "time": rng.integers(30, 3000, n).astype(float), "group": np.ones(n, np.int8),
            "events": (rng.random(n) < 0.5).astype(np.int8),
            "region": rng.choice([1081, 1082, 1083], n)}


def test_a_covariate_called_events_does_not_collapse_the_keys():
    part = _part(400, 1)
    part["region"][:3] = 1084  # a region of 3 persons
    rows = A.rates(LocalPartitions([part]), ("region", "events"))
    assert {"region", "by_events", "events", "persons"} <= set(rows[0])
    assert len({(r["region"], r["by_events"]) for r in rows}) == len(rows)
    res = R._disclosed({"attrition": {}, "cohort": [], "rates": rows}, M)
    hidden = [r for r in res["rates"] if r["persons"] is None]
    assert any(r["region"] == 1084 for r in hidden)
    assert C.check_kind("rates", res["rates"], M, "rates") == []
    # the code before: keys from every non-count column, "events" lost among the counts, so a
    # lone withheld cell stood in its region's total (34 and 2 recovered by subtraction)
    for region in {r["region"] for r in res["rates"]}:
        n_hidden = sum(r["persons"] is None for r in res["rates"] if r["region"] == region)
        assert n_hidden != 1


def test_complements_of_proportions_are_withheld():
    rows = [{"region": 1, "persons": 11, "events": 10}, {"region": 2, "persons": 20,
                                                          "events": 20},
            {"region": 3, "persons": 40, "events": 12}, {"region": 4, "persons": 50,
                                                          "events": 15}]
    out = D.suppress(rows, M, ("proportion",), keys=("region",))
    assert out[0]["persons"] is None and out[1]["persons"] is None  # 1 survivor; 0 survivors
    assert C.check_kind("measure", out, M, "m") == []
    planted = [dict(r) for r in rows]
    v = C.check_kind("measure", planted, M, "m")
    assert any("leave 1 without" in x for x in v) and any("all 20" in x for x in v)


def test_lexis_rows_need_persons_and_derived_columns_go_with_counts():
    rows = [{"group": 0, "age_band": "40-50", "period": "2000-2004", "events": 6,
             "person_years": 3.1, "rate_per_1000py": 1935.0, "lower_95": 1, "upper_95": 2}]
    assert any("'persons' missing" in x for x in C.check_kind("lexis", rows, M, "l"))
    rows = [{"label": "a", "persons": None, "events": None, "person_years": 10.0,
             "rate_per_1000py": 300.0, "lower_95": None, "upper_95": None},
            {"label": "b", "persons": None, "events": None, "person_years": None,
             "rate_per_1000py": None, "lower_95": None, "upper_95": None}]
    assert any("'person_years': shown for a withheld row" in x
               for x in C.check_kind("cohort", rows, M, "c"))


def test_one_count_withheld_in_one_file_and_shown_in_another_is_caught():
    shown = [{"label": "a", "persons": 40, "events": 7}, {"label": "b", "persons": 50,
                                                          "events": 9}]
    hidden = [{"label": "a", "persons": None, "events": None},
              {"label": "b", "persons": None, "events": None}]
    v = C.check_run({"results.json": ("results", {"attrition": {}, "cohort": hidden}),
                     "tables/cohort.csv": ("cohort", shown)}, M)
    assert any("shows what" in x for x in v), v
    # a model's totals minus the published cohort rows
    res = {"attrition": {}, "cohort": [{"label": "a", "persons": 40, "events": 7},
                                       {"label": "b", "persons": None, "events": None}],
           "models": {"cox": {"persons": 43, "events": 9, "terms": []}}}
    v = C.check_kind("results", res, M, "results.json")
    assert any("by subtraction" in x for x in v), v


# -- random studies: nothing recoverable from any file, or any pair of files ---------------------
from study.test_engines_agree import studies  # noqa: E402  (reuse the study generator)


def own_interval(rows, hidden, keys, i, field):
    """The feasible interval of a hidden cell given every margin over subsets of ``keys`` and
    the published cells: the test's own LP (one variable per hidden cell, one field)."""
    import itertools

    h = [j for j, x in enumerate(hidden) if x]
    A_, b_ = [], []
    keys = [k for k in keys if len({r[k] for r in rows}) > 1]  # one value: no key
    for size in range(len(keys)):
        for sub in itertools.combinations(keys, size):
            groups: dict = {}
            for j in range(len(rows)):
                groups.setdefault(tuple(rows[j][k] for k in sub), []).append(j)
            for all_members in groups.values():
                members = [j for j in all_members if hidden[j]]
                if len(all_members) < 2 or not members:
                    continue  # a total of one row is the row itself
                A_.append([1.0 if j in members else 0.0 for j in h])
                b_.append(float(sum(rows[j][field] for j in members)))
    c = np.zeros(len(h))
    c[h.index(i)] = 1
    lo = linprog(c, A_eq=A_, b_eq=b_, bounds=(0, None), method="highs")
    hi = linprog(-c, A_eq=A_, b_eq=b_, bounds=(0, None), method="highs")
    return lo.fun, (-hi.fun if hi.status == 0 else math.inf)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(spec=studies(), min_cell=st.sampled_from([5, 11]))
def test_random_runs_leak_no_withheld_cell(spec, min_cell, small_data, tmp_path):
    spec = {**spec, "disclosure": {"min_cell": min_cell},
            "analyses": {"rates": {"by": ["group", "sex", "region"]}, "curves": True,
                         "measures": [{"name": "m", "by": ["region", "sex"]}]}}
    # (models are left out: on some generated cohorts the Cox fit overflows in exp, a model
    # fault outside disclosure; the model rules have their own tests above)
    out = tmp_path / f"o{abs(hash(yaml.safe_dump(spec))) % 10**8}"
    study = study_from_text(yaml.safe_dump(spec))
    R.run(study, small_data, out)
    assert C.check_run(files_of(out), min_cell) == []
    # each withheld sensitive cell, with the true counts, against every margin
    _, plan, ds = R.prepare(study, small_data)
    _, attrition, parts = R.person_table(plan, ds, "reference")
    raw = R.analyse(plan, parts, attrition)
    res = json.loads((out / "results.json").read_text())
    tables = [("rates", raw.get("rates"), res.get("rates")),
              *[("measure", raw["measures"][k], res["measures"][k]) for k in res["measures"]]]
    for kind, truth, shown in tables:
        if not truth:
            continue
        keys = [k for k in truth[0] if k not in C.OWN_COLUMNS[kind]]
        hidden = [r["persons"] is None for r in shown]
        if all(hidden):
            continue  # withheld whole: its total is small, and withheld wherever it appears
        for i, r in enumerate(truth):
            for f in ("persons", "events"):
                if hidden[i] and 0 < r[f] < min_cell:
                    lo, hi = own_interval(truth, hidden, keys, i, f)
                    assert lo <= 1e-9 and hi >= min_cell - 1e-9, (kind, i, f, lo, hi)


# -- a covariate of two values that are not 0 and 1 (found by an outside attacker) ---------------
TWO_VALUES = {
    "name": "pop_s",
    "codelists": {"cv": {"system": "icd10", "codes": ["I*", "E*", "C*", "J*"]}},
    "population": {"age": [40, 100]},
    "index": {"date": "2005-01-01"},
    "criteria": [{"include": {"codelist": "cv", "window": [-365, 0]}},
                 {"exclude": {"codelist": "cv", "window": [-365, 0], "min_count": 3}}],
    "covariates": ["age", {"name": "x", "count": "cv", "window": [-365, 0]}],
    "outcome": {"name": "death", "death": True},
    "follow_up": {"max_days": 365},
    "analyses": {"poisson": {"adjust": ["x"]}, "logistic": {"adjust": ["x"]}},
}


def test_a_count_covariate_of_two_values_is_a_table_too(tmp_path):
    """x takes only the values 1 and 2: not an indicator, yet the model is the 2 × 2 table
    behind it. The attack (3 000 persons, seed 5): se(x)² = 1/E1 + 1/E2 and
    se(b0)² = 4/E1 + 1/E2 gave E1 = 4 and E2 = 3 exactly, and the logistic fit both arms'
    persons. Every published Poisson estimate must now leave E1 and E2 unknown."""
    from hpcstudy.registers.generate import generate

    data = tmp_path / "d"
    generate(data, 3000, 5, 2, jobs=1)
    res = run_study(TWO_VALUES, data, tmp_path / "out")
    t = private(tmp_path / "out")
    xs = sorted(set(t["x"].tolist()))
    events = [int(t["event"][t["x"] == v].sum()) for v in xs]
    assert xs == [1, 2] and any(0 < e < M for e in events), (xs, events)   # the premise
    for name in ("poisson", "logistic"):
        m = res["models"][name]
        published = [r for r in m.get("terms", []) if r.get("se") is not None]
        if name == "poisson" and len(published) == 2:   # the attack, by hand
            v0, v1 = published[0]["se"] ** 2, published[1]["se"] ** 2
            e1 = 3 / (v0 - v1)                 # v0 − v1 = 3/E1
            assert round(e1) != events[0], ("E1 recovered", e1)
        assert "withheld" in m or len(published) < 2, (name, m)
