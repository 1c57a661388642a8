"""Analyses of the per-person table, as reductions over its partitions.

The reference engine passes one partition (the whole table); the dask engine passes one per
register partition. Every figure is a sum over partitions (counts, person-time, risk-set sums
of the model fits), so both give the same numbers.
"""

from __future__ import annotations

import math

import numpy as np

from hpcstudy_kernels._namespace import array_namespace

from ..models import AalenJohansen, CoxPH, KaplanMeier, Logistic, Poisson
from ..models.partitions import Partitions, on_device
from ..models.rates import poisson_ci, wilson_ci
from ..plan.nodes import Plan
from .common import year_of

YEAR = 365.25

# columns each kind of table writes besides its keys; a key never takes one of these names
RATE_COLUMNS = ("persons", "events", "person_years", "rate_per_1000py", "lower_95", "upper_95",
                "suppressed")
MEASURE_COLUMNS = ("persons", "events", "proportion", "lower_95", "upper_95", "suppressed")
LEXIS_KEYS = ("group", "age_band", "period")


def key_names(by: tuple[str, ...], reserved: tuple[str, ...]) -> list[str]:
    """Column names for the key values ``by``: a covariate called like one of the table's own
    columns (``events``) becomes ``by_events``, so keys and counts never share a column."""
    out: list[str] = []
    for b in by:
        name = b
        while name in reserved or name in out:
            name = f"by_{name}"
        out.append(name)
    return out


def _key_columns(part: dict, by: tuple[str, ...]) -> list[np.ndarray]:
    cols = []
    for b in by:
        if b == "index_year":
            cols.append(year_of(part["index_date"].astype(np.int64)))
        else:
            cols.append(np.asarray(part[b]))
    return cols


def _group_sums(part: dict, by: tuple[str, ...], values: dict[str, np.ndarray]) -> dict:
    """{key tuple: {name: sum}} for this partition."""
    keys = _key_columns(part, by)
    if not keys:
        return {(): {k: float(v.sum()) for k, v in values.items()}}
    uniq, inv = _distinct_rows(keys, part["pnr"].shape[0])
    sums = {k: np.bincount(inv, weights=v, minlength=len(uniq)) for k, v in values.items()}
    out = {}
    for i, u in enumerate(uniq):
        key = tuple(int(x) if float(x).is_integer() else float(x) for x in u)
        out[key] = {k: float(s[i]) for k, s in sums.items()}
    return out


def _distinct_rows(keys: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(np.stack(keys, axis=1), axis=0, return_inverse=True)``. Whole-number keys
    go by one code per row (each column's rank among its sorted values, mixed radix: the same
    order), about 60 times faster than unique rows, which sort a structured view."""
    if n == 0 or not all(np.issubdtype(k.dtype, np.integer) or k.dtype == bool for k in keys) \
            or not np.issubdtype(np.result_type(*keys), np.integer):
        stacked = np.stack(keys, axis=1) if n else np.zeros((0, len(keys)))
        uniq, inv = np.unique(stacked, axis=0, return_inverse=True)
        return uniq, inv.reshape(-1)
    ranked = [_unique_ints(k) for k in keys]
    levels = [lv for lv, _ in ranked]
    if math.prod(len(lv) for lv in levels) >= 2 ** 62:   # the codes would overflow
        uniq, inv = np.unique(np.stack(keys, axis=1), axis=0, return_inverse=True)
        return uniq, inv.reshape(-1)
    code = np.zeros(n, np.int64)
    for lv, rank in ranked:
        code = code * len(lv) + rank.reshape(-1)
    used, inv = _unique_ints(code)
    cols = []
    for lv in reversed(levels):
        cols.append(lv[used % len(lv)])
        used = used // len(lv)
    dtype = np.result_type(*keys)
    return np.stack(cols[::-1], axis=1).astype(dtype), inv.reshape(-1)


# Whole numbers spanning at most this many values are ranked by counting, not by sorting
COUNTED_SPAN = 1 << 16


def _unique_ints(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(k, return_inverse=True)`` of a non-empty integer or bool column; where its
    values span few numbers (sex, a group, a year, a key's codes), from a count of each value
    (two passes, no sort)."""
    lo, hi = int(k.min()), int(k.max())
    if hi - lo >= COUNTED_SPAN or hi >= 2 ** 63:   # (uint64 beyond int64: not counted)
        uniq, inv = np.unique(k, return_inverse=True)
        return uniq, inv.reshape(-1)
    at = k.astype(np.intp)
    if lo:
        at -= lo
    present = np.bincount(at, minlength=hi - lo + 1) > 0
    rank = np.cumsum(present) - 1
    return (np.nonzero(present)[0] + lo).astype(k.dtype), rank[at]


def _merge(a: dict, b: dict) -> dict:
    out = {k: dict(v) for k, v in a.items()}
    for k, v in b.items():
        if k in out:
            for name, x in v.items():
                out[k][name] += x
        else:
            out[k] = dict(v)
    return out


def _rate_sums(part, by):
    # whole days add exactly in any order: every engine gets the same bits
    return _group_sums(part, by, {"persons": np.ones(part["pnr"].shape[0]),
                                  "events": part["event"].astype(float),
                                  "days": part["time"].astype(float)})


def fixed_horizon(plan: Plan) -> bool:
    """A fixed-horizon outcome (an outcome window with an end, e.g. 30-day mortality) is a
    proportion of persons, never a rate per person-years."""
    return plan.outcome.window.hi is not None


def rates(parts: Partitions, by: tuple[str, ...], proportion: bool = False) -> list[dict]:
    """Rates per 1000 person-years (exact Poisson CI), or with ``proportion`` the share of
    persons with the outcome (Wilson CI), by the key columns ``by``."""
    if proportion:
        return measure(parts, by, RATE_COLUMNS)
    sums = parts.map_reduce(_rate_sums, by, combine=_merge)
    rows = []
    for key in sorted(sums):
        s = sums[key]
        s["person_years"] = s.pop("days") / YEAR
        lo, hi = poisson_ci(s["events"], s["person_years"]) if s["person_years"] > 0 else \
            (math.nan, math.nan)
        rows.append({**dict(zip(key_names(by, RATE_COLUMNS), key, strict=True)),
                     "persons": int(s["persons"]),
                     "events": int(s["events"]), "person_years": s["person_years"],
                     "rate_per_1000py": 1000 * s["events"] / s["person_years"]
                     if s["person_years"] else math.nan,
                     "lower_95": 1000 * lo, "upper_95": 1000 * hi})
    return rows


def _measure_sums(part, by):
    return _group_sums(part, by, {"persons": np.ones(part["pnr"].shape[0]),
                                  "events": part["event"].astype(float)})


def measure(parts: Partitions, by: tuple[str, ...],
            reserved: tuple[str, ...] = MEASURE_COLUMNS) -> list[dict]:
    """Proportion of persons with the outcome (in its window), by groups and intervals."""
    sums = parts.map_reduce(_measure_sums, by, combine=_merge)
    rows = []
    for key in sorted(sums):
        n, k = sums[key]["persons"], sums[key]["events"]
        lo, hi = wilson_ci(k, n)
        rows.append({**dict(zip(key_names(by, reserved), key, strict=True)),
                     "persons": int(n), "events": int(k),
                     "proportion": k / n, "lower_95": lo, "upper_95": hi})
    return rows


# -- models -----------------------------------------------------------------------------------
def design_columns(plan: Plan, parts: Partitions, adjust: tuple[str, ...], bands=None):
    """Names of the design's terms: group (with a comparator), then covariates; a region is
    expanded into indicators against its lowest level, a split of follow-up (``age_band``,
    ``time_band`` of split rows, limits in ``bands``) into indicators against its first."""
    names, spec = [], []
    if plan.has_comparator:
        names.append(plan.exposure_name)
        spec.append(("group", None))
    for a in adjust:
        if a in ("age_band", "time_band"):
            from ..timesplit.terms import band_label

            levels = sorted(parts.map_reduce(_levels, a, combine=_union))
            for lv in levels[1:]:
                names.append(f"{a} {band_label(a, bands[a], lv)}")
                spec.append((a, lv))
            continue
        col = next(c for c in plan.columns if c.name == a)
        kind = col.kind if col.attribute != "diagnoses" else "flag"   # a contact's diagnoses: 0/1
        if kind in ("region", "index_contact"):   # categories: indicators vs the lowest
            levels = _sorted_values(parts.map_reduce(_distinct, a, combine=_cat))
            for lv in levels[1:]:
                names.append(f"{a}={lv}")
                spec.append((a, lv))
        else:
            names.append(a)
            spec.append((a, None))
    return names, spec


def _levels(part, col):
    return set(np.unique(part[col]).tolist())


def _union(a, b):
    return a | b


# -- per-partition model code: the partition's arrays may live on a device (a GPU, or the CPU
# stand-in), so it uses only the namespace of its arrays; what it returns from a reduction
# comes to the host through models.partitions, and host arguments reach it as device arrays.
def _distinct(part, col):
    """The distinct values of a column in this partition (an array, to the host)."""
    xp = array_namespace(part[col])
    return [xp.unique(part[col])]


def _cat(a, b):
    return a + b


def _sorted_values(arrays) -> list:
    """Sorted distinct values (Python numbers) of the partitions' ``_distinct`` arrays."""
    return np.unique(np.concatenate(arrays)).tolist()


def _matrix(part, spec):
    """The design matrix of ``spec``'s terms from the partition table's columns."""
    xp = array_namespace(part["pnr"])
    cols = []
    for name, level in spec:
        v = part[name].astype(xp.float64)
        cols.append((v == level).astype(xp.float64) if level is not None else v)
    n = part["pnr"].shape[0]
    return xp.stack(cols, axis=1) if cols else xp.zeros((n, 0))


def _cox_part(part, spec, strata):
    xp = array_namespace(part["pnr"])
    s = xp.zeros(part["pnr"].shape[0], dtype=xp.int64)
    for name in strata:
        s = s * 100_000 + part[name].astype(xp.int64)
    out = {"X": _matrix(part, spec), "time": part["time"].astype(xp.float64),
           "event": part["event"].astype(xp.float64), "weights": _weights(part),
           "strata": s, "cluster": part["pnr"]}
    if "entry" in part:   # counting-process rows of a time-varying covariate
        out["entry"] = part["entry"].astype(xp.float64)
        # a person's episodes are consecutive pieces of one follow-up, not repeated
        # measurements: the model-based errors hold (as CoxTimeVaryingFitter's)
        del out["cluster"]
    return out


def _weights(part):
    """The design's weights (propensity-score weighting), else 1. With weights other than 1,
    or a person in more than one row, the models' errors are robust, clustered by person."""
    xp = array_namespace(part["pnr"])
    if "weight" in part:
        return part["weight"].astype(xp.float64)
    return xp.ones(part["pnr"].shape[0])


def _split_varying(plan: Plan, parts: Partitions, terms,
                   bands=None) -> tuple[Partitions, int | None]:
    """The partitions split at the switch days of the time-varying covariates among ``terms``
    and at the limits of the split terms (``bands``: {"age_band": …, "time_band": …};
    timesplit.terms), and the persons before the split; unchanged without any."""
    tv = tuple(c.name for c in plan.columns if c.time_varying and c.name in terms)
    bands = {k: v for k, v in (bands or {}).items() if k in terms}
    if not tv and not bands:
        return parts, None
    age_col = next((c.name for c in plan.columns if c.kind == "age"), None)
    if getattr(parts, "frame", None) is not None:   # the reference engine's own pandas split
        from .reference_split import split_parts

        return split_parts(parts, tv, bands, age_col)
    from ..timesplit.terms import episodes

    return parts.map(episodes, tv, bands, age_col), sum(parts.map_reduce(_n_rows))


def model_bands(spec) -> dict:
    """{"age_band": limits, "time_band": limits} of a model's split terms."""
    if spec is None:
        return {}
    return {k: getattr(spec, f"{k}s") for k in ("age_band", "time_band")
            if getattr(spec, f"{k}s", None) is not None}


def _persons_of_terms(m, parts, spec, persons):
    """A split model's counts: persons, not pieces of follow-up."""
    if persons is not None:
        from ..timesplit.terms import person_counts

        m.cells_ = person_counts(parts, spec, m.cells_)
        m.cells_["persons"] = persons


def _n_rows(part):
    return [int(part["pnr"].shape[0])]


def _recode(part, keys):
    """Strata codes 0, 1, … by the sorted codes ``keys`` of all partitions."""
    xp = array_namespace(part["strata"])
    part = dict(part)
    part["strata"] = xp.searchsorted(keys, part["strata"]).astype(xp.int64)
    return part


def cox(plan: Plan, parts: Partitions, adjust, strata, bands: dict | None = None) -> CoxPH:
    """``bands``: limits of the split terms in ``adjust`` (:func:`model_bands`)."""
    bands = bands or {}
    parts, persons = _split_varying(plan, parts, (*adjust, *strata), bands)
    names, spec = design_columns(plan, parts, adjust, bands)
    # on a GPU run the tables go to the device here (once) and the fit runs there
    p = on_device(parts).map(_cox_part, spec, strata)
    if strata:
        codes = np.unique(np.concatenate(p.map_reduce(_distinct, "strata", combine=_cat)))
        p = p.map(_recode, codes.astype(np.int64))
    m = CoxPH("efron").fit_partitions(p, names)
    m.cells_ = term_cells(p, names, "event", _variables(spec))
    # rows are pieces of follow-up; the model's persons are persons
    _persons_of_terms(m, parts, spec, persons)
    return m


# -- the counts behind a model's terms -----------------------------------------------------------
PATTERN_CAP = 4096  # beyond this many covariate patterns a design is not a table of few cells
FEW_VALUES = 16     # a column of at most this many values is a table's margin, not a measurement


def _variables(spec) -> list[str | None]:
    """The covariate each design column comes from (a region's indicators share one)."""
    return [name for name, _ in spec]


def _few_values(xp, col) -> bool:
    """At most FEW_VALUES distinct values in ``col``. A measurement (an age) shows more among
    its first rows already: those are looked at first, so its column is not sorted whole."""
    head = col[:4 * FEW_VALUES]
    if xp.unique(head).shape[0] > FEW_VALUES:
        return False
    return xp.unique(col).shape[0] <= FEW_VALUES


def _cells_part(part, ycol):
    X = part["X"]
    xp = array_namespace(X)
    y = part[ycol].astype(xp.float64)
    n, k = X.shape
    indicator = xp.all((X == 0) | (X == 1), axis=0)
    # a count covariate of values {1, 2} is no indicator, yet a model of such columns is a
    # table of few cells all the same: its estimates and SEs give the cells back
    few = all(_few_values(xp, X[:, j]) for j in range(k))
    patterns = None
    if n == 0:
        patterns = {}
    elif few:
        # the distinct rows (covariate patterns): rows sorted by column 0, then 1, …; a
        # pattern starts where a row differs from the one before
        order = xp.lexsort(X.T[::-1]) if k else xp.arange(n)
        Xs = X[order]
        new = xp.ones(n, dtype=bool)
        if k:
            new[1:] = xp.any(Xs[1:] != Xs[:-1], axis=1)
        starts = xp.nonzero(new)[0]
        if starts.shape[0] > PATTERN_CAP:   # the merged table would drop them anyway
            patterns = None
        else:
            run = xp.cumsum(new) - 1
            m = starts.shape[0]
            patterns = (Xs[starts], xp.bincount(run, minlength=m),
                        xp.bincount(run, weights=y[order], minlength=m))
    return {"n": int(n), "events": y.sum(), "ones": X.sum(axis=0),
            "ones_events": X.T @ y, "indicator": indicator, "patterns": patterns}


def _cells_host(c):
    """A partition's ``_cells_part`` on the host, its patterns as a dict {row: [persons,
    events]}."""
    pat = c["patterns"]
    if isinstance(pat, tuple):
        uniq, persons, events = pat
        pat = {tuple(u.tolist()): [int(a), int(b)]
               for u, a, b in zip(uniq, persons, events, strict=True)}
    return {**c, "events": int(c["events"]), "indicator": np.asarray(c["indicator"]),
            "patterns": pat}



def _cells_merge(a, b):
    a, b = _cells_host(a), _cells_host(b)
    pat = None
    if a["patterns"] is not None and b["patterns"] is not None:
        pat = {k: list(v) for k, v in a["patterns"].items()}
        for k, v in b["patterns"].items():
            old = pat.setdefault(k, [0, 0])
            old[0] += v[0]
            old[1] += v[1]
        if len(pat) > PATTERN_CAP:
            pat = None
    return {"n": a["n"] + b["n"], "events": a["events"] + b["events"],
            "ones": a["ones"] + b["ones"], "ones_events": a["ones_events"] + b["ones_events"],
            "indicator": a["indicator"] & b["indicator"], "patterns": pat}


def term_cells(parts: Partitions, names: list[str], ycol: str, variables=None) -> dict:
    """The counts behind each term of a fitted model: for an indicator column (values 0 and 1
    only: a binary covariate, the exposure, a level of a categorical) the persons and events
    where it is 1 and in the rest; ``None`` for a continuous term or the intercept. With
    ``patterns`` (persons and events per distinct row of the design) when every column is an
    indicator and there are at most PATTERN_CAP of them."""
    c = _cells_host(parts.map_reduce(_cells_part, ycol, combine=_cells_merge))
    n, e = c["n"], c["events"]
    variables = list(variables) if variables is not None else list(names)
    if len(variables) < len(names):  # the intercept column comes first
        variables = [None] * (len(names) - len(variables)) + variables
    terms = []
    for j, name in enumerate(names):
        if name == "intercept" or not c["indicator"][j]:
            terms.append({"term": name, "variable": variables[j], "persons": None,
                          "events": None, "persons_other": None, "events_other": None})
            continue
        p1, e1 = int(round(c["ones"][j])), int(round(c["ones_events"][j]))
        terms.append({"term": name, "variable": variables[j], "persons": p1, "events": e1,
                      "persons_other": n - p1, "events_other": e - e1})
    patterns = None if c["patterns"] is None else sorted(c["patterns"].values())
    return {"persons": n, "events": e, "terms": terms, "patterns": patterns}


def _glm_part(part, spec, poisson):
    xp = array_namespace(part["pnr"])
    X = _matrix(part, spec)
    X = xp.concatenate([xp.ones((X.shape[0], 1)), X], axis=1)
    # a person's split episodes are pieces of one follow-up: no clustering for those
    out = {"X": X, "y": part["event"].astype(xp.float64), "weights": _weights(part)}
    if "entry" not in part:
        out["cluster"] = part["pnr"]
    if poisson:
        days = part["time"] - part["entry"] if "entry" in part else part["time"]
        out["offset"] = xp.log(days / YEAR)
    return out


def glm(plan: Plan, parts: Partitions, adjust, poisson: bool, bands: dict | None = None):
    """``bands``: limits of the split terms in ``adjust`` (:func:`model_bands`; Poisson only)."""
    persons = None
    bands = (bands or {}) if poisson else {}
    if poisson:   # person-time by exposure state; a logistic model refuses such terms (parse)
        parts, persons = _split_varying(plan, parts, adjust, bands)
    names, spec = design_columns(plan, parts, adjust, bands)
    p = on_device(parts).map(_glm_part, spec, poisson)
    model = Poisson() if poisson else Logistic()
    m = model.fit_partitions(p, ["intercept", *names])
    m.cells_ = term_cells(p, ["intercept", *names], "y", _variables(spec))
    _persons_of_terms(m, parts, spec, persons)
    return m


# -- curves -----------------------------------------------------------------------------------
def _curve_part(part, group, competing):
    xp = array_namespace(part["group"])
    sel = part["group"] == group
    status = part["status"][sel]
    cause = xp.where(status == 1, 1, xp.where((status == 2) & competing, 2, 0))
    time = part["time"][sel].astype(xp.float64)
    return {"time": time, "event": cause.astype(xp.float64),
            "weights": xp.ones(time.shape[0])}


def _km_part(part):
    xp = array_namespace(part["event"])
    out = dict(part)
    out["event"] = (part["event"] == 1).astype(xp.float64)
    return out


def curves(plan: Plan, parts: Partitions) -> list[dict]:
    """Kaplan–Meier of the outcome and its cumulative incidence with death competing."""
    rows = []
    parts = on_device(parts)
    for g in plan.groups:
        p = parts.map(_curve_part, g.code, not plan.outcome.death)
        if int(sum(parts.map_reduce(_n_in_group, g.code))) == 0:
            continue
        km = KaplanMeier().fit_partitions(p.map(_km_part))
        aj = AalenJohansen().fit_partitions(p, 1, 2)
        # one lookup for every day, and Python numbers by tolist: a row per day is thousands
        cols = zip(*(a.tolist() for a in (km.timeline_, km.at_risk_, km.events_, km.survival_,
                                          km.lower_95_, km.upper_95_,
                                          aj.predict(km.timeline_))), strict=True)
        for t, at_risk, events, surv, lo, hi, ci in cols:
            rows.append({"group": g.code, "day": int(t), "at_risk": int(at_risk),
                         "events": int(events), "survival": float(surv),
                         "lower_95": float(lo), "upper_95": float(hi),
                         "cumulative_incidence": float(ci)})
    return rows


def _n_in_group(part, code):
    return [(part["group"] == code).sum()]


# -- Lexis ------------------------------------------------------------------------------------
def _lexis_part(part, ages, periods, birth_col="age"):
    """Person-years, events and persons per (group, age band, period) cell of this partition,
    and per age band and per period over all groups (what the Lexis model's terms rest on):
    persons with time in the band, persons with time outside it, events in and outside it.
    ``ages`` and ``periods`` are increasing (the study language checks it).

    A person's time in a cell is their follow-up [start, stop) cut to the age band (from
    fractional ages) and to the period, in days over 365.25. A band's periods are worked out
    at once for everyone (a row per period, zero outside the cell: no person is gathered or
    scattered per cell); a cell's person-years are the NumPy sum of its row, the per-person
    array of the whole partition, so the bits are those of summing that array. Whether a
    person has time in a band (in a period) at all is one comparison of their follow-up cut
    to the union of the periods (of the bands), which are contiguous."""
    if any(ages[i + 1] <= ages[i] for i in range(len(ages) - 1)) or \
            any(periods[i + 1] <= periods[i] for i in range(len(periods) - 1)):
        raise ValueError("Lexis age bands and periods must be increasing")
    cells: dict = {}
    stop_day = part["exit_date"].astype(np.int64) + 1  # exclusive
    # (as floats once: every comparison below is with fractional band edges)
    start = (stop_day - part["time"].astype(np.int64)).astype(np.float64)   # index day, or later
    stop = stop_day.astype(np.float64)
    age0 = np.asarray(part[birth_col], float)
    birth = part["index_date"].astype(np.int64) - age0 * YEAR
    edges = [birth + a * YEAR for a in ages]   # per person: the day each band begins
    pbounds = [int(np.datetime64(f"{y}-01-01", "D").astype(np.int64)) for y in periods]
    n = start.shape[0]
    na, npd = len(ages) - 1, len(periods) - 1
    ev_a, ev_p = np.zeros(na), np.zeros(npd)
    ev_rows = np.nonzero(part["event"] == 1)[0]   # the persons with an event, and its day
    ev_day = part["exit_date"][ev_rows].astype(np.int64)
    group = part["group"]
    sels = [(int(g), None if (group == g).all() else group == g) for g in np.unique(group)]
    p_lo = np.array(pbounds[:-1], np.float64)[:, None]
    p_hi = np.array(pbounds[1:], np.float64)[:, None]
    # (buffers reused band after band: fresh ones would be fresh pages for the kernel to zero)
    s_a, e_a = np.empty(n), np.empty(n)
    span, lo = np.empty((npd, n)), np.empty((npd, n))
    for ai in range(na):
        # the band's part of each follow-up, then its part in each period (a row each): the
        # time of everyone, zero outside the cell, so each row is the per-person array whose
        # sum is the cell's person-years
        np.maximum(start, edges[ai], out=s_a)
        np.minimum(stop, edges[ai + 1], out=e_a)
        np.minimum(e_a, p_hi, out=span)
        np.maximum(s_a, p_lo, out=lo)
        span -= lo
        np.maximum(span, 0.0, out=span)
        span /= YEAR
        persons = np.count_nonzero(span, axis=1)
        s_ev, e_ev = s_a[ev_rows], e_a[ev_rows]
        for pi in range(npd):
            py = span[pi]
            ev = (ev_day >= np.maximum(s_ev, pbounds[pi])) & \
                (ev_day < np.minimum(e_ev, pbounds[pi + 1]))
            k = float(np.count_nonzero(ev))
            ev_a[ai] += k
            ev_p[pi] += k
            for g, sel in sels:
                key = (g, ages[ai], periods[pi])
                if sel is None:
                    cells[key] = {"person_years": float(py.sum()), "events": k,
                                  "persons": float(persons[pi])}
                    continue
                pyg = py[sel]
                cells[key] = {"person_years": float(pyg.sum()),
                              "events": float(np.count_nonzero(ev & sel[ev_rows])),
                              "persons": float(np.count_nonzero(pyg))}
    # Time in band j within the periods: the follow-up cut to the periods' union [first,
    # last) overlaps the band (and in period j within the bands, the other way round)
    in_periods = (np.maximum(start, pbounds[0]), np.minimum(stop, pbounds[-1]))
    in_bands = (np.maximum(start, edges[0]), np.minimum(stop, edges[-1]))
    inside_a = [np.minimum(in_periods[1], edges[j + 1]) > np.maximum(in_periods[0], edges[j])
                for j in range(na)]
    inside_p = [np.minimum(in_bands[1], pbounds[j + 1]) > np.maximum(in_bands[0], pbounds[j])
                for j in range(npd)]
    margins = {}
    for name, inside, e in (("age", inside_a, ev_a), ("period", inside_p, ev_p)):
        count = np.zeros(n, np.int16)   # bands (periods) a person has time in
        for col in inside:
            count += col
        for j, col in enumerate(inside):
            margins[(name, j)] = {"persons": float(np.count_nonzero(col)),
                                  "events": float(e[j]),
                                  "persons_other": float(np.count_nonzero(count > col)),
                                  "events_other": float(e.sum() - e[j])}
    anyone = np.minimum(in_periods[1], edges[-1]) > np.maximum(in_periods[0], edges[0])
    margins[("all", 0)] = {"persons": float(np.count_nonzero(anyone)),
                           "events": float(ev_a.sum()),
                           "persons_other": 0.0, "events_other": 0.0}
    return {"cells": cells, "margins": margins}


def _lexis_merge(a, b):
    return {"cells": _merge(a["cells"], b["cells"]), "margins": _merge(a["margins"], b["margins"])}


def lexis_sums(plan: Plan, parts: Partitions) -> dict:
    lx = plan.lexis
    age_col = next((c.name for c in plan.columns if c.kind == "age"), None)
    if age_col is None:
        raise ValueError("lexis needs the age covariate")
    return parts.map_reduce(_lexis_part, lx.age_bands, lx.periods, age_col, combine=_lexis_merge)


def lexis(plan: Plan, parts: Partitions, sums: dict | None = None) -> list[dict]:
    lx = plan.lexis
    sums = (sums or lexis_sums(plan, parts))["cells"]
    rows = []
    for (g, a, p) in sorted(sums):
        s = sums[(g, a, p)]
        if s["person_years"] <= 0:
            continue
        lo, hi = poisson_ci(s["events"], s["person_years"])
        i = lx.age_bands.index(a)
        j = lx.periods.index(p)
        rows.append({"group": g, "age_band": f"{a:g}-{lx.age_bands[i + 1]:g}",
                     "period": f"{p}-{lx.periods[j + 1] - 1}", "persons": int(s["persons"]),
                     "events": int(s["events"]), "person_years": s["person_years"],
                     "rate_per_1000py": 1000 * s["events"] / s["person_years"],
                     "lower_95": 1000 * lo, "upper_95": 1000 * hi})
    return rows


def lexis_poisson(rows: list[dict], plan: Plan | None = None, sums: dict | None = None):
    """Poisson regression of the Lexis cells: rate ratios by age band and period. With the
    study's Lexis sums, ``cells_`` holds the counts behind each term."""
    cells = [r for r in rows if r["person_years"] > 0]
    ages = sorted({r["age_band"] for r in cells}, key=lambda s: float(s.split("-")[0]))
    periods = sorted({r["period"] for r in cells})
    names = [f"age {a}" for a in ages[1:]] + [f"period {p}" for p in periods[1:]]
    X = np.array([[float(r["age_band"] == a) for a in ages[1:]] +
                  [float(r["period"] == p) for p in periods[1:]] for r in cells])
    y = np.array([r["events"] for r in cells], float)
    t = np.array([r["person_years"] for r in cells])
    m = Poisson().fit(X, y, t, names=names)
    if plan is not None and sums is not None:
        m.cells_ = _lexis_cells(plan, sums["margins"], ages, periods, cells)
    return m


def _lexis_cells(plan, margins, ages, periods, cells) -> dict:
    lx = plan.lexis
    label_a = {f"{a:g}-{lx.age_bands[i + 1]:g}": i for i, a in enumerate(lx.age_bands[:-1])}
    label_p = {f"{p}-{lx.periods[j + 1] - 1}": j for j, p in enumerate(lx.periods[:-1])}
    total = margins[("all", 0)]
    terms = [{"term": "intercept", "variable": None, "persons": None, "events": None,
              "persons_other": None, "events_other": None}]
    for var, levels, index in (("age", ages, label_a), ("period", periods, label_p)):
        for lv in levels[1:]:
            m = margins[(var, index[lv])]
            terms.append({"term": f"{var} {lv}", "variable": var, "persons": int(m["persons"]),
                          "events": int(m["events"]),
                          "persons_other": int(m["persons_other"]),
                          "events_other": int(m["events_other"])})
    patterns: dict = {}
    for r in cells:  # a covariate pattern of this model is an (age band, period) cell
        p = patterns.setdefault((r["age_band"], r["period"]), [0, 0])
        p[0] += r["persons"]
        p[1] += r["events"]
    return {"persons": int(total["persons"]), "events": int(total["events"]), "terms": terms,
            "patterns": sorted(patterns.values())}
