"""Example 1 (examples/statins_mi.yaml) written by hand in pandas, from the study and
docs/studies.md: the per-person table (one row per person and group) as Parquet.

    python benchmarks/peers/statins_mi_pandas.py DATA OUT.parquet
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common as C  # noqa: E402

KEY = ["pnr", "group"]


def build(data: Path, out: Path) -> None:
    import pandas as pd

    def read(reg, columns):
        df = pd.read_parquet(Path(data) / reg, columns=columns)
        for c in df.columns:
            if str(df[c].dtype).startswith(("datetime", "date")) or df[c].dtype == object:
                df[c] = (pd.to_datetime(df[c]) - pd.Timestamp("1970-01-01")).dt.days
        return df

    atc_dict = C.dictionary(data, "atc")
    a_type = C.dictionary(data, "diagtype").index("A")
    arrival = C.dictionary(data, "indud").index("I")
    lo, hi = C.WINDOW
    end = C.data_end(data)
    statin_codes = C.codes_with_prefix(data, "atc", C.STATINS)
    metformin = atc_dict.index(C.METFORMIN)
    mi_codes = C.codes_with_prefix(data, "icd10", C.MI)
    dm_codes = C.codes_with_prefix(data, "icd10", C.DIABETES)

    bef = read("bef", ["pnr", "koen", "foed_dag"]).rename(columns={"foed_dag": "birth"})
    death = read("dod", ["pnr", "doddato"]).groupby("pnr", as_index=False).doddato.min() \
        .rename(columns={"doddato": "death"})
    moves = read("vnds", ["pnr", "indud_kode", "haend_dato"]).rename(columns={"haend_dato": "day"})
    moves["arrival"] = moves.pop("indud_kode") == arrival
    drugs = read("lmdb", ["pnr", "eksd", "atc"]).rename(columns={"eksd": "day"})
    drugs = drugs[drugs.atc.isin(statin_codes) | (drugs.atc == metformin)]
    drugs["statin"] = drugs.atc.isin(statin_codes)
    contacts = read("lpr_adm", ["pnr", "recnum", "d_inddto", "c_pattype"]) \
        .rename(columns={"d_inddto": "day"})
    diags = read("lpr_diag", ["recnum", "c_diag", "c_diagtype"]).merge(contacts, on="recnum")
    diags["action"] = diags.c_diagtype == a_type
    statins = drugs.loc[drugs.statin, ["pnr", "day"]]

    inwin = statins[statins.day.between(lo, hi)]
    first = inwin.groupby("pnr", as_index=False).day.min().rename(columns={"day": "idx"})
    j = first.merge(statins, on="pnr")
    washed = j.loc[j.day.between(j.idx - C.WASHOUT, j.idx - 1), "pnr"].unique()
    exposed = first[~first.pnr.isin(washed)].assign(group=1)
    pnr = bef.pnr.to_numpy()
    nonusers = pd.DataFrame({"pnr": pnr, "idx": C.random_index_days(pnr, C.SEED, lo, hi)})
    j = nonusers.merge(statins, on="pnr")
    used = j.loc[j.day <= j.idx, "pnr"].unique()
    nonusers = nonusers[~nonusers.pnr.isin(used)].assign(group=0)
    cand = pd.concat([exposed, nonusers], ignore_index=True)[["pnr", "group", "idx"]]

    mv = cand.merge(moves, on="pnr")
    before = mv[mv.day <= mv.idx].sort_values("day", kind="stable")
    last = before.groupby(KEY).arrival.last().rename("last_arrival")
    arrived = before[before.arrival].groupby(KEY).day.max().rename("arrived")
    first_move = moves.sort_values("day", kind="stable").groupby("pnr").arrival.first() \
        .rename("first_arrival")
    e = (cand.merge(bef, on="pnr").merge(death, on="pnr", how="left")
         .merge(last, on=KEY, how="left").merge(arrived, on=KEY, how="left")
         .merge(first_move, on="pnr", how="left"))
    e["age"] = (e.idx - e.birth) / 365.25
    last_in = e.last_arrival.astype("float64")   # 1 arrival, 0 departure, NaN no move yet
    first_in = e.first_arrival.astype("float64")  # NaN: never moved (born here)
    resident = np.where(last_in.notna(), last_in == 1, first_in.isna() | (first_in == 0))
    start = e.arrived.fillna(e.birth)
    ok = ((e.idx <= end) & (e.birth <= e.idx) & (e.death.isna() | (e.death >= e.idx))
          & resident & (e.age >= C.AGE[0]) & (e.age < C.AGE[1])
          & (e.idx - start >= C.RESIDENCE_DAYS))
    e = e[ok]
    mi = diags[diags.c_diag.isin(mi_codes)]
    j = e[KEY + ["idx"]].merge(mi, on="pnr")
    prior = j.loc[j.day <= j.idx, KEY].drop_duplicates()
    e = e.merge(prior, on=KEY, how="left", indicator=True)
    e = e[e.pop("_merge") == "left_only"]

    base = e[KEY + ["idx"]]

    def within(events, lo_off, hi_off):
        j = base.merge(events, on="pnr")
        sel = pd.Series(True, index=j.index)
        if lo_off is not None:
            sel &= j.day >= j.idx + lo_off
        if hi_off is not None:
            sel &= j.day <= j.idx + hi_off
        return j[sel]

    dm = within(diags[diags.c_diag.isin(dm_codes)], None, 0).groupby(KEY).size() \
        .rename("diabetes")
    met = within(drugs[~drugs.statin], -365, -1).groupby(KEY).size().rename("metformin")
    cnt = within(contacts, -365, -1).groupby(KEY).size().rename("contacts")
    outcome = within(mi[mi.action & (mi.c_pattype == 0)], 1, None).groupby(KEY).day.min() \
        .rename("outcome")
    emig = (within(moves[~moves.arrival], 1, None).groupby(KEY).day.min() - 1) \
        .rename("emigration")
    st = within(statins, 1, None)
    started = (st[st.group == 0].groupby(KEY).day.min() - 1).rename("started")

    cc = C.charlson_codes(data)
    cat = pd.DataFrame({"category": [c[0] for c in cc], "weight": [c[1] for c in cc],
                        "c_diag": np.array([c[2] for c in cc], dtype=np.int32)})
    cats = within(diags, -C.CHARLSON_WINDOW, 0).merge(cat, on="c_diag")[
        KEY + ["category", "weight"]].drop_duplicates()
    hier = C.charlson_hierarchy()
    severe = cats[cats.category.isin(list(hier))].assign(
        category=lambda d: d.category.map(hier))[KEY + ["category"]]
    cats = cats.merge(severe, on=KEY + ["category"], how="left", indicator=True)
    charlson = cats[cats._merge == "left_only"].groupby(KEY).weight.sum().rename("charlson")

    t = e
    for s in (dm, met, cnt, outcome, emig, started, charlson):
        t = t.merge(s, on=KEY, how="left")
    big = float(2**31 - 1)
    ends = np.column_stack([t[c].fillna(big) for c in ("outcome", "death", "emigration",
                                                        "started")]
                           + [np.full(len(t), end), t.idx + C.MAX_DAYS - 1])
    x = ends.min(axis=1)
    status = np.select([t.outcome == x, t.death == x, t.emigration == x, t.started == x],
                       [1, 2, 3, 4], 0)
    res = pd.DataFrame({
        "pnr": t.pnr.to_numpy(), "group": t.group.astype(np.int8).to_numpy(),
        "index_date": t.idx.astype(np.int32).to_numpy(), "age": t.age.to_numpy(),
        "sex": (t.koen == 2).astype(np.int8).to_numpy(),
        "diabetes": (t.diabetes.fillna(0) > 0).astype(np.int8).to_numpy(),
        "charlson": t.charlson.fillna(0).astype(np.int16).to_numpy(),
        "metformin_last_year": (t.metformin.fillna(0) > 0).astype(np.int8).to_numpy(),
        "contacts_last_year": t.contacts.fillna(0).astype(np.int32).to_numpy(),
        "exit_date": x.astype(np.int32), "status": status.astype(np.int8),
        "time": (x - t.idx.to_numpy() + 1).astype(np.int32),
        "event": (t.outcome == x).astype(np.int8).to_numpy()})
    res = res.sort_values(["group", "pnr"], ascending=[False, True], kind="stable")
    res.to_parquet(out, index=False)


if __name__ == "__main__":
    C.command_line(build)
