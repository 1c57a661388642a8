"""Balance diagnostics: Table 1 by arm, standardised mean differences before and after the
design, and the preference-score distribution by arm. Every figure is a sum over partitions
or an exact quantile found by rounds of counts over the partitions (hpcstudy.designs.quantiles):
no covariate's values leave their partition.

* SMD = (mean₁ − mean₀) / √((s₁² + s₀²) / 2), the denominator always from the cohort before
  adjustment (as R's cobalt); a flag's s² is p(1 − p); after adjustment the means are
  weighted (matching weights, or IPT weights).
* A quartile or median is published as the mean of the ``min_cell`` values around it (sorted),
  so it is never one person's value.
* Preference score (Walker et al. 2013): logit(F) = logit(ps) − logit(share exposed); the
  equipoise share is the share of persons with 0.3 ≤ F ≤ 0.7.
"""

from __future__ import annotations

import math

import numpy as np

from hpcstudy_kernels._namespace import array_namespace

from .disclosure import preference_hidden
from .quantiles import smooth_positions, smooth_quantiles

SMD_LIMIT = 0.1
EQUIPOISE = (0.3, 0.7)


def variables(plan, parts) -> list[tuple[str, object]]:
    """(column, level) per Table 1 row: a region gives one row per level."""
    from ..engines.analyses import _levels, _union

    out = []
    kinds = {c.name: c.kind for c in plan.columns}
    for name in plan.propensity.covariates:
        if kinds.get(name) == "region":
            for lv in sorted(parts.map_reduce(_levels, name, combine=_union)):
                out.append((name, lv))
        else:
            out.append((name, None))
    return out


def _column(part, name, level):
    v = np.asarray(part[name], float)
    return (v == level).astype(float) if level is not None else v


def _sums(part, vars_, weighted):
    """[arm][var] → [n, Σw, Σw·x, Σw·x², all values in {0, 1}] of one partition."""
    w = np.asarray(part["weight"], float) if weighted and "weight" in part else \
        np.ones(part["pnr"].shape[0])
    out = np.zeros((2, len(vars_), 5))
    for arm in (0, 1):
        sel = part["group"] == arm
        ws = w[sel]
        for i, (name, level) in enumerate(vars_):
            x = _column(part, name, level)[sel]
            out[arm, i] = [x.shape[0], ws.sum(), ws @ x, ws @ (x * x),
                           float(np.all((x == 0) | (x == 1)))]
    return out


def _merge_sums(a, b):
    out = a + b
    out[..., 4] = np.minimum(a[..., 4], b[..., 4]) if a.shape == b.shape else out[..., 4]
    return out


def moments(parts, vars_, weighted: bool) -> np.ndarray:
    s = parts.map_reduce(_sums, vars_, weighted, combine=_merge_sums)
    return s


def _values(part, wanted):
    """Per (column, level, arm) in ``wanted``: the arm's values (on the partition's device)."""
    out = []
    for name, level, arm in wanted:
        xp = array_namespace(part[name])
        v = part[name].astype(xp.float64)
        if level is not None:
            v = (v == level).astype(xp.float64)
        out.append(v[part["group"] == arm])
    return out


QUANTILES = (0.5, 0.25, 0.75)   # median, q1, q3


def smooth_quantile(sorted_values: np.ndarray, q: float, k: int) -> float:
    """The mean of the ``k`` sorted values around the q-quantile's position."""
    pos = smooth_positions(sorted_values.shape[0], q, k)
    if pos is None:
        return math.nan
    lo, k = pos
    return float(sorted_values[lo:lo + k].mean())


def _sd(m):
    """Per arm and variable: (mean, variance) from the sums; a flag's variance is p(1 − p)."""
    n, sw, swx, swx2, flag = (m[..., i] for i in range(5))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = swx / sw
        var = np.where(flag > 0, mean * (1 - mean),
                       (swx2 - sw * mean * mean) / np.where(sw > 1, sw - 1, np.nan))
    return mean, var


def smd(before: np.ndarray, after: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """SMDs before and after adjustment, denominators from before."""
    mb, vb = _sd(before)
    with np.errstate(invalid="ignore", divide="ignore"):
        den = np.sqrt((vb[1] + vb[0]) / 2)
        s_before = np.where(den > 0, (mb[1] - mb[0]) / den, 0.0)
        if after is None:
            return s_before, None
        ma, _ = _sd(after)
        s_after = np.where(den > 0, (ma[1] - ma[0]) / den, 0.0)
    return s_before, s_after


def _level_name(level):
    return "-" if level is None else str(level)   # "-": the variable itself


def table1(plan, parts, vars_, sums, labels: dict[int, str]) -> list[dict]:
    """Rows per (variable, level, arm): persons and percent for flags; mean, SD, median and
    quartiles for numbers. Cells of fewer than min_cell persons (or a flag's complement) are
    suppressed."""
    k = plan.min_cell
    mean, var = _sd(sums)
    flags = [bool(sums[0, i, 4] > 0 and sums[1, i, 4] > 0) for i in range(len(vars_))]
    # the quartiles of every shown number, found together where the values are
    wanted = [(name, level, arm) for i, (name, level) in enumerate(vars_) if not flags[i]
              for arm in (1, 0) if int(sums[arm, i, 0]) >= k]
    got = smooth_quantiles(parts, QUANTILES, k, _values, wanted) if wanted else []
    quartiles = dict(zip(wanted, got, strict=True))
    rows = []
    for i, (name, level) in enumerate(vars_):
        flag = flags[i]
        for arm in (1, 0):
            n = int(sums[arm, i, 0])
            base = {"variable": name, "level": _level_name(level), "arm": labels[arm]}
            if flag:
                ones = int(round(sums[arm, i, 2]))
                hidden = min(ones, n - ones) < k
                rows.append({**base, "persons": None if hidden else ones,
                             "percent": None if hidden or n == 0 else 100 * ones / n,
                             "mean": None, "sd": None, "median": None, "q1": None, "q3": None,
                             **_flag(hidden)})
                continue
            hidden = n < k
            qs = [None, None, None] if hidden else quartiles[(name, level, arm)]
            rows.append({**base, "persons": None if hidden else n, "percent": None,
                         "mean": None if hidden else float(mean[arm, i]),
                         "sd": None if hidden else float(math.sqrt(max(var[arm, i], 0.0))),
                         "median": qs[0], "q1": qs[1], "q3": qs[2], **_flag(hidden)})
    return rows


def table1_adjusted(plan, before, after_w, after_n, vars_, labels: dict[int, str]) -> list[dict]:
    """Table 1 of the matched or weighted cohort, per (variable, level, arm): ``persons`` (the
    persons in the cohort; for a flag those with it), ``weighted_persons`` (their weights'
    sum), ``percent`` (weighted, flags), ``mean`` and ``sd`` (weighted, numbers; SD with
    Σw − 1 in the denominator). Withheld as Table 1: a flag held or lacked by fewer than
    min_cell persons, a number of fewer than min_cell persons — and a row whose persons differ
    from Table 1's by 1 to min_cell − 1 (those the design dropped, with or without the flag:
    the two tables' difference would show them). ``before``: the sums before the design
    (unweighted; which variables are flags); ``after_w``, ``after_n``: weighted and unweighted
    sums after it."""
    k = plan.min_cell
    mean, var = _sd(after_w)
    rows = []
    for i, (name, level) in enumerate(vars_):
        flag = bool(before[0, i, 4] > 0 and before[1, i, 4] > 0)
        for arm in (1, 0):
            n = int(after_n[arm, i, 0])
            base = {"variable": name, "level": _level_name(level), "arm": labels[arm]}
            b_n = int(before[arm, i, 0])
            if flag:
                ones = int(round(after_n[arm, i, 2]))
                b_ones = int(round(before[arm, i, 2]))
                hidden = min(ones, n - ones) < k or _few(b_ones - ones, k) or \
                    _few(b_n - b_ones - (n - ones), k)
                shown = {"persons": ones, "weighted_persons": float(after_w[arm, i, 2]),
                         "percent": 100 * float(mean[arm, i]), "mean": None, "sd": None}
            else:
                hidden = n < k or _few(b_n - n, k)
                sd = math.sqrt(max(var[arm, i], 0.0)) if math.isfinite(var[arm, i]) else None
                shown = {"persons": n, "weighted_persons": float(after_w[arm, i, 1]),
                         "percent": None, "mean": float(mean[arm, i]), "sd": sd}
            if hidden:
                shown = dict.fromkeys(shown)
            rows.append({**base, **shown, **_flag(hidden)})
    return rows


def _few(dropped: int, k: int) -> bool:
    return 0 < dropped < k


def balance_rows(vars_, s_before, s_after, t1=(), t1_after=()) -> list[dict]:
    """SMD rows; withheld where Table 1 withholds the variable (an SMD of a flag and the arms'
    sizes give its counts back), and the SMD after the design where Table 1 after it does."""
    from .disclosure import withheld_variables

    hidden, hidden_after = withheld_variables(t1), withheld_variables(t1, t1_after)
    out = []
    for i, (name, level) in enumerate(vars_):
        key = (name, _level_name(level))
        h = key in hidden
        out.append({"variable": name, "level": _level_name(level),
                    "smd_before": None if h else float(s_before[i]),
                    "smd_after": None if key in hidden_after or s_after is None
                    else float(s_after[i]),
                    **_flag(h)})
    return out


def _pref(part, share, bins):
    ps = np.clip(part["ps"], 1e-300, 1 - 1e-16)
    z = np.log(ps / (1 - ps)) - math.log(share / (1 - share))
    f = 1 / (1 + np.exp(-z))
    b = np.minimum((f * bins).astype(np.int64), bins - 1)
    counts = np.zeros((2, bins))
    for arm in (0, 1):
        counts[arm] = np.bincount(b[part["group"] == arm], minlength=bins)
    inside = float(((f >= EQUIPOISE[0]) & (f <= EQUIPOISE[1])).sum())
    return counts, inside


def preference(plan, parts, share: float, labels: dict[int, str]) -> tuple[list[dict], float]:
    """Persons per (arm, preference-score bin) and the equipoise share."""
    bins = plan.propensity.bins
    counts, inside = parts.map_reduce(_pref, share, bins)
    total = counts.sum()
    k = plan.min_cell
    c = counts.astype(np.int64)
    hidden = np.asarray(preference_hidden(c[::-1].tolist(), k))[::-1]
    rows = []
    for arm in (1, 0):
        for j in range(bins):
            rows.append({"arm": labels[arm], "bin": f"{j / bins:g}-{(j + 1) / bins:g}",
                         "persons": None if hidden[arm, j] else int(c[arm, j]),
                         **_flag(bool(hidden[arm, j]))})
    return rows, inside / total if total else math.nan


def _flag(hidden: bool) -> dict:
    """The disclosure flag as the other tables write it: present only on a withheld row."""
    return {"suppressed": True} if hidden else {}
