"""Generated studies: the reference and dask engines give the same per-person table and the
same attrition, on synthetic registers."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcstudy.engines import run as R
from hpcstudy.study import study_from_text

CODELISTS = {
    "mi": {"system": "icd10", "codes": ["I21*"]},
    "diabetes": {"system": "icd10", "codes": ["E11*"]},
    "copd": {"system": "icd10", "codes": ["J44"]},
    "cancer": {"system": "icd10", "codes": ["C"]},
    "angina": {"system": "icd10", "codes": ["I20", "I25"]},
    "statins": {"system": "atc", "codes": ["C10AA*"]},
    "metformin": {"system": "atc", "codes": ["A10BA02"]},
    "ras": {"system": "atc", "codes": ["C09"]},
}
ICD = [k for k, v in CODELISTS.items() if v["system"] == "icd10"]
ALL = list(CODELISTS)

years = st.integers(1998, 2020)


@st.composite
def window(draw, before=True):
    if before:
        lo = draw(st.one_of(st.none(), st.integers(-5000, -1)))
        hi = draw(st.integers(lo if lo is not None else -5000, 0))
    else:
        lo = draw(st.integers(0, 30))
        hi = draw(st.one_of(st.none(), st.integers(lo, 4000)))
    return [lo, hi]


@st.composite
def events(draw, names=ALL):
    cl = draw(st.sampled_from(names))
    e = {"codelist": cl}
    if CODELISTS[cl]["system"] == "icd10":
        if draw(st.booleans()):
            e["diagnosis_type"] = draw(st.sampled_from([["A"], ["B"], ["A", "B"]]))
        if draw(st.booleans()):
            e["patient_type"] = draw(st.lists(st.sampled_from(
                ["inpatient", "outpatient", "emergency"]), min_size=1, max_size=2, unique=True))
    return e


@st.composite
def studies(draw):
    s = {"name": "generated", "seed": draw(st.integers(0, 5)), "codelists": CODELISTS}
    lo_age = draw(st.integers(0, 70))
    s["population"] = {"age": [lo_age, draw(st.integers(lo_age + 5, 110))]}
    if draw(st.booleans()):
        s["population"]["residence_years"] = draw(st.sampled_from([1, 2, 5]))
    if draw(st.booleans()):
        s["population"]["sex"] = draw(st.sampled_from(["male", "female"]))
    kind = draw(st.sampled_from(["date", "event", "exposure"]))
    y0 = draw(years)
    y1 = draw(st.integers(y0, 2021))
    between = [f"{y0}-01-01", f"{y1}-12-31"]
    if kind == "date":
        s["index"] = {"date": f"{y0}-07-01"}
    else:
        rule = {"first_event": draw(events()), "between": between}
        if draw(st.booleans()):
            rule["washout_days"] = draw(st.sampled_from([30, 365]))
        if draw(st.booleans()):
            rule["nth"] = 2
        if kind == "exposure":
            s["exposure"] = {"name": "exposed", **rule}
            s["comparator"] = {"non_users": True,
                               "censor_on_exposure": draw(st.booleans())}
        else:
            s["index"] = rule
    s["criteria"] = [{draw(st.sampled_from(["include", "exclude"])): {
        **draw(events()), "window": draw(window()),
        **({"min_count": 2} if draw(st.booleans()) else {})}}
        for _ in range(draw(st.integers(0, 2)))]
    covs = ["age", "sex", "region", "calendar_year"]
    for i in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            covs.append({"name": f"c{i}", **draw(events()), "window": draw(window())})
        else:
            covs.append({"name": f"c{i}", "count": draw(st.sampled_from(ALL +
                                                                      ["hospital_contacts"])),
                         "window": draw(window())})
    s["covariates"] = covs
    if draw(st.booleans()):
        s["outcome"] = {"name": "death", "death": True, "window": draw(window(before=False))}
    else:
        s["outcome"] = {"name": "o", **draw(events(ICD)), "window": draw(window(before=False))}
    if draw(st.booleans()):
        s["follow_up"] = {"max_days": draw(st.integers(1, 5000))}
    s["analyses"] = {"rates": {"by": ["group", "sex"]}}
    return s


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large])
@given(spec=studies())
def test_engines_agree_on_generated_studies(spec, small_data):
    study = study_from_text(yaml.safe_dump(spec))
    _, plan, ds = R.prepare(study, small_data)
    ref, att_ref, p_ref = R.person_table(plan, ds, "reference")
    dsk, att_dsk, p_dsk = R.person_table(plan, ds, "dask")
    a, b = R.combined(plan, ref), R.combined(plan, dsk)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert np.array_equal(a[k], b[k]), k
    assert att_ref == att_dsk
    assert R.analyse(plan, p_ref, att_ref)["rates"] == R.analyse(plan, p_dsk, att_dsk)["rates"]


@pytest.mark.parametrize("example", ["statins_mi", "diabetes_incidence", "mi_mortality"])
def test_examples_agree_including_estimates(example, medium_data):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / f"{example}.yaml"
    _, plan, ds = R.prepare(path, medium_data)
    ref, att, p_ref = R.person_table(plan, ds, "reference")
    dsk, _, p_dsk = R.person_table(plan, ds, "dask")
    a, b = R.combined(plan, ref), R.combined(plan, dsk)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    ra, rb = R.analyse(plan, p_ref, att), R.analyse(plan, p_dsk, att)
    compare(ra, rb)


def compare(x, y, path="results", rel=1e-8):
    if isinstance(x, dict):
        assert x.keys() == y.keys(), path
        for k in x:
            compare(x[k], y[k], f"{path}.{k}", rel)
    elif isinstance(x, list | tuple):
        assert len(x) == len(y), path
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            compare(u, v, f"{path}[{i}]", rel)
    elif isinstance(x, float):
        assert x == pytest.approx(y, rel=rel, abs=1e-12, nan_ok=True), path
    else:
        assert x == y, path


def test_dask_engine_on_a_distributed_client(small_data):
    """The same results when the partitions run on a distributed.Client's worker processes."""
    from pathlib import Path

    from distributed import Client, LocalCluster

    from hpcstudy.engines.dask_engine import DaskEngine

    path = Path(__file__).resolve().parents[2] / "examples" / "diabetes_incidence.yaml"
    _, plan, ds = R.prepare(path, small_data)
    ref, att, p_ref = R.person_table(plan, ds, "reference")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        eng = DaskEngine(client=client)
        tables, att2 = eng.person_tables(ds, plan)
        res = R.analyse(plan, eng.partitions(tables), att2)
    a, b = R.combined(plan, ref), R.combined(plan, tables)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    compare(R.analyse(plan, p_ref, att), res)
