"""The reference engine: the whole data in memory as pandas tables with codes as text.

Slow, plain and obviously correct; the oracle the dask engine is tested against. It shares no
computation with the kernels: codes are matched as text prefixes, windows as pandas filters.

It computes each plan node with one function for that node type (the registries INDEX, STEPS,
COLUMNS, TABLES and DESIGN below, and the shared ANALYSES of engines/results.py): what it
supports is what is registered, and a plan holding anything else is refused before any data is
read (hpcstudy/plan/dispatch.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

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
    Plan,
    RandomDateIndex,
    RegionColumn,
    RegionIn,
    ResidentAtIndex,
    ResidentFor,
    SexColumn,
    SexIs,
)
from ..registers.sources import DIAGNOSIS_TYPES, SOURCES
from ..registers.store import Dataset
from ..study.charlson import score
from ..timesplit import entry
from . import common
from .results import ANALYSES

NO_DATE = common.NO_DATE


def _days(s: pd.Series) -> pd.Series:
    return (s.astype("datetime64[s]").astype("int64") // 86400).astype("int64")


class ReferenceData:
    def __init__(self, ds: Dataset, plan: Plan):
        self.ds = ds
        self.plan = plan
        self.t = {}
        for reg, cols in plan.reads.items():
            t = ds.read(reg, columns=list(cols), decode=True)
            df = t.to_pandas()
            for f in t.schema:      # dates as days since 1970, like the kernels see them
                if pa.types.is_date(f.type) or pa.types.is_timestamp(f.type):
                    df[f.name] = _days(pd.to_datetime(df[f.name]))
            self.t[reg] = df
        bef = self.t["bef"].sort_values("pnr").reset_index(drop=True)
        dod = self.t["dod"].groupby("pnr")["doddato"].min()
        bef["death"] = bef["pnr"].map(dod).fillna(NO_DATE).astype("int64")
        v = self.t["vnds"].sort_values(["pnr", "haend_dato"], kind="stable")
        first_kind = v.groupby("pnr")["indud_kode"].first()
        bef["native"] = bef["pnr"].map(first_kind).fillna("U") != "I"
        self.persons = bef
        self.vnds = v
        self._streams: dict[EventStream, pd.DataFrame] = {}

    def stream(self, s: EventStream) -> pd.DataFrame:
        """(pnr, day) of a stream's events, sorted by pnr then day: codes as text prefixes,
        the source's tables and columns from the catalogue (registers/sources.py)."""
        if s in self._streams:
            return self._streams[s]
        src = SOURCES[s.register]
        prefixes = tuple(s.codes.prefixes) if s.codes is not None else None
        t = self.t[src.table]
        if src.linked:
            types = {DIAGNOSIS_TYPES[k] for k in s.diagnosis_types}
            if prefixes is not None or types != set(DIAGNOSIS_TYPES):
                d = self.t[src.code_table]
                if types != set(DIAGNOSIS_TYPES):   # (the column is read only then)
                    d = d[d[src.diagnosis_type].isin(types)]
                if prefixes is not None:
                    d = d[d[src.code].str.startswith(prefixes)]
                t = t[t[src.link].isin(set(d[src.link]))]
        elif prefixes is not None:
            t = t[t[src.code].str.startswith(prefixes)]
        if s.patient_types:
            t = t[t[src.patient_type].isin(s.patient_types)]
        for col, vals in s.filters:
            t = t[t[col].isin(vals)]
        ev = t[[src.pnr, src.date]].rename(columns={src.pnr: "pnr", src.date: "day"})
        ev = ev.sort_values(["pnr", "day"], kind="stable").reset_index(drop=True)
        self._streams[s] = ev
        return ev


def _window_events(ev: pd.DataFrame, ref: pd.Series, lo, hi) -> pd.DataFrame:
    """Events of persons in ``ref`` (pnr → day) inside [ref + lo, ref + hi]."""
    e = ev[ev["pnr"].isin(ref.index)].copy()
    e["ref"] = e["pnr"].map(ref)
    e = e[e["ref"] != NO_DATE]
    if lo is not None:
        e = e[e["day"] >= e["ref"] + lo]
    if hi is not None:
        e = e[e["day"] <= e["ref"] + hi]
    return e


def count_in(ev, ref: pd.Series, lo, hi) -> pd.Series:
    c = _window_events(ev, ref, lo, hi).groupby("pnr").size()
    return ref.index.to_series().map(c).fillna(0).astype("int64")


def first_in(ev, ref: pd.Series, lo, hi, nth: int = 1) -> pd.Series:
    e = _window_events(ev, ref, lo, hi)
    e = e[e.groupby("pnr").cumcount() == nth - 1]
    return ref.index.to_series().map(e.set_index("pnr")["day"]).fillna(NO_DATE).astype("int64")


# -- one function per plan node (what this engine supports is what is registered here) ------
INDEX = Registry("reference")      # index rules: (node, data, persons, seed) -> (days, steps)
STEPS = Registry("reference")      # eligibility: (node, group) -> mask over group.c
COLUMNS = Registry("reference")    # covariates: (node, group) -> {column: values over group.c}
TABLES = Registry("reference")     # whole-table steps: (node, table, attrition, plan) -> table
DESIGN = Registry("reference")     # the design: (node, plan, table, attrition) -> (…, sections)
engine_registries("reference", INDEX, STEPS, COLUMNS, TABLES, DESIGN, ANALYSES)


def check(plan: Plan) -> None:
    """Refuse a plan with a node this engine has no function for (before reading data)."""
    for g in plan.groups:
        INDEX.function(g.index)
    STEPS.check(plan.eligibility)
    COLUMNS.check(plan.columns)
    TABLES.check(n for n in (plan.both_arms,) if n is not None)
    DESIGN.check(n for n in (plan.design,) if n is not None)
    ANALYSES.check(plan.analyses)


@INDEX.register(FixedDateIndex)
def _fixed_date(ix, data, p, seed):
    idx = pd.Series(ix.start, index=p.index, dtype="int64")
    return idx, [("index date", int((idx != NO_DATE).sum()))]


@INDEX.register(RandomDateIndex)
def _random_date(ix, data, p, seed):
    idx = pd.Series(common.random_index_days(p.index.to_numpy(), seed, ix.start, ix.end),
                    index=p.index)
    return idx, [("random index date", int((idx != NO_DATE).sum()))]


@INDEX.register(FirstEventIndex)
def _first_event(ix, data, p, seed):
    ev = data.stream(ix.stream)
    if ix.start is not None:
        ev = ev[(ev["day"] >= ix.start) & (ev["day"] <= ix.end)]
    ref = pd.Series(0, index=p.index, dtype="int64")
    idx = first_in(ev, ref, None, None, ix.nth)
    steps = [("index event in window", int((idx != NO_DATE).sum()))]
    if ix.washout_days:
        full = data.stream(ix.stream)
        has = count_in(full, idx, -ix.washout_days, -1) > 0
        idx = idx.where(~has, NO_DATE)
        steps.append((f"no event in the {ix.washout_days} days before",
                      int((idx != NO_DATE).sum())))
    return idx, steps


class _Group:
    """What the steps and columns of one group see: the data, the group's node ``g``, the
    persons (by pnr) and ``c``, the index day of each person still in the group."""

    def __init__(self, data: ReferenceData, g: GroupPlan, c: pd.Series):
        self.data, self.g, self.c = data, g, c
        self.p = data.persons.set_index("pnr")

    def person(self, col: str) -> pd.Series:
        return self.p[col].reindex(self.c.index)


@STEPS.register(IndexWithinData)
def _within_data(node, g):
    return g.c <= node.end


@STEPS.register(AliveAtIndex)
def _alive(node, g):
    return (g.person("death") >= g.c) & (g.person("foed_dag") <= g.c)


@STEPS.register(ResidentAtIndex)
def _resident(node, g):
    return resident_since(g.data, g.c) != NO_DATE


@STEPS.register(AgeRange)
def _age_range(node, g):
    age = (g.c - g.person("foed_dag")) / 365.25
    return (age >= node.lo) & (age < node.hi)


@STEPS.register(SexIs)
def _sex(node, g):
    return g.person("koen") == (2 if node.sex == "female" else 1)


@STEPS.register(RegionIn)
def _region_in(node, g):
    return g.person("region").isin(node.regions)


@STEPS.register(ResidentFor)
def _resident_for(node, g):
    need = np.floor(node.years * 365.25)
    since = resident_since(g.data, g.c)
    return (since != NO_DATE) & (g.c - since >= need)


@STEPS.register(CriterionPlan)
def _criterion(cr, g):
    k = count_in(g.data.stream(cr.stream), g.c, cr.window.lo, cr.window.hi)
    has = k >= cr.min_count
    return has if cr.action == "include" else ~has


@COLUMNS.register(AgeColumn)
def _age(col, g):
    return {col.name: ((g.c - g.person("foed_dag")) / 365.25).astype("float64")}


@COLUMNS.register(SexColumn)
def _female(col, g):
    return {col.name: (g.person("koen") == 2).astype("int8")}


@COLUMNS.register(RegionColumn)
def _region(col, g):
    return {col.name: g.person("region").astype("int16")}


@COLUMNS.register(CalendarYearColumn)
def _calendar_year(col, g):
    return {col.name: pd.to_datetime(g.c, unit="D").dt.year.astype("int16")}


@COLUMNS.register(FlagColumn, CountColumn)
def _flag_count(col, g):
    k = count_in(g.data.stream(col.stream), g.c, col.window.lo, col.window.hi)
    out = {col.name: (k > 0).astype("int8") if col.kind == "flag" else k.astype("int32")}
    if col.time_varying:   # the first event after index switches it on
        on = first_in(g.data.stream(col.stream), g.c, 1, None)
        out[common.varying_column(col.name)] = on.where(k == 0, NO_DATE).astype("int64")
    return out


@COLUMNS.register(IndexContactColumn)
def _index_contact(col, g):
    return {col.name: contact.frame_attribute(g.data, g.g.index.stream, g.c, col.attribute,
                                              col.stream)}


@COLUMNS.register(CharlsonColumn)
def _charlson(col, g):
    flags = {name: (count_in(g.data.stream(s), g.c, col.window.lo, col.window.hi) > 0
                    ).astype("int16").to_numpy()
             for name, _, s in col.charlson}
    return {col.name: score(flags).astype("int16")}


@TABLES.register(BothArms)
def _both_arms(node, table, attrition, plan):
    from ..designs.reference import both_arms

    return both_arms(table, attrition, {g.code: g.label for g in plan.groups}, node.rule)


@DESIGN.register(DesignPlan)
def _design(node, plan, df, attrition):
    from ..designs.reference import design

    return design(plan, df, attrition)


def resident_since(data: ReferenceData, idx: pd.Series) -> pd.Series:
    """Per person: the day their current stay in Denmark began, or NO_DATE if abroad."""
    v = data.vnds[data.vnds["pnr"].isin(idx.index)].copy()
    v["ref"] = v["pnr"].map(idx)
    last = v[v["haend_dato"] <= v["ref"]].groupby("pnr").last()
    p = data.persons.set_index("pnr")
    out = pd.Series(NO_DATE, index=idx.index, dtype="int64")
    moved = idx.index.isin(last.index)
    lastk = last["indud_kode"].reindex(idx.index)
    lastd = last["haend_dato"].reindex(idx.index)
    arrived = moved & (lastk == "I")
    out[arrived] = lastd[arrived].astype("int64")
    stayed = ~moved & p["native"].reindex(idx.index).to_numpy()
    out[stayed] = p["foed_dag"].reindex(idx.index)[stayed]
    return out


class ReferenceEngine:
    name = "reference"

    def person_table(self, ds: Dataset, plan: Plan) -> tuple[pd.DataFrame, dict]:
        check(plan)
        data = ReferenceData(ds, plan)
        tables, attrition = [], {}
        for g in plan.groups:
            t, a = self._group(data, g)
            tables.append(t)
            attrition[g.label] = a
        table = pd.concat(tables, ignore_index=True)
        if plan.both_arms is not None:
            table = TABLES(plan.both_arms, table, attrition, plan)
        table = table.sort_values(["group", "pnr"], ascending=[False, True], kind="stable")
        return table[common.table_columns(plan)].reset_index(drop=True), attrition

    def design(self, plan: Plan, df: pd.DataFrame, attrition: dict):
        """The plan's comparative design on the whole table: (table, attrition, sections)."""
        if plan.design is None:
            return df, attrition, None
        return DESIGN(plan.design, plan, df, attrition)

    def _group(self, data: ReferenceData, g: GroupPlan):
        plan = data.plan
        p = data.persons.set_index("pnr")
        idx, attrition = INDEX(g.index, data, p, plan.seed)
        if g.never_before is not None:
            before = count_in(data.stream(g.never_before), idx, None, 0) > 0
            idx = idx.where(~before, NO_DATE)
            attrition.append(("no exposure on or before index", int((idx != NO_DATE).sum())))
        grp = _Group(data, g, idx[idx != NO_DATE])
        for step in plan.eligibility:
            mask = STEPS(step, grp)
            grp.c = grp.c[mask.reindex(grp.c.index).fillna(False).astype(bool)]
            attrition.append((step.label, len(grp.c)))
        c = grp.c
        out = pd.DataFrame({"pnr": c.index.to_numpy(), "group": np.int8(g.code),
                            "index_date": c.to_numpy().astype("int32")})
        out.index = c.index
        for col in plan.columns:
            for name, values in COLUMNS(col, grp).items():
                out[name] = values
        follow, outcome, raw_exit = self._follow(data, c, g)
        out = entry.frame_entry(pd.concat([out, follow], axis=1), outcome, raw_exit, plan,
                                attrition)
        return out.reset_index(drop=True), attrition

    def _follow(self, data: ReferenceData, c: pd.Series, g: GroupPlan) -> pd.DataFrame:
        plan = data.plan
        o = plan.outcome
        p = data.persons.set_index("pnr")
        lo = o.window.lo if o.window.lo is not None else 0
        cap = pd.Series(plan.data_end, index=c.index, dtype="int64")
        if plan.follow_up_days:
            cap = np.minimum(cap, c + plan.follow_up_days - 1)
        if o.window.hi is not None:
            cap = np.minimum(cap, c + o.window.hi)
        if plan.follow_up_end is not None:
            cap = np.minimum(cap, plan.follow_up_end)
        start = c + plan.follow_up_start
        death = p["death"].reindex(c.index)
        none = pd.Series(NO_DATE, index=c.index, dtype="int64")
        if o.death:
            dd = first_in(data.stream(o.stream), c, lo, None) if o.stream is not None else death
            outcome = dd.where((dd != NO_DATE) & (dd >= c + lo), NO_DATE)
            other = death.where(outcome == NO_DATE, NO_DATE) if o.stream is not None else none
        else:
            outcome = first_in(data.stream(o.stream), c, lo, None)
            other = death
        v = data.vnds
        out_moves = v[(v["indud_kode"] == "U") & v["pnr"].isin(c.index)].copy()
        out_moves["ref"] = out_moves["pnr"].map(c)
        first_out = out_moves[out_moves["haend_dato"] > out_moves["ref"]].groupby("pnr")[
            "haend_dato"].min()
        emig = first_out.reindex(c.index).fillna(NO_DATE + 1).astype("int64") - 1
        switch = none
        if g.censor_at is not None:
            s = first_in(data.stream(g.censor_at), c, 1, None)
            switch = s.where(s == NO_DATE, s - 1)
        ends = [outcome, other, emig, switch]
        if g.episodes is not None:   # as-treated: statuses 5-7 (designs/episodes.py)
            from ..designs.episodes import frame_ends

            ends += frame_ends(data, g, c)
        ends.append(cap)
        exit_ = pd.Series(NO_DATE, index=c.index, dtype="int64")
        status = pd.Series(0, index=c.index, dtype="int8")
        raw = pd.concat(ends, axis=1).min(axis=1)
        for k, e in enumerate(ends):
            e = np.maximum(e, start)
            sooner = e < exit_
            exit_ = exit_.where(~sooner, e)
            status = status.where(~sooner, 0 if k == len(ends) - 1 else k + 1)
        return pd.DataFrame({"exit_date": exit_.astype("int32"), "status": status.astype("int8"),
                             "time": (exit_ - start + 1).astype("int32"),
                             "event": (status == 1).astype("int8")}), outcome, raw
