"""Example 2 (examples/diabetes_incidence.yaml) written by hand in polars, from the study and
docs/studies.md: the per-person table (one row per person) as Parquet.

Everyone born, alive and resident in Denmark on 2000-01-01, aged 20 ≤ age < 90, with no E11*
diagnosis (any type, any contact) on or before that day, followed from that day to the first
of: an E11* diagnosis from the day after (status 1), death (2), the day before emigrating (3),
the end of the data (0).
Two moves across the border on one day are left in no defined order (the docs do not give
one; the synthetic registers have none).

    python benchmarks/peers/diabetes_incidence_polars.py DATA OUT.parquet
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common as C  # noqa: E402

D = C.Diabetes


def build(data: Path, out: Path) -> None:
    import polars as pl

    def scan(reg):
        return pl.scan_parquet(f"{data}/{reg}/*.parquet")

    def days(col):
        return pl.col(col).cast(pl.Int32).cast(pl.Int64)

    arrival = C.dictionary(data, "indud").index("I")
    codes = C.codes_with_prefix(data, "icd10", D.CODES).tolist()
    idx, end = D.INDEX, C.data_end(data)

    death = scan("dod").group_by("pnr").agg(days("doddato").min().alias("death"))
    day, arrived = pl.col("day"), pl.col("arrival")
    moves = (scan("vnds").select("pnr", days("haend_dato").alias("day"),
                                 (pl.col("indud_kode") == arrival).alias("arrival"))
             .sort("pnr", "day").group_by("pnr").agg(
                 # living here on the index day: the last move on or before it was an arrival,
                 # or there was none and the first move ever is not an arrival (born here)
                 arrived.filter(day <= idx).last().alias("last_arrival"),
                 arrived.first().alias("first_arrival"),
                 (day.filter((day > idx) & ~arrived).min() - 1).alias("emigration")))
    contacts = scan("lpr_adm").select("recnum", "pnr", days("d_inddto").alias("day"))
    dm = (scan("lpr_diag").filter(pl.col("c_diag").is_in(codes)).select("recnum")
          .join(contacts, on="recnum").group_by("pnr").agg(
              (day <= idx).any().alias("prior"),
              day.filter(day >= idx + 1).min().alias("outcome")))
    age = (idx - days("foed_dag")) / 365.25
    resident = pl.when(pl.col("last_arrival").is_not_null()).then(pl.col("last_arrival")) \
        .otherwise(pl.col("first_arrival").is_null() | ~pl.col("first_arrival"))
    e = (scan("bef").select("pnr", "koen", "foed_dag")
         .join(death, on="pnr", how="left").join(moves, on="pnr", how="left")
         .join(dm, on="pnr", how="left")
         .filter((days("foed_dag") <= idx)
                 & (pl.col("death").is_null() | (pl.col("death") >= idx))
                 & resident & (age >= D.AGE[0]) & (age < D.AGE[1])
                 & ~pl.col("prior").fill_null(False)))
    x = pl.min_horizontal(pl.col("outcome"), pl.col("death"), pl.col("emigration"),
                          pl.lit(end, pl.Int64))
    e = e.with_columns(x.alias("exit_date"))
    x = pl.col("exit_date")
    status = (pl.when(pl.col("outcome") == x).then(1).when(pl.col("death") == x).then(2)
              .when(pl.col("emigration") == x).then(3).otherwise(0))
    t = e.select(
        "pnr", pl.lit(1, pl.Int8).alias("group"), pl.lit(idx, pl.Int32).alias("index_date"),
        age.alias("age"), (pl.col("koen") == 2).cast(pl.Int8).alias("sex"),
        x.cast(pl.Int32), status.cast(pl.Int8).alias("status"),
        (x - idx + 1).cast(pl.Int32).alias("time"),
        (pl.col("outcome") == x).fill_null(False).cast(pl.Int8).alias("event"),
    ).sort("pnr")
    t.collect().write_parquet(out)


if __name__ == "__main__":
    C.command_line(build)
