"""Example 1 (examples/statins_mi.yaml) written by hand in polars, from the study
and docs/studies.md: the per-person table (one row per person and group) as Parquet.

    python benchmarks/peers/statins_mi_polars.py DATA OUT.parquet
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common as C  # noqa: E402

BIG = 2**31 - 1


def build(data: Path, out: Path) -> None:
    import polars as pl

    def scan(reg):
        return pl.scan_parquet(f"{data}/{reg}/*.parquet")

    def days(col):
        return pl.col(col).cast(pl.Int32).cast(pl.Int64)

    icd_dict = C.dictionary(data, "icd10")
    atc_dict = C.dictionary(data, "atc")
    a_type = C.dictionary(data, "diagtype").index("A")
    arrival = C.dictionary(data, "indud").index("I")
    lo, hi = C.WINDOW
    end = C.data_end(data)
    statin_codes = C.codes_with_prefix(data, "atc", C.STATINS).tolist()
    metformin = atc_dict.index(C.METFORMIN)
    mi_codes = C.codes_with_prefix(data, "icd10", C.MI).tolist()
    dm_codes = C.codes_with_prefix(data, "icd10", C.DIABETES).tolist()
    assert icd_dict  # the dictionaries are read; codes are compared as integers below

    bef = scan("bef").select("pnr", pl.col("koen"), days("foed_dag").alias("birth")).collect()
    death = scan("dod").group_by("pnr").agg(days("doddato").min().alias("death")).collect()
    moves = scan("vnds").select("pnr", days("haend_dato").alias("day"),
                                (pl.col("indud_kode") == arrival).alias("arrival")).collect()
    drugs = scan("lmdb").filter(pl.col("atc").is_in(statin_codes + [metformin])).select(
        "pnr", days("eksd").alias("day"), pl.col("atc").is_in(statin_codes).alias("statin"),
    ).collect()
    contacts = scan("lpr_adm").select("pnr", "recnum", days("d_inddto").alias("day"),
                                      "c_pattype").collect()
    diags = scan("lpr_diag").join(contacts.lazy(), on="recnum").select(
        "pnr", "day", "recnum", "c_pattype", "c_diag",
        (pl.col("c_diagtype") == a_type).alias("action")).collect()
    statins = drugs.filter("statin").select("pnr", "day")

    first = statins.filter(pl.col("day").is_between(lo, hi)).group_by("pnr").agg(
        pl.col("day").min().alias("idx"))
    washed = first.join(statins, on="pnr").filter(
        pl.col("day").is_between(pl.col("idx") - C.WASHOUT, pl.col("idx") - 1)).select("pnr")
    exposed = first.join(washed.unique(), on="pnr", how="anti").with_columns(
        pl.lit(1, pl.Int8).alias("group"))
    pnr = bef["pnr"].to_numpy()
    nonusers = pl.DataFrame({"pnr": pnr, "idx": C.random_index_days(pnr, C.SEED, lo, hi)})
    used = nonusers.join(statins, on="pnr").filter(pl.col("day") <= pl.col("idx")).select("pnr")
    nonusers = nonusers.join(used.unique(), on="pnr", how="anti").with_columns(
        pl.lit(0, pl.Int8).alias("group"))
    cand = pl.concat([exposed.select("pnr", "group", "idx"),
                      nonusers.select("pnr", "group", "idx")])

    key = ["pnr", "group"]
    mv = cand.join(moves, on="pnr")
    before = mv.filter(pl.col("day") <= pl.col("idx")).sort("day").group_by(key).agg(
        pl.col("arrival").last().alias("last_arrival"),
        pl.col("day").filter(pl.col("arrival")).max().alias("arrived"))
    first_move = moves.sort("day").group_by("pnr").agg(
        pl.col("arrival").first().alias("first_arrival"))
    e = (cand.join(bef, on="pnr").join(death, on="pnr", how="left")
         .join(before, on=key, how="left").join(first_move, on="pnr", how="left")
         .with_columns(((pl.col("idx") - pl.col("birth")) / 365.25).alias("age")))
    resident = pl.when(pl.col("last_arrival").is_not_null()).then(pl.col("last_arrival")) \
        .otherwise(pl.col("first_arrival").is_null() | ~pl.col("first_arrival"))
    e = e.filter((pl.col("idx") <= end) & (pl.col("birth") <= pl.col("idx"))
                 & (pl.col("death").is_null() | (pl.col("death") >= pl.col("idx")))
                 & resident & (pl.col("age") >= C.AGE[0]) & (pl.col("age") < C.AGE[1])
                 & (pl.col("idx") - pl.coalesce("arrived", "birth") >= C.RESIDENCE_DAYS))
    mi = diags.filter(pl.col("c_diag").is_in(mi_codes))
    prior_mi = e.join(mi, on="pnr").filter(pl.col("day") <= pl.col("idx")).select(key).unique()
    e = e.join(prior_mi, on=key, how="anti")

    def flag(events, cond, name, agg=None):
        got = e.select(key + ["idx"]).join(events, on="pnr").filter(cond)
        got = got.group_by(key).agg(agg if agg is not None else pl.len().alias(name))
        return got

    base = e.select(key + ["idx"])
    dm = flag(diags.filter(pl.col("c_diag").is_in(dm_codes)), pl.col("day") <= pl.col("idx"),
              "diabetes")
    met = flag(drugs.filter(~pl.col("statin")),
               pl.col("day").is_between(pl.col("idx") - 365, pl.col("idx") - 1), "metformin")
    cnt = flag(contacts, pl.col("day").is_between(pl.col("idx") - 365, pl.col("idx") - 1),
               "contacts")
    outcome = flag(mi.filter(pl.col("action") & (pl.col("c_pattype") == 0)),
                   pl.col("day") >= pl.col("idx") + 1, "outcome",
                   pl.col("day").min().alias("outcome"))
    emig = flag(moves.filter(~pl.col("arrival")), pl.col("day") > pl.col("idx"), "emigration",
                (pl.col("day").min() - 1).alias("emigration"))
    started = flag(statins, (pl.col("day") > pl.col("idx")) & (pl.col("group") == 0), "started",
                   (pl.col("day").min() - 1).alias("started"))

    cc = C.charlson_codes(data)
    cat = pl.DataFrame({"category": [c[0] for c in cc], "weight": [c[1] for c in cc],
                        "c_diag": pl.Series([c[2] for c in cc], dtype=pl.Int32)})
    cats = (base.join(diags, on="pnr")
            .filter(pl.col("day").is_between(pl.col("idx") - C.CHARLSON_WINDOW, pl.col("idx")))
            .join(cat, on="c_diag").select(key + ["category", "weight"]).unique())
    hier = C.charlson_hierarchy()
    replaced = (cats.filter(pl.col("category").is_in(list(hier)))
                .with_columns(pl.col("category").replace_strict(hier).alias("category"))
                .select(key + ["category"]))
    charlson = cats.join(replaced, on=key + ["category"], how="anti").group_by(key).agg(
        pl.col("weight").sum().alias("charlson"))

    t = e
    for f in (dm, met, cnt, outcome, emig, started, charlson):
        t = t.join(f, on=key, how="left")
    cands = [pl.col(c).fill_null(BIG) for c in ("outcome", "death", "emigration", "started")]
    t = t.with_columns(pl.min_horizontal(*cands, pl.lit(end), pl.col("idx") + C.MAX_DAYS - 1)
                       .alias("exit_date"))
    x = pl.col("exit_date")
    status = (pl.when(pl.col("outcome") == x).then(1).when(pl.col("death") == x).then(2)
              .when(pl.col("emigration") == x).then(3).when(pl.col("started") == x).then(4)
              .otherwise(0))
    t = t.select(
        "pnr", pl.col("group").cast(pl.Int8), pl.col("idx").cast(pl.Int32).alias("index_date"),
        "age", (pl.col("koen") == 2).cast(pl.Int8).alias("sex"),
        (pl.col("diabetes").fill_null(0) > 0).cast(pl.Int8).alias("diabetes"),
        pl.col("charlson").fill_null(0).cast(pl.Int16),
        (pl.col("metformin").fill_null(0) > 0).cast(pl.Int8).alias("metformin_last_year"),
        pl.col("contacts").fill_null(0).cast(pl.Int32).alias("contacts_last_year"),
        x.cast(pl.Int32), status.cast(pl.Int8).alias("status"),
        (x - pl.col("idx") + 1).cast(pl.Int32).alias("time"),
        (pl.col("outcome") == x).fill_null(False).cast(pl.Int8).alias("event"),
    ).sort(["group", "pnr"], descending=[True, False])
    t.write_parquet(out)


if __name__ == "__main__":
    C.command_line(build)
