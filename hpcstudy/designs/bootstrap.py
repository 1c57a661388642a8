"""Bootstrap confidence interval of a matched analysis (``propensity.matching.bootstrap: B``).

The unit resampled is the matched set: an exposed person with the comparator persons matched
to it (Austin & Small 2014 resample matched pairs; a set keeps a 1:k match together). A
replicate draws as many sets as there are, with replacement (from the study's ``seed``: the
same replicates in every run and engine), and refits the study's Cox model with weights: an
exposed person counts as often as its set was drawn, a comparator person as the sum over the
sets it belongs to of (times drawn) / (the set's number of comparators) — with every set drawn
once these are exactly the matching weights. The interval is the 2.5th and 97.5th percentile
of the replicates' log hazard ratios of the exposure (percentile bootstrap); ``se`` is their
standard deviation.

Both engines call :func:`cox_interval` with their own matched pairs and tables (the pairs come
from each engine's own matcher).
"""

from __future__ import annotations

import numpy as np

from ..models.base import ModelError
from ..models.cox import CoxPH
from ..models.partitions import LocalPartitions

SEED_STREAM = 0xB0075   # the replicates' own random stream, apart from the study's other draws


def sets_of(exposed_pnr, comparator_pnr) -> tuple[np.ndarray, np.ndarray]:
    """(the matched sets' exposed pnrs, sorted; the set of each pair)."""
    sets = np.unique(np.asarray(exposed_pnr, np.int64))
    return sets, np.searchsorted(sets, np.asarray(exposed_pnr, np.int64))


def replicate_weights(counts, sets, set_of_pair, comparator_pnr, share):
    """(person keys pnr·2 + arm, sorted; their weights) for sets drawn ``counts`` times."""
    c = np.asarray(comparator_pnr, np.int64)
    ckeys, at = np.unique(c * 2, return_inverse=True)
    cw = np.bincount(at.reshape(-1), weights=counts[set_of_pair] * share,
                     minlength=ckeys.shape[0])
    keys = np.concatenate([sets * 2 + 1, ckeys])
    w = np.concatenate([counts.astype(float), cw])
    order = np.argsort(keys, kind="stable")
    return keys[order], w[order]


def _model_rows(plan, tables: list[dict]):
    """The Cox model's rows (one host part) and names, as analyses.cox builds them."""
    from ..engines import analyses as A
    from ..plan.nodes import ModelPlan

    cox = plan.analysis(ModelPlan, model="cox")
    parts = LocalPartitions(tables)
    names, spec = A.design_columns(plan, parts, cox.adjust)
    parts, _ = A._split_varying(plan, parts, (*cox.adjust, *cox.strata))
    keys = np.concatenate([np.asarray(t["pnr"], np.int64) * 2 + np.asarray(t["group"], np.int64)
                           for t in parts.parts])
    p = parts.map(A._cox_part, spec, cox.strata)
    cols = [k for k in p.parts[0] if k != "cluster"]
    one = {k: np.concatenate([q[k] for q in p.parts]) for k in cols}
    one["strata"] = np.unique(one["strata"], return_inverse=True)[1].reshape(-1).astype(np.int64)
    return one, keys, names


def replicate_fit(rows: dict, keys, names, pk, pw):
    """The Cox model refitted with person weights ``pw`` (by sorted person keys ``pk``; a
    person not among them has weight 0): its exposure coefficient (log HR)."""
    pos = np.minimum(np.searchsorted(pk, keys), pk.shape[0] - 1)
    w = np.where(pk[pos] == keys, pw[pos], 0.0)
    keep = w > 0
    part = {k: v[keep] for k, v in rows.items()}
    part["weights"] = w[keep]
    m = CoxPH("efron", robust=False).fit_partitions(LocalPartitions([part]), names)
    return float(m.coef_[0])


def cox_interval(plan, tables: list[dict], exposed_pnr, comparator_pnr, share) -> dict:
    """The bootstrap section of the design results (see the module's docstring)."""
    replicates = plan.propensity.matching.bootstrap
    rows, keys, names = _model_rows(plan, tables)
    sets, set_of_pair = sets_of(exposed_pnr, comparator_pnr)
    n = sets.shape[0]
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [plan.seed, SEED_STREAM])))
    estimates, failed = [], 0
    for _ in range(replicates):
        counts = np.bincount(rng.integers(0, n, n), minlength=n)
        pk, pw = replicate_weights(counts, sets, set_of_pair, comparator_pnr, share)
        try:
            estimates.append(replicate_fit(rows, keys, names, pk, pw))
        except ModelError:   # a replicate without events, or without one arm
            failed += 1
    if len(estimates) < 2:
        return {"replicates": replicates, "failed": failed, "term": names[0], "se": None,
                "lower_95": None, "upper_95": None}
    est = np.asarray(estimates)
    lo, hi = np.percentile(est, [2.5, 97.5])
    return {"replicates": replicates, "failed": failed, "term": names[0],
            "se": float(np.std(est, ddof=1)), "lower_95": float(np.exp(lo)),
            "upper_95": float(np.exp(hi))}
