"""Hospital comparisons: per unit (hospital, region) the persons, observed events, expected
events from a risk-adjustment model fitted on all units together, O/E with its exact CI, and
funnel-plot control limits for O/E at 95 % and 99.8 % (Spiegelhalter 2005, Stat Med 24:1185).

The risk model is the study's logistic model of a fixed-horizon outcome (expected = Σ fitted
risks) or a Poisson model with log person-years offset for an open outcome (expected = Σ
fitted counts); its terms are the hospitals analysis's ``adjust:``, never the unit itself.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import poisson

from ..errors import UserError
from ..models.base import ModelError
from ..models.partitions import on_device
from ..models.rates import poisson_ci

COLUMNS = ("persons", "events", "expected", "oe", "lower_95", "upper_95", "limit95_low",
           "limit95_high", "limit998_low", "limit998_high", "suppressed")


def _expected_part(part, spec, coef, proportion, unit):
    """Per unit of this partition: persons, observed and expected events (the model's fitted
    risks or counts, summed), as the unit codes and one (units, 3) array. The partition's
    arrays may live on a device: the namespace of its arrays only."""
    from hpcstudy_kernels._namespace import array_namespace

    from ..engines.analyses import YEAR, _matrix

    X = _matrix(part, spec)
    xp = array_namespace(X)
    eta = coef[0] + X @ coef[1:]
    if proportion:
        mu = 1.0 / (1.0 + xp.exp(-eta))
    else:
        mu = xp.exp(eta) * (part["time"].astype(xp.float64) / YEAR)
    keys = part[unit].astype(xp.int64)
    codes = xp.unique(keys)
    rows = []
    for i in range(codes.shape[0]):
        sel = keys == codes[i]
        rows.append(xp.stack([sel.sum().astype(xp.float64),
                              part["event"][sel].sum().astype(xp.float64), mu[sel].sum()]))
    return codes, xp.stack(rows) if rows else xp.zeros((0, 3))


def _by_unit(r) -> dict:
    """{unit: [persons, observed, expected]} from a partition's result (or a merged one)."""
    if isinstance(r, dict):
        return r
    codes, sums = r
    return {int(k): [float(v) for v in row] for k, row in zip(codes, sums, strict=True)}


def _merge(a, b):
    a, b = _by_unit(a), _by_unit(b)
    out = {k: list(v) for k, v in a.items()}
    for k, v in b.items():
        old = out.setdefault(k, [0.0, 0.0, 0.0])
        for i in range(3):
            old[i] += v[i]
    return out


def funnel_limits(expected: float, p: float) -> tuple[float, float]:
    """Control limits of O/E at coverage ``p`` for a unit with ``expected`` events: Poisson
    quantiles of the expected count with Spiegelhalter's interpolation, over the expected."""
    if expected <= 0:
        return math.nan, math.nan

    def limit(q):
        r = poisson.ppf(q, expected)
        alpha = (poisson.cdf(r, expected) - q) / poisson.pmf(r, expected)
        return max(r - alpha, 0.0) / expected

    return limit((1 - p) / 2), limit(1 - (1 - p) / 2)


def hospitals(plan, parts, fitted: dict | None = None) -> list[dict]:
    """The hospitals table (rows sorted by unit, or by rank when identified by rank)."""
    from ..engines import analyses as A

    h = plan.hospitals
    proportion = A.fixed_horizon(plan)
    try:
        model = A.glm(plan, parts, h.adjust, poisson=not proportion)
    except ModelError as e:
        raise UserError(f"the hospitals' risk model cannot be fitted: {e}",
                        where=plan.source, fix="simplify analyses.hospitals.adjust") from e
    if fitted is not None:
        fitted["hospitals_risk_model"] = model
    _, spec = A.design_columns(plan, parts, h.adjust)
    # per-row predictions where the rows are (on the run's device)
    sums = _by_unit(on_device(parts).map_reduce(_expected_part, spec,
                                                np.asarray(model.coef_, float), proportion,
                                                h.by, combine=_merge))
    rows = []
    for unit in sorted(sums):
        n, o, e = sums[unit]
        lo, hi = poisson_ci(o, e) if e > 0 else (math.nan, math.nan)
        l95, h95 = funnel_limits(e, 0.95)
        l998, h998 = funnel_limits(e, 0.998)
        rows.append({"hospital": unit, "persons": int(n), "events": int(o), "expected": e,
                     "oe": o / e if e > 0 else math.nan, "lower_95": lo, "upper_95": hi,
                     "limit95_low": l95, "limit95_high": h95, "limit998_low": l998,
                     "limit998_high": h998})
    if h.identify == "rank":      # 1: the lowest O/E; ties by code (never shown)
        rows.sort(key=lambda r: (math.isnan(r["oe"]), 0 if math.isnan(r["oe"]) else r["oe"],
                                 r["hospital"]))   # a unit without expected events last
        for i, r in enumerate(rows, 1):
            r["hospital"] = i
    elif h.identify == "none":    # an anonymous number by size
        rows.sort(key=lambda r: (r["persons"], r["hospital"]))
        for i, r in enumerate(rows, 1):
            r["hospital"] = i
    return rows


def hidden_codes(kind: str, content, study_doc, approval, where: str) -> list[str]:
    """What the export gate holds under a project that hides hospital codes
    (``disclosure.identify_hospitals``): a hospitals table whose units are not the ranks or
    numbers 1…n, and a table or model that shows a hospital covariate's codes (a key column
    or a ``hospital=CODE`` term), whichever run wrote it."""
    hides = getattr(approval, "identify_hospitals", "code") != "code"
    if not hides or content is None:
        return []
    covs = study_doc.get("covariates") if isinstance(study_doc, dict) else None
    hosp = {c.get("name") for c in covs or () if isinstance(c, dict) and
            c.get("index_contact") == "c_sgh"}
    why = f"shows hospital codes, which project {approval.project} hides"
    out = []

    def units(rows, at):
        try:
            got = sorted(int(r["hospital"]) for r in rows)
        except (KeyError, TypeError, ValueError):
            got = None
        if got != list(range(1, len(rows) + 1)):
            out.append(f"{at}: {why} (the units must be numbered 1 to {len(rows)})")

    def tables(rows, at):
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            shown = sorted(hosp & set(rows[0]))
            if shown:
                out.append(f"{at}: column {shown[0]!r} {why}")
            # a model term, a balance or Table 1 row named hospital=CODE
            texts = [v for r in rows for v in r.values() if isinstance(v, str) and "=" in v]
            if any(t.split("=", 1)[0] in hosp for t in texts):
                out.append(f"{at}: a term or row named after a hospital's code {why}")

    if kind == "hospitals" and isinstance(content, list):
        units(content, where)
    elif kind == "results" and isinstance(content, dict):
        if isinstance(content.get("hospitals"), list):
            units(content["hospitals"], f"{where}:hospitals")
        for key in ("rates",):
            tables(content.get(key), f"{where}:{key}")
        for name, rows in (content.get("measures") or {}).items():
            tables(rows, f"{where}:measures.{name}")
        for name, m in (content.get("models") or {}).items():
            if isinstance(m, dict):
                tables(m.get("terms"), f"{where}:models.{name}")
        for key, rows in content.items():   # Table 1, balance and other design tables
            if key not in ("hospitals", "rates", "measures", "models"):
                tables(rows, f"{where}:{key}")
    elif isinstance(content, list):
        tables(content, where)
    return out
