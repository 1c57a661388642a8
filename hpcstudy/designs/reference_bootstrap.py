"""The matched bootstrap for the reference engine: the scheme of :mod:`.bootstrap` written
again, plainly, in pandas and Python integers (the engines are tested to agree).

Replicate r draws matched set s (by its exposed pnr) N(r, s) ~ Poisson(1) times, where
u = SplitMix64(SplitMix64(SplitMix64(seed ⊕ 0xB0075) ⊕ r) + pnr·0x9E3779B97F4A7C15 mod 2⁶⁴)
taken to its top 53 bits over 2⁵³, and N is the smallest k with u < P(Poisson(1) ≤ k). An
exposed person weighs N of its set; a comparator person Σ N(its sets) · its share of each.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import poisson

from ..models.base import ModelError
from ..models.cox import CoxPH

M64 = 2 ** 64
STREAM = 0xB0075


def _splitmix(z: int) -> int:
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 % M64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB % M64
    return z ^ (z >> 31)


_CDF = poisson.cdf(np.arange(25), 1.0)


def draws(seed: int, replicate: int, pnrs) -> pd.Series:
    """Times each set (indexed by its exposed pnr) is drawn in a replicate."""
    key = _splitmix(_splitmix(seed % M64 ^ STREAM) ^ replicate)
    u = [(_splitmix((key + int(p) * 0x9E3779B97F4A7C15) % M64) >> 11) / 2 ** 53 for p in pnrs]
    n = (np.asarray(u)[:, None] >= _CDF[None, :]).sum(axis=1)   # k with P(N ≤ k) ≤ u
    return pd.Series(n, index=list(pnrs), dtype=float)


def _rows(plan, df: pd.DataFrame):
    """The Cox model's rows (one table, split as the reference engine splits), each row's pnr
    and arm, and the terms' names."""
    from ..engines import analyses as A
    from ..models.partitions import LocalPartitions
    from ..plan.nodes import ModelPlan

    cox = plan.analysis(ModelPlan, model="cox")
    bands = A.model_bands(cox)
    parts = LocalPartitions([{c: df[c].to_numpy() for c in df.columns}])
    parts.frame = df   # the reference engine's own split of follow-up
    parts, _ = A._split_varying(plan, parts, (*cox.adjust, *cox.strata), bands)
    names, spec = A.design_columns(plan, parts, cox.adjust, bands)
    t = parts.parts[0]
    rows = A._cox_part(t, spec, cox.strata)
    return rows, pd.DataFrame({"pnr": t["pnr"], "group": t["group"]}), names


def cox_interval(plan, df: pd.DataFrame, exposed_pnr, comparator_pnr, share) -> dict:
    """``design.bootstrap`` of the matched table ``df`` and its pairs."""
    rows, who, names = _rows(plan, df)
    pairs = pd.DataFrame({"set": exposed_pnr, "comparator": comparator_pnr, "share": share})
    sets = sorted(set(pairs["set"].tolist()))
    replicates = plan.propensity.matching.bootstrap
    est, failed = [], 0
    for r in range(replicates):
        n = draws(plan.seed, r, sets)
        per_comparator = (pairs["set"].map(n) * pairs["share"]).groupby(
            pairs["comparator"]).sum()
        w = np.where(who["group"] == 1, who["pnr"].map(n).fillna(0.0),
                     who["pnr"].map(per_comparator).fillna(0.0))
        keep = w > 0
        try:
            m = CoxPH("efron", robust=False).fit(
                rows["X"][keep], rows["time"][keep], rows["event"][keep],
                entry=rows["entry"][keep] if "entry" in rows else None,
                strata=rows["strata"][keep], weights=w[keep], names=names)
        except ModelError:
            failed += 1
            continue
        est.append(float(m.coef_[0]))
    out = {"replicates": replicates, "failed": failed, "term": names[0], "se": None,
           "lower_95": None, "upper_95": None}
    if len(est) >= 2:
        s = pd.Series(est)
        out.update(se=float(s.std(ddof=1)), lower_95=float(np.exp(s.quantile(0.025))),
                   upper_95=float(np.exp(s.quantile(0.975))))
    return out
