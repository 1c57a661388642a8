"""The penalised propensity score (``propensity.penalty``: L2, intercept unpenalised) fitted by
Newton steps on partition sums, against scikit-learn on the gathered rows; and on the device
stand-in, where no row reaches the host."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from hpcstudy.designs import propensity as P
from hpcstudy.engines import run as R
from hpcstudy.models.partitions import LocalPartitions

from .test_designs import study

COVARIATES = ["age", "sex", "region", "diabetes", "charlson"]


@pytest.fixture(scope="module")
def cohort(small_data):
    """The cohort before the design (three partitions) and its rows as one frame."""
    _, bare, ds = R.prepare(study(), small_data)
    tables, _, _ = R.person_table(bare, ds, "dask")
    return ds, tables, pd.DataFrame(R.combined(bare, tables))


def gathered(df):
    regions = sorted(df.region.unique())[1:]
    X = np.column_stack([df.age, df.sex] + [(df.region == r).astype(float) for r in regions] +
                        [df.diabetes, df.charlson])
    return X, (df.group == 1).astype(int).to_numpy()


@pytest.mark.parametrize("penalty", [0.5, 10.0, 1000.0])
def test_penalised_score_equals_scikit_learn_on_the_gathered_rows(penalty, cohort, small_data):
    ds, tables, df = cohort
    s = study(propensity={"covariates": COVARIATES, "penalty": penalty})
    _, plan, _ = R.prepare(s, small_data)
    names, _, coef = P.fit(plan, LocalPartitions(tables), "t")
    X, y = gathered(df)
    ref = LogisticRegression(C=1.0 / penalty, solver="newton-cholesky", tol=1e-12,
                             max_iter=500).fit(X, y)
    expect = np.concatenate([ref.intercept_, ref.coef_[0]])
    np.testing.assert_allclose(coef, expect, rtol=1e-6, atol=1e-9)
    # and the penalty matters: the unpenalised fit is elsewhere
    free = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12).fit(X, y)
    assert np.max(np.abs(coef[1:] - free.coef_[0])) > 1e-4
    assert names[:2] == ["age", "sex"]


def test_a_heavy_penalty_fits_where_the_unpenalised_score_separates(cohort, small_data):
    """A covariate that separates the arms stops the unpenalised fit; with a penalty the fit
    has a finite maximum and equals scikit-learn's (no 'grow without bound' check)."""
    ds, tables, df = cohort
    parts = [dict(t, sep=(t["group"] == 1).astype(float)) for t in tables]
    X = np.column_stack([df.age, (df.group == 1).astype(float)])
    y = (df.group == 1).astype(int).to_numpy()
    from hpcstudy.models import Logistic

    def design(t):
        Xp = np.column_stack([np.ones(t["age"].shape[0]), t["age"], t["sep"]])
        return {"X": Xp, "y": t["sep"], "weights": np.ones(Xp.shape[0])}

    m = Logistic(robust=False, penalty=0.01).fit_partitions(
        LocalPartitions([design(t) for t in parts]), ["intercept", "age", "sep"])
    ref = LogisticRegression(C=100.0, solver="newton-cholesky", tol=1e-12,
                             max_iter=500).fit(X, y)
    np.testing.assert_allclose(m.coef_, np.concatenate([ref.intercept_, ref.coef_[0]]),
                               rtol=1e-6)
    assert abs(m.coef_[2]) > 10   # large, and finite


def test_penalised_score_on_the_device_stand_in_moves_no_rows(cohort, small_data):
    """On stand-in partitions the penalised fit gets the CPU's coefficients to 1e-10, and
    each partition sends to the host only sums: (1 + p + p²) numbers a Newton step."""
    from hpcstudy.devices import get_device

    ds, tables, df = cohort
    s = study(propensity={"covariates": COVARIATES, "penalty": 0.5})
    _, plan, _ = R.prepare(s, small_data)
    _, _, cpu = P.fit(plan, LocalPartitions(tables), "t")
    dev = get_device("standin")
    parts = LocalPartitions([{k: dev.to_device(v) for k, v in t.items()} for t in tables],
                            device="standin")
    dev.transfers.reset()
    _, _, got = P.fit(plan, parts, "t")
    np.testing.assert_allclose(got, cpu, rtol=1e-10, atol=1e-12)
    # per partition and call: the column sums, then (1 + p + p²) numbers a Newton step
    p = len(got)
    t = dev.transfers
    assert t.to_host_calls <= len(tables) * 12, t
    assert t.to_host_bytes <= t.to_host_calls * (1 + p + p * p) * 8, t
    assert min(v["pnr"].shape[0] for v in tables) * 8 > (1 + p + p * p) * 8   # rows are more
