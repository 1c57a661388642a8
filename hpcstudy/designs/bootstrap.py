"""Bootstrap confidence interval of a matched analysis (``propensity.matching.bootstrap: B``),
computed where the rows are.

The unit resampled is the matched set: an exposed person with the comparator persons matched
to it (Austin & Small 2014 resample matched pairs; a set keeps a 1:k match together). Each
replicate draws every set a Poisson(1) number of times (the Poisson bootstrap: Hanley &
MacGibbon 2006, Chamandy et al. 2012; the multinomial "n draws with replacement" bootstrap in
the limit), and refits the study's Cox model with weights: an exposed person counts as often
as its set was drawn, a comparator person as the sum over the sets it belongs to of (times
drawn) · (its share of the set: 1 / the set's number of comparators). With every set drawn once
these are exactly the matching weights. The interval is the 2.5th and 97.5th percentile of the
replicates' log hazard ratios of the exposure (percentile bootstrap); ``se`` is their standard
deviation.

A set's draw in replicate r is a function of (the study's ``seed``, r, the set's exposed pnr)
only (:func:`set_draws`: a SplitMix64 hash to a uniform, then Poisson(1)'s inverse CDF), so
each partition draws the weights of its own rows itself, and the draws do not depend on the
partitioning, the launcher or the device. Under a client the rows stay on the workers: each
partition is sent its comparators' (set, share) pairs once, then only a replicate's number;
each replicate's fit is the partitioned Cox fit, so the client receives only its sums.

The reference engine computes the same scheme in its own code
(:mod:`hpcstudy.designs.reference_bootstrap`).
"""

from __future__ import annotations

import math

import numpy as np

from hpcstudy_kernels._namespace import array_namespace

from ..models.base import ModelError
from ..models.cox import CoxPH
from ..models.partitions import as_partitions, on_device

SEED_STREAM = 0xB0075   # the replicates' own random stream, apart from the study's other draws
MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MIX1, MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _cdf(kmax: int = 24) -> np.ndarray:
    """P(Poisson(1) ≤ k) for k = 0..kmax."""
    terms = [math.exp(-1.0) / math.factorial(k) for k in range(kmax + 1)]
    return np.cumsum(terms)


POISSON_CDF = _cdf()


def _mix(z: int) -> int:
    """SplitMix64's finaliser on a Python int (mod 2⁶⁴)."""
    z = ((z ^ (z >> 30)) * MIX1) & MASK
    z = ((z ^ (z >> 27)) * MIX2) & MASK
    return z ^ (z >> 31)


def replicate_base(seed: int, replicate: int) -> int:
    """The 64-bit key of one replicate of a study's bootstrap."""
    return _mix(_mix((seed & MASK) ^ SEED_STREAM) ^ replicate)


def set_draws(set_pnr, base: int, cdf):
    """How many times each set (by its exposed pnr) is drawn in the replicate ``base``:
    Poisson(1) by the inverse CDF of u = the top 53 bits of SplitMix64(base + pnr·φ) / 2⁵³.
    In the namespace of ``set_pnr`` (``cdf``: :data:`POISSON_CDF` on the same device)."""
    xp = array_namespace(set_pnr)
    u64 = xp.uint64   # every operand unsigned 64-bit: products wrap mod 2⁶⁴, as the hash wants
    z = set_pnr.astype(u64) * u64(GOLDEN) + u64(base)
    z = (z ^ (z >> u64(30))) * u64(MIX1)
    z = (z ^ (z >> u64(27))) * u64(MIX2)
    z = z ^ (z >> u64(31))
    u = (z >> u64(11)).astype(xp.float64) * (2.0 ** -53)
    return xp.searchsorted(cdf, u, side="right").astype(xp.float64)


# -- per partition: the rows of the Cox model, and a replicate's weights on them ----------------
_COX = ("X", "time", "event", "strata", "entry")


def _model_rows(part, spec, strata):
    """The Cox model's rows of the partition (as analyses.cox builds them) with each row's
    person: pnr and arm."""
    from ..engines.analyses import _cox_part

    out = {k: v for k, v in _cox_part(part, spec, strata).items() if k in _COX}
    out["pnr"], out["arm"] = part["pnr"], part["group"]
    return out


def _with_pairs(part, comparators, pair_comparator, pair_set, pair_share):
    """The partition's rows with its comparator persons' pairs: ``comparators`` (sorted pnrs
    of this partition's matched comparator persons), and per pair the position of its
    comparator among them, its set's exposed pnr and its share."""
    out = dict(part)
    out.update(comparators=comparators, pair_comparator=pair_comparator, pair_set=pair_set,
               pair_share=pair_share)
    return out


def replicate_weights(part, base: int, cdf):
    """Each row's weight in the replicate ``base``: an exposed person's set's draws; for a
    comparator person Σ over its pairs of (its set's draws) · share."""
    xp = array_namespace(part["pnr"])
    pnr, exposed = part["pnr"], part["arm"] == 1
    own = set_draws(pnr, base, cdf)
    comps = part["comparators"]
    if comps.shape[0] == 0:
        return xp.where(exposed, own, 0.0)
    per_pair = set_draws(part["pair_set"], base, cdf) * part["pair_share"]
    per_comparator = xp.bincount(part["pair_comparator"], weights=per_pair,
                                 minlength=comps.shape[0])
    at = xp.minimum(xp.searchsorted(comps, pnr), comps.shape[0] - 1)
    theirs = xp.where(comps[at] == pnr, per_comparator[at], 0.0)
    return xp.where(exposed, own, theirs)


def _replicate(part, base, cdf):
    """The partition's rows weighted for the replicate ``base``, rows of weight 0 left out."""
    w = replicate_weights(part, base, cdf)
    keep = w > 0
    out = {k: part[k][keep] for k in _COX if k in part}
    out["weights"] = w[keep]
    return out


def _split_pairs(n_parts, exposed_pnr, comparator_pnr, share, comparator_part):
    """Per partition: (comparators, pair_comparator, pair_set, pair_share), host arrays."""
    exposed_pnr = np.asarray(exposed_pnr, np.int64)
    comparator_pnr = np.asarray(comparator_pnr, np.int64)
    share = np.asarray(share, np.float64)
    where = np.zeros(comparator_pnr.shape[0], np.int64) if comparator_part is None else \
        np.asarray(comparator_part, np.int64)
    out = []
    for i in range(n_parts):
        mine = where == i
        comps, at = np.unique(comparator_pnr[mine], return_inverse=True)
        out.append((comps, at.reshape(-1).astype(np.int64), exposed_pnr[mine], share[mine]))
    return out


def prepare(plan, parts):
    """The Cox model of the study (its adjust, strata and split terms) as partitioned rows with
    each row's person, and the model's term names."""
    from ..engines import analyses as A
    from ..plan.nodes import ModelPlan

    cox = plan.analysis(ModelPlan, model="cox")
    bands = A.model_bands(cox)
    split, _ = A._split_varying(plan, parts, (*cox.adjust, *cox.strata), bands)
    names, spec = A.design_columns(plan, split, cox.adjust, bands)
    rows = on_device(split).map(_model_rows, spec, cox.strata)
    if cox.strata:   # one coding of the strata in every partition, as analyses.cox
        codes = np.unique(np.concatenate(rows.map_reduce(A._distinct, "strata",
                                                         combine=A._cat)))
        rows = rows.map(A._recode, codes.astype(np.int64))
    return rows, names


def estimates(rows, names, seed: int, replicates: int) -> tuple[list[float], int]:
    """Each replicate's log HR of the first term (``rows``: partitions of :func:`prepare` with
    their pairs), and how many replicates could not be fitted (no events in one arm, …)."""
    out, failed = [], 0
    for r in range(replicates):
        rep = rows.map(_replicate, replicate_base(seed, r), POISSON_CDF)
        try:
            m = CoxPH("efron", robust=False).fit_partitions(rep, names)
        except ModelError:
            failed += 1
            continue
        out.append(float(m.coef_[0]))
    return out, failed


def summary(estimates_: list[float], failed: int, replicates: int, term: str) -> dict:
    """The design results' bootstrap section."""
    if len(estimates_) < 2:
        return {"replicates": replicates, "failed": failed, "term": term, "se": None,
                "lower_95": None, "upper_95": None}
    est = np.asarray(estimates_)
    lo, hi = np.percentile(est, [2.5, 97.5])
    return {"replicates": replicates, "failed": failed, "term": term,
            "se": float(np.std(est, ddof=1)), "lower_95": float(np.exp(lo)),
            "upper_95": float(np.exp(hi))}


def cox_interval(plan, parts, exposed_pnr, comparator_pnr, share,
                 comparator_part=None) -> dict:
    """The bootstrap section of the design results for the matched partitions ``parts``
    (where they are: a ``distributed`` client's partitions stay on its workers). The pairs:
    each exposed and comparator pnr, the comparator's share of the set, and the partition
    its comparator's rows are in (``comparator_part``; None: all in the first)."""
    from ..models.partitions import map_each

    parts = as_partitions(parts)
    if comparator_part is None and len(parts) > 1:
        raise ValueError("the pairs' partitions (comparator_part) are needed for more than one "
                         "partition")
    rows, names = prepare(plan, parts)
    rows = map_each(rows, _with_pairs, _split_pairs(len(rows), exposed_pnr, comparator_pnr,
                                                    share, comparator_part))
    replicates = plan.propensity.matching.bootstrap
    est, failed = estimates(rows, names, plan.seed, replicates)
    return summary(est, failed, replicates, names[0])
