"""Sketches of the persons behind a run's published counts, so that the export register can tell
nested populations from unrelated ones.

Two exports of 535 women (22 with an MI) and 530 women (21 with an MI) differ by 5 persons,
which the threshold allows, but by one MI, which says that one of the five had one. The counts
alone cannot tell these from two unrelated populations; the persons behind them can. A run
therefore keeps, for each count of persons (and of persons with an event) it publishes — the
cohort's arms, the rates, Lexis and measure rows, the curves' events at each shown point, the
models' and their indicator terms' counts, the Lexis model's, the last attrition step — an
*invertible Bloom lookup table* of the persons: ``3 × s`` cells (one sub-table of ``s`` cells
per hash), each the number of persons hashed there, the sum of their 64-bit ids and the sum of
a 64-bit check of each id, all modulo 2^64. A person's id is a keyed bijective mix of the pnr
(:meth:`Keyed.ids`), so no two persons share one; its key comes from the data
(:func:`data_secret`) and is recorded nowhere, so ids peeled from the register's sketches
lead to no pnr without the data.

The sketch is linear: the sketch of A minus the sketch of B is that of A \\ B (counted +1) and
B \\ A (counted −1). Peeling the cells holding exactly one id (count ±1 and the check matching)
recovers both sides when they are small (up to about 100 ids in all with 3 × 64 cells), and
only their sizes are used. A difference of d persons touches at most 3·d cells, so a
difference that does not peel to nothing while what is left touches at most 3·(D − peeled)
cells (D = 2·(threshold − 1): up to D persons in all the rule is certain) may be small: it is
reported as undecided and held, never passed. More non-zero cells prove d > D.

Failure to peel a difference of d ≤ D ids: dominated by two ids sharing all three cells,
probability about C(d, 2) / s³ (s = 64, d = 8: 1.1e-4); its only effect is a hold that an
output checker releases. The ids are hashed once per partition; all of a partition's sets
are one ``bincount`` and six ``np.add.at`` over their rows (:meth:`Keyed.stacked`): 0.38 s of
CPU for example 1 at 1 M persons, 1 680 sets (figures in docs/secure.md).

The sketches live in ``OUT/private/sketches.json`` (never exported; its SHA-256 is in
``outputs.json``, which the run's audit record names) and in the export register.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = 1
HASHES = 3
NAME = "private/sketches.json"
U64 = np.uint64
YEAR = 365.25


def cells_for(min_cell: int) -> int:
    """Cells per sub-table: 64 whatever the threshold, so that every run's sketches subtract
    (one of other sizes could not be compared: a study's higher ``min_cell`` would slip past).
    With a threshold above about 30 more differences are held as undecided (3·D nears the
    192 cells), never passed."""
    return 64


def limit(min_cell: int) -> int:
    """D: the largest difference (both sides together) that is always told or held."""
    return 2 * (min_cell - 1)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that scatters every input bit."""
    z = z ^ (z >> U64(30))
    z = z * U64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> U64(27))
    z = z * U64(0x94D049BB133111EB)
    return z ^ (z >> U64(31))


def _neg(x: np.ndarray) -> np.ndarray:
    return np.zeros_like(x) - x   # modulo 2^64 (arrays wrap silently)


@dataclass
class Sketch:
    """An IBLT of a set of person ids: ``count`` (int64), ``ids`` and ``checks`` (uint64 sums)."""

    count: np.ndarray
    ids: np.ndarray
    checks: np.ndarray
    n: int                 # persons in the set (exact; never exported)

    def __sub__(self, other: Sketch) -> Sketch:
        return Sketch(self.count - other.count, self.ids - other.ids,
                      self.checks - other.checks, self.n - other.n)

    def __add__(self, other: Sketch) -> Sketch:
        return Sketch(self.count + other.count, self.ids + other.ids,
                      self.checks + other.checks, self.n + other.n)

    def to_text(self) -> str:
        raw = (self.count.astype("<i8").tobytes() + self.ids.astype("<u8").tobytes() +
               self.checks.astype("<u8").tobytes())
        return base64.b64encode(raw).decode()

    def to_doc(self) -> dict:
        """``{"n", "z"}``: the cells deflated (a small set's are mostly zeros: under 0.5 kB
        instead of 6 kB for a curve point's few persons; a large set's counts' high bytes)."""
        raw = base64.b64decode(self.to_text())
        return {"n": self.n, "z": base64.b64encode(zlib.compress(raw, 1)).decode()}

    @classmethod
    def from_doc(cls, doc: dict, cells: int) -> Sketch:
        """Of :meth:`to_doc`'s ``{"n", "z"}``, or ``{"n", "cells"}`` (session 7's records)."""
        if "z" in doc:
            want = 24 * HASHES * cells   # (no more: a damaged record inflates no further)
            raw = zlib.decompressobj().decompress(
                base64.b64decode(doc["z"].encode(), validate=True), want + 1)
            return cls._from_raw(raw, doc["n"], cells)
        return cls.from_text(doc["cells"], doc["n"], cells)

    @classmethod
    def from_text(cls, text: str, n: int, cells: int) -> Sketch:
        return cls._from_raw(base64.b64decode(text.encode(), validate=True), n, cells)

    @classmethod
    def _from_raw(cls, raw: bytes, n: int, cells: int) -> Sketch:
        m = HASHES * cells
        if len(raw) != 24 * m:
            raise ValueError(f"a sketch of {len(raw)} bytes, not {24 * m}")
        return cls(np.frombuffer(raw[:8 * m], "<i8").astype(np.int64),
                   np.frombuffer(raw[8 * m:16 * m], "<u8").astype(U64),
                   np.frombuffer(raw[16 * m:], "<u8").astype(U64), int(n))


@dataclass
class Stack:
    """Many sketches as rows of arrays, by key: what a partition computes and partitions sum
    (as arrays, not one sketch at a time)."""

    keys: list
    count: np.ndarray
    ids: np.ndarray
    checks: np.ndarray
    n: np.ndarray

    def sketch(self, i: int) -> Sketch:
        return Sketch(self.count[i].copy(), self.ids[i].copy(), self.checks[i].copy(),
                      int(self.n[i]))

    def __add__(self, other: Stack) -> Stack:
        if self.keys == other.keys:
            return Stack(self.keys, self.count + other.count, self.ids + other.ids,
                         self.checks + other.checks, self.n + other.n)
        at = {k: i for i, k in enumerate(self.keys)}
        keys = self.keys + [k for k in other.keys if k not in at]
        at.update({k: i for i, k in enumerate(keys)})
        where = np.array([at[k] for k in other.keys], np.int64)
        out = []
        for mine, theirs in ((self.count, other.count), (self.ids, other.ids),
                             (self.checks, other.checks), (self.n, other.n)):
            a = np.zeros((len(keys), *mine.shape[1:]), mine.dtype)
            a[:len(self.keys)] = mine
            a[where] += theirs    # (each key once in ``where``)
            out.append(a)
        return Stack(keys, *out)


class Keyed:
    """The hashes of one key: the same key (from the data's persons) for every run of the same
    data, so that their sketches subtract. ``secret`` (:func:`data_secret`, from the data
    itself, recorded nowhere) keys the ids, so that ids peeled from a sketch in the register
    lead back to no pnr without the data; the cells and checks need only ``key_text`` (public:
    the data's ``data_persons_sha256``), so the register subtracts and peels without it."""

    def __init__(self, key_text: str, cells: int, secret: bytes = b""):
        d = hashlib.sha256(("hpcstudy person sketch\0" + key_text).encode()).digest()
        w = np.frombuffer(d, "<u8").astype(U64)
        self.k_check, self.k_cell = w[1], w[2]
        ids = hashlib.sha256(d + b"ids\0" + secret).digest()
        self.k_id = np.frombuffer(ids, "<u8").astype(U64)[0]
        self.cells = cells
        self.hash_id = hashlib.sha256(d).hexdigest()[:16]          # cells and checks
        self.key_id = hashlib.sha256(ids).hexdigest()[:16]         # and the ids' key

    def ids(self, pnr: np.ndarray) -> np.ndarray:
        return _mix(np.asarray(pnr).astype(np.int64).view(U64) ^ self.k_id)

    def check(self, x: np.ndarray) -> np.ndarray:
        return _mix(x ^ self.k_check)

    def where(self, x: np.ndarray) -> np.ndarray:
        """(len(x), 3) cell numbers: one in each sub-table, so three distinct cells."""
        h = _mix(x ^ self.k_cell)
        out = np.empty((x.size, HASHES), np.int64)
        for i in range(HASHES):   # 21 bits of h each, scaled to the sub-table (no division)
            part = ((h >> U64(21 * i)) & U64(0x1FFFFF)) * U64(self.cells)
            out[:, i] = (part >> U64(21)).view(np.int64) + i * self.cells
        return out

    def empty(self) -> Sketch:
        m = HASHES * self.cells
        return Sketch(np.zeros(m, np.int64), np.zeros(m, U64), np.zeros(m, U64), 0)

    def sketch(self, pnr: np.ndarray) -> Sketch:
        """The sketch of a set of pnrs (a person twice counts twice: such a difference never
        peels, and is held as undecided when small)."""
        return self.sketches(pnr, [np.ones(len(pnr), bool)])[0]

    def sketches(self, pnr: np.ndarray, masks: list[np.ndarray]) -> list[Sketch]:
        """The sketch of ``pnr[mask]`` for each mask (boolean)."""
        return self.grouped(pnr, [np.nonzero(m)[0] for m in masks])

    def grouped(self, pnr: np.ndarray, members: list[np.ndarray]) -> list[Sketch]:
        """The sketch of ``pnr[rows]`` for each ``rows`` of ``members`` (arrays of row
        numbers; a row twice counts twice)."""
        st = self.stacked(pnr, list(range(len(members))), members)
        return [st.sketch(i) for i in range(len(members))]

    def stacked(self, pnr: np.ndarray, keys: list, members: list[np.ndarray]) -> Stack:
        """The sketches of ``pnr[rows]`` for each ``rows`` of ``members``, by ``keys``: the
        hashes computed once, every set's cells added in one pass, kept as arrays."""
        k, m = len(members), HASHES * self.cells
        x = self.ids(pnr)
        idx, c = self.where(x), self.check(x)
        sizes = np.array([r.shape[0] for r in members], np.int64)
        rows = np.concatenate([np.asarray(r, np.int64) for r in members]) if sizes.sum() \
            else np.zeros(0, np.int64)
        code = np.repeat(np.arange(k, dtype=np.int64), sizes)
        flat = (code[:, None] * m + idx[rows]).ravel()
        count = np.bincount(flat, minlength=k * m).astype(np.int64)
        ids, checks = np.zeros(k * m, U64), np.zeros(k * m, U64)
        for j in range(HASHES):   # (per hash: no repeated copies of the rows' ids)
            f = code * m + idx[rows, j]
            np.add.at(ids, f, x[rows])
            np.add.at(checks, f, c[rows])
        return Stack(list(keys), count.reshape(k, m), ids.reshape(k, m),
                     checks.reshape(k, m), sizes)

    def _add(self, s: Sketch, x: np.ndarray, sign: np.ndarray) -> None:
        idx = self.where(x)
        c = self.check(x)
        neg = sign < 0
        xs, cs = np.where(neg, _neg(x), x), np.where(neg, _neg(c), c)
        for j in range(HASHES):
            np.add.at(s.count, idx[:, j], sign)
            np.add.at(s.ids, idx[:, j], xs)
            np.add.at(s.checks, idx[:, j], cs)

    def difference(self, a: Sketch, b: Sketch, most: int) -> tuple[int, int] | None:
        """(|A \\ B|, |B \\ A|) exactly, or None when undecided: the difference did not peel
        to nothing and what is left touches at most 3·(``most`` − peeled) cells, so it may be
        ``most`` persons or fewer. One that did not peel and touches more cells is larger
        than ``most``: returned as ``(-1, -1)``."""
        got = self.sides(a, b, most)
        return got if got is None or isinstance(got[0], int) else (got[0].n, got[1].n)

    def sides(self, a: Sketch, b: Sketch, most: int):
        """The sketches of A \\ B and of B \\ A where the difference peels to nothing; else
        as :meth:`difference` (None, or ``(-1, -1)``)."""
        d = a - b
        found = []
        for _ in range(d.count.size + 1):
            cand = np.nonzero((d.count == 1) | (d.count == -1))[0]
            if cand.size == 0:
                break
            sign = d.count[cand]
            x = np.where(sign > 0, d.ids[cand], _neg(d.ids[cand]))
            c = self.check(x)
            ok = np.where(sign > 0, c, _neg(c)) == d.checks[cand]
            if not ok.any():
                break
            x, sign = x[ok], sign[ok]
            x, first = np.unique(x, return_index=True)
            sign = sign[first]
            self._add(d, x, -sign)
            found.append((x, sign))
        x = np.concatenate([f[0] for f in found]) if found else np.zeros(0, U64)
        sign = np.concatenate([f[1] for f in found]) if found else np.zeros(0, np.int64)
        if not (d.count.any() or d.ids.any() or d.checks.any()):
            out = []
            for side in (sign > 0, sign < 0):
                s = self.empty()
                self._add(s, x[side], np.ones(int(side.sum()), np.int64))
                s.n = int(side.sum())
                out.append(s)
            return tuple(out)
        # had A and B differed by ``most`` or fewer, what is left after peeling p of them
        # would be most − p or fewer, touching at most 3·(most − p) cells
        touched = int(np.count_nonzero((d.count != 0) | (d.ids != 0) | (d.checks != 0)))
        return None if touched <= HASHES * (most - x.size) else (-1, -1)


# -- a run's sketches ---------------------------------------------------------------------------
@dataclass
class Wanted:
    """What a run sketches, from its plan and raw results: the families of rows whose persons
    each partition finds, and ``expected``: [(count name, sketch key, the raw count)] (a set is
    kept only where its size is the raw count the run computed, so it is the set behind that
    count)."""

    groups: list
    rates_by: tuple = ()
    rates_keys: tuple = ()
    lexis: tuple | None = None        # (age limits, period limits, the age column)
    measures: tuple = ()              # (name, Measure, proportion, age column, varying)
    curves: tuple = ()                # (group code, (shown days…))
    models: tuple = ()                # (name, varying, bands, age column, ((j, column, level)…))
    expected: list | None = None


def _runs(codes: np.ndarray, rows: np.ndarray, n: int) -> list[np.ndarray]:
    """``rows`` split by their code 0 … n − 1 (rows sorted by code within each)."""
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n + 1))
    rows = rows[order]
    return [rows[bounds[i]:bounds[i + 1]] for i in range(n)]


def _lexis_members(part, ages, periods, age_col) -> list:
    """The persons with time in each Lexis cell and with their event in it, as
    engines.analyses._lexis_part counts them (the same arithmetic, so the same persons), and
    those behind the Lexis model's terms: with time in an age band or period, with time
    outside it, with their event in it or elsewhere."""
    stop = np.asarray(part["exit_date"]).astype(np.int64) + 1
    start = stop - np.asarray(part["time"]).astype(np.int64)
    birth = np.asarray(part["index_date"]).astype(np.int64) - \
        np.asarray(part[age_col], float) * YEAR
    pbounds = [int(np.datetime64(f"{y}-01-01", "D").astype(np.int64)) for y in periods]
    n = start.shape[0]
    na, npd = len(ages) - 1, len(periods) - 1
    inside_a, inside_p = np.zeros((n, na), bool), np.zeros((n, npd), bool)
    ev_a, ev_p = np.full(n, -1), np.full(n, -1)
    event = np.asarray(part["event"]) == 1
    ev_day = stop - 1
    group = np.asarray(part["group"]).astype(np.int64)
    out = []
    for ai in range(na):
        s_a = np.maximum(start, birth + ages[ai] * YEAR)
        e_a = np.minimum(stop, birth + ages[ai + 1] * YEAR)
        who = np.nonzero(e_a > s_a)[0]
        s_a, e_a = s_a[who], e_a[who]
        for pi in range(npd):
            lo = np.maximum(s_a, pbounds[pi])
            hi = np.minimum(e_a, pbounds[pi + 1])
            some = who[np.clip(hi - lo, 0, None) / YEAR > 0]
            d = ev_day[who]
            had = who[event[who] & (d >= lo) & (d < hi)]
            inside_a[some, ai] = True
            inside_p[some, pi] = True
            ev_a[had], ev_p[had] = ai, pi
            for g in np.unique(group[some]).tolist():
                key = (int(g), float(ages[ai]), int(periods[pi]))
                out += [(("lexis", key, "persons"), some[group[some] == g]),
                        (("lexis", key, "events"), had[group[had] == g])]
    for name, inside, ev in (("age", inside_a, ev_a), ("period", inside_p, ev_p)):
        count = inside.sum(axis=1)
        for j in range(inside.shape[1]):
            out += [(("lexis_term", (name, j), "persons"), np.nonzero(inside[:, j])[0]),
                    (("lexis_term", (name, j), "persons_other"),
                     np.nonzero(count - inside[:, j] > 0)[0]),
                    (("lexis_term", (name, j), "events"), np.nonzero(ev == j)[0]),
                    (("lexis_term", (name, j), "events_other"),
                     np.nonzero((ev >= 0) & (ev != j))[0])]
    out += [(("lexis_all", "", "persons"), np.nonzero(inside_a.any(axis=1))[0]),
            (("lexis_all", "", "events"), np.nonzero(ev_a >= 0)[0])]
    return out


def _measure_members(part, name, m, proportion, age_col, varying) -> list:
    """The persons of each row of a measure (by its raw key), and those with the event:
    from the measure's own pieces of follow-up (measures.compute.pieces)."""
    from hpcstudy_kernels import to_numpy

    from ..measures.compute import pieces

    key, row, _days, ev = pieces(part, m, proportion, age_col, varying)
    row = np.asarray(to_numpy(row)).astype(np.int64)
    if row.shape[0] == 0:
        return []
    cols = key if "age_band" in m.by else key[:-1]
    stacked = np.stack([np.asarray(to_numpy(c), dtype=np.float64) for c in cols], axis=1)
    uniq, inv = np.unique(stacked, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    had = np.asarray(to_numpy(ev)) > 0
    persons = _runs(inv, row, len(uniq))
    events = _runs(inv[had], row[had], len(uniq))
    out = []
    for i, u in enumerate(uniq):
        k = tuple(int(x) if float(x).is_integer() else float(x) for x in u)
        out += [(("measure", name, k, "persons"), np.unique(persons[i])),
                (("measure", name, k, "events"), np.unique(events[i]))]
    return out


def _model_members(part, name, varying, bands, age_col, terms) -> list:
    """The persons behind each indicator term of a model: with the term at 1 (in some piece,
    where the model splits follow-up), at 0, and those with the event in each."""
    n = np.asarray(part["pnr"]).shape[0]
    rows = np.arange(n)
    if varying or bands:
        from ..timesplit.terms import episodes

        split = episodes({**part, "_row": rows}, varying, bands, age_col)
        part, rows = split, np.asarray(split["_row"])
    event = np.asarray(part["event"]) == 1
    out = []
    for j, col, level in terms:
        v = np.asarray(part[col], float)
        on = v == level if level is not None else v == 1
        if not (varying or bands):   # each row once: the rest are the model's rows minus these
            out += [(("term", name, j, "persons"), np.nonzero(on)[0]),
                    (("term", name, j, "events"), np.nonzero(on & event)[0])]
            continue
        off = v != level if level is not None else v == 0
        out += [(("term", name, j, "persons"), np.unique(rows[on])),
                (("term", name, j, "persons_other"), np.unique(rows[off])),
                (("term", name, j, "events"), np.unique(rows[on & event])),
                (("term", name, j, "events_other"), np.unique(rows[off & event]))]
    return out


def _part_sketches(part: dict, keyed: Keyed, want: Wanted) -> dict:
    """One partition's sketches of every set ``want`` names. A person lies in one partition
    only, so the partitions' sketches add."""
    pnr = np.asarray(part["pnr"])
    n = pnr.shape[0]
    group = np.asarray(part["group"])
    event = np.asarray(part["event"]) != 0
    members: list = []
    for code, label in want.groups:
        here = np.nonzero(group == code)[0]
        members += [(("group", label, "persons"), here),
                    (("group", label, "events"), here[event[here]])]
    if want.rates_keys:
        from ..engines.analyses import _distinct_rows, _key_columns

        at: dict = {}
        if n:
            uniq, inv = _distinct_rows(_key_columns(part, want.rates_by), n)
            runs = _runs(inv.astype(np.int64), np.arange(n), len(uniq))
            at = {tuple(int(x) if float(x).is_integer() else float(x) for x in u): runs[i]
                  for i, u in enumerate(uniq)}
        for key in want.rates_keys:
            rows = at.get(key, np.zeros(0, np.int64))
            members += [(("rates", key, "persons"), rows),
                        (("rates", key, "events"), rows[event[rows]])]
    if want.lexis is not None and n:
        members += _lexis_members(part, *want.lexis)
    for spec in want.measures:
        if n:
            members += _measure_members(part, *spec)
    if want.curves:
        status, time = np.asarray(part["status"]), np.asarray(part["time"])
        for code, days in want.curves:
            who = np.nonzero((group == code) & (status == 1) & (time <= days[-1]))[0]
            at_point = np.searchsorted(np.asarray(days), time[who], side="left")
            for i, rows in enumerate(_runs(at_point, who, len(days))):
                members.append((("curve", int(code), int(days[i])), rows))
    for spec in want.models:
        if n:
            members += _model_members(part, *spec)
    return keyed.stacked(pnr, [k for k, _ in members], [r for _, r in members])


def _merge(a: Stack, b: Stack) -> Stack:
    return a + b


def _names(section: str, kind: str, rows: list[dict]) -> list[str]:
    from . import exports

    return exports.row_names(section, kind, [{k: v for k, v in r.items()
                                              if not k.startswith("_")} for r in rows])


def _term_spec(plan, node, term: str):
    """(column, level) of a model term's indicator (engines.analyses.design_columns), or
    None for one that is not an indicator of a column."""
    from ..timesplit.terms import band_label

    if term == plan.exposure_name and plan.has_comparator:
        return "group", None
    for band in ("age_band", "time_band"):
        limits = getattr(node, f"{band}s", None)
        if term.startswith(band + " ") and limits:
            label = term[len(band) + 1:]
            j = next((j for j in range(-1, len(limits)) if band_label(band, limits, j) == label),
                     None)
            return None if j is None else (band, j)
    col, eq, level = term.partition("=")
    if eq:
        try:
            return col, float(level)
        except ValueError:
            return None
    return (term, None) if term in node.adjust else None


def _wanted(plan, results: dict) -> Wanted:
    """What to sketch, from the plan and the raw results (:class:`Wanted`)."""
    from ..engines.analyses import RATE_COLUMNS, fixed_horizon, key_names
    from ..outputs.disclosure import curve
    from ..plan.nodes import ModelPlan, RatesPlan

    groups = [(g.code, g.label) for g in plan.groups]
    expected = []
    age_col = next((c.name for c in plan.columns if c.kind == "age"), None)
    varying_all = tuple(c.name for c in plan.columns if c.time_varying)
    # the rates table's rows (by covariates of the per-person table; or a proportion's)
    by = next((n.by for n in plan.analyses if isinstance(n, RatesPlan) and
               n.by != ("group",)), ())
    rates = (results.get("rates") or []) if by else []
    cols = key_names(by, RATE_COLUMNS)
    keys = tuple(tuple(r.get(c) for c in cols) for r in rates)
    for name, row, key in zip(_names("rates", "rates", rates), rates, keys, strict=True):
        expected += [(f"{name}.{c}", ("rates", key, c), row.get(c))
                     for c in ("persons", "events")]
    rows = results.get("cohort") or []
    for name, row in zip(_names("cohort", "cohort", rows), rows, strict=True):
        expected += [(f"{name}.{c}", ("group", row.get("label"), c), row.get(c))
                     for c in ("persons", "events")]
    for g in plan.groups:   # the last step of attrition is the arm's persons
        steps = (results.get("attrition") or {}).get(g.label) or []
        if steps:
            name = _names(f"attrition.{g.label}", "attrition", steps)[-1]
            expected.append((f"{name}.persons", ("group", g.label, "persons"),
                             steps[-1].get("persons")))
    models = []
    nodes = {n.model: n for n in plan.analyses if isinstance(n, ModelPlan)}
    for k, m in sorted((results.get("models") or {}).items()):
        if not isinstance(m, dict):
            continue
        expected += [(f"models.{k}.{c}", ("all", "", c), m.get(c))
                     for c in ("persons", "events")]
        node, terms = nodes.get(k), []
        if node is None or not isinstance(m.get("terms"), list):
            continue
        names = _names(f"models.{k}", "model", m["terms"])
        for j, (name, t) in enumerate(zip(names, m["terms"], strict=True)):
            spec = _term_spec(plan, node, str(t.get("term")))
            if spec is None or not isinstance(t.get("persons"), int):
                continue
            terms.append((j, *spec))
            expected += [(f"{name}.{c}", ("term", k, j, c), t.get(c))
                         for c in ("persons", "events", "persons_other", "events_other")]
        split_by = (*node.adjust, *node.strata) if k == "cox" else \
            node.adjust if k == "poisson" else ()
        bands = {b: v for b, v in _model_bands(node).items() if b in split_by}
        models.append((k, tuple(c for c in varying_all if c in split_by), bands, age_col,
                       tuple(terms)))
    lexis = None
    if plan.lexis is not None and age_col is not None and results.get("lexis"):
        lx = plan.lexis
        ages = {f"{a:g}-{lx.age_bands[i + 1]:g}": (i, float(a))
                for i, a in enumerate(lx.age_bands[:-1])}
        periods = {f"{p}-{lx.periods[j + 1] - 1}": (j, int(p))
                   for j, p in enumerate(lx.periods[:-1])}
        lexis = (tuple(lx.age_bands), tuple(lx.periods), age_col)
        rows = results["lexis"]
        for name, r in zip(_names("lexis", "lexis", rows), rows, strict=True):
            key = (int(r["group"]), ages[r["age_band"]][1], periods[r["period"]][1])
            expected += [(f"{name}.{c}", ("lexis", key, c), r.get(c))
                         for c in ("persons", "events")]
        lm = results.get("lexis_model")
        if isinstance(lm, dict) and isinstance(lm.get("terms"), list):
            expected += [(f"lexis_model.{c}", ("lexis_all", "", c), lm.get(c))
                         for c in ("persons", "events")]
            names = _names("lexis_model", "model", lm["terms"])
            for name, t in zip(names, lm["terms"], strict=True):
                var, _, label = str(t.get("term")).partition(" ")
                at = (ages if var == "age" else periods if var == "period" else {}).get(label)
                if at is not None:
                    expected += [(f"{name}.{c}", ("lexis_term", (var, at[0]), c), t.get(c))
                                 for c in ("persons", "events", "persons_other",
                                           "events_other")]
    measures = []
    proportion = fixed_horizon(plan)
    for m in plan.measures:
        rows = (results.get("measures") or {}).get(m.name) or []
        measures.append((m.name, m, proportion, age_col, varying_all))
        for i, (name, r) in enumerate(zip(_names(f"measures.{m.name}", "measure", rows), rows,
                                          strict=True)):
            expected += [(f"{name}.{c}", ("measure", m.name, i, c), r.get(c))
                         for c in ("persons", "events")]
    curves = []
    shown = curve(results.get("curves") or [], plan.min_cell)
    for code in sorted({r["group"] for r in shown}):
        rows = [r for r in shown if r["group"] == code]
        curves.append((code, tuple(int(r["day"]) for r in rows)))
        for name, r in zip(_names("curves", "curves", rows), rows, strict=True):
            expected.append((f"{name}.events", ("curve", int(code), int(r["day"])),
                             r["events"]))
    return Wanted(groups, by, keys, lexis, tuple(measures), tuple(curves), tuple(models),
                  expected)


def _model_bands(node) -> dict:
    from ..engines.analyses import model_bands

    return model_bands(node)


def data_secret(ds) -> bytes:
    """A key only the data gives: an order-free sum of a keyed mix of every ``bef`` pnr (two
    64-bit lanes). Every run of the same persons computes the same; the register never holds
    it."""
    from ..registers.arrow import to_numpy
    from ..registers.store import read_partition

    total = np.zeros(2, U64)
    for p in range(ds.partitions):
        x = to_numpy(read_partition(ds.path("bef", p), ["pnr"]).column("pnr"))
        x = np.asarray(x).astype(np.int64).view(U64)
        for lane, k in enumerate((U64(0x6A09E667F3BCC908), U64(0xBB67AE8584CAA73B))):
            total[lane:lane + 1] += np.sum(_mix(x ^ k), dtype=U64, keepdims=True)
    return hashlib.sha256(b"hpcstudy sketch ids\0" + total.astype("<u8").tobytes()).digest()


def _doc(stack: Stack, want: Wanted, keyed: Keyed) -> dict:
    """The sketches document from the summed partition sketches."""
    at = {k: i for i, k in enumerate(stack.keys)}
    # a measure's rows are its raw keys in order (measures.compute.measure_rows)
    for name, *_ in want.measures:
        raw = sorted({k[2] for k in at if k[0] == "measure" and k[1] == name})
        for i, key in enumerate(raw):
            for c in ("persons", "events"):
                if ("measure", name, key, c) in at:
                    at[("measure", name, i, c)] = at.pop(("measure", name, key, c))
    made: dict = {}

    def get(key):
        if key not in made:
            if key[0] == "all":   # every row is in one arm: the models' rows are theirs
                made[key] = sum((get(("group", label, key[2])) for _, label in want.groups),
                                keyed.empty())
            elif key[0] == "term" and key[3].endswith("_other") and key not in at:
                # a model that does not split follow-up: its rows at 0 are the rest
                on = get(key[:3] + (key[3][:-len("_other")],))
                made[key] = None if on is None else get(("all", "", on_what(key))) - on
            else:
                made[key] = stack.sketch(at[key]) if key in at else None
        return made[key]

    def on_what(key):
        return "persons" if key[3].startswith("persons") else "events"

    sets = {}
    for name, key, n in want.expected:
        s = get(key)
        if s is None and n == 0:
            s = keyed.empty()
        if s is not None and isinstance(n, int) and not isinstance(n, bool) and s.n == n:
            sets[name] = s
    return {"format": FORMAT, "cells": keyed.cells, "hashes": HASHES, "key_id": keyed.key_id,
            "hash_id": keyed.hash_id,
            "sets": {k: s.to_doc() for k, s in sorted(sets.items())}}


def _to_keep(plan, results: dict, shown: dict | None) -> Wanted:
    """What to sketch: of ``results``' counts, those ``shown`` (the exported results)
    publishes (a withheld count needs none)."""
    want = _wanted(plan, results)
    if shown is not None:
        keep = {name for name, _, n in _wanted(plan, shown).expected
                if isinstance(n, int) and not isinstance(n, bool)}
        want.expected = [e for e in want.expected if e[0] in keep]
    return want


def of_run(plan, parts, results: dict, key_text: str, secret: bytes = b"",
           shown: dict | None = None) -> dict:
    """The sketches of a run's published counts of persons, in this process: ``{"format",
    "cells", "hashes", "key_id", "sets": {count name: {"n", "z"}}}``, the count names as
    the export register names them (:func:`hpcstudy.secure.exports.published`). ``parts``:
    the run's Partitions, or its per-person table (a dict of arrays); ``shown``: the
    exported results, when only their published counts are wanted."""
    from ..models.partitions import LocalPartitions

    if isinstance(parts, dict):
        parts = LocalPartitions([parts])
    keyed = Keyed(key_text, cells_for(plan.min_cell), secret)
    want = _to_keep(plan, results, shown)
    got = parts.map_reduce(_part_sketches, keyed, want, combine=_merge)
    return _doc(got, want, keyed)


def writer(plan, parts, results: dict, key_text: str, secret: bytes = b"",
           shown: dict | None = None):
    """``write(OUT) -> SHA-256``, which writes ``OUT/private/sketches.json``: from this
    process, or under a client from a worker, the partitions' sketches summed on the workers,
    so that no sketch (a hash of persons, like the person table) passes through the client."""
    client = getattr(parts, "client", None)
    if client is None:
        doc = of_run(plan, parts, results, key_text, secret, shown)
        return lambda out: write(out, doc)
    keyed = Keyed(key_text, cells_for(plan.min_cell), secret)
    want = _to_keep(plan, results, shown)
    futures = parts.map(_part_sketches, keyed, want).parts
    while len(futures) > 1:   # summed pairwise where they are
        futures = [client.submit(_merge, *futures[i:i + 2], pure=False)
                   if i + 1 < len(futures) else futures[i] for i in range(0, len(futures), 2)]

    def on_a_worker(out):
        return client.submit(_write_doc, futures[0], want, keyed, str(out),
                             pure=False).result()
    return on_a_worker


def _write_doc(got: Stack, want: Wanted, keyed: Keyed, out: str) -> str:
    return write(Path(out), _doc(got, want, keyed))


def write(out: Path, doc: dict) -> str:
    """Write ``OUT/private/sketches.json``; its SHA-256 (for outputs.json)."""
    data = (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()
    (Path(out) / NAME).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def load(doc: dict) -> tuple[dict, dict[str, Sketch]]:
    """(parameters, {name: Sketch}) of a sketches document (a file's or a register record's)."""
    params = {k: doc[k] for k in ("format", "cells", "hashes", "key_id", "hash_id")}
    if params["format"] != FORMAT or params["hashes"] != HASHES:
        raise ValueError("sketches of another format")
    return params, {k: Sketch.from_doc(v, params["cells"]) for k, v in doc["sets"].items()}
