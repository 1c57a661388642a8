"""Sketches of the persons behind a run's published counts, so that the export register can tell
nested populations from unrelated ones.

Two exports of 535 women (22 with an MI) and 530 women (21 with an MI) differ by 5 persons,
which the threshold allows, but by one MI, which says that one of the five had one. The counts
alone cannot tell these from two unrelated populations; the persons behind them can. A run
therefore keeps, for each count of persons (and of persons with an event) it publishes, an
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
output checker releases. The ids are hashed once per partition; each set is a ``bincount``
and six ``np.add.at`` over its rows: 0.03 s of CPU for example 1 at 1 M persons (figures in
docs/secure.md).

The sketches live in ``OUT/private/sketches.json`` (never exported; its SHA-256 is in
``outputs.json``, which the run's audit record names) and in the export register.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = 1
HASHES = 3
NAME = "private/sketches.json"
U64 = np.uint64


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

    @classmethod
    def from_text(cls, text: str, n: int, cells: int) -> Sketch:
        raw = base64.b64decode(text.encode(), validate=True)
        m = HASHES * cells
        if len(raw) != 24 * m:
            raise ValueError(f"a sketch of {len(raw)} bytes, not {24 * m}")
        return cls(np.frombuffer(raw[:8 * m], "<i8").astype(np.int64),
                   np.frombuffer(raw[8 * m:16 * m], "<u8").astype(U64),
                   np.frombuffer(raw[16 * m:], "<u8").astype(U64), int(n))


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
        """The sketch of ``pnr[mask]`` for each mask: the hashes computed once."""
        x = self.ids(pnr)
        idx, c = self.where(x), self.check(x)
        m = HASHES * self.cells
        out = []
        for mask in masks:
            s = self.empty()
            i, xi, ci = idx[mask], x[mask], c[mask]
            s.count += np.bincount(i.ravel(), minlength=m)
            for j in range(HASHES):
                np.add.at(s.ids, i[:, j], xi)
                np.add.at(s.checks, i[:, j], ci)
            s.n = int(xi.size)
            out.append(s)
        return out

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
        d = a - b
        left, right = 0, 0
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
            left += int((sign > 0).sum())
            right += int((sign < 0).sum())
        if not (d.count.any() or d.ids.any() or d.checks.any()):
            return left, right
        # had A and B differed by ``most`` or fewer, what is left after peeling p of them
        # would be most − p or fewer, touching at most 3·(most − p) cells
        touched = int(np.count_nonzero((d.count != 0) | (d.ids != 0) | (d.checks != 0)))
        return None if touched <= HASHES * (most - left - right) else (-1, -1)


# -- a run's sketches ---------------------------------------------------------------------------
def _part_sketches(part: dict, keyed: Keyed, groups: list[tuple[int, str]],
                   rates_by: tuple[str, ...] = (), rates_keys: tuple = ()) -> dict:
    """One partition's sketches: each group's persons and persons with the event, and each
    rates row's (its key values ``rates_keys`` of the columns ``rates_by``). A person lies in
    one partition only."""
    pnr = np.asarray(part["pnr"])
    group = np.asarray(part["group"])
    event = np.asarray(part["event"]) != 0
    names, masks = [], []
    for code, label in groups:
        here = group == code
        names += [("group", label, "persons"), ("group", label, "events")]
        masks += [here, here & event]
    if rates_by and pnr.shape[0]:
        from ..engines.analyses import _distinct_rows, _key_columns

        uniq, inv = _distinct_rows(_key_columns(part, rates_by), pnr.shape[0])
        order = np.argsort(inv, kind="stable")
        bounds = np.searchsorted(inv[order], np.arange(len(uniq) + 1))
        at = {tuple(int(x) if float(x).is_integer() else float(x) for x in u): i
              for i, u in enumerate(uniq)}
        for key in rates_keys:
            i = at.get(key)
            rows = order[bounds[i]:bounds[i + 1]] if i is not None else order[:0]
            names += [("rates", key, "persons"), ("rates", key, "events")]
            masks += [rows, rows[event[rows]]]
    else:
        for key in rates_keys:
            names += [("rates", key, "persons"), ("rates", key, "events")]
            masks += [np.zeros(pnr.shape[0], bool)] * 2
    return dict(zip(names, keyed.sketches(pnr, masks), strict=True))


def _merge(a: dict, b: dict) -> dict:
    return {k: a[k] + b[k] for k in a}


def _wanted(plan, results: dict) -> tuple:
    """What to sketch, from the plan and the raw results: (groups, rates_by, rates_keys,
    expected), ``expected`` being [(count name, sketch key, the raw count)]: a set is kept
    only where its size is the raw count the run computed (so it is the set behind that
    count)."""
    from ..engines.analyses import RATE_COLUMNS, key_names
    from ..plan.nodes import RatesPlan
    from . import exports

    groups = [(g.code, g.label) for g in plan.groups]
    expected = []
    # the rates table's rows (by covariates of the per-person table; or a proportion's)
    by = next((n.by for n in plan.analyses if isinstance(n, RatesPlan) and
               n.by != ("group",)), ())
    rates = (results.get("rates") or []) if by else []
    cols = key_names(by, RATE_COLUMNS)
    keys = tuple(tuple(r.get(c) for c in cols) for r in rates)
    for name, row, key in zip(exports.row_names("rates", "rates", rates), rates, keys,
                              strict=True):
        expected += [(f"{name}.{c}", ("rates", key, c), row.get(c))
                     for c in ("persons", "events")]
    rows = results.get("cohort") or []
    for name, row in zip(exports.row_names("cohort", "cohort", rows), rows, strict=True):
        expected += [(f"{name}.{c}", ("group", row.get("label"), c), row.get(c))
                     for c in ("persons", "events")]
    for g in plan.groups:   # the last step of attrition is the arm's persons
        steps = (results.get("attrition") or {}).get(g.label) or []
        if steps:
            name = exports.row_names(f"attrition.{g.label}", "attrition", steps)[-1]
            expected.append((f"{name}.persons", ("group", g.label, "persons"),
                             steps[-1].get("persons")))
    for k, m in sorted((results.get("models") or {}).items()):
        if isinstance(m, dict):
            expected += [(f"models.{k}.{c}", ("all", "", c), m.get(c))
                         for c in ("persons", "events")]
    return groups, by, keys, expected


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


def _doc(got: dict, groups: list, expected: list, keyed: Keyed) -> dict:
    """The sketches document from the summed partition sketches."""
    for c in ("persons", "events"):   # every row is in one arm: the models' rows are theirs
        got[("all", "", c)] = sum((got[("group", label, c)] for _, label in groups),
                                  keyed.empty())
    sets = {name: got[key] for name, key, n in expected
            if key in got and isinstance(n, int) and got[key].n == n}
    return {"format": FORMAT, "cells": keyed.cells, "hashes": HASHES, "key_id": keyed.key_id,
            "hash_id": keyed.hash_id,
            "sets": {k: {"n": s.n, "cells": s.to_text()} for k, s in sorted(sets.items())}}


def of_run(plan, parts, results: dict, key_text: str, secret: bytes = b"") -> dict:
    """The sketches of a run's published counts of persons, in this process: ``{"format",
    "cells", "hashes", "key_id", "sets": {count name: {"n", "cells"}}}``, the count names as
    the export register names them (:func:`hpcstudy.secure.exports.published`). ``parts``:
    the run's Partitions, or its per-person table (a dict of arrays)."""
    from ..models.partitions import LocalPartitions

    if isinstance(parts, dict):
        parts = LocalPartitions([parts])
    keyed = Keyed(key_text, cells_for(plan.min_cell), secret)
    groups, by, keys, expected = _wanted(plan, results)
    got = parts.map_reduce(_part_sketches, keyed, groups, by, keys, combine=_merge)
    return _doc(got, groups, expected, keyed)


def writer(plan, parts, results: dict, key_text: str, secret: bytes = b""):
    """``write(OUT) -> SHA-256``, which writes ``OUT/private/sketches.json``: from this
    process, or under a client from a worker, the partitions' sketches summed on the workers,
    so that no sketch (a hash of persons, like the person table) passes through the client."""
    client = getattr(parts, "client", None)
    if client is None:
        doc = of_run(plan, parts, results, key_text, secret)
        return lambda out: write(out, doc)
    keyed = Keyed(key_text, cells_for(plan.min_cell), secret)
    groups, by, keys, expected = _wanted(plan, results)
    futures = parts.map(_part_sketches, keyed, groups, by, keys).parts
    while len(futures) > 1:   # summed pairwise where they are
        futures = [client.submit(_merge, *futures[i:i + 2], pure=False)
                   if i + 1 < len(futures) else futures[i] for i in range(0, len(futures), 2)]

    def on_a_worker(out):
        return client.submit(_write_doc, futures[0], groups, expected, keyed, str(out),
                             pure=False).result()
    return on_a_worker


def _write_doc(got: dict, groups: list, expected: list, keyed: Keyed, out: str) -> str:
    return write(Path(out), _doc(got, groups, expected, keyed))


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
    return params, {k: Sketch.from_text(v["cells"], v["n"], params["cells"])
                    for k, v in doc["sets"].items()}
