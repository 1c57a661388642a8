"""The reference engine: the whole data in memory as pandas tables with codes as text.

Slow, plain and obviously correct; the oracle the dask engine is tested against. It shares no
computation with the kernels: codes are matched as text prefixes, windows as pandas filters.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..measures import contact
from ..plan.nodes import EventStream, GroupPlan, Plan
from ..registers.store import Dataset
from ..study.charlson import score
from ..timesplit import entry
from . import common

NO_DATE = common.NO_DATE


def _days(s: pd.Series) -> pd.Series:
    return (s.astype("datetime64[s]").astype("int64") // 86400).astype("int64")


class ReferenceData:
    def __init__(self, ds: Dataset, plan: Plan):
        self.ds = ds
        self.plan = plan
        self.t = {}
        for reg, cols in plan.reads.items():
            df = ds.read(reg, columns=list(cols), decode=True).to_pandas()
            for c in df.columns:
                if str(df[c].dtype).startswith(("datetime", "date")) or \
                        c in ("foed_dag", "doddato", "haend_dato", "d_inddto", "eksd"):
                    df[c] = _days(pd.to_datetime(df[c]))
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
        if s in self._streams:
            return self._streams[s]
        prefixes = tuple(s.codes.prefixes) if s.codes is not None else None
        if s.register == "lpr":
            adm, diag = self.t["lpr_adm"], self.t["lpr_diag"]
            types = {"AB"[k] for k in s.diagnosis_types}
            if prefixes is not None or types != {"A", "B"}:
                d = diag[diag["c_diagtype"].isin(types)]
                if prefixes is not None:
                    d = d[d["c_diag"].str.startswith(prefixes)]
                adm = adm[adm["recnum"].isin(set(d["recnum"]))]
            if s.patient_types:
                adm = adm[adm["c_pattype"].isin(s.patient_types)]
            for col, vals in s.filters:
                adm = adm[adm[col].isin(vals)]
            ev = adm[["pnr", "d_inddto"]].rename(columns={"d_inddto": "day"})
        elif s.register == "lmdb":
            t = self.t["lmdb"]
            if prefixes is not None:
                t = t[t["atc"].str.startswith(prefixes)]
            for col, vals in s.filters:
                t = t[t[col].isin(vals)]
            ev = t[["pnr", "eksd"]].rename(columns={"eksd": "day"})
        else:
            t = self.t["dodsaarsag"]
            if prefixes is not None:
                t = t[t["c_dodtilgrundl"].str.startswith(prefixes)]
            ev = t[["pnr", "doddato"]].rename(columns={"doddato": "day"})
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


class ReferenceEngine:
    name = "reference"

    def person_table(self, ds: Dataset, plan: Plan) -> tuple[pd.DataFrame, dict]:
        data = ReferenceData(ds, plan)
        tables, attrition = [], {}
        for g in plan.groups:
            t, a = self._group(data, g)
            tables.append(t)
            attrition[g.label] = a
        table = pd.concat(tables, ignore_index=True)
        comp = plan.study.comparator
        if comp is not None and comp.kind == "active":
            from ..designs.reference import both_arms

            table = both_arms(table, attrition, {g.code: g.label for g in plan.groups},
                              comp.both_arms)
        table = table.sort_values(["group", "pnr"], ascending=[False, True], kind="stable")
        return table[common.table_columns(plan)].reset_index(drop=True), attrition

    def _index(self, data: ReferenceData, g: GroupPlan, seed: int):
        p = data.persons.set_index("pnr")
        ix = g.index
        steps = []
        if ix.kind == "date":
            idx = pd.Series(ix.start, index=p.index, dtype="int64")
            steps.append(("index date", int((idx != NO_DATE).sum())))
        elif ix.kind == "random_date":
            idx = pd.Series(common.random_index_days(p.index.to_numpy(), seed, ix.start, ix.end),
                            index=p.index)
            steps.append(("random index date", int((idx != NO_DATE).sum())))
        else:
            ev = data.stream(ix.stream)
            if ix.start is not None:
                ev = ev[(ev["day"] >= ix.start) & (ev["day"] <= ix.end)]
            ref = pd.Series(0, index=p.index, dtype="int64")
            idx = first_in(ev, ref, None, None, ix.nth)
            steps.append(("index event in window", int((idx != NO_DATE).sum())))
            if ix.washout_days:
                full = data.stream(ix.stream)
                has = count_in(full, idx, -ix.washout_days, -1) > 0
                idx = idx.where(~has, NO_DATE)
                steps.append((f"no event in the {ix.washout_days} days before",
                              int((idx != NO_DATE).sum())))
        if g.never_before is not None:
            before = count_in(data.stream(g.never_before), idx, None, 0) > 0
            idx = idx.where(~before, NO_DATE)
            steps.append(("no exposure on or before index", int((idx != NO_DATE).sum())))
        return idx, steps

    def _group(self, data: ReferenceData, g: GroupPlan):
        plan = data.plan
        pop = plan.study.population
        p = data.persons.set_index("pnr")
        idx, attrition = self._index(data, g, plan.study.seed)
        c = idx[idx != NO_DATE]

        def keep(name, mask):
            nonlocal c
            c = c[mask.reindex(c.index).fillna(False).astype(bool)]
            attrition.append((name, len(c)))

        keep("index within the data", c <= plan.data_end)
        keep("alive on the index day", (p["death"].reindex(c.index) >= c) &
             (p["foed_dag"].reindex(c.index) <= c))
        since = self._resident_since(data, c)
        keep("resident in Denmark at index", since != NO_DATE)
        age = (c - p["foed_dag"].reindex(c.index)) / 365.25
        if pop.age:
            keep(f"age in [{pop.age[0]}, {pop.age[1]})", (age >= pop.age[0]) & (age < pop.age[1]))
        if pop.sex != "any":
            keep(f"sex {pop.sex}", p["koen"].reindex(c.index) == (2 if pop.sex == "female" else 1))
        if pop.regions:
            keep(f"region in {list(pop.regions)}", p["region"].reindex(c.index).isin(pop.regions))
        if pop.residence_years:
            need = np.floor(pop.residence_years * 365.25)
            since = self._resident_since(data, c)
            keep(f"resident ≥ {pop.residence_years:g} years",
                 (since != NO_DATE) & (c - since >= need))
        for cr in plan.criteria:
            k = count_in(data.stream(cr.stream), c, cr.window.lo, cr.window.hi)
            has = k >= cr.min_count
            keep(cr.label, has if cr.action == "include" else ~has)
        out = pd.DataFrame({"pnr": c.index.to_numpy(), "group": np.int8(g.code),
                            "index_date": c.to_numpy().astype("int32")})
        out.index = c.index
        for col in plan.columns:
            if col.kind == "age":
                out[col.name] = ((c - p["foed_dag"].reindex(c.index)) / 365.25).astype("float64")
            elif col.kind == "sex":
                out[col.name] = (p["koen"].reindex(c.index) == 2).astype("int8")
            elif col.kind == "region":
                out[col.name] = p["region"].reindex(c.index).astype("int16")
            elif col.kind == "calendar_year":
                out[col.name] = pd.to_datetime(c, unit="D").dt.year.astype("int16")
            elif col.kind in ("flag", "count"):
                k = count_in(data.stream(col.stream), c, col.window.lo, col.window.hi)
                out[col.name] = (k > 0).astype("int8") if col.kind == "flag" else \
                    k.astype("int32")
                if col.time_varying:   # the first event after index switches it on
                    on = first_in(data.stream(col.stream), c, 1, None)
                    out[common.varying_column(col.name)] = on.where(
                        k == 0, NO_DATE).astype("int64")
            elif col.kind == "index_contact":
                out[col.name] = contact.frame_attribute(data, g.index.stream, c, col.attribute)
            elif col.kind == "charlson":
                flags = {name: (count_in(data.stream(s), c, col.window.lo, col.window.hi) > 0
                                ).astype("int16").to_numpy()
                         for name, _, s in col.charlson}
                out[col.name] = score(flags).astype("int16")
        follow, outcome, raw_exit = self._follow(data, c, g)
        out = entry.frame_entry(pd.concat([out, follow], axis=1), outcome, raw_exit, plan,
                                attrition)
        return out.reset_index(drop=True), attrition

    def _resident_since(self, data: ReferenceData, idx: pd.Series) -> pd.Series:
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
