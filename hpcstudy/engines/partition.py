"""The per-person analysis table of one partition, computed on a device with the array kernels.

This is the dask engine's unit of work: every register partition holds whole persons (all
registers share the pnr hash), so a partition's persons are complete here and nothing crosses
partitions. A task reads only the columns the plan needs (pyarrow), moves each to the device
once (:func:`load`), and does everything else there with the device's array namespace ``xp``:
date decoding, linkage of diagnoses to contacts, the event streams, windows, follow-up and the
per-person table. The host receives the attrition counts (one small array) and the finished
table (one transfer per column).

Why it is linear in the rows. Every register partition is stored sorted (``bef`` by pnr, the
event registers by pnr then date, ``lpr_adm`` by pnr, date, recnum, ``lpr_diag`` in the order of
its contacts). :class:`Persons` checks that once per partition (one device-to-host transfer of
a few flags) and then relies on it: each event's person is a dense row number found once per
register, ``lpr_diag``'s rows map to their contact by position rather than by a sort on
``recnum``, every event stream is a mask over its register's stored rows (already in (person,
day, tie) order, so never sorted), and all of a study's streams of one register are decided in
one pass (each code looked up once in a table of bit sets, one bit per stream). Where a check
fails (data written by another tool), the partition is sorted once on load, or diagnoses are
linked by ``recnum`` values, and the results are the same.

One function per plan node type, found in this engine's registries (hpcstudy/plan/dispatch.py):
INDEX (the index rules), STEPS (eligibility: the population's steps and the criteria), COLUMNS
(covariates), TABLES (persons in both arms), DESIGN (the comparative design, over the
partitions) and the shared ANALYSES; :func:`event_streams` builds every EventStream at once and
:func:`follow_up` the outcome and follow-up of a group. What the dask engine supports is what
is registered; :func:`check` refuses anything else before any data is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpcstudy_kernels import followup
from hpcstudy_kernels import windows as W
from hpcstudy_kernels.windows import NO_DATE

from ..designs import episodes
from ..devices import Device, get_device
from ..measures import contact
from ..plan.dispatch import Registry, engine_registries
from ..plan.nodes import (
    AgeColumn,
    AgeRange,
    AliveAtIndex,
    BothArms,
    CalendarYearColumn,
    CharlsonColumn,
    CountColumn,
    CriterionPlan,
    DesignPlan,
    EventStream,
    FirstEventIndex,
    FixedDateIndex,
    FlagColumn,
    GroupPlan,
    IndexContactColumn,
    IndexWithinData,
    OutcomePlan,
    Plan,
    RandomDateIndex,
    RegionColumn,
    RegionIn,
    ResidentAtIndex,
    ResidentFor,
    SexColumn,
    SexIs,
)
from ..registers.sources import SOURCES
from ..registers.store import Dataset, part_name, read_partition
from ..timesplit import entry
from . import common, read_ahead
from .results import ANALYSES

DEFAULT_DEVICE = "cpu"

# the sort order of each register inside a partition (registers/schema.py), by read columns:
# the population registers, then each event source's table (pnr, date, tie)
SORTED_BY = {"bef": ("pnr",), "dod": ("pnr", "doddato"), "vnds": ("pnr", "haend_dato"),
             **{src.table: (src.pnr, src.date) + ((src.tie,) if src.tie else ())
                for src in SOURCES.values()}}
# the code column each event source's streams select on, and its dated events' column
CODE_COLUMN = {name: (src.code_table, src.code) for name, src in SOURCES.items()}
DAY_COLUMN = {name: (src.table, src.date) for name, src in SOURCES.items()}
# the linked source (codes in a second table joined by a link column: lpr's contacts and their
# diagnoses), whose diagnoses are matched to contacts by position below
LINKED = next(src for src in SOURCES.values() if src.linked)
ADM, DIAG, LINK, DIAG_TYPE = LINKED.table, LINKED.code_table, LINKED.link, LINKED.diagnosis_type
# the columns read as dates: the population registers' and every event source's
DATES = ("foed_dag", "doddato", "haend_dato", *dict.fromkeys(s.date for s in SOURCES.values()))

# -- one function per plan node (what this engine supports is what is registered) ------------
INDEX = Registry("dask")      # index rules: (node, pp, seed) -> (day per person, [(step, mask)])
STEPS = Registry("dask")      # eligibility: (node, Group) -> mask over the partition's persons
COLUMNS = Registry("dask")    # covariates: (node, Group) -> {column: values of the group's rows}
TABLES = Registry("dask")     # whole-table steps: (node, table, attrition, plan) -> (…)
DESIGN = Registry("dask")     # the design, on the gathered tables: (node, plan, tables, attrition)
engine_registries("dask", INDEX, STEPS, COLUMNS, TABLES, DESIGN, ANALYSES)


def check(plan: Plan) -> None:
    """Refuse a plan with a node this engine has no function for (before reading data)."""
    for g in plan.groups:
        INDEX.function(g.index)
    STEPS.check(plan.eligibility)
    COLUMNS.check(plan.columns)
    TABLES.check(n for n in (plan.both_arms,) if n is not None)
    DESIGN.check(n for n in (plan.design,) if n is not None)
    ANALYSES.check(plan.analyses)

# Transfers per partition task (tests hold the engine to this): to the device, one per column
# read, one code table per event register (lpr, lmdb, death) whose streams select codes and
# one type table for lpr streams of any code, plus one per filter of more than 16 values; to
# the host, one array of stored-order flags, one of attrition counts, and one per column of
# the per-person table.


def _device(device) -> Device:
    if device is None:
        return get_device(DEFAULT_DEVICE)
    return get_device(device) if isinstance(device, str) else device


def read_host(ds_root: str, partition: int, reads: dict[str, tuple[str, ...]]) -> dict:
    """The columns a plan reads from one partition, as NumPy arrays (dates as int32 days)."""
    out = {}
    for reg, cols in reads.items():   # no manifest read: the run's prepare read it, once
        path = Path(ds_root) / reg / part_name(partition)
        t = read_ahead.take(path, cols)   # (read while the run imported: engines/read_ahead)
        if t is None:
            t = read_partition(path, cols)
        out[reg] = {c: common.as_days_or_values(t.column(c)) for c in cols}
    return out


def load(ds_root: str, partition: int, reads: dict[str, tuple[str, ...]],
         device: Device | str | None = None) -> dict:
    """The columns a plan reads from one partition, each moved to ``device`` once (after
    checking that the partition's work fits in the device's free memory)."""
    dev = _device(device)
    host = read_host(ds_root, partition, reads)
    fits(ds_root, partition, sum(a.nbytes for cols in host.values() for a in cols.values()),
         dev)
    return {reg: {c: dev.to_device(a) for c, a in cols.items()} for reg, cols in host.items()}


# Device memory a partition task needs, as a multiple of the bytes it reads: the columns, the
# dates widened to int64, and the streams and masks alive at once (measured: about 2.5).
MEMORY_PER_BYTE_READ = 3


def fits(ds_root: str, partition: int, read_bytes: int, dev: Device) -> None:
    """Refuse, in one line, a partition whose work would not fit in the device's memory."""
    free = dev.memory_free() if dev.name != "cpu" else None
    need = MEMORY_PER_BYTE_READ * read_bytes
    if free is None or need <= free:
        return
    raise _too_big(ds_root, partition, need, free)


def _too_big(ds_root: str, partition: int, need: int, free: int):
    from ..errors import UserError

    parts = Dataset.open(ds_root).partitions
    suggest = parts * -(-need // max(free, 1))
    gib = 2**30
    return UserError(f"partition {partition} of {ds_root} needs about {need / gib:.2f} GiB of "
                     f"device memory and {free / gib:.2f} GiB are free",
                     fix=f"re-create the dataset with --partitions {suggest} or more (now "
                     f"{parts}), or run with --device cpu")


def run_partition(ds_root: str, partition: int, plan: Plan, device: Device | str | None = None):
    """Read, build and bring back one partition's per-person table and attrition."""
    dev = _device(device)
    data = load(ds_root, partition, plan.reads, dev)
    try:
        return person_table(data, plan, dev)
    except MemoryError as e:  # CuPy's OutOfMemoryError: one line, not a CUDA traceback
        if dev.name == "cpu":
            raise
        read = sum(a.nbytes for cols in data.values() for a in cols.values())
        free = dev.memory_free() or 0
        raise _too_big(ds_root, partition, max(MEMORY_PER_BYTE_READ * read, free + 1),
                       free) from e


# -- the partition's persons and registers, checked once --------------------------------------
def _sorted_check(xp, cols: dict, keys: tuple[str, ...]):
    """Device bool: rows are in nondecreasing lexicographic order of ``keys``: the first key
    never decreases, and a later key decreases only where an earlier one changes (a quarter
    fewer passes over the rows than building the order key by key)."""
    n = cols[keys[0]].shape[0]
    if n < 2:
        return xp.ones((), dtype=bool)
    first = cols[keys[0]]
    ok = xp.all(first[1:] >= first[:-1])
    tied = None   # equal on every key before this one
    for before, k in zip(keys, keys[1:], strict=False):
        b = cols[before]
        eq = b[1:] == b[:-1]
        tied = eq if tied is None else tied & eq
        a = cols[k]
        ok = ok & ~xp.any(tied & (a[1:] < a[:-1]))
    return ok


def _sort_rows(xp, cols: dict, keys: tuple[str, ...]) -> dict:
    order = xp.lexsort(xp.stack([cols[k].astype(xp.int64) for k in reversed(keys)]))
    return {c: a[order] for c, a in cols.items()}


class Persons:
    """A partition on a device: its persons (dense rows 0..n-1 in pnr order), their fixed
    attributes, the migrations, and the row of every event's person."""

    def __init__(self, data: dict, plan: Plan, dev: Device):
        xp = self.xp = dev.xp
        self.dev, self.plan = dev, plan
        data = {reg: dict(cols) for reg, cols in data.items()}
        # The stored order, checked once (on the stored int32 days: half the bytes of int64):
        # the flags come to the host in one transfer.
        checks = [(reg, _sorted_check(xp, data[reg], keys)) for reg, keys in SORTED_BY.items()
                  if reg in data]
        if DIAG in data:
            self._diag_runs(data)
            checks.append(("diag aligned", self._aligned))
        flags = dev.to_host(xp.stack([f for _, f in checks]))
        ok = {name: bool(f) for (name, _), f in zip(checks, flags, strict=True)}
        for reg, keys in SORTED_BY.items():
            if reg in data and not ok[reg]:
                data[reg] = _sort_rows(xp, data[reg], keys)
        # integer days everywhere from here (stored as int32 days)
        for cols in data.values():
            for c in DATES:
                if c in cols:
                    cols[c] = cols[c].astype(xp.int64)
        # positions found before a sort of lpr_adm would no longer match its contacts
        self.diag_aligned = ok.get("diag aligned", False) and ok.get(ADM, True)
        self.data = data
        bef = data["bef"]
        self.pnr = bef["pnr"]
        self.n = n = self.pnr.shape[0]
        self.birth = bef["foed_dag"]
        self.female = (bef["koen"] == 2).astype(xp.int8)
        self.region = bef["region"].astype(xp.int16)
        # death: the earliest of a person's rows in dod
        dod = data["dod"]
        self.death = xp.full(n, NO_DATE, dtype=xp.int64)
        drow, known = self.rows_of(dod["pnr"])
        first = known.copy()
        first[1:] &= dod["pnr"][1:] != dod["pnr"][:-1]
        self.death[drow[first]] = dod["doddato"][first]
        v = data["vnds"]
        self.v_row, vk = self.rows_of(v["pnr"])
        self.v_day = v["haend_dato"]
        self.v_out = (v["indud_kode"] == 1) & vk
        self.v_known = vk
        # before any move, a person lives in Denmark unless the first move is an arrival
        first_move = W.nth_per_row(self.v_row, vk, n, 1)
        has = first_move >= 0
        self.native = xp.where(has, self.v_out[xp.where(has, first_move, 0)], True) \
            if self.v_out.shape[0] else xp.ones(n, dtype=bool)
        self._rows: dict[str, tuple] = {}
        self.streams: dict[EventStream, tuple] = {}
        self.positions: dict[EventStream, object] = {}   # a stream's rows in its register

    def rows_of(self, ev_pnr):
        """(person row of each event row, whether the person is in this partition's bef).
        ``ev_pnr`` is sorted (checked on load): each distinct pnr is looked up once and its
        row spread over its run of events."""
        xp = self.xp
        m = ev_pnr.shape[0]
        if self.n == 0 or m == 0:
            return xp.zeros(m, dtype=xp.int64), xp.zeros(m, dtype=bool)
        change = xp.ones(m, dtype=bool)
        change[1:] = ev_pnr[1:] != ev_pnr[:-1]
        u = ev_pnr[change]
        pos = xp.minimum(xp.searchsorted(self.pnr, u), self.n - 1)
        # the run number of each row; summed in int32 (several times faster than int64 from
        # bool) and widened once, as NumPy gathers with int64 indices several times faster.
        # Summed in place: NumPy's cumsum from bool into a new array holds the GIL for much of
        # its loop (a fifth of a partition thread's GIL time) and takes 1.4x the CPU
        run = change.astype(xp.int32 if m < 2**31 else xp.int64)
        xp.cumsum(run, out=run)
        run = run.astype(xp.int64)
        run -= 1
        return pos[run], (self.pnr[pos] == u)[run]

    def register_rows(self, reg: str):
        if reg not in self._rows:
            self._rows[reg] = self.rows_of(self.data[reg]["pnr"])
        return self._rows[reg]

    def rows_at(self, reg: str, at):
        """:meth:`register_rows` of the register's rows ``at`` (ascending) alone: a stream's
        few rows need not look up every row of the register."""
        if reg in self._rows:
            rows, known = self._rows[reg]
            return rows[at], known[at]
        return self.rows_of(self.data[reg]["pnr"][at])

    def _diag_runs(self, data):
        """Contact of each lpr_diag row by position: diagnoses are stored in their contacts'
        order, so run k of equal recnums is contact k of lpr_adm (checked, not assumed)."""
        xp = self.xp
        rec, adm_rec = data[DIAG][LINK], data[ADM][LINK]
        m = rec.shape[0]
        change = xp.ones(m, dtype=bool)
        change[1:] = rec[1:] != rec[:-1]
        self.diag_change = change
        # (nonzero, then a gather: several times faster than selecting by the mask)
        self.diag_starts = xp.nonzero(change)[0]
        if self.diag_starts.shape[0] == adm_rec.shape[0]:
            self._aligned = xp.all(rec[self.diag_starts] == adm_rec)
        else:
            self._aligned = xp.zeros((), dtype=bool)

    # -- residence ---------------------------------------------------------------------------
    def resident_since(self, day):
        """Per person row: the day their current stay in Denmark began, or NO_DATE if abroad."""
        xp = self.xp
        ok = W.events_in_window(self.v_row, self.v_day, day, None, 0, self.v_known)
        last = W.nth_per_row(self.v_row, ok, self.n, -1)
        has = last >= 0
        li = xp.where(has, last, 0)
        if self.v_out.shape[0]:
            out_ = self.v_out[li]
            arrived = xp.where(has & ~out_, self.v_day[li], NO_DATE)
            abroad = has & out_
        else:
            arrived = xp.full(self.n, NO_DATE, dtype=xp.int64)
            abroad = xp.zeros(self.n, dtype=bool)
        never_moved = ~has
        out = xp.where(never_moved & self.native, self.birth, arrived)
        return xp.where(abroad | (never_moved & ~self.native), NO_DATE, out)

    def emigration_after(self, day):
        """Per person row: the first emigration after ``day``, or NO_DATE."""
        return W.first_day_per_row(self.v_row, self.v_day, day, self.n, 1, None, self.v_out)


# -- EventStream -----------------------------------------------------------------------------
def _plan_streams(plan: Plan) -> list[EventStream]:
    """Every event stream a plan uses, each once, in a fixed order."""
    found: dict[EventStream, None] = {}

    def add(s):
        if s is not None:
            found.setdefault(s, None)

    for g in plan.groups:
        add(g.index.stream)
        add(g.never_before)
        add(g.censor_at)
        for s in episodes.streams(g):
            add(s)
    for cr in plan.criteria:
        add(cr.stream)
    for c in plan.columns:
        add(c.stream)
        for _, _, s in c.charlson:
            add(s)
    add(plan.outcome.stream)
    return list(found)


def _word(n_streams: int):
    """The narrowest unsigned integer holding one bit per stream (at most 64 per word)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n_streams <= 8 * np.dtype(dtype).itemsize:
            return dtype
    return np.uint64


def _bit(k: int, dtype):
    """(word, bit mask) of stream ``k`` in words of ``dtype``."""
    w, bit = divmod(k, 8 * np.dtype(dtype).itemsize)
    return w, dtype(1 << bit)


def _code_table(streams: list[EventStream], types: int):
    """Host table: (code, diagnosis type) -> bit set of the streams selecting that row (words
    of one bit per stream), at index code * types + type. The last entry, for codes or types
    outside the table, is empty."""
    dtype = _word(len(streams))
    words = _bit(len(streams) - 1, dtype)[0] + 1
    size = max([hi for s in streams if s.codes is not None for _, hi in s.codes.ranges] + [1])
    table = np.zeros((words, size, types), dtype=dtype)
    for k, s in enumerate(streams):
        w, one = _bit(k, dtype)
        tt = list(s.diagnosis_types) if types > 1 else [0]
        if s.codes is not None:  # (streams of any code: _type_table)
            for lo, hi in s.codes.ranges:
                if hi > lo:
                    table[w][lo:hi, tt] |= one
    flat = np.zeros((words, size * types + 1), dtype=dtype)
    flat[:, :-1] = table.reshape(words, -1)
    return flat, size


def _type_table(streams: list[EventStream], types: int):
    """Host table: diagnosis type -> bit set of the streams that take any code of that type
    (the last entry, for other types, is empty)."""
    dtype = _word(len(streams))
    words = _bit(len(streams) - 1, dtype)[0] + 1
    table = np.zeros((words, types + 1), dtype=dtype)
    for k, s in enumerate(streams):
        if s.codes is None:
            w, one = _bit(k, dtype)
            table[w][list(s.diagnosis_types)] |= one
    return table


def _row_bits(pp: Persons, register: str, group: list[EventStream], at=None) -> list:
    """Per row of the register's code table (lpr: per diagnosis), or per row ``at`` of it:
    the bit set of the streams whose codes (and diagnosis types) it matches; one gather per
    word of up to 64 streams."""
    xp = pp.xp
    creg, ccol = CODE_COLUMN[register]
    code = pp.data[creg][ccol]
    if at is not None:
        code = code[at]
    types = 1   # (the diagnosis type column is read only where a stream selects on it)
    if register == LINKED.name and any(_by_type(s) for s in group):
        types = max(t for s in group for t in (*s.diagnosis_types, 0, 1)) + 1
    flat, size = _code_table(group, types)
    t = pp.dev.to_device(flat)
    valid = (code >= 0) & (code < size)
    if types > 1:
        dt = pp.data[DIAG][DIAG_TYPE]
        if at is not None:
            dt = dt[at]
        valid &= (dt >= 0) & (dt < types)
        at = xp.where(valid, code.astype(xp.int64) * types + dt, size * types)
    else:
        at = xp.where(valid, code, size)
    bits = [t[w][at] for w in range(flat.shape[0])]
    if types > 1 and any(s.codes is None for s in group):
        tt = pp.dev.to_device(_type_table(group, types))
        at = xp.where((dt >= 0) & (dt < types), dt, types)
        bits = [b | tt[w][at] for w, b in enumerate(bits)]
    return bits


def _has_bit(words, k: int):
    w, one = _bit(k, words[0].dtype.type)
    return (words[w] & one) != 0


def _isin_small(xp, col, values):
    """``col`` is one of a few ``values`` (host ints), without moving them to the device."""
    m = xp.zeros(col.shape[0], dtype=bool)
    for v in values:
        m |= col == v
    return m


def _by_type(s: EventStream) -> bool:
    """Whether a stream needs a diagnosis of certain types (lpr; not of every type)."""
    return s.register == LINKED.name and tuple(s.diagnosis_types) != (0, 1)


def _selects(s: EventStream) -> bool:
    """Whether a stream selects rows by code (lpr: or needs a diagnosis of certain types)."""
    return s.codes is not None or _by_type(s)


def event_streams(pp: Persons, streams: list[EventStream]) -> None:
    """Build the given streams into ``pp.streams``: for each, the (person row, day) of its
    events in (person, day, stored) order; all streams of one register in one pass over it."""
    xp, dev = pp.xp, pp.dev
    by_reg: dict[str, list[EventStream]] = {}
    for s in streams:
        if s not in pp.streams:
            by_reg.setdefault(s.register, []).append(s)
    for register, group in by_reg.items():
        dreg, dcol = DAY_COLUMN[register]
        day = pp.data[dreg][dcol]
        # one pass: the rows whose code any stream selects, each with its streams' bit set
        # (lpr: per contact, OR-ed over its diagnoses); a stream then looks at those rows only
        at = bits = dense = None
        if any(_selects(s) for s in group):
            at, bits, dense = _matching_rows(pp, register, group)
        if not all(_by_code_only(s) for s in group):
            pp.register_rows(dreg)   # every row's person: some stream looks at every row
        by_code = [k for k, s in enumerate(group) if _by_code_only(s)]
        if by_code:
            if at is None:   # the rows any stream of codes alone takes, and their bit sets
                at = _any_bit(xp, dense, by_code)
                bits = [b[at] for b in dense]
            at_rows, at_known = pp.rows_at(dreg, at)   # the matching rows' persons, once
        for k, s in enumerate(group):
            if _by_code_only(s):
                w, one = _bit(k, bits[0].dtype.type)
                mine = ((bits[w] & one) != 0) & at_known
                idx = at[mine]
                pp.streams[s] = (at_rows[mine], day[idx])
                pp.positions[s] = idx   # (as-treated episodes read the rows' other columns)
                continue
            rows, keep = pp.register_rows(dreg)
            if _selects(s):
                if dense is None:   # per row of the register: its streams' bit sets
                    dense = _scatter(xp, at, bits, day.shape[0])
                keep = keep & _has_bit(dense, k)
            src = SOURCES[register]
            if src.patient_type is not None and s.patient_types:
                keep = keep & _isin_small(xp, pp.data[src.table][src.patient_type],
                                          s.patient_types)
            for col, vals in s.filters:
                target = pp.data[src.table][col]
                keep = keep & (_isin_small(xp, target, vals) if len(vals) <= 16 else
                               xp.isin(target, dev.to_device(np.asarray(vals))))
            idx = xp.nonzero(keep)[0]
            pp.streams[s] = (rows[idx], day[idx])
            pp.positions[s] = idx


# Up to this many code ranges are matched by comparisons; beyond, by the code table's gather
FEW_RANGES = 8


def _code_ranges(group: list[EventStream]) -> list[tuple[int, int]]:
    """The union of the code ranges ``group``'s streams select, as few disjoint ranges."""
    out: list[list[int]] = []
    for lo, hi in sorted(r for s in group if s.codes is not None for r in s.codes.ranges
                         if r[1] > r[0]):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def _matching_rows(pp: Persons, register: str, group: list[EventStream]):
    """(rows of the register's dated table with a code some stream of ``group`` selects,
    ascending; their bit sets, one word per 64 streams; the bit sets of every row, where
    they were worked out on the way, else None). A study's codes are a small share of a
    register's: the rows are found first (comparisons of the code column with a few
    ranges), and only they are looked up in the code table and linked to their contacts."""
    xp = pp.xp
    if any(s.codes is None and _selects(s) for s in group):   # by diagnosis type alone
        return None, None, _dense_bits(pp, register, group)
    ranges = _code_ranges(group)
    if len(ranges) > FEW_RANGES:
        at, bits = _dense_to_rows(xp, _row_bits(pp, register, group))
    else:
        creg, ccol = CODE_COLUMN[register]
        code = pp.data[creg][ccol]
        hit = None
        for lo, hi in ranges:
            h = (code >= lo) & (code < hi)
            hit = h if hit is None else hit | h
        at = xp.nonzero(hit)[0] if hit is not None else xp.zeros(0, dtype=xp.int64)
        bits = _row_bits(pp, register, group, at)
    if register != LINKED.name:
        return at, bits, None
    if not pp.diag_aligned:
        return None, None, _contact_bits(pp, group, _scatter(xp, at, bits, _n_rows(pp, DIAG)))
    return (*_contacts_of(xp, _contact_index(xp, pp.diag_change, at), bits), None)


def _n_rows(pp: Persons, table: str) -> int:
    return next(iter(pp.data[table].values())).shape[0]


def _dense_bits(pp: Persons, register: str, group: list[EventStream]) -> list:
    bits = _row_bits(pp, register, group)
    return _contact_bits(pp, group, bits) if register == LINKED.name else bits


def _any_bit(xp, bits: list, streams: list[int]):
    """Rows whose bit set holds any of ``streams``' bits, ascending."""
    dtype = bits[0].dtype.type
    masks: dict[int, int] = {}
    for k in streams:
        w, one = _bit(k, dtype)
        masks[w] = masks.get(w, 0) | int(one)
    hit = None
    for w, m in masks.items():
        h = (bits[w] & dtype(m)) != 0
        hit = h if hit is None else hit | h
    return xp.nonzero(hit)[0]


def _dense_to_rows(xp, bits: list):
    """(rows with any bit, their bit sets) of per-row bit sets."""
    some = bits[0] != 0
    for b in bits[1:]:
        some |= b != 0
    at = xp.nonzero(some)[0]
    return at, [b[at] for b in bits]


def _scatter(xp, at, bits: list, n: int) -> list:
    out = [xp.zeros(n, dtype=b.dtype) for b in bits]
    for o, b in zip(out, bits, strict=True):
        o[at] = b
    return out


def _contact_index(xp, change, at):
    """The contact of each diagnosis row ``at``: the number of contacts begun by then, less
    one (``change``: a row begins a contact). (A search per row among the contacts' first rows
    was measured slower inside a partition task, though not alone.)"""
    # summed in int32 (several times faster than int64 from bool), widened for the gathers
    run = xp.cumsum(change, dtype=xp.int32 if change.shape[0] < 2**31 else xp.int64)
    return run[at].astype(xp.int64) - 1


def _contacts_of(xp, contact, bits: list):
    """(the contacts ``contact`` of some diagnosis rows (ascending), each once; the OR of
    their diagnoses' bit sets ``bits``)."""
    m = contact.shape[0]
    new = xp.ones(m, dtype=bool)
    new[1:] = contact[1:] != contact[:-1]
    heads = xp.nonzero(new)[0]
    lens = xp.empty_like(heads)
    lens[:-1] = heads[1:] - heads[:-1]
    lens[-1:] = m - heads[-1:]
    out = [b[heads] for b in bits]
    live = xp.nonzero(lens > 1)[0]   # contacts with a second matching diagnosis
    j = 1
    while live.shape[0]:
        nxt = heads[live] + j
        for o, b in zip(out, bits, strict=True):
            o[live] = o[live] | b[nxt]
        j += 1
        live = live[lens[live] > j]
    return contact[heads], out


def _by_code_only(s: EventStream) -> bool:
    """A stream decided by its codes (and diagnosis types) alone."""
    return s.codes is not None and not s.patient_types and not s.filters


def _contact_bits(pp: Persons, group: list[EventStream], diag_bits: list):
    """Per lpr_adm contact: the OR of its diagnoses' bit sets (diagnosis types applied)."""
    xp = pp.xp
    diag = pp.data[DIAG]
    words = len(diag_bits)
    n_adm = pp.data[ADM][LINK].shape[0]
    if pp.diag_aligned:
        starts = pp.diag_starts
        m = diag_bits[0].shape[0]
        ends = xp.empty_like(starts)
        ends[:-1] = starts[1:]
        ends[-1:] = m
        lens = ends - starts
        out = [b[starts] for b in diag_bits]
        live = xp.nonzero(lens > 1)[0]   # contacts with a second diagnosis
        j = 1
        while live.shape[0]:  # OR in each contact's j-th diagnosis; contacts have a handful
            at = starts[live] + j
            for w in range(words):
                out[w][live] = out[w][live] | diag_bits[w][at]
            j += 1
            live = live[lens[live] > j]
        return out
    # not stored in contact order: a contact has the bit where any diagnosis with its recnum
    # has it (membership by value, sorting; data hpcstudy wrote never comes here)
    adm_rec, rec = pp.data[ADM][LINK], diag[LINK]
    dtype = diag_bits[0].dtype.type
    out = [xp.zeros(n_adm, dtype=dtype) for _ in range(words)]
    for k in range(len(group)):
        w, one = _bit(k, dtype)
        hit = xp.isin(adm_rec, rec[_has_bit(diag_bits, k)])
        out[w] = xp.where(hit, out[w] | one, out[w])
    return out


# -- IndexPlan --------------------------------------------------------------------------------
def index_rule(pp: Persons, g: GroupPlan, seed: int) -> tuple:
    """Index day per person row (NO_DATE: none) and the attrition steps [(name, mask)]."""
    xp, n = pp.xp, pp.n
    idx, steps = INDEX(g.index, pp, seed)
    if g.never_before is not None:
        er, ed = pp.streams[g.never_before]
        before = W.count_per_row(er, W.events_in_window(er, ed, idx, None, 0), n) > 0
        idx = xp.where(before, NO_DATE, idx)
        steps.append(("no exposure on or before index", idx != NO_DATE))
    return idx, steps


@INDEX.register(FixedDateIndex)
def _fixed_date(ix: FixedDateIndex, pp: Persons, seed: int):
    idx = pp.xp.full(pp.n, ix.start, dtype=pp.xp.int64)
    return idx, [("index date", idx != NO_DATE)]


@INDEX.register(RandomDateIndex)
def _random_date(ix: RandomDateIndex, pp: Persons, seed: int):
    idx = common.random_index_days(pp.pnr, seed, ix.start, ix.end)
    return idx, [("random index date", idx != NO_DATE)]


@INDEX.register(FirstEventIndex)
def _first_event(ix: FirstEventIndex, pp: Persons, seed: int):
    xp, n = pp.xp, pp.n
    er, ed = pp.streams[ix.stream]
    ref = xp.full(n, 0 if ix.start is None else ix.start, dtype=xp.int64)
    hi = None if ix.end is None else ix.end - (ix.start or 0)
    lo = None if ix.start is None else 0
    ok = W.events_in_window(er, ed, ref, lo, hi)
    idx = W.day_at(W.nth_per_row(er, ok, n, ix.nth), ed)
    steps = [("index event in window", idx != NO_DATE)]
    if ix.washout_days:
        prior = W.count_per_row(er, W.events_in_window(er, ed, idx, -ix.washout_days, -1),
                                n) > 0
        idx = xp.where(prior, NO_DATE, idx)
        steps.append((f"no event in the {ix.washout_days} days before", idx != NO_DATE))
    return idx, steps


class Group:
    """What one group's steps and columns see. Steps: ``safe``, every person row's index day
    (0 where none), and ``since`` (the day their stay in Denmark began, at ``safe``); columns:
    ``ref`` (index day per person row, NO_DATE outside the cohort) and ``rows`` (the cohort's
    person rows), ``idx`` the index rule's day per person row."""

    def __init__(self, pp: Persons, g: GroupPlan, idx, safe):
        self.pp, self.g, self.idx, self.safe = pp, g, idx, safe
        self._since = None
        self.ref = self.rows = None

    @property
    def since(self):
        if self._since is None:
            self._since = self.pp.resident_since(self.safe)
        return self._since


# -- eligibility ------------------------------------------------------------------------------
@STEPS.register(IndexWithinData)
def _within_data(node: IndexWithinData, g: Group):
    return g.safe <= node.end


@STEPS.register(AliveAtIndex)
def _alive(node: AliveAtIndex, g: Group):
    return (g.pp.death >= g.safe) & (g.pp.birth <= g.safe)


@STEPS.register(ResidentAtIndex)
def _resident(node: ResidentAtIndex, g: Group):
    return g.since != NO_DATE


@STEPS.register(AgeRange)
def _age_range(node: AgeRange, g: Group):
    age = (g.safe - g.pp.birth) / 365.25
    return (age >= node.lo) & (age < node.hi)


@STEPS.register(SexIs)
def _sex(node: SexIs, g: Group):
    return g.pp.female == (1 if node.sex == "female" else 0)


@STEPS.register(RegionIn)
def _region_in(node: RegionIn, g: Group):
    return _isin_small(g.pp.xp, g.pp.region, node.regions)


@STEPS.register(ResidentFor)
def _resident_for(node: ResidentFor, g: Group):
    need = float(np.floor(node.years * 365.25))
    return (g.since != NO_DATE) & (g.safe - g.since >= need)


@STEPS.register(CriterionPlan)
def _criterion(cr: CriterionPlan, g: Group):
    return criterion(g.pp, cr, g.safe)


def criterion(pp: Persons, cr: CriterionPlan, ref):
    """Per person row: whether the criterion keeps the person (``ref`` their index day)."""
    er, ed = pp.streams[cr.stream]
    k = W.count_per_row(er, W.events_in_window(er, ed, ref, cr.window.lo, cr.window.hi), pp.n)
    has = k >= cr.min_count
    return has if cr.action == "include" else ~has


# -- covariates -------------------------------------------------------------------------------
@COLUMNS.register(AgeColumn)
def _age(c: AgeColumn, g: Group):
    pp, rows = g.pp, g.rows
    return {c.name: ((g.ref[rows] - pp.birth[rows]) / 365.25).astype(pp.xp.float64)}


@COLUMNS.register(SexColumn)
def _female(c: SexColumn, g: Group):
    return {c.name: g.pp.female[g.rows]}


@COLUMNS.register(RegionColumn)
def _region(c: RegionColumn, g: Group):
    return {c.name: g.pp.region[g.rows]}


@COLUMNS.register(CalendarYearColumn)
def _calendar_year(c: CalendarYearColumn, g: Group):
    return {c.name: common.year_of(g.ref[g.rows]).astype(g.pp.xp.int16)}


@COLUMNS.register(FlagColumn, CountColumn)
def _flag_count(c: FlagColumn | CountColumn, g: Group):
    pp, xp, ref, rows = g.pp, g.pp.xp, g.ref, g.rows
    er, ed = pp.streams[c.stream]
    k = W.count_per_row(er, W.events_in_window(er, ed, ref, c.window.lo, c.window.hi),
                        pp.n)[rows]
    value = (k > 0).astype(xp.int8) if c.kind == "flag" else k.astype(xp.int32)
    out = {c.name: value}
    if c.time_varying:   # the first event after index switches it on
        on = W.first_day_per_row(er, ed, ref, pp.n, 1, None)[rows]
        out[common.varying_column(c.name)] = xp.where(value == 0, on, NO_DATE).astype(xp.int64)
    return out


@COLUMNS.register(CharlsonColumn)
def _charlson(c: CharlsonColumn, g: Group):
    from ..study.charlson import score

    pp, xp = g.pp, g.pp.xp
    flags = {}
    for name, _, s in c.charlson:
        er, ed = pp.streams[s]
        ok = W.events_in_window(er, ed, g.ref, c.window.lo, c.window.hi)
        flags[name] = (W.count_per_row(er, ok, pp.n)[g.rows] > 0).astype(xp.int16)
    return {c.name: score(flags).astype(xp.int16)}


@COLUMNS.register(IndexContactColumn)
def _index_contact(c: IndexContactColumn, g: Group):
    pp, rows = g.pp, g.rows
    return {c.name: contact.array_attribute(pp.data, g.g.index.stream, pp.pnr[rows],
                                            g.idx[rows], c.attribute, c.stream)}


# -- whole tables ------------------------------------------------------------------------------
@TABLES.register(BothArms)
def _both_arms(node: BothArms, table: dict, attrition: dict, plan: Plan):
    from ..designs import arms

    return arms.resolve(table, attrition, {g.code: g.label for g in plan.groups}, node.rule)


@DESIGN.register(DesignPlan)
def _design(node: DesignPlan, plan: Plan, tables: list, attrition: dict):
    # per-partition maps and sums over the tables where they are; matching gathers only
    # (logit, arm, pnr) per person (hpcstudy.designs.apply)
    from ..designs.apply import run as apply_design

    return apply_design(plan, tables, attrition)


# -- OutcomePlan and follow-up ------------------------------------------------------------------
def outcome_day(pp: Persons, o: OutcomePlan, ref, rows):
    """(outcome day, competing death day) for the cohort's rows."""
    xp = pp.xp
    index = ref[rows]
    lo = o.window.lo if o.window.lo is not None else 0
    death = pp.death[rows]
    none = xp.full(index.shape[0], NO_DATE, dtype=xp.int64)
    if o.death:
        if o.stream is not None:
            er, ed = pp.streams[o.stream]
            dd = W.first_day_per_row(er, ed, ref, pp.n, lo, None)[rows]
        else:
            dd = death
        outcome = xp.where((dd >= index + lo) & (dd != NO_DATE), dd, NO_DATE)
        other = xp.where(outcome == NO_DATE, death, NO_DATE) if o.stream is not None else none
        return outcome, other
    er, ed = pp.streams[o.stream]
    return W.first_day_per_row(er, ed, ref, pp.n, lo, None)[rows], death


def follow_up(pp: Persons, plan: Plan, g: GroupPlan, ref, rows) -> dict:
    """Exit day, status and days at risk of the cohort's rows (the index day is day 1)."""
    xp = pp.xp
    o = plan.outcome
    index = ref[rows]
    cap = xp.full(index.shape[0], plan.data_end, dtype=xp.int64)
    if plan.follow_up_days:
        cap = xp.minimum(cap, index + (plan.follow_up_days - 1))
    if o.window.hi is not None:
        cap = xp.minimum(cap, index + o.window.hi)
    outcome, other_death = outcome_day(pp, o, ref, rows)
    emig = pp.emigration_after(ref)[rows]
    # emigration day: the person left, so the last day at risk is the day before
    emig = xp.where(emig != NO_DATE, emig - 1, NO_DATE)
    switch = xp.full(index.shape[0], NO_DATE, dtype=xp.int64)
    if g.censor_at is not None:
        er, ed = pp.streams[g.censor_at]
        switch = W.first_day_per_row(er, ed, ref, pp.n, 1, None)[rows]
        switch = xp.where(switch != NO_DATE, switch - 1, NO_DATE)
    if plan.follow_up_end is not None:
        cap = xp.minimum(cap, plan.follow_up_end)
    start = index + plan.follow_up_start
    ends = [outcome, other_death, emig, switch]
    if g.episodes is not None:   # as-treated: statuses 5-7 (designs/episodes.py)
        ends += episodes.array_ends(pp, g, ref, rows)
    ends.append(cap)
    exit_, cause, _ = followup.follow_up(start, ends)
    status = xp.where(cause == len(ends), 0, cause).astype(xp.int8)
    return {"exit_date": exit_.astype(xp.int32), "status": status,
            "time": (exit_ - start + 1).astype(xp.int32),
            "event": (status == 1).astype(xp.int8),
            "_entry": entry.array_entry(index, outcome, ends, plan)}


# -- a group and the partition's table --------------------------------------------------------
def group_table(pp: Persons, g: GroupPlan, seed: int) -> tuple[dict, list]:
    """Per-person rows of one group (device arrays) and attrition [(step, device count)]."""
    xp, plan = pp.xp, pp.plan
    idx, steps = index_rule(pp, g, seed)
    ok = idx != NO_DATE
    attrition = [(name, xp.count_nonzero(mask)) for name, mask in steps]
    grp = Group(pp, g, idx, xp.where(ok, idx, 0))
    for node in plan.eligibility:
        ok = ok & STEPS(node, grp)
        attrition.append((node.label, xp.count_nonzero(ok)))
    rows = xp.nonzero(ok)[0]
    grp.ref, grp.rows = xp.where(ok, idx, NO_DATE), rows
    out = {"pnr": pp.pnr[rows], "group": xp.full(rows.shape[0], g.code, dtype=xp.int8),
           "index_date": idx[rows].astype(xp.int32)}
    for c in plan.columns:
        out.update(COLUMNS(c, grp))
    f = follow_up(pp, plan, g, grp.ref, rows)
    keep, late = f.pop("_entry")
    out.update(f)
    if late:
        attrition += [(name, xp.count_nonzero(m)) for name, m in late]
        out = {k: v[keep] for k, v in out.items()}
    return out, attrition


def device_table(data: dict, plan: Plan, device: Device | str | None = None):
    """The partition's per-person table as device arrays (groups by descending code, then
    pnr) and its attrition as host ints."""
    dev = _device(device)
    xp = dev.xp
    pp = Persons(data, plan, dev)
    event_streams(pp, _plan_streams(plan))
    tables, counts = {}, []
    for g in plan.groups:
        t, a = group_table(pp, g, plan.seed)
        tables[g.label] = t
        counts.append(a)
    flat = [c for a in counts for _, c in a]
    got = dev.to_host(xp.stack(flat)) if flat else np.zeros(0, np.int64)
    attrition, i = {}, 0
    for g, a in zip(plan.groups, counts, strict=True):
        attrition[g.label] = [(name, int(got[i + j])) for j, (name, _) in enumerate(a)]
        i += len(a)
    # groups by descending code; each group's rows are already in pnr order
    order = sorted(plan.groups, key=lambda g: -g.code)
    parts = [tables[g.label] for g in order]
    table = {k: xp.concatenate([t[k] for t in parts]) for k in parts[0]}
    return table, attrition


def person_table(data: dict, plan: Plan, device: Device | str | None = None) -> tuple[dict,
                                                                                      dict]:
    """The partition's per-person table (NumPy; all groups, sorted by group descending then
    pnr) and attrition. ``data`` comes from :func:`load` on the same device."""
    dev = _device(device)
    table, attrition = device_table(data, plan, dev)
    table = {k: dev.to_host(v) for k, v in table.items()}
    if plan.both_arms is not None:   # persons in both arms meet here
        table, attrition = TABLES(plan.both_arms, table, attrition, plan)
    return table, attrition
