"""Reading ``propensity:`` and ``comparator.both_arms`` from a study (called by study/parse.py;
every problem is collected with file:line, the field and a fix)."""

from __future__ import annotations

from .spec import BOTH_ARMS, ESTIMANDS, METHODS, Matching, Propensity, Weighting


def _number(cx, node, key, path, lo, hi, default, open_lo=False):
    from ..study.parse import is_number, show

    if key not in node:
        return default
    v = node[key]
    if not is_number(v) or v < lo or v > hi or (open_lo and v <= lo):
        cx.err(node, key, path, f"must be a number {'above' if open_lo else 'from'} {lo:g}"
               f" {'and at most' if open_lo else 'to'} {hi:g}, not {show(v)}",
               f"e.g. {key}: {default}")
        return default
    return float(v)


def _choice(cx, node, key, path, choices, default):
    from ..study.parse import closest, show

    if key not in node:
        return default
    v = node[key]
    if v not in choices:
        near = closest(v, choices) if isinstance(v, str) else None
        cx.err(node, key, path, f"must be one of {' | '.join(choices)}, not {show(v)}",
               f"did you mean {near!r}?" if near else f"e.g. {key}: {default}")
        return default
    return v


def both_arms(cx, node) -> str:
    """``comparator.both_arms``: what to do with persons in both arms (active comparator)."""
    return _choice(cx, node, "both_arms", "comparator.both_arms", BOTH_ARMS, "remove")


def propensity(cx, doc, covariates: dict, has_comparator: bool) -> Propensity | None:
    from ..study.parse import _names_list, show

    node = doc["propensity"]
    node = cx.mapping(node, "propensity", "propensity", doc, "propensity",
                      "propensity: {covariates: [age, sex], method: matching}")
    if node is None:
        return None
    if not has_comparator:
        cx.err(doc, "propensity", "propensity", "a propensity score compares two arms: the "
               "study has no comparator", "add exposure: and comparator:, or drop propensity:")
    if "covariates" not in node:
        cx.err(node, None, "propensity.covariates", "missing",
               "e.g. covariates: [age, sex, charlson], or covariates: all")
        return None
    everything = node["covariates"] == "all"
    if everything:
        names = tuple(covariates)
        if not names:
            cx.err(node, "covariates", "propensity.covariates", "the study defines no "
                   "covariates", "define them under covariates:")
            return None
    else:
        names = _names_list(cx, node, "covariates", "propensity.covariates", set(covariates),
                            "covariates", {"group": "the arm is what the score predicts"})
        if names is None:
            return None
        if not names:
            cx.err(node, "covariates", "propensity.covariates", "is empty",
                   "name the confounders, e.g. [age, sex]")
            return None
    method = _choice(cx, node, "method", "propensity.method", METHODS, "matching")
    for other in ("matching", "weighting", "stratification"):
        if other in node and other != method:
            cx.err(node, other, f"propensity.{other}", f"is set but method is {method}",
                   f"write method: {other}, or drop {other}:")
    matching, weighting, strata = Matching(), Weighting(), 5
    if "matching" in node:
        m = cx.mapping(node["matching"], "matching", "propensity.matching", node, "matching",
                       "matching: {ratio: 1, caliper: 0.2}")
        if m is not None:
            ratio = cx.integer(m, "ratio", "propensity.matching.ratio", 1, 100, 1)
            caliper = 0.2
            if "caliper" in m and m["caliper"] is None:
                caliper = None
            else:
                caliper = _number(cx, m, "caliper", "propensity.matching.caliper", 0, 10, 0.2,
                                  open_lo=True)
            replace = cx.boolean(m, "replace", "propensity.matching.replace", False)
            matching = Matching(ratio, caliper, replace)
    if "weighting" in node:
        w = cx.mapping(node["weighting"], "weighting", "propensity.weighting", node,
                       "weighting", "weighting: {estimand: ate, stabilised: true}")
        if w is not None:
            est = _choice(cx, w, "estimand", "propensity.weighting.estimand", ESTIMANDS, "ate")
            stab = cx.boolean(w, "stabilised", "propensity.weighting.stabilised", False)
            trunc = None
            if "truncate" in w:
                t = w["truncate"]
                from ..study.parse import is_number

                if not (isinstance(t, list) and len(t) == 2 and all(is_number(x) for x in t)
                        and 0 <= t[0] < t[1] <= 100):
                    cx.err(w, "truncate", "propensity.weighting.truncate", "must be [low, high] "
                           f"percentiles with 0 ≤ low < high ≤ 100, not {show(t)}",
                           "e.g. truncate: [1, 99]")
                else:
                    trunc = (float(t[0]), float(t[1]))
            if stab and est == "overlap":
                cx.err(w, "stabilised", "propensity.weighting.stabilised", "overlap weights "
                       "are bounded already; stabilising applies to ate and att",
                       "drop stabilised:")
            weighting = Weighting(est, stab, trunc)
    if "stratification" in node:
        s = cx.mapping(node["stratification"], "stratification", "propensity.stratification",
                       node, "stratification", "stratification: {strata: 5}")
        if s is not None:
            strata = cx.integer(s, "strata", "propensity.stratification.strata", 2, 100, 5)
    trim = cx.boolean(node, "trim", "propensity.trim", False)
    penalty = _number(cx, node, "penalty", "propensity.penalty", 0, 1e6, 0.0)
    bins = cx.integer(node, "bins", "propensity.bins", 2, 1000, 20)
    return Propensity(names, method, matching, weighting, strata, trim, penalty, bins,
                      everything)


KEYS = {
    "propensity": {
        "covariates": ("list of covariate names, or all", "what the score is fitted on"),
        "method": (" | ".join(METHODS), "how the score is used (default matching; none: "
                   "diagnostics only)"),
        "matching": ("{ratio, caliper, replace}", "1:k nearest-neighbour matching on the "
                     "logit of the score"),
        "weighting": ("{estimand, stabilised, truncate}", "inverse probability weights"),
        "stratification": ("{strata}", "quantile strata of the score, as weights"),
        "trim": ("true | false", "keep only the common support of the arms' scores first"),
        "penalty": ("number ≥ 0", "L2 penalty of the score model (scikit-learn's 1/C); "
                    "0: none (default)"),
        "bins": ("whole number 2–1000", "bins of the preference-score table (default 20)"),
    },
    "matching": {
        "ratio": ("whole number 1–100", "comparator persons per exposed person (default 1)"),
        "caliper": ("number > 0, or null", "largest distance, in SDs of the logit of the "
                    "score (default 0.2)"),
        "replace": ("true | false", "may a comparator person be matched again (default "
                    "false)"),
    },
    "weighting": {
        "estimand": ("ate | att | overlap", "whom the weights stand for (default ate)"),
        "stabilised": ("true | false", "multiply by the arm's share (ate, att)"),
        "truncate": ("[low, high] percentiles", "cap the weights at these percentiles"),
    },
    "stratification": {"strata": ("whole number 2–100", "quantile groups (default 5)")},
}
