"""The per-person analysis table of one partition, computed with the array kernels.

This is the dask engine's unit of work: every register partition holds whole persons (all
registers share the pnr hash), so a partition's persons are complete here and nothing crosses
partitions. Arrays are integer codes and integer days throughout.
"""

from __future__ import annotations

import numpy as np

from hpcstudy_kernels import followup, linkage
from hpcstudy_kernels import windows as W
from hpcstudy_kernels.windows import NO_DATE

from ..plan.nodes import EventStream, GroupPlan, IndexPlan, Plan
from ..registers.store import Dataset, read_partition
from . import common


def load(ds_root: str, partition: int, reads: dict[str, tuple[str, ...]]) -> dict:
    """The columns a plan reads from one partition, as NumPy arrays (dates as int days)."""
    ds = Dataset.open(ds_root)
    out = {}
    for reg, cols in reads.items():
        t = read_partition(ds.path(reg, partition), cols)
        out[reg] = {c: common.as_days_or_values(t.column(c)) for c in cols}
    return out


def _in_ranges(values, ranges):
    m = np.zeros(values.shape[0], dtype=bool)
    for lo, hi in ranges:
        m |= (values >= lo) & (values < hi)
    return m


def stream_events(data: dict, s: EventStream) -> tuple[np.ndarray, np.ndarray]:
    """(pnr, day) of a stream's events, sorted by pnr then day (contacts counted once)."""
    if s.register == "lpr":
        adm, diag = data["lpr_adm"], data["lpr_diag"]
        keep = np.ones(adm["recnum"].shape[0], dtype=bool)
        if s.patient_types:
            keep &= np.isin(adm["c_pattype"], s.patient_types)
        for col, vals in s.filters:
            keep &= np.isin(adm[col], vals)
        if s.codes is not None or tuple(s.diagnosis_types) != (0, 1):
            d_ok = np.isin(diag["c_diagtype"], s.diagnosis_types)
            if s.codes is not None:
                d_ok &= _in_ranges(diag["c_diag"], s.codes.ranges)
            hit = np.unique(diag["recnum"][d_ok])
            keep &= np.isin(adm["recnum"], hit)
        pnr, when, tie = adm["pnr"][keep], adm["d_inddto"][keep], adm["recnum"][keep]
    elif s.register == "lmdb":
        t = data["lmdb"]
        keep = np.ones(t["pnr"].shape[0], dtype=bool) if s.codes is None else \
            _in_ranges(t["atc"], s.codes.ranges)
        for col, vals in s.filters:
            keep &= np.isin(t[col], vals)
        pnr, when = t["pnr"][keep], t["eksd"][keep]
        tie = np.flatnonzero(keep)
    else:
        t = data["dodsaarsag"]
        keep = np.ones(t["pnr"].shape[0], dtype=bool) if s.codes is None else \
            _in_ranges(t["c_dodtilgrundl"], s.codes.ranges)
        pnr, when = t["pnr"][keep], t["doddato"][keep]
        tie = np.flatnonzero(keep)
    order = np.lexsort((tie, when, pnr))
    return pnr[order], when[order].astype(np.int64)


class PartitionState:
    """Persons of a partition and the event streams of a plan, loaded once."""

    def __init__(self, data: dict, plan: Plan):
        self.data = data
        self.plan = plan
        bef = data["bef"]
        self.pnr = bef["pnr"]
        self.birth = bef["foed_dag"].astype(np.int64)
        self.female = (bef["koen"] == 2).astype(np.int8)
        self.region = bef["region"].astype(np.int16)
        dod = data["dod"]
        pos = linkage.lookup(self.pnr, dod["pnr"])
        self.death = np.full(self.pnr.shape[0], NO_DATE, np.int64)
        self.death[pos[pos >= 0]] = dod["doddato"][pos >= 0]
        v = data["vnds"]
        order = np.lexsort((v["haend_dato"], v["pnr"]))
        self.v_pnr = v["pnr"][order]
        self.v_day = v["haend_dato"][order].astype(np.int64)
        self.v_out = v["indud_kode"][order] == 1
        first = W.nth_in_window(self.v_pnr, self.v_day, self.pnr, np.zeros_like(self.pnr), 1)
        # before any move, a person lives in Denmark unless the first move is an arrival
        self.native = np.ones(self.pnr.shape[0], dtype=bool)
        has = first >= 0
        self.native[has] = self.v_out[first[has]]
        self._streams: dict[EventStream, tuple] = {}

    def stream(self, s: EventStream):
        if s not in self._streams:
            self._streams[s] = stream_events(self.data, s)
        return self._streams[s]

    # -- residence -------------------------------------------------------------------------
    def resident_since(self, rows, day):
        """Per person: the day their current stay in Denmark began, or NO_DATE if abroad."""
        pnr = self.pnr[rows]
        last = W.nth_in_window(self.v_pnr, self.v_day, pnr, day, -1, hi=0)
        has = last >= 0
        arrived = np.full(rows.shape[0], NO_DATE, np.int64)
        abroad = np.zeros(rows.shape[0], dtype=bool)
        li = last[has]
        arrived[has] = np.where(self.v_out[li], NO_DATE, self.v_day[li])
        abroad[has] = self.v_out[li]
        never_moved = ~has
        out = np.where(never_moved & self.native[rows], self.birth[rows], arrived)
        out = np.where(abroad | (never_moved & ~self.native[rows]), NO_DATE, out)
        return out

    def emigration_after(self, rows, day):
        pnr = self.pnr[rows]
        return W.first_in_window(self.v_pnr, self.v_day, pnr, day, lo=1, mask=self.v_out)


def index_dates(st: PartitionState, g: GroupPlan, seed: int) -> tuple[np.ndarray, list]:
    """Index day per person (NO_DATE: none) and the attrition steps that found it."""
    ix: IndexPlan = g.index
    n = st.pnr.shape[0]
    steps = []
    if ix.kind == "date":
        idx = np.full(n, ix.start, np.int64)
        steps.append(("index date", idx != NO_DATE))
    elif ix.kind == "random_date":
        idx = common.random_index_days(st.pnr, seed, ix.start, ix.end)
        steps.append(("random index date", idx != NO_DATE))
    else:
        ep, ed = st.stream(ix.stream)
        ref = np.full(n, 0 if ix.start is None else ix.start, np.int64)
        hi = None if ix.end is None else ix.end - (ix.start or 0)
        lo = None if ix.start is None else 0
        pos = W.nth_in_window(ep, ed, st.pnr, ref, ix.nth, lo=lo, hi=hi)
        idx = np.full(n, NO_DATE, np.int64)
        idx[pos >= 0] = ed[pos[pos >= 0]]
        steps.append(("index event in window", idx != NO_DATE))
        if ix.washout_days:
            prior = W.exists_in_window(ep, ed, st.pnr, idx, -ix.washout_days, -1)
            idx = np.where(prior, NO_DATE, idx)
            steps.append((f"no event in the {ix.washout_days} days before", idx != NO_DATE))
    if g.never_before is not None:
        ep, ed = st.stream(g.never_before)
        before = W.exists_in_window(ep, ed, st.pnr, idx, None, 0)
        idx = np.where(before, NO_DATE, idx)
        steps.append(("no exposure on or before index", idx != NO_DATE))
    return idx, steps


def group_table(st: PartitionState, g: GroupPlan, seed: int) -> tuple[dict, list]:
    """Per-person rows of one group, and attrition [(step, persons left)]."""
    plan = st.plan
    study = plan.study
    pop = study.population
    idx, steps = index_dates(st, g, seed)
    ok = idx != NO_DATE
    attrition = [(name, int(mask.sum())) for name, mask in steps]

    def step(name, mask):
        nonlocal ok
        ok &= mask
        attrition.append((name, int(ok.sum())))

    safe = np.where(ok, idx, 0)
    step("index within the data", safe <= plan.data_end)
    step("alive on the index day", (st.death >= safe) & (st.birth <= safe))
    rows = np.arange(st.pnr.shape[0])
    since = st.resident_since(rows, safe)
    step("resident in Denmark at index", since != NO_DATE)
    age = (safe - st.birth) / 365.25
    if pop.age:
        step(f"age in [{pop.age[0]}, {pop.age[1]})", (age >= pop.age[0]) & (age < pop.age[1]))
    if pop.sex != "any":
        step(f"sex {pop.sex}", st.female == (1 if pop.sex == "female" else 0))
    if pop.regions:
        step(f"region in {list(pop.regions)}", np.isin(st.region, pop.regions))
    if pop.residence_years:
        need = np.floor(pop.residence_years * 365.25)
        step(f"resident ≥ {pop.residence_years:g} years", (since != NO_DATE) &
             (safe - since >= need))
    for cr in plan.criteria:
        ep, ed = st.stream(cr.stream)
        k = W.count_in_window(ep, ed, st.pnr, safe, cr.window.lo, cr.window.hi)
        has = k >= cr.min_count
        step(cr.label, has if cr.action == "include" else ~has)
    rows = np.flatnonzero(ok)
    out = {"pnr": st.pnr[rows], "group": np.full(rows.size, g.code, np.int8),
           "index_date": idx[rows].astype(np.int32)}
    index = idx[rows]
    pnr = st.pnr[rows]
    for c in plan.columns:
        if c.kind == "age":
            out[c.name] = ((index - st.birth[rows]) / 365.25).astype(np.float64)
        elif c.kind == "sex":
            out[c.name] = st.female[rows]
        elif c.kind == "region":
            out[c.name] = st.region[rows]
        elif c.kind == "calendar_year":
            out[c.name] = common.year_of(index).astype(np.int16)
        elif c.kind in ("flag", "count"):
            ep, ed = st.stream(c.stream)
            k = W.count_in_window(ep, ed, pnr, index, c.window.lo, c.window.hi)
            out[c.name] = (k > 0).astype(np.int8) if c.kind == "flag" else k.astype(np.int32)
        elif c.kind == "charlson":
            flags = {}
            for name, _, s in c.charlson:
                ep, ed = st.stream(s)
                flags[name] = W.exists_in_window(ep, ed, pnr, index, c.window.lo,
                                                 c.window.hi).astype(np.int16)
            from ..study.charlson import score

            out[c.name] = score(flags).astype(np.int16)
    out.update(follow(st, rows, index, g))
    return out, attrition


def follow(st: PartitionState, rows, index, g: GroupPlan) -> dict:
    """Exit day, status and days at risk (the index day counts as day 1)."""
    plan = st.plan
    o = plan.outcome
    pnr = st.pnr[rows]
    lo = o.window.lo if o.window.lo is not None else 0
    cap = np.full(index.shape[0], plan.data_end, np.int64)
    if plan.follow_up_days:
        cap = np.minimum(cap, index + plan.follow_up_days - 1)
    if o.window.hi is not None:
        cap = np.minimum(cap, index + o.window.hi)
    death = st.death[rows]
    if o.death:
        if o.stream is not None:
            ep, ed = st.stream(o.stream)
            dd = W.first_in_window(ep, ed, pnr, index, lo, None)
        else:
            dd = death
        outcome = np.where((dd >= index + lo) & (dd != NO_DATE), dd, NO_DATE)
        other_death = np.where(outcome == NO_DATE, death, NO_DATE) if o.stream is not None \
            else np.full(index.shape[0], NO_DATE, np.int64)
    else:
        ep, ed = st.stream(o.stream)
        outcome = W.first_in_window(ep, ed, pnr, index, lo, None)
        other_death = death
    emig = st.emigration_after(rows, index)
    # emigration day: the person left, so the last day at risk is the day before
    emig = np.where(emig != NO_DATE, emig - 1, NO_DATE)
    switch = np.full(index.shape[0], NO_DATE, np.int64)
    if g.censor_at is not None:
        ep, ed = st.stream(g.censor_at)
        switch = W.first_in_window(ep, ed, pnr, index, 1, None)
        switch = np.where(switch != NO_DATE, switch - 1, NO_DATE)
    exit_, cause, _ = followup.follow_up(index, [outcome, other_death, emig, switch, cap])
    status = np.where(cause == 5, 0, cause).astype(np.int8)
    return {"exit_date": exit_.astype(np.int32), "status": status,
            "time": (exit_ - index + 1).astype(np.int32),
            "event": (status == 1).astype(np.int8)}


def person_table(data: dict, plan: Plan) -> tuple[dict, dict]:
    """The partition's per-person table (all groups, sorted by group then pnr) and attrition."""
    st = PartitionState(data, plan)
    tables, attrition = [], {}
    for g in plan.groups:
        t, a = group_table(st, g, plan.study.seed)
        tables.append(t)
        attrition[g.label] = a
    table = {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}
    order = np.lexsort((table["pnr"], -table["group"]))
    table = {k: v[order] for k, v in table.items()}
    comp = plan.study.comparator
    if comp is not None and comp.kind == "active":   # persons in both arms meet here
        from ..designs import arms

        table, attrition = arms.resolve(table, attrition,
                                        {g.code: g.label for g in plan.groups}, comp.both_arms)
    return table, attrition
