"""Reading ``propensity:`` and ``comparator.both_arms`` from a study (called by study/parse.py;
every problem is collected with file:line, the field and a fix)."""

from __future__ import annotations

from .spec import (
    BOTH_ARMS,
    ESTIMANDS,
    METHODS,
    SUPPLY,
    AsTreated,
    Matching,
    Propensity,
    Weighting,
)


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


MIN_REPLICATES = 20


def propensity(cx, doc, covariates: dict, has_comparator: bool,
               has_cox: bool = False) -> Propensity | None:
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
        # a misspelt method is its own error: no second one about what it would have chosen
        if other in node and other != method and node.get("method", method) in METHODS:
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
            boot = cx.integer(m, "bootstrap", "propensity.matching.bootstrap", 0, 10_000, 0)
            if 0 < boot < MIN_REPLICATES:
                cx.err(m, "bootstrap", "propensity.matching.bootstrap", f"{boot} replicates are "
                       f"too few for a 95 % interval", f"give at least {MIN_REPLICATES} (e.g. "
                       "bootstrap: 200), or 0 for none")
            elif boot and not has_cox:
                cx.err(m, "bootstrap", "propensity.matching.bootstrap", "the bootstrap refits "
                       "the Cox model: the study has no analyses.cox", "add analyses: {cox: "
                       "true}, or drop bootstrap:")
            matching = Matching(ratio, caliper, replace, boot)
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
    charlson = cx.boolean(node, "charlson_components", "propensity.charlson_components", False)
    flags = cx.boolean(node, "codelist_flags", "propensity.codelist_flags", False)
    return Propensity(names, method, matching, weighting, strata, trim, penalty, bins,
                      everything, charlson, flags)


def as_treated(cx, fu, index, comparator, names: dict) -> AsTreated | None:
    """``follow_up.as_treated``: ``true`` (the defaults) or a mapping of options. ``index`` is
    the study's index rule (the exposure's), ``comparator`` the Comparator or None, ``names``
    the codelists by name."""
    from ..study.parse import show

    node = fu["as_treated"]
    path = "follow_up.as_treated"
    if node is False:
        return None
    active = comparator is not None and comparator.kind == "active"
    rules = [("exposure" if comparator is not None else "index", index)]
    if active:
        rules.append(("comparator.active", comparator.index))
    ok = True
    for where, rule in rules:
        if rule is None:
            return None
        if rule.kind != "first_event" or rule.events is None or rule.events.register != "lmdb":
            cx.err(fu, "as_treated", path, f"as-treated follow-up follows the drug of the index "
                   f"rule, but {where} is not a first dispensing (register lmdb)",
                   "start the arm at a dispensing (an atc codelist), or drop as_treated:")
            ok = False
    if node is True:
        return AsTreated(switch=active) if ok else None
    m = cx.mapping(node, "as_treated", path, fu, "as_treated",
                   "as_treated: {grace_days: 30, per_day: 1}")
    if m is None:
        return None
    supply = _choice(cx, m, "supply", f"{path}.supply", SUPPLY, "ddd")
    per_day = _number(cx, m, "per_day", f"{path}.per_day", 0, 1000, 1.0, open_lo=True)
    from ..study.keys import DAYS

    grace = cx.integer(m, "grace_days", f"{path}.grace_days", 0, DAYS, 30)
    stockpile = cx.boolean(m, "stockpile", f"{path}.stockpile", True)
    episode_end = cx.boolean(m, "episode_end", f"{path}.episode_end", True)
    switch = cx.boolean(m, "switch", f"{path}.switch", active)
    if switch and not active:
        cx.err(m, "switch", f"{path}.switch", "a switch is to the other arm's drug: the study "
               "has no active comparator", "drop switch:, or compare with comparator: "
               "{active: ...}")
        ok = False
    add_on: list[str] = []
    if "add_on" in m:
        v = m["add_on"]
        atc = sorted(n for n, c in names.items() if c.system == "atc")
        if not isinstance(v, list) or not v:
            cx.err(m, "add_on", f"{path}.add_on", f"must be a list of atc codelist names, not "
                   f"{show(v)}", f"e.g. add_on: [{atc[0] if atc else 'glp1'}]")
            ok = False
            v = []
        for i, x in enumerate(v):
            if not isinstance(x, str) or x not in names:
                from ..study.parse import closest

                near = closest(x, names) if isinstance(x, str) else None
                cx.err(v, i, f"{path}.add_on", f"codelist {show(x)} is not defined",
                       f"did you mean {near!r}?" if near else "define it under codelists:")
                ok = False
            elif names[x].system != "atc":
                cx.err(v, i, f"{path}.add_on", f"{x} holds {names[x].system} codes: an add-on "
                       "is a dispensed drug", f"use an atc codelist ({', '.join(atc)})")
                ok = False
            elif x in add_on:
                cx.err(v, i, f"{path}.add_on", f"{x!r} given twice", "give it once")
                ok = False
            else:
                add_on.append(x)
    if ok and not (episode_end or switch or add_on):
        cx.err(m, None, path, "censors at nothing (episode_end and switch false, no add_on): "
               "that is intention-to-treat follow-up", "drop as_treated:, or set episode_end: "
               "true")
        ok = False
    if not ok:
        return None
    return AsTreated(supply, per_day, grace, stockpile, episode_end, switch, tuple(add_on))


KEYS = {
    "as_treated": {
        "supply": ("ddd | units", "days of supply of a dispensing: apk × volume (DDDs, "
                   "default) or apk × packsize (units), divided by per_day"),
        "per_day": ("number > 0, at most 1000", "the assumption: DDDs (or units) taken per "
                    "day (default 1)"),
        "grace_days": ("whole number ≥ 0", "an uncovered gap up to this long continues the "
                       "episode, and the episode ends this long after the supply (default 30)"),
        "stockpile": ("true | false", "a refill before the supply runs out is used after it "
                      "(default true)"),
        "episode_end": ("true | false", "censor when the episode ends (default true)"),
        "switch": ("true | false", "censor the day before the first dispensing of the other "
                   "arm's drug (default true with an active comparator)"),
        "add_on": ("list of atc codelist names", "censor the day before the first dispensing "
                   "of any of these drugs"),
    },
    "propensity": {
        "covariates": ("list of covariate names, or all", "what the score is fitted on"),
        "method": (" | ".join(METHODS), "how the score is used (default matching; none: "
                   "diagnostics only)"),
        "matching": ("{ratio, caliper, replace, bootstrap}",
                     "1:k nearest-neighbour matching on the logit of the score"),
        "weighting": ("{estimand, stabilised, truncate}", "inverse probability weights"),
        "stratification": ("{strata}", "quantile strata of the score, as weights"),
        "trim": ("true | false", "keep only the common support of the arms' scores first"),
        "penalty": ("number ≥ 0", "L2 penalty of the score model (scikit-learn's 1/C); "
                    "0: none (default)"),
        "bins": ("whole number 2–1000", "bins of the preference-score table (default 20)"),
        "charlson_components": ("true | false", "each Charlson category a 0/1 covariate of "
                                "the score, in days [-3650, 0] (named charlson_CATEGORY)"),
        "codelist_flags": ("true | false", "each codelist besides the arms' own a 0/1 covariate "
                           "of the score: any event up to index (named codelist_NAME)"),
    },
    "matching": {
        "ratio": ("whole number 1–100", "comparator persons per exposed person (default 1)"),
        "caliper": ("number > 0, or null", "largest distance, in SDs of the logit of the "
                    "score (default 0.2)"),
        "replace": ("true | false", "may a comparator person be matched again (default "
                    "false)"),
        "bootstrap": ("whole number 0 or 20–10000", "replicates of a bootstrap interval of "
                      "the Cox model's exposure HR, resampling matched sets (default 0: none)"),
    },
    "weighting": {
        "estimand": ("ate | att | overlap", "whom the weights stand for (default ate)"),
        "stabilised": ("true | false", "multiply by the arm's share (ate, att)"),
        "truncate": ("[low, high] percentiles", "cap the weights at these percentiles"),
    },
    "stratification": {"strata": ("whole number 2–100", "quantile groups (default 5)")},
}
