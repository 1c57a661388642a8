"""Clustered robust (sandwich) errors against lifelines, statsmodels and a dense hand computation;
the same numbers over any partitioning."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from lifelines import CoxPHFitter

from hpcstudy.models import CoxPH, LocalPartitions, Logistic, Poisson

from .data import covariates, survival_frame

# statsmodels warns that clustered errors with var_weights are "not fully supported"; its
# sandwich with var_weights is the textbook one (score w·(y − μ)·x), which is what we compare
SM_WEIGHTS_WARNING = "cov_type not fully supported"
TIGHT = {"precision": 1e-12, "step_size": 0.95, "max_steps": 200}


def rel(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.maximum(np.abs(b), 1e-12))


def clustered(df, seed=1, persons=None):
    """Rows grouped into persons of 1–3 rows each."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, len(df))
    ids = np.repeat(np.arange(len(df)), sizes)[:len(df)]
    return df.assign(pnr=1000 + ids * 7)


def test_cox_clustered_weighted_matches_lifelines():
    # continuous times: no ties, where lifelines' residuals are defined
    df = clustered(survival_frame(n=800, p=3, seed=3, integer_days=False, weights=True))
    cols = covariates(df)
    ref = CoxPHFitter().fit(df[[*cols, "time", "event", "w", "pnr"]], "time", "event",
                            weights_col="w", cluster_col="pnr", robust=True, fit_options=TIGHT)
    m = CoxPH().fit(df[cols], df.time, df.event, weights=df.w, cluster=df.pnr)
    assert m.robust_ and m.n_clusters_ == df.pnr.nunique()
    assert rel(m.coef_, ref.params_.values) < 1e-6
    assert rel(m.se_, ref.standard_errors_.values) < 1e-6
    # the model-based errors differ: the robust ones are not a relabelling
    assert rel(m.naive_se_, m.se_) > 1e-3


def test_cox_robust_without_cluster_matches_lifelines_robust():
    df = survival_frame(n=600, p=2, seed=5, integer_days=False)
    cols = covariates(df)
    ref = CoxPHFitter().fit(df[[*cols, "time", "event"]], "time", "event", robust=True,
                            fit_options=TIGHT)
    m = CoxPH(robust=True).fit(df[cols], df.time, df.event)
    assert rel(m.se_, ref.standard_errors_.values) < 1e-6


def dense_cox_scores(X, t, d, w, beta, entry=None, ties="efron"):
    """Lin–Wei score residuals, Efron-weighted, by explicit loops over event times."""
    n, p = X.shape
    entry = np.full(n, -np.inf) if entry is None else entry
    r = np.exp(X @ beta)
    W = np.zeros((n, p))
    for tau in np.unique(t[d == 1]):
        at_risk = (entry < tau) & (t >= tau)
        dead = at_risk & (t == tau) & (d == 1)
        m = dead.sum()
        meanwt = w[dead].sum() / m
        S0 = (w * r)[at_risk].sum()
        S1 = ((w * r)[:, None] * X)[at_risk].sum(0)
        E0 = (w * r)[dead].sum()
        E1 = ((w * r)[:, None] * X)[dead].sum(0)
        ks = range(m) if ties == "efron" else [0] * m
        xbars = []
        for k in ks:
            f = k / m if ties == "efron" else 0.0
            den = S0 - f * E0
            xbar = (S1 - f * E1) / den
            xbars.append(xbar)
            rho = np.where(dead, 1 - f, 1.0) * at_risk
            W -= (meanwt / den) * (rho * r)[:, None] * (X - xbar)
        W[dead] += X[dead] - np.mean(xbars, axis=0)
    return W * w[:, None]


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_ties_entry_strata_free_matches_dense_sandwich(ties):
    df = clustered(survival_frame(n=500, p=3, seed=7, entry=True, weights=True), seed=2)
    cols = covariates(df)
    m = CoxPH(ties, robust=True).fit(df[cols], df.time, df.event, entry=df.entry,
                                     weights=df.w, cluster=df.pnr)
    X = df[cols].to_numpy()
    W = dense_cox_scores(X, df.time.to_numpy(), df.event.to_numpy(), df.w.to_numpy(), m.coef_,
                         df.entry.to_numpy(), ties)
    Uc = pd.DataFrame(W).groupby(df.pnr.to_numpy()).sum().to_numpy()
    np.testing.assert_allclose(W.sum(0), 0, atol=1e-6)       # the score at the maximum
    bread = np.linalg.inv(m.information_)
    expect = np.sqrt(np.diag(bread @ Uc.T @ Uc @ bread))
    assert rel(m.se_, expect) < 1e-8


def test_cox_breslow_ties_match_statsmodels_phreg():
    df = clustered(survival_frame(n=700, p=2, seed=11), seed=4)
    cols = covariates(df)
    ref = sm.PHReg(df.time, df[cols], status=df.event, ties="breslow").fit(
        groups=df.pnr.to_numpy())
    m = CoxPH("breslow").fit(df[cols], df.time, df.event, cluster=df.pnr)
    assert m.robust_   # persons with several rows: robust by default
    assert rel(m.coef_, ref.params) < 1e-6
    assert rel(m.se_, ref.bse) < 1e-6


def split(part: dict, clusters, k: int) -> LocalPartitions:
    """Rows split into k partitions by cluster (persons never cross partitions)."""
    which = np.asarray(clusters) % k
    return LocalPartitions([{key: v[which == i] for key, v in part.items()} for i in range(k)])


def test_cox_robust_same_over_partitions():
    df = clustered(survival_frame(n=900, p=3, seed=13, entry=True, strata=3, weights=True))
    cols = covariates(df)
    one = CoxPH(robust=True).fit(df[cols], df.time, df.event, entry=df.entry,
                                 strata=df.stratum, weights=df.w, cluster=df.pnr)
    part = {"X": df[cols].to_numpy(), "time": df.time.to_numpy(float),
            "event": df.event.to_numpy(float), "entry": df.entry.to_numpy(float),
            "strata": df.stratum.to_numpy(np.int64), "weights": df.w.to_numpy(float),
            "cluster": df.pnr.to_numpy()}
    many = CoxPH(robust=True).fit_partitions(split(part, df.pnr, 4), cols)
    np.testing.assert_allclose(many.se_, one.se_, rtol=1e-10)
    np.testing.assert_allclose(many.coef_, one.coef_, rtol=1e-10)


def glm_frame(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"x0": rng.random(n) < 0.4, "x1": rng.normal(size=n),
                       "x2": rng.normal(size=n)}).astype(float)
    eta = -1 + 0.7 * df.x0 - 0.4 * df.x1
    df["y"] = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    df["t"] = rng.uniform(0.2, 3, n)
    df["k"] = rng.poisson(df.t * np.exp(eta))
    df["w"] = rng.uniform(0.3, 4, n)
    return clustered(df, seed)


@pytest.mark.parametrize("weighted", [False, True])
def test_logistic_cluster_matches_statsmodels(weighted):
    df = glm_frame(seed=1)
    X = sm.add_constant(df[["x0", "x1", "x2"]])
    kw = {"var_weights": df.w} if weighted else {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", SM_WEIGHTS_WARNING)
        ref = sm.GLM(df.y, X, family=sm.families.Binomial(), **kw).fit(
            cov_type="cluster", cov_kwds={"groups": df.pnr.to_numpy()}, tol=1e-12)
    m = Logistic().fit(df[["x0", "x1", "x2"]], df.y, weights=df.w if weighted else None,
                       cluster=df.pnr)
    assert m.robust_
    assert rel(m.coef_, ref.params) < 1e-6
    assert rel(m.se_, ref.bse) < 1e-6


@pytest.mark.parametrize("weighted", [False, True])
def test_poisson_cluster_matches_statsmodels(weighted):
    df = glm_frame(seed=2)
    X = sm.add_constant(df[["x0", "x1", "x2"]])
    kw = {"var_weights": df.w} if weighted else {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", SM_WEIGHTS_WARNING)
        ref = sm.GLM(df.k, X, family=sm.families.Poisson(), offset=np.log(df.t), **kw).fit(
            cov_type="cluster", cov_kwds={"groups": df.pnr.to_numpy()}, tol=1e-12)
    m = Poisson().fit(df[["x0", "x1", "x2"]], df.k, df.t, weights=df.w if weighted else None,
                      cluster=df.pnr)
    assert rel(m.coef_, ref.params) < 1e-6
    assert rel(m.se_, ref.bse) < 1e-6


def test_glm_robust_same_over_partitions():
    df = glm_frame(seed=3)
    one = Logistic().fit(df[["x0", "x1"]], df.y, weights=df.w, cluster=df.pnr)
    X = np.column_stack([np.ones(len(df)), df[["x0", "x1"]].to_numpy()])
    part = {"X": X, "y": df.y.to_numpy(), "weights": df.w.to_numpy(),
            "cluster": df.pnr.to_numpy()}
    many = Logistic().fit_partitions(split(part, df.pnr, 3), ["intercept", "x0", "x1"])
    np.testing.assert_allclose(many.se_, one.se_, rtol=1e-10)


def test_default_is_model_based_without_weights_or_repeats():
    df = glm_frame(seed=4).drop(columns="pnr")
    m = Logistic().fit(df[["x0", "x1"]], df.y)
    assert not m.robust_
    ref = sm.GLM(df.y, sm.add_constant(df[["x0", "x1"]]), family=sm.families.Binomial()).fit()
    assert rel(m.se_, ref.bse) < 1e-6
    w = Logistic().fit(df[["x0", "x1"]], df.y, weights=df.w)
    assert w.robust_   # weights: robust by default
    forced = Logistic(robust=False).fit(df[["x0", "x1"]], df.y, weights=df.w)
    assert not forced.robust_


def test_cluster_of_wrong_length_is_refused():
    from hpcstudy.models import ModelError

    df = glm_frame(seed=5)
    with pytest.raises(ModelError, match="one id per row"):
        Logistic().fit(df[["x0"]], df.y, cluster=df.pnr[:10])
    with pytest.raises(ModelError, match="one id per row"):
        CoxPH().fit(df[["x0"]], df.t, df.y, cluster=df.pnr[:10])
