"""Example 2 (examples/diabetes_incidence.yaml) written by hand in DuckDB SQL, from the study
and docs/studies.md: the per-person table (one row per person) as Parquet.

Everyone born, alive and resident in Denmark on 2000-01-01, aged 20 ≤ age < 90, with no E11*
diagnosis (any type, any contact) on or before that day, followed from that day to the first
of: an E11* diagnosis from the day after (status 1), death (2), the day before emigrating (3),
the end of the data (0).
Two moves across the border on one day are left in no defined order (the docs do not give
one; the synthetic registers have none).

    python benchmarks/peers/diabetes_incidence_duckdb.py DATA OUT.parquet [--threads N]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common as C  # noqa: E402

D = C.Diabetes


def build(data: Path, out: Path, threads: int | None = None) -> None:
    import duckdb

    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {threads}")
    arrival = C.dictionary(data, "indud").index("I")
    codes = ", ".join(str(c) for c in C.codes_with_prefix(data, "icd10", D.CODES))
    idx, end = D.INDEX, C.data_end(data)

    def parquet(reg):
        return f"read_parquet('{data}/{reg}/*.parquet')"

    def days(col):
        return f"({col} - DATE '1970-01-01')"

    con.execute(f"""
    CREATE TEMP TABLE person AS
    WITH death AS (
        SELECT pnr, min({days('doddato')}) AS death FROM {parquet('dod')} GROUP BY pnr),
    moves AS (
        SELECT pnr,
          -- living here on the index day: the last move on or before it was an arrival, or
          -- there was none and the first move ever is not an arrival (born here)
          arg_max(indud_kode = {arrival}, haend_dato)
            FILTER (WHERE {days('haend_dato')} <= {idx}) AS last_arrival,
          arg_min(indud_kode = {arrival}, haend_dato) AS first_arrival,
          min({days('haend_dato')}) FILTER (WHERE {days('haend_dato')} > {idx}
                                              AND indud_kode <> {arrival}) - 1 AS emigration
        FROM {parquet('vnds')} GROUP BY pnr),
    dm AS (
        SELECT a.pnr, bool_or({days('a.d_inddto')} <= {idx}) AS prior,
          min({days('a.d_inddto')}) FILTER (WHERE {days('a.d_inddto')} >= {idx} + 1) AS outcome
        FROM {parquet('lpr_diag')} g JOIN {parquet('lpr_adm')} a USING (recnum)
        WHERE g.c_diag IN ({codes}) GROUP BY a.pnr),
    e AS (
        SELECT b.pnr, b.koen, ({idx} - {days('b.foed_dag')}) / 365.25 AS age, dd.death,
          m.emigration, dm.outcome,
          least(coalesce(dm.outcome, {end}), coalesce(dd.death, {end}),
                coalesce(m.emigration, {end}), {end}) AS exit_date
        FROM {parquet('bef')} b LEFT JOIN death dd USING (pnr) LEFT JOIN moves m USING (pnr)
          LEFT JOIN dm USING (pnr)
        WHERE {days('b.foed_dag')} <= {idx} AND (dd.death IS NULL OR dd.death >= {idx})
          AND (CASE WHEN m.last_arrival IS NOT NULL THEN m.last_arrival
                    ELSE m.first_arrival IS NULL OR NOT m.first_arrival END)
          AND ({idx} - {days('b.foed_dag')}) / 365.25 >= {D.AGE[0]}
          AND ({idx} - {days('b.foed_dag')}) / 365.25 < {D.AGE[1]}
          AND NOT coalesce(dm.prior, false))
    SELECT pnr, 1::TINYINT AS "group", {idx}::INTEGER AS index_date, age,
      (koen = 2)::TINYINT AS sex, exit_date::INTEGER AS exit_date,
      (CASE WHEN outcome = exit_date THEN 1 WHEN death = exit_date THEN 2
            WHEN emigration = exit_date THEN 3 ELSE 0 END)::TINYINT AS status,
      (exit_date - {idx} + 1)::INTEGER AS time,
      (outcome IS NOT NULL AND outcome = exit_date)::TINYINT AS event
    FROM e ORDER BY pnr
    """)
    con.execute(f"COPY person TO '{out}' (FORMAT parquet)")


if __name__ == "__main__":
    C.command_line(build, threads=True)
