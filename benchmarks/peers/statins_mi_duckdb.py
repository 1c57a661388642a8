"""Example 1 (examples/statins_mi.yaml) written by hand in DuckDB SQL, from the study and
docs/studies.md: the per-person table (one row per person and group) as Parquet.

    python benchmarks/peers/statins_mi_duckdb.py DATA OUT.parquet [--threads N]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent))
import common as C  # noqa: E402


def build(data: Path, out: Path, threads: int | None = None) -> None:
    import duckdb

    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {threads}")
    d = str(data)
    icd = C.dictionary(data, "icd10")
    diagtype = C.dictionary(data, "diagtype")
    indud = C.dictionary(data, "indud")
    con.register("codes", pa.table({
        "code": pa.array([i for i in range(len(icd))], pa.int32()), "text": icd}))
    con.register("atc_codes", pa.table({
        "code": pa.array(list(range(len(C.dictionary(data, "atc")))), pa.int32()),
        "text": C.dictionary(data, "atc")}))
    cc = C.charlson_codes(data)
    con.register("charlson_codes", pa.table({
        "category": [c[0] for c in cc], "weight": pa.array([c[1] for c in cc], pa.int32()),
        "code": pa.array([c[2] for c in cc], pa.int32())}))
    hier = C.charlson_hierarchy()
    con.register("charlson_hierarchy",
                 pa.table({"severe": list(hier), "mild": list(hier.values())}))
    a_type, in_code = diagtype.index("A"), indud.index("I")
    lo, hi = C.WINDOW
    end = C.data_end(data)

    def parquet(reg):
        return f"read_parquet('{d}/{reg}/*.parquet')"

    con.execute(f"""
    CREATE TEMP TABLE bef AS SELECT pnr, koen, foed_dag - DATE '1970-01-01' AS birth
        FROM {parquet('bef')};
    CREATE TEMP TABLE death AS SELECT pnr, min(doddato - DATE '1970-01-01') AS day
        FROM {parquet('dod')} GROUP BY pnr;
    CREATE TEMP TABLE moves AS SELECT pnr, haend_dato - DATE '1970-01-01' AS day,
        indud_kode = {in_code} AS arrival FROM {parquet('vnds')};
    CREATE TEMP TABLE drugs AS SELECT l.pnr, l.eksd - DATE '1970-01-01' AS day, a.text
        FROM {parquet('lmdb')} l JOIN atc_codes a ON a.code = l.atc
        WHERE a.text LIKE '{C.STATINS}%' OR a.text = '{C.METFORMIN}';
    CREATE TEMP TABLE contacts AS SELECT pnr, recnum, d_inddto - DATE '1970-01-01' AS day,
        c_pattype FROM {parquet('lpr_adm')};
    CREATE TEMP TABLE diags AS SELECT c.pnr, c.day, c.recnum, c.c_pattype, g.c_diag,
        g.c_diagtype = {a_type} AS action, k.text
        FROM {parquet('lpr_diag')} g JOIN contacts c USING (recnum)
        JOIN codes k ON k.code = g.c_diag;
    """)
    # exposed: first statin in the window, none in the washout before it
    con.execute(f"""
    CREATE TEMP TABLE cand AS
    WITH statin AS (SELECT pnr, day FROM drugs WHERE text LIKE '{C.STATINS}%'),
    first AS (SELECT pnr, min(day) AS idx FROM statin WHERE day BETWEEN {lo} AND {hi}
              GROUP BY pnr)
    SELECT f.pnr, 1::TINYINT AS grp, f.idx FROM first f
    WHERE NOT EXISTS (SELECT 1 FROM statin s WHERE s.pnr = f.pnr
                      AND s.day BETWEEN f.idx - {C.WASHOUT} AND f.idx - 1)
    """)
    b = con.execute("SELECT pnr FROM bef").fetchnumpy()["pnr"]
    con.register("nonuser_days", pa.table({
        "pnr": b, "idx": C.random_index_days(b, C.SEED, lo, hi)}))
    con.execute(f"""
    INSERT INTO cand SELECT n.pnr, 0, n.idx FROM nonuser_days n
    WHERE NOT EXISTS (SELECT 1 FROM drugs s WHERE s.pnr = n.pnr AND s.text LIKE '{C.STATINS}%'
                      AND s.day <= n.idx)
    """)
    con.execute(f"""
    CREATE TEMP TABLE eligible AS
    WITH m AS (
        SELECT c.pnr, c.grp, c.idx,
               arg_max(mv.arrival, mv.day) FILTER (WHERE mv.day <= c.idx) AS last_arrival,
               max(mv.day) FILTER (WHERE mv.day <= c.idx AND mv.arrival) AS arrived,
               arg_min(mv.arrival, mv.day) AS first_move_arrival
        FROM cand c LEFT JOIN moves mv USING (pnr) GROUP BY c.pnr, c.grp, c.idx)
    SELECT m.pnr, m.grp, m.idx, b.koen, b.birth, (m.idx - b.birth) / 365.25 AS age,
           dd.day AS death
    FROM m JOIN bef b USING (pnr) LEFT JOIN death dd USING (pnr)
    WHERE m.idx <= {end} AND b.birth <= m.idx AND (dd.day IS NULL OR dd.day >= m.idx)
      AND (CASE WHEN m.last_arrival IS NOT NULL THEN m.last_arrival
                ELSE m.first_move_arrival IS NULL OR NOT m.first_move_arrival END)
      AND (m.idx - b.birth) / 365.25 >= {C.AGE[0]} AND (m.idx - b.birth) / 365.25 < {C.AGE[1]}
      AND m.idx - coalesce(m.arrived, b.birth) >= {C.RESIDENCE_DAYS}
      AND NOT EXISTS (SELECT 1 FROM diags g WHERE g.pnr = m.pnr AND g.text LIKE '{C.MI}%'
                      AND g.day <= m.idx)
    """)
    con.execute(f"""
    CREATE TEMP TABLE person AS
    WITH cov AS (
        SELECT e.pnr, e.grp,
          (SELECT count(*) > 0 FROM diags g WHERE g.pnr = e.pnr AND g.text LIKE '{C.DIABETES}%'
             AND g.day <= e.idx) AS diabetes,
          (SELECT count(*) > 0 FROM drugs s WHERE s.pnr = e.pnr AND s.text = '{C.METFORMIN}'
             AND s.day BETWEEN e.idx - 365 AND e.idx - 1) AS metformin,
          (SELECT count(*) FROM contacts k WHERE k.pnr = e.pnr
             AND k.day BETWEEN e.idx - 365 AND e.idx - 1) AS contacts,
          (SELECT min(g.day) FROM diags g WHERE g.pnr = e.pnr AND g.text LIKE '{C.MI}%'
             AND g.action AND g.c_pattype = 0 AND g.day >= e.idx + 1) AS outcome,
          (SELECT min(mv.day) - 1 FROM moves mv WHERE mv.pnr = e.pnr AND NOT mv.arrival
             AND mv.day > e.idx) AS emigration,
          CASE WHEN e.grp = 0 THEN (SELECT min(s.day) - 1 FROM drugs s WHERE s.pnr = e.pnr
             AND s.text LIKE '{C.STATINS}%' AND s.day > e.idx) END AS started
        FROM eligible e),
    cats AS (
        SELECT DISTINCT e.pnr, e.grp, cc.category, cc.weight
        FROM eligible e JOIN diags g ON g.pnr = e.pnr
          AND g.day BETWEEN e.idx - {C.CHARLSON_WINDOW} AND e.idx
        JOIN charlson_codes cc ON cc.code = g.c_diag),
    score AS (
        SELECT c.pnr, c.grp, sum(c.weight) AS charlson FROM cats c
        WHERE NOT EXISTS (SELECT 1 FROM charlson_hierarchy h JOIN cats s
                          ON s.category = h.severe AND h.mild = c.category
                          WHERE s.pnr = c.pnr AND s.grp = c.grp)
        GROUP BY c.pnr, c.grp),
    ex AS (
        SELECT e.*, v.diabetes, v.metformin, v.contacts, coalesce(s.charlson, 0) AS charlson,
          least(coalesce(v.outcome, 2147483647), coalesce(e.death, 2147483647),
                coalesce(v.emigration, 2147483647), coalesce(v.started, 2147483647),
                {end}, e.idx + {C.MAX_DAYS} - 1) AS exit_date, v.outcome, v.emigration, v.started
        FROM eligible e JOIN cov v USING (pnr, grp) LEFT JOIN score s USING (pnr, grp))
    SELECT pnr, grp::TINYINT AS "group", idx::INTEGER AS index_date, age,
      (koen = 2)::TINYINT AS sex, diabetes::TINYINT AS diabetes, charlson::SMALLINT AS charlson,
      metformin::TINYINT AS metformin_last_year, contacts::INTEGER AS contacts_last_year,
      exit_date::INTEGER AS exit_date,
      (CASE WHEN outcome = exit_date THEN 1 WHEN death = exit_date THEN 2
            WHEN emigration = exit_date THEN 3 WHEN started = exit_date THEN 4 ELSE 0 END
      )::TINYINT AS status,
      (exit_date - idx + 1)::INTEGER AS time,
      (outcome IS NOT NULL AND outcome = exit_date)::TINYINT AS event
    FROM ex ORDER BY "group" DESC, pnr
    """)
    con.execute(f"COPY person TO '{out}' (FORMAT parquet)")


if __name__ == "__main__":
    C.command_line(build, threads=True)
