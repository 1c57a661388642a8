"""Cox regression against lifelines and statsmodels, and across partitions."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from lifelines import CoxPHFitter
from lifelines.datasets import load_rossi

from hpcstudy.models import CoxPH, DaskPartitions, LocalPartitions, ModelError

from .data import covariates, survival_frame

RTOL = 1e-6
TIGHT = {"precision": 1e-12, "step_size": 0.95, "max_steps": 200}


def lifelines_fit(df, **kw):
    return CoxPHFitter().fit(df, "time", "event", fit_options=TIGHT, **kw)


def rel(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.maximum(np.abs(b), 1e-12))


@pytest.fixture(scope="module")
def rossi():
    return load_rossi().rename(columns={"week": "time", "arrest": "event"})


def test_rossi_efron_matches_lifelines(rossi):
    cols = [c for c in rossi.columns if c not in ("time", "event")]
    ref = lifelines_fit(rossi)
    m = CoxPH("efron").fit(rossi[cols], rossi.time, rossi.event)
    assert rel(m.coef_, ref.params_.values) < RTOL
    assert rel(m.se_, ref.standard_errors_.values) < RTOL
    assert m.loglik_ == pytest.approx(ref.log_likelihood_, rel=1e-10)
    assert m.names == cols and m.n_events_ == 114


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_rossi_matches_statsmodels_phreg(rossi, ties):
    cols = [c for c in rossi.columns if c not in ("time", "event")]
    ref = sm.PHReg(rossi.time, rossi[cols], status=rossi.event, ties=ties).fit(
        tol=1e-12, maxiter=200)
    m = CoxPH(ties).fit(rossi[cols], rossi.time, rossi.event)
    assert rel(m.coef_, ref.params) < RTOL
    assert rel(m.se_, ref.bse) < RTOL
    assert m.loglik_ == pytest.approx(ref.llf, rel=1e-9)


def test_ties_and_strata_match_both_peers():
    df = survival_frame(n=4000, strata=5, seed=1)
    cols = covariates(df)
    m = CoxPH().fit(df[cols], df.time, df.event, strata=df.stratum)
    ref = lifelines_fit(df, strata=["stratum"])
    assert rel(m.coef_, ref.params_[cols].values) < RTOL
    assert rel(m.se_, ref.standard_errors_[cols].values) < RTOL
    for ties in ("efron", "breslow"):
        sref = sm.PHReg(df.time, df[cols], status=df.event, strata=df.stratum, ties=ties).fit(
            tol=1e-12, maxiter=200)
        mm = CoxPH(ties).fit(df[cols], df.time, df.event, strata=df.stratum)
        assert rel(mm.coef_, sref.params) < RTOL and rel(mm.se_, sref.bse) < RTOL


def test_delayed_entry_matches_lifelines():
    df = survival_frame(n=4000, entry=True, seed=2)
    cols = covariates(df)
    m = CoxPH().fit(df[cols], df.time, df.event, entry=df.entry)
    ref = lifelines_fit(df, entry_col="entry")
    assert rel(m.coef_, ref.params_[cols].values) < RTOL
    assert rel(m.se_, ref.standard_errors_[cols].values) < RTOL
    assert m.loglik_ == pytest.approx(ref.log_likelihood_, rel=1e-9)


def test_delayed_entry_with_strata_and_continuous_times_matches_statsmodels():
    # Without ties on entry days the counting-process conventions of the peers agree.
    df = survival_frame(n=3000, entry=True, strata=3, integer_days=False, seed=3)
    cols = covariates(df)
    for ties in ("breslow", "efron"):
        ref = sm.PHReg(df.time, df[cols], status=df.event, entry=df.entry, strata=df.stratum,
                       ties=ties).fit(tol=1e-12, maxiter=200)
        m = CoxPH(ties).fit(df[cols], df.time, df.event, entry=df.entry, strata=df.stratum)
        assert rel(m.coef_, ref.params) < RTOL and rel(m.se_, ref.bse) < RTOL


def test_weights_match_lifelines_and_breslow_equals_repeated_rows():
    df = survival_frame(n=1500, weights=True, seed=4)
    cols = covariates(df)
    m = CoxPH().fit(df[cols], df.time, df.event, weights=df.w)
    ref = lifelines_fit(df, weights_col="w")
    assert rel(m.coef_, ref.params_[cols].values) < RTOL
    # Breslow with integer weights is the fit on repeated rows (Efron is not: it counts tied
    # rows, not weight, as R and lifelines do).
    rep = df.loc[df.index.repeat(df.w.astype(int))]
    # frequency weights: model-based errors asked for (weights default to robust errors)
    b = CoxPH("breslow", robust=False).fit(df[cols], df.time, df.event, weights=df.w)
    r = CoxPH("breslow").fit(rep[cols], rep.time, rep.event)
    assert rel(b.coef_, r.coef_) < 1e-9 and rel(b.se_, r.se_) < 1e-9


def split(df, k, seed=0):
    rng = np.random.default_rng(seed)
    which = rng.integers(0, k, len(df))
    return [df[which == i] for i in range(k)]


def parts_of(df, k, entry=False, strata=False):
    cols = covariates(df)
    out = []
    for d in split(df, k):
        part = {"X": d[cols].to_numpy(), "time": d.time.to_numpy(float),
                "event": d.event.to_numpy(float), "weights": np.ones(len(d)),
                "strata": d.stratum.to_numpy() if strata else np.zeros(len(d), np.int64)}
        if entry:
            part["entry"] = d.entry.to_numpy(float)
        out.append(part)
    return out


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_partitioned_fit_equals_single_array_fit(ties):
    df = survival_frame(n=5000, entry=True, strata=4, seed=5)
    cols = covariates(df)
    one = CoxPH(ties).fit(df[cols], df.time, df.event, entry=df.entry, strata=df.stratum)
    for k in (2, 7):
        m = CoxPH(ties).fit_partitions(LocalPartitions(parts_of(df, k, True, True)), cols)
        assert rel(m.coef_, one.coef_) < 1e-8 and rel(m.se_, one.se_) < 1e-8
        assert m.loglik_ == pytest.approx(one.loglik_, rel=1e-10)


def test_partitioned_fit_through_dask_threads_and_distributed():
    df = survival_frame(n=3000, entry=True, seed=6)
    cols = covariates(df)
    one = CoxPH().fit(df[cols], df.time, df.event, entry=df.entry)
    parts = parts_of(df, 4, entry=True)
    m = CoxPH().fit_partitions(DaskPartitions(parts), cols)
    assert rel(m.coef_, one.coef_) < 1e-8
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        m2 = CoxPH().fit_partitions(DaskPartitions(parts, client), cols)
    assert rel(m2.coef_, one.coef_) < 1e-8 and rel(m2.se_, one.se_) < 1e-8


def test_an_empty_partition_is_harmless():
    df = survival_frame(n=800, seed=7)
    cols = covariates(df)
    parts = parts_of(df, 3)
    empty = {k: v[:0] for k, v in parts[0].items()}
    one = CoxPH().fit(df[cols], df.time, df.event)
    m = CoxPH().fit_partitions(LocalPartitions([*parts, empty]), cols)
    assert rel(m.coef_, one.coef_) < 1e-8


def test_collinear_columns_are_refused_by_name():
    df = survival_frame(n=500, seed=8)
    df["x_copy"] = 2 * df.x1 - df.x2
    cols = covariates(df)
    with pytest.raises(ModelError, match=r"x1', 'x2', 'x_copy'\] are collinear"):
        CoxPH().fit(df[cols], df.time, df.event)


def test_constant_column_is_refused_by_name():
    df = survival_frame(n=500, seed=8)
    df["x_const"] = 3.0
    with pytest.raises(ModelError, match="x_const.*constant"):
        CoxPH().fit(df[covariates(df)], df.time, df.event)


def test_separation_is_an_error_not_a_silent_answer():
    df = survival_frame(n=600, seed=9)
    df["x_sep"] = 0.0
    df.loc[df.event == 0, "x_sep"] = 1.0  # nobody with x_sep = 1 ever has an event
    df.loc[df.index[:3], "x_sep"] = 1.0
    df.loc[df.index[:3], "event"] = 0
    with pytest.raises(ModelError, match="x_sep.*grow without bound"):
        CoxPH().fit(df[["x0", "x_sep"]], df.time, df.event)


def test_bad_input_is_explained():
    with pytest.raises(ModelError, match="event must be 0 or 1"):
        CoxPH().fit(np.zeros((3, 1)) + [[1], [2], [3]], [1, 2, 3], [0, 2, 1])
    with pytest.raises(ModelError, match="entry must be before duration"):
        CoxPH().fit([[1.0], [2.0], [3.0]], [1, 2, 3], [1, 1, 0], entry=[0, 2, 0])
    with pytest.raises(ModelError, match="missing or infinite"):
        CoxPH().fit([[1.0], [np.nan], [3.0]], [1, 2, 3], [1, 1, 0])
    with pytest.raises(ModelError, match="ties must be"):
        CoxPH(ties="exact")


def test_summary_reports_hazard_ratios_with_intervals(rossi):
    cols = [c for c in rossi.columns if c not in ("time", "event")]
    m = CoxPH().fit(rossi[cols], rossi.time, rossi.event)
    row = m.summary[0]
    assert row["term"] == "fin" and row["HR"] == pytest.approx(np.exp(m.coef_[0]))
    assert row["lower_95"] < row["HR"] < row["upper_95"]
    ref = lifelines_fit(rossi).summary.loc["fin"]
    assert row["p"] == pytest.approx(ref["p"], rel=1e-5)
    assert row["lower_95"] == pytest.approx(ref["exp(coef) lower 95%"], rel=1e-6)
    assert "fin" in str(m)
