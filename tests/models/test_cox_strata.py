"""Stratified Cox models whose strata differ greatly in xβ, against lifelines and statsmodels.

Risk-set sums must be taken within each stratum. Summing over the whole event grid and then
subtracting the other strata's share cancels catastrophically when one stratum's risks
exp(xβ) are e^40 times another's: the small stratum's sums are lost in the rounding of the
large one's. Here a covariate sits near 0 in stratum 0 and near 100 in stratum 1 (so centred
xβ is about ±20 at the fitted β), while within each stratum the hazard follows x as planted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hpcstudy.models import CoxPH


def strata_far_apart(seed: int = 3, n: int = 300, days: bool = True, entry: bool = False):
    rng = np.random.default_rng(seed)
    s = np.repeat([0, 1], n)
    x = rng.normal(size=2 * n) + np.where(s == 1, 100.0, 0.0)
    z = rng.normal(size=2 * n)
    within = x - np.where(s == 1, 100.0, 0.0)      # the hazard sees x within the stratum
    t = rng.exponential(300, 2 * n) / np.exp(0.5 * within + 0.3 * z)
    c = rng.uniform(50, 900, 2 * n)
    time = np.minimum(t, c)
    if days:
        time = np.floor(time) + 1                   # whole days: tied event times
    event = (t <= c).astype(float)
    df = pd.DataFrame({"x": x, "z": z, "time": time, "event": event, "s": s})
    if entry:
        df["entry"] = np.where(rng.random(2 * n) < 0.4, np.floor(df["time"] * 0.5), 0.0)
    return df


def _lifelines(df, robust=False):
    """lifelines' stratified fit of the same model. A constant added to x within a stratum
    leaves that stratum's partial likelihood unchanged, so lifelines is given x less the
    stratum's offset (its own Newton steps fail to converge on x as it is)."""
    from lifelines import CoxPHFitter

    same = df.assign(x=df["x"] - np.where(df["s"] == 1, 100.0, 0.0))
    f = CoxPHFitter()
    f.fit(same[["x", "z", "time", "event", "s"]], "time", "event", strata=["s"],
          robust=robust, fit_options={"precision": 1e-12})
    return f.params_.to_numpy(), f.standard_errors_.to_numpy()


def _ours(df, ties="efron", robust=None, entry=False):
    return CoxPH(ties, robust=robust).fit(
        df[["x", "z"]].to_numpy(), df["time"].to_numpy(), df["event"].to_numpy(),
        strata=df["s"].to_numpy(), entry=df["entry"].to_numpy() if entry else None)


def test_the_covariate_is_far_apart_between_strata():
    """The premise: at the fitted β, xβ differs by more than 35 between the strata (one
    stratum's risks are ~e^35 or more times the other's)."""
    df = strata_far_apart()
    m = _ours(df)
    xb = (df[["x", "z"]].to_numpy() - df[["x", "z"]].to_numpy().mean(axis=0)) @ m.coef_
    gap = xb[df["s"] == 1].mean() - xb[df["s"] == 0].mean()
    assert gap > 35


def test_efron_with_strata_far_apart_matches_lifelines():
    df = strata_far_apart()
    want, want_se = _lifelines(df)
    m = _ours(df)
    assert np.allclose(m.coef_, want, rtol=1e-6, atol=1e-8), (m.coef_, want)
    assert np.allclose(m.se_, want_se, rtol=1e-5)
    assert abs(m.coef_[0] - 0.5) < 0.15       # and near the planted truth


def test_breslow_with_strata_far_apart_matches_statsmodels():
    import statsmodels.api as sm

    df = strata_far_apart(seed=4)
    ref = sm.PHReg(df["time"], df[["x", "z"]], status=df["event"], strata=df["s"],
                   ties="breslow").fit()
    m = _ours(df, "breslow")
    assert np.allclose(m.coef_, ref.params, rtol=1e-6, atol=1e-8), (m.coef_, ref.params)
    assert np.allclose(m.se_, ref.bse, rtol=1e-5)


def test_delayed_entry_with_strata_far_apart_matches_lifelines():
    """Counting-process rows, (entry, exit], with the same strata: lifelines'
    CoxTimeVaryingFitter (Efron)."""
    from lifelines import CoxTimeVaryingFitter

    df = strata_far_apart(seed=5, entry=True)
    df["id"] = np.arange(len(df))
    f = CoxTimeVaryingFitter()
    f.fit(df[["id", "x", "z", "entry", "time", "event", "s"]], id_col="id", event_col="event",
          start_col="entry", stop_col="time", strata=["s"])
    m = _ours(df, entry=True)
    assert np.allclose(m.coef_, f.params_.to_numpy(), rtol=1e-6, atol=1e-8)
    assert np.allclose(m.se_, f.standard_errors_.to_numpy(), rtol=1e-5)


def test_robust_errors_with_strata_far_apart_match_lifelines():
    """Without tied event times our Lin–Wei residuals equal lifelines' (kernels/robust.py)."""
    df = strata_far_apart(seed=6, days=False)
    want, want_se = _lifelines(df, robust=True)
    m = _ours(df, robust=True)
    assert np.allclose(m.coef_, want, rtol=1e-6, atol=1e-8)
    assert np.allclose(m.se_, want_se, rtol=1e-5)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_strata_split_across_partitions_give_the_one_array_fit(ties):
    """Each partition holds both strata in part: the sums still add to the one-array fit."""
    from hpcstudy.models.partitions import LocalPartitions

    df = strata_far_apart(seed=7, entry=True)
    one = _ours(df, ties, entry=True)
    X = df[["x", "z"]].to_numpy()
    which = np.random.default_rng(1).integers(0, 3, len(df))
    parts = [{"X": X[which == i], "time": df["time"].to_numpy()[which == i],
              "event": df["event"].to_numpy()[which == i],
              "entry": df["entry"].to_numpy()[which == i],
              "strata": df["s"].to_numpy()[which == i].astype(np.int64),
              "weights": np.ones(int((which == i).sum()))} for i in range(3)]
    m = CoxPH(ties).fit_partitions(LocalPartitions(parts), ["x", "z"])
    assert np.allclose(m.coef_, one.coef_, rtol=1e-10, atol=1e-12)
    assert np.allclose(m.se_, one.se_, rtol=1e-9)
