"""The comparative design for the reference engine, in pandas, sharing no code with the partition
engine's steps: people in both arms, the propensity score (scikit-learn), trimming, matching,
weighting and stratification. The engines are tested to agree on every step."""

from __future__ import annotations

import pandas as pd


def both_arms(table: pd.DataFrame, attrition: dict, labels: dict[int, str],
              mode: str) -> pd.DataFrame:
    """``comparator.both_arms`` on the whole table; appends the attrition step per arm."""
    if mode == "keep":
        return table
    arms_of = table.groupby("pnr")["group"].nunique()
    twice = set(arms_of[arms_of > 1].index)
    if mode == "remove":
        out = table[~table["pnr"].isin(twice)]
        step = "not also in the other arm"
    else:
        dup = table[table["pnr"].isin(twice)]
        first = dup.groupby("pnr")["index_date"].transform("min")
        same_day = dup.groupby("pnr")["index_date"].transform("nunique") == 1
        winners = dup[(dup["index_date"] == first) & ~same_day]
        out = pd.concat([table[~table["pnr"].isin(twice)], winners])
        step = "in the arm entered first"
    for code, label in labels.items():
        attrition[label].append((step, int((out["group"] == code).sum())))
    return out


# -- the propensity-score design, in pandas ---------------------------------------------------
def _design_matrix(plan, df: pd.DataFrame) -> pd.DataFrame:
    kinds = {c.name: c.kind for c in plan.columns}
    cols = {}
    for name in plan.propensity.covariates:
        if kinds.get(name) == "region":
            for lv in sorted(df[name].unique())[1:]:
                cols[f"{name}={lv}"] = (df[name] == lv).astype(float)
        else:
            cols[name] = df[name].astype(float)
    return pd.DataFrame(cols, index=df.index)


def _score(plan, df: pd.DataFrame):
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from ..errors import UserError

    pr = plan.propensity
    X = _design_matrix(plan, df)
    y = (df["group"] == 1).astype(int)
    if not pr.penalty:   # as the partitioned fit: a constant or collinear column is refused
        from ..models.base import ModelError, check_collinearity

        Z = np.column_stack([np.ones(len(X)), X.to_numpy() - X.to_numpy().mean(axis=0)])
        try:
            check_collinearity(Z.T @ Z, ["intercept", *X.columns], "logistic model")
        except ModelError as e:
            raise UserError(f"propensity score model: {e}", where=plan.source,
                            fix="drop or merge the covariate that separates the arms "
                                "(propensity.covariates), or set propensity.penalty") from None
    # Newton's method to convergence, as the dask engine's partitioned fit (L2 on all but the
    # intercept, as there)
    m = LogisticRegression(C=1.0 / pr.penalty if pr.penalty else np.inf,
                           solver="newton-cholesky", tol=1e-12, max_iter=1000)
    m.fit(X.to_numpy(), y.to_numpy())
    coef = np.concatenate([m.intercept_, m.coef_[0]])
    # the intercept is no sign of separation (a covariate like calendar year moves it far)
    if not pr.penalty and np.any(np.abs(coef[1:]) > 25):
        raise UserError("propensity score model: the covariates separate the arms "
                        "(coefficients grow without bound)", where=plan.source,
                        fix="drop or merge the covariate that separates the arms "
                            "(propensity.covariates), or set propensity.penalty")
    logit = m.intercept_[0] + X.to_numpy() @ m.coef_[0]
    return logit


def _hash(pnr, seed):
    from .matching import person_hash  # the seeded order is part of the design's meaning

    return person_hash(pnr, seed)


def _match(df: pd.DataFrame, mt, caliper, seed):
    """Matching weights by an O(n_exposed · n_comparator) search, pnr·2 + arm → weight, and
    the pairs (exposed pnr, comparator pnr, 1 / the exposed person's number of matches)."""
    import numpy as np

    d = df.assign(h=_hash(df["pnr"].to_numpy(), seed), logit=df["logit"].round(7))
    t = d[d["group"] == 1].sort_values(["logit", "h", "pnr"], ascending=[False, True, True])
    c = d[d["group"] == 0].sort_values(["logit", "h", "pnr"])
    cl = c["logit"].to_numpy()
    cal = np.inf if caliper is None else caliper
    pairs = []
    if mt.replace:
        rank = np.arange(len(c))
        for ti, x in zip(t["pnr"], t["logit"], strict=True):
            dist = np.abs(cl - x)
            order = np.lexsort((rank, dist))[:mt.ratio]
            pairs += [(ti, j) for j in order if dist[j] <= cal]
    else:
        free = np.ones(len(c), bool)
        active = list(zip(t["pnr"], t["logit"], strict=True))
        for _ in range(mt.ratio):
            still = []
            for ti, x in active:
                dist = np.where(free, np.abs(cl - x), np.inf)
                if dist.shape[0] == 0:
                    break
                j = int(np.argmin(dist))
                if np.isfinite(dist[j]) and dist[j] <= cal:
                    pairs.append((ti, j))
                    free[j] = False
                    still.append((ti, x))
            active = still
    p = pd.DataFrame(pairs, columns=["t", "j"])
    if p.empty:
        return pd.Series(dtype=float), None
    p["c"] = c["pnr"].to_numpy()[p["j"].to_numpy()]
    p["share"] = 1.0 / p.groupby("t")["c"].transform("size")
    wc = p.groupby("c")["share"].sum()
    wt = pd.Series(1.0, index=p["t"].unique())
    return pd.concat([pd.Series(wt.to_numpy(), index=wt.index * 2 + 1),
                      pd.Series(wc.to_numpy(), index=wc.index * 2)]), \
        (p["t"].to_numpy(np.int64), p["c"].to_numpy(np.int64), p["share"].to_numpy(float))


def _append(attrition, labels, step, df):
    for code, label in labels.items():
        attrition[label].append((step, int((df["group"] == code).sum())))


def _smoothed(values, q, k):
    import numpy as np

    v = np.sort(np.asarray(values, float))
    n = len(v)
    k = max(1, min(k, n))
    lo = min(max(int(round(q * (n - 1) - (k - 1) / 2)), 0), n - k)
    return float(v[lo:lo + k].mean())


def _rows_vars(plan, df):
    kinds = {c.name: c.kind for c in plan.columns}
    out = []
    for name in plan.propensity.covariates:
        if kinds.get(name) == "region":
            out += [(name, lv) for lv in sorted(df[name].unique())]
        else:
            out.append((name, None))
    return out


def _col(df, name, level):
    return (df[name] == level).astype(float) if level is not None else df[name].astype(float)


def _stats(df, vars_, weights=None):
    """{(var, arm): (mean, variance, flag)}; weighted means when weights are given."""
    import numpy as np

    out = {}
    for name, level in vars_:
        flag = bool(_col(df, name, level).isin([0.0, 1.0]).all())
        for arm in (0, 1):
            sel = df["group"] == arm
            x = _col(df[sel], name, level)
            w = np.ones(len(x)) if weights is None else weights[sel].to_numpy()
            mean = float(np.average(x, weights=w)) if w.sum() > 0 else float("nan")
            var = mean * (1 - mean) if flag else float(x.var(ddof=1))
            out[(name, level, arm)] = (mean, var, flag)
    return out


def design(plan, df: pd.DataFrame, attrition: dict):
    """The reference engine's design: the table with ``ps`` and ``weight``, attrition, results
    (the same sections as hpcstudy.designs.apply.run)."""
    import math

    import numpy as np

    from ..errors import UserError
    from .disclosure import (
        TABLE1,
        TABLE1_ADJUSTED,
        dropped_few,
        equipoise_shown,
        equipoise_warning,
        persons_text,
        preference_hidden,
        secondary,
        smd_summary,
        withhold_all,
    )

    pr = plan.propensity
    k = plan.min_cell
    labels = {g.code: g.label for g in plan.groups}
    src = plan.source

    def need_both(d, step):
        n1, n0 = int((d["group"] == 1).sum()), int((d["group"] == 0).sum())
        if n1 == 0 or n0 == 0:
            raise UserError(f"comparative design: the {labels[1 if n1 == 0 else 0]} arm is "
                            f"empty {step} ({persons_text(n1, k)} exposed, "
                            f"{persons_text(n0, k)} comparator persons)",
                            where=src, fix="widen the cohort or relax the design")

    df = df.sort_values(["group", "pnr"], ascending=[False, True]).reset_index(drop=True)
    need_both(df, "before the propensity score")
    left_out = []
    if pr.added:   # flags the design added: those too rare in an arm are left out
        from .components import keep_common

        counts = {name: [[int((df.loc[df["group"] == arm, name] == v).sum())
                          for v in (0, 1)] for arm in (0, 1)] for name in pr.added}
        plan, left_out = keep_common(plan, counts)
        pr = plan.propensity
    df["logit"] = _score(plan, df)
    df["ps"] = 1 / (1 + np.exp(-df["logit"].clip(-700, 700)))
    share = float((df["group"] == 1).mean())
    vars_ = _rows_vars(plan, df)
    before = _stats(df, vars_)
    df0 = df   # the cohort before the design: what Table 1 shows
    # Table 1
    t1 = []
    for name, level in vars_:
        flag = before[(name, level, 0)][2] and before[(name, level, 1)][2]
        for arm in (1, 0):
            x = _col(df[df["group"] == arm], name, level)
            base = {"variable": name, "level": "-" if level is None else str(level),
                    "arm": labels[arm]}
            empty = {"mean": None, "sd": None, "median": None, "q1": None, "q3": None}
            if flag:
                ones = int(x.sum())
                hide = min(ones, len(x) - ones) < k
                t1.append({**base, "persons": None if hide else ones,
                           "percent": None if hide or len(x) == 0 else 100 * ones / len(x),
                           **empty, **_flag(hide)})
            elif len(x) < k:
                t1.append({**base, "persons": None, "percent": None, **empty,
                           **_flag(True)})
            else:
                t1.append({**base, "persons": len(x), "percent": None, "mean": float(x.mean()),
                           "sd": float(x.std(ddof=1)), "median": _smoothed(x, 0.5, k),
                           "q1": _smoothed(x, 0.25, k), "q3": _smoothed(x, 0.75, k),
                           **_flag(False)})
    t1 = secondary(t1, TABLE1)
    # preference score
    f = 1 / (1 + np.exp(-(df["logit"] - math.log(share / (1 - share)))))
    edges = np.linspace(0, 1, pr.bins + 1)
    b = pd.cut(f.clip(upper=np.nextafter(1, 0)), edges, right=False, labels=False)
    pref = []
    cells = {}
    for arm in (1, 0):
        counts = b[df["group"] == arm].value_counts()
        cells[arm] = [int(counts.get(j, 0)) for j in range(pr.bins)]
    hidden = preference_hidden([cells[1], cells[0]], k)
    hide = {1: hidden[0], 0: hidden[1]}
    for arm in (1, 0):
        for j, c in enumerate(cells[arm]):
            pref.append({"arm": labels[arm], "bin": f"{j / pr.bins:g}-{(j + 1) / pr.bins:g}",
                         "persons": None if hide[arm][j] else c, **_flag(hide[arm][j])})
    equipoise = float(((f >= 0.3) & (f <= 0.7)).mean())
    out = {"method": pr.method, "covariates": list(pr.covariates)}
    if left_out:
        out["left_out"] = left_out
    if pr.trim:
        lo = max(df.loc[df["group"] == a, "ps"].min() for a in (0, 1))
        hi = min(df.loc[df["group"] == a, "ps"].max() for a in (0, 1))
        df = df[(df["ps"] >= lo) & (df["ps"] <= hi)]
        _append(attrition, labels, "propensity score in the common support", df)
        need_both(df, "trimming to the common support")
        out["common_support"] = [float(lo), float(hi)]
    if pr.method == "matching":
        mt = pr.matching
        sd = float(df["logit"].round(7).std(ddof=1))
        caliper = None if mt.caliper is None else mt.caliper * sd
        w, pairs = _match(df, mt, caliper, plan.seed)
        key = df["pnr"] * 2 + df["group"].astype("int64")
        df = df[key.isin(w.index)].copy()
        df["weight"] = (df["pnr"] * 2 + df["group"].astype("int64")).map(w)
        _append(attrition, labels, "matched on the propensity score", df)
        n1, n0 = int((df["group"] == 1).sum()), int((df["group"] == 0).sum())
        if min(n1, n0) < k:
            cal = "no caliper" if caliper is None else f"caliper {mt.caliper:g} SD"
            raise UserError(f"matching on the propensity score ({cal}) matched fewer than "
                            f"min_cell ({k}) persons in an arm",
                            where=src,
                            fix="widen propensity.matching.caliper, or use method: weighting")
        out.update(estimand="att", ratio=mt.ratio, replace=mt.replace, caliper_sd=mt.caliper,
                   caliper_logit=caliper)
    elif pr.method == "weighting":
        wt = pr.weighting
        e, ps = df["group"] == 1, df["ps"]
        if wt.estimand == "ate":
            w = (e / ps + (~e) / (1 - ps))
            if wt.stabilised:
                w = w * (e * share + (~e) * (1 - share))
        elif wt.estimand == "att":
            w = e + (~e) * ps / (1 - ps)
            if wt.stabilised:
                w = w * (e + (~e) * (1 - share) / share)
        else:
            w = e * (1 - ps) + (~e) * ps
        w = w.astype(float)
        if not np.isfinite(w).all():
            raise UserError("propensity score weighting: a score of exactly 0 or 1 gives an "
                            "infinite weight", where=src,
                            fix="trim: true, or truncate the weights (weighting.truncate)")
        if wt.truncate:
            lo, hi = np.percentile(w.to_numpy(), list(wt.truncate))
            w = w.clip(lo, hi)
            out["truncated_at"] = [float(lo), float(hi)]
        df = df.assign(weight=w)
        out.update(estimand=wt.estimand, stabilised=wt.stabilised)
    elif pr.method == "stratification":
        cuts = np.quantile(df["ps"].to_numpy(), np.arange(1, pr.strata) / pr.strata)
        s = pd.cut(df["ps"], [-np.inf, *cuts, np.inf], right=False, labels=False)
        n_sa = df.groupby([s, df["group"]]).size().unstack(fill_value=0)
        both = n_sa.index[(n_sa.get(0, 0) > 0) & (n_sa.get(1, 0) > 0)]
        keep = s.isin(both)
        n_s = s.map(n_sa.sum(axis=1))
        own = pd.Series([n_sa.loc[a, g] for a, g in zip(s, df["group"], strict=True)],
                        index=df.index, dtype=float)
        p_arm = np.where(df["group"] == 1, share, 1 - share)
        df = df.assign(weight=n_s * p_arm / own)[keep]
        _append(attrition, labels, "propensity stratum holds both arms", df)
        need_both(df, "stratification")
        out.update(estimand="ate", strata=pr.strata)
    weighted = pr.method != "none"
    if dropped_few([(df0["group"] == a).sum() for a in (0, 1)],
                   [(df["group"] == a).sum() for a in (0, 1)], k):
        t1, pref = withhold_all(t1, TABLE1), withhold_all(pref, ())
    after = _stats(df, vars_, df["weight"]) if weighted else None
    t1_after = secondary(_table1_adjusted(df, df0, vars_, before, labels, k),
                         TABLE1_ADJUSTED) if weighted else None
    bal, _raw = [], []
    for name, level in vars_:
        (m0, v0, _), (m1, v1, _) = before[(name, level, 0)], before[(name, level, 1)]
        den = math.sqrt((v0 + v1) / 2)
        sb = (m1 - m0) / den if den > 0 else 0.0
        sa = None
        if after is not None:
            sa = (after[(name, level, 1)][0] - after[(name, level, 0)][0]) / den \
                if den > 0 else 0.0
        lv = "-" if level is None else str(level)
        _raw.append((name, lv, sa, sb))
        h = any(r.get("suppressed") for r in t1 if (r["variable"], r["level"]) == (name, lv))
        ha = h or any(r.get("suppressed") for r in t1_after or ()
                      if (r["variable"], r["level"]) == (name, lv))
        bal.append({"variable": name, "level": lv, "smd_before": None if h else sb,
                    "smd_after": None if ha else sa, **_flag(h)})
    out["equipoise_share"] = equipoise_shown(pref, equipoise)
    # a withheld variable's SMD is named without its value, and left out of the maximum
    seen = [r["smd_after" if weighted else "smd_before"] is not None for r in bal]
    warnings, max_after = smd_summary(
        [n + (f"={lv}" if lv != "-" else "") for n, lv, _, _ in _raw],
        [sa_ if weighted else sb_ for _, _, sa_, sb_ in _raw], seen, weighted, 0.1)
    warnings += equipoise_warning(equipoise, out["equipoise_share"])
    out["max_abs_smd_after"] = max_after if weighted else None
    if pr.method == "matching" and pr.matching.bootstrap:
        from .reference_bootstrap import cox_interval

        out["bootstrap"] = cox_interval(plan, df, *pairs)
    out["warnings"] = warnings
    df = df.drop(columns=["logit"])
    results = {"table1": t1, "balance": bal, "preference": pref, "design": out}
    if t1_after is not None:
        results["table1_adjusted"] = t1_after
    return df, attrition, results


def _table1_adjusted(df, df0, vars_, before, labels, k) -> list[dict]:
    """Table 1 of the matched or weighted cohort ``df`` (see balance.table1_adjusted for the
    rules), with weighted sums taken here in pandas; ``df0`` is the cohort before the design."""
    import math

    def few(dropped):
        return 0 < dropped < k

    rows = []
    for name, level in vars_:
        flag = before[(name, level, 0)][2] and before[(name, level, 1)][2]
        for arm in (1, 0):
            d = df[df["group"] == arm]
            x, w = _col(d, name, level), d["weight"].astype(float)
            x0 = _col(df0[df0["group"] == arm], name, level)
            sw = float(w.sum())
            m = float((w * x).sum()) / sw if sw > 0 else float("nan")
            base = {"variable": name, "level": "-" if level is None else str(level),
                    "arm": labels[arm]}
            if flag:
                ones = int((x == 1).sum())
                ones0 = int((x0 == 1).sum())
                hide = min(ones, len(x) - ones) < k or few(ones0 - ones) or \
                    few(len(x0) - ones0 - (len(x) - ones))
                shown = {"persons": ones, "weighted_persons": float((w * x).sum()),
                         "percent": 100 * m, "mean": None, "sd": None}
            else:
                hide = len(x) < k or few(len(x0) - len(x))
                var = float((w * (x - m) ** 2).sum()) / (sw - 1) if sw > 1 else float("nan")
                shown = {"persons": len(x), "weighted_persons": sw, "percent": None,
                         "mean": m, "sd": math.sqrt(max(var, 0.0)) if math.isfinite(var)
                         else None}
            if hide:
                shown = dict.fromkeys(shown)
            rows.append({**base, **shown, **_flag(hide)})
    return rows


def _flag(hidden: bool) -> dict:
    """The disclosure flag as the other tables write it: present only on a withheld row."""
    return {"suppressed": True} if hidden else {}
