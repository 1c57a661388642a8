"""A study's comparative design over the partition tables (the dask engine's path).

Steps, each in the attrition of both arms: the score (partitioned logistic fit), trimming to the
common support, then matching (the one global step, on (logit, arm, pnr) triples), weighting or
stratification. The partitions come back with ``ps`` and ``weight`` columns and without the
persons the design dropped; the models then use the weights, with errors clustered by person.

Under a ``distributed.Client`` the tables stay on the workers: every step is a per-partition
``map`` or a ``map_reduce`` of sums. The score, penalised or not, is fitted by Newton steps on
partition sums. The stratification edges, the weights' truncation percentiles and Table 1's
quartiles are exact quantiles found by rounds of counts (:mod:`.quantiles`: the client receives
a few hundred numbers per partition and quantile, whatever the number of persons; the same
bits as np.quantile on the gathered values). What does reach this process per person is
matching's (logit, arm, pnr) triples (17 bytes a person, not the rows); each partition gets back
only its own matched rows and weights. The matched bootstrap's replicates are drawn and fitted
on the partitions (:mod:`.bootstrap`): the client receives each replicate's Cox sums.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..models.partitions import DaskPartitions, as_partitions
from . import balance as B
from . import disclosure as D
from . import propensity as P
from . import quantiles as Q
from .matching import match

STEP_TRIM = "propensity score in the common support"
STEP_MATCH = "matched on the propensity score"
STEP_STRATA = "propensity stratum holds both arms"


def _flag_counts(part, names):
    """Per flag: [[lacking, having] in the comparator arm, the same in the exposed arm]."""
    out = np.zeros((len(names), 2, 2))
    for i, name in enumerate(names):
        for arm in (0, 1):
            v = part[name][part["group"] == arm]
            out[i, arm] = [(v == 0).sum(), (v != 0).sum()]
    return out


def _arm_counts(part):
    return np.array([(part["group"] == 0).sum(), (part["group"] == 1).sum()], float)


def _ps_range(part):
    out = np.array([[np.inf, -np.inf], [np.inf, -np.inf]])
    for arm in (0, 1):
        v = part["ps"][part["group"] == arm]
        if v.shape[0]:
            out[arm] = [v.min(), v.max()]
    return out


def _range_merge(a, b):
    return np.column_stack([np.minimum(a[:, 0], b[:, 0]), np.maximum(a[:, 1], b[:, 1])])


def _filter(part, keep):
    return {k: v[keep] for k, v in part.items()}


def _trim(part, lo, hi):
    return _filter(part, (part["ps"] >= lo) & (part["ps"] <= hi))


# Matching reads the logit at 7 decimals: two fits of the same score (the engines' own) agree
# far closer than that, so they see the same ties and the same distances, bit for bit.
MATCH_DECIMALS = 7


def _triples(part):
    return [np.round(part["logit"], MATCH_DECIMALS)], [part["group"] == 1], [part["pnr"]]


def _cat3(a, b):
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def _take_rows(part, rows, weights):
    """The partition's matched rows (ascending positions), in table order, with their weights."""
    keep = np.zeros(part["group"].shape[0], bool)
    keep[rows] = True
    out = _filter(part, keep)
    out["weight"] = weights
    return out


def _map_each(parts, fn, args: list[tuple]):
    """``parts.map(fn, ...)`` with partition i's own arguments ``args[i]``: under a client each
    partition's task carries only its own (so a partition is sent its matched rows, not all)."""
    if isinstance(parts, DaskPartitions):
        if parts.client is not None:
            futures = [parts.client.submit(fn, p, *a, pure=False)
                       for p, a in zip(parts.parts, args, strict=True)]
            return DaskPartitions(futures, parts.client, device=parts.device)
        return DaskPartitions([fn(p, *a) for p, a in zip(parts.parts, args, strict=True)],
                              None, parts.scheduler, parts.device)
    return type(parts)([fn(p, *a) for p, a in zip(parts.parts, args, strict=True)])


def _stat_ps(part):
    return part["ps"]


def ipt_weights(ps, exposed, estimand: str, stabilised: bool, share: float):
    """Inverse probability of treatment weights (ate, att) or overlap weights."""
    if estimand == "ate":
        w = np.where(exposed, 1 / ps, 1 / (1 - ps))
        if stabilised:
            w = w * np.where(exposed, share, 1 - share)
    elif estimand == "att":
        w = np.where(exposed, 1.0, ps / (1 - ps))
        if stabilised:
            w = w * np.where(exposed, 1.0, (1 - share) / share)
    else:
        w = np.where(exposed, 1 - ps, ps)
    return w


def _weight(part, estimand, stabilised, share):
    out = dict(part)
    out["weight"] = ipt_weights(part["ps"], part["group"] == 1, estimand, stabilised, share)
    return out


def _weights_of(part):
    return part["weight"]


def _largest(part):
    return float(np.max(part["weight"], initial=0.0))


def _clip(part, lo, hi):
    out = dict(part)
    out["weight"] = np.clip(part["weight"], lo, hi)
    return out


def _stratum(part, edges):
    return np.searchsorted(edges, part["ps"], side="right")


def _strata_counts(part, edges, k):
    s = _stratum(part, edges)
    return np.stack([np.bincount(s[part["group"] == a], minlength=k) for a in (0, 1)]).astype(
        float)


def _strata_weight(part, edges, counts, share):
    s = _stratum(part, edges)
    n_s = counts.sum(axis=0)
    arm = part["group"].astype(np.int64)
    own = counts[arm, s]
    keep = (counts[0, s] > 0) & (counts[1, s] > 0)
    p_arm = np.where(arm == 1, share, 1 - share)
    out = dict(part)
    # marginal mean weighting through stratification (Hong 2010): n_s·P(arm) / n_(s, arm)
    out["weight"] = np.where(keep, n_s[s] * p_arm / np.where(own > 0, own, 1), 0.0)
    return _filter(out, keep)


def _step(attrition, labels, name, parts):
    counts = parts.map_reduce(_arm_counts)
    for code, label in labels.items():
        attrition[label].append((name, int(counts[code])))
    return counts


def run(plan, tables, attrition: dict) -> tuple[list, dict, dict]:
    """(new partition tables, attrition, design results) for a study with ``propensity:``.
    ``tables`` is a list of tables or partitions (``DaskPartitions`` under a client: the new
    tables come back as futures, left on the workers)."""
    pr = plan.propensity
    src = plan.source
    labels = {g.code: g.label for g in plan.groups}
    attrition = {g: list(s) for g, s in attrition.items()}
    parts = as_partitions(tables)
    n_arm = parts.map_reduce(_arm_counts)
    _need_both(n_arm, labels, "before the propensity score", src, plan.min_cell)
    left_out = []
    if pr.added:   # flags the design added: those too rare in an arm are left out
        from .components import keep_common

        got = parts.map_reduce(_flag_counts, pr.added)
        plan, left_out = keep_common(plan, dict(zip(pr.added, got, strict=True)))
        pr = plan.propensity
    names, spec, coef = P.fit(plan, parts, src)
    parts = parts.map(P.score_part, spec, coef)
    vars_ = B.variables(plan, parts)
    before = B.moments(parts, vars_, weighted=False)
    share = n_arm[1] / n_arm.sum()
    t1 = D.secondary(B.table1(plan, parts, vars_, before, labels), D.TABLE1)
    pref, equipoise = B.preference(plan, parts, share, labels)
    # the score model's coefficients stay private: each rests on a table of counts
    design: dict = {"method": pr.method, "covariates": list(pr.covariates)}
    if left_out:
        design["left_out"] = left_out
    if pr.trim:
        r = parts.map_reduce(_ps_range, combine=_range_merge)
        lo, hi = max(r[0, 0], r[1, 0]), min(r[0, 1], r[1, 1])
        parts = parts.map(_trim, lo, hi)
        counts = _step(attrition, labels, STEP_TRIM, parts)
        _need_both(counts, labels, "trimming to the common support", src, plan.min_cell)
        design["common_support"] = [float(lo), float(hi)]
    weighted = pr.method != "none"
    if pr.method == "matching":
        mt = pr.matching
        # the one gather: 2 numbers and a flag per person (logit, pnr, arm), never the rows
        per_part = parts.map_reduce(_triples, combine=_cat3)
        sizes = [x.shape[0] for x in per_part[0]]
        logit, exposed, pnr = (np.concatenate(x) for x in per_part)
        sd = float(np.std(logit, ddof=1)) if logit.shape[0] > 1 else 0.0
        caliper = None if mt.caliper is None else mt.caliper * sd
        m = match(logit, exposed, pnr, ratio=mt.ratio, caliper=caliper, replace=mt.replace,
                  seed=plan.seed)
        rows, weights = matched_rows(m, pnr.shape[0])
        ends = np.cumsum(sizes)
        cut = np.searchsorted(rows, ends)   # each partition's share of the sorted rows
        starts = np.concatenate([[0], cut[:-1]])
        offsets = ends - np.asarray(sizes)
        parts = _map_each(parts, _take_rows, [
            (rows[a:b] - o, weights[a:b]) for a, b, o in zip(starts, cut, offsets, strict=True)])
        counts = _step(attrition, labels, STEP_MATCH, parts)
        if min(counts) < plan.min_cell:   # nothing a table could show
            # no counts below min_cell nor the logit's SD: the message goes to the audit log
            cal = "no caliper" if caliper is None else f"caliper {mt.caliper:g} SD"
            raise UserError(f"matching on the propensity score ({cal}) matched fewer than "
                            f"min_cell ({plan.min_cell}) persons in an arm", where=src,
                            fix="widen propensity.matching.caliper, or use method: weighting")
        design.update(estimand="att", ratio=mt.ratio, replace=mt.replace,
                      caliper_sd=mt.caliper, caliper_logit=caliper)
        if mt.bootstrap:
            per_t = np.bincount(m.exposed, minlength=pnr.shape[0]).astype(float)
            pairs = (pnr[m.exposed], pnr[m.comparator], 1.0 / per_t[m.exposed],
                     np.searchsorted(ends, m.comparator, side="right"))   # its partition
    elif pr.method == "weighting":
        w = pr.weighting
        parts = parts.map(_weight, w.estimand, w.stabilised, share)
        bad = parts.map_reduce(_largest, combine=max)
        if not np.isfinite(bad):
            raise UserError("propensity score weighting: a score of exactly 0 or 1 gives an "
                            "infinite weight", where=src,
                            fix="trim: true, or truncate the weights (weighting.truncate)")
        if w.truncate:
            lo, hi = Q.percentile(parts, list(w.truncate), _weights_of)
            parts = parts.map(_clip, lo, hi)
            design["truncated_at"] = [float(lo), float(hi)]
        design.update(estimand=w.estimand, stabilised=w.stabilised)
    elif pr.method == "stratification":
        edges = Q.quantile(parts, np.arange(1, pr.strata) / pr.strata, _stat_ps)
        counts = parts.map_reduce(_strata_counts, edges, pr.strata)
        parts = parts.map(_strata_weight, edges, counts, share)
        c = _step(attrition, labels, STEP_STRATA, parts)
        _need_both(c, labels, "stratification", src, plan.min_cell)
        design.update(estimand="ate", strata=pr.strata)
    if D.dropped_few(n_arm, parts.map_reduce(_arm_counts), plan.min_cell):
        t1, pref = D.withhold_all(t1, D.TABLE1), D.withhold_all(pref, ())
    after = B.moments(parts, vars_, weighted=True) if weighted else None
    t1_after = D.secondary(B.table1_adjusted(plan, before, after, B.moments(
        parts, vars_, weighted=False), vars_, labels), D.TABLE1_ADJUSTED) if weighted else None
    s_before, s_after = B.smd(before, after)
    design["equipoise_share"] = D.equipoise_shown(pref, float(equipoise))
    hidden = D.withheld_variables(t1, t1_after if weighted else None)
    warnings, max_after = D.smd_summary(
        [n + ("" if lv is None else f"={lv}") for n, lv in vars_],
        s_after if s_after is not None else s_before,
        [(n, "-" if lv is None else str(lv)) not in hidden for n, lv in vars_],
        weighted, B.SMD_LIMIT)
    warnings += D.equipoise_warning(float(equipoise), design["equipoise_share"])
    design["max_abs_smd_after"] = None if s_after is None else max_after
    if pr.method == "matching" and pr.matching.bootstrap:
        from .bootstrap import cox_interval

        design["bootstrap"] = cox_interval(plan, parts, *pairs)   # on the partitions
    design["warnings"] = warnings
    results = {"table1": t1, "balance": B.balance_rows(vars_, s_before, s_after, t1, t1_after),
               "preference": pref, "design": design}
    if t1_after is not None:
        results["table1_adjusted"] = t1_after
    return list(parts.parts), attrition, results


def matched_rows(m, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Ascending positions (into the gathered triples, of ``n``) of the matched persons and
    their weights: 1 for an exposed person; for a comparator person Σ 1/(comparators of each
    exposed person it serves)."""
    if m.exposed.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    per_t = np.bincount(m.exposed, minlength=n).astype(float)
    w = np.zeros(n)
    np.add.at(w, m.comparator, 1.0 / per_t[m.exposed])
    w[np.unique(m.exposed)] = 1.0
    rows = np.flatnonzero(w > 0)
    return rows, w[rows]


def matched_weights(m, pnr, exposed) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys (pnr·2 + arm) of the matched persons and their weights: 1 for an exposed
    person; for a comparator person Σ 1/(comparators of each exposed person it serves)."""
    if m.exposed.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    per_t = np.bincount(m.exposed, minlength=pnr.shape[0]).astype(float)
    w = np.zeros(pnr.shape[0])
    np.add.at(w, m.comparator, 1.0 / per_t[m.exposed])
    w[np.unique(m.exposed)] = 1.0
    rows = np.flatnonzero(w > 0)
    keys = pnr[rows] * 2 + exposed[rows].astype(np.int64)
    order = np.argsort(keys)
    return keys[order], w[rows][order]


def _need_both(counts, labels, step, src, min_cell):
    for code in (1, 0):
        if counts[code] == 0:
            raise UserError(f"comparative design: the {labels[code]} arm is empty {step} "
                            f"({D.persons_text(int(counts[1]), min_cell)} exposed, "
                            f"{D.persons_text(int(counts[0]), min_cell)} comparator persons)",
                            where=src, fix="widen the cohort or relax the design")
