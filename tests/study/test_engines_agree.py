"""Generated studies: the reference and dask engines give the same per-person table and the
same attrition, on synthetic registers."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from hpcstudy.engines import run as R
from hpcstudy.study import study_from_text

from .strategies import studies  # the study generator, shared with test_disclosure


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


@pytest.mark.parametrize("example", ["statins_mi", "diabetes_incidence", "mi_mortality",
                                     "mi_hospitals"])
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
        b = R.combined(plan, tables)   # the tables live on the workers: fetched while they run
    a = R.combined(plan, ref)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    compare(R.analyse(plan, p_ref, att), res)
