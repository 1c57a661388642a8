"""Writing a run's output folder from its disclosure-controlled results:

    OUT/results.json       attrition, cohort, rates, model estimates (no person-level data)
    OUT/tables/*.csv       the same, as tables; small cells suppressed
    OUT/plan.txt           the plan that ran
    OUT/outputs.json       the output manifest: each exported file's kind, schema and SHA-256
    OUT/audit.json         the audit chain head of the run's started record
    OUT/report.html        the report (hpcstudy/report), a pure function of the above
    OUT/private/           the per-person analysis table: never exported

Everything is written to a staging folder next to OUT and moved into place at the end
(staging.py). What is written has passed publish.exported already; this module only lays it
out and declares it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ..errors import CannotWrite, UserError
from ..plan import render
from ..plan.nodes import Plan
from . import manifest as M
from .publish import jsonable
from .staging import staged_output


def fmt(v) -> str:
    """A CSV cell: empty for None and NaN, floats to 10 decimals."""
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(round(v, 10))
    return str(v)


def csv_text(rows: list[dict], columns: list[str] | None = None) -> str:
    """The CSV of ``rows``; ``columns``: the header (declared in outputs.json), else the
    rows' keys in order of first appearance. No header and no rows: the empty file."""
    keys = columns if columns is not None else M.columns_of(rows)
    if not keys:
        return ""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys)
    for r in rows:
        w.writerow([fmt(r.get(k)) for k in keys])
    return buf.getvalue()


def free_keys(plan: Plan) -> dict[str, tuple[str, ...]]:
    """The sections whose key columns the study names (rates by, a measure's by)."""
    return {"rates": tuple(plan.rates_by or ()),
            **{f"measures.{m.name}": (*m.by, "interval") for m in plan.measures}}


def write_run(out: Path, plan: Plan, res: dict, table, *, overwrite: bool,
              data_manifest_sha256: str, data_persons_sha256: str,
              project: str | None = None, engine: str = "dask", device: dict | None = None,
              run: dict | None = None, figures=None, sketches=None) -> None:
    """Write the exported results ``res`` (disclosure applied, the run section in), the private
    per-person table and the output manifest (``OUT/outputs.json``: every exported file with
    its kind, schema and SHA-256). ``table`` is a dict of arrays, or the dask engine's
    PartitionTables (written where its rows are). ``run``: the run's report dict, where
    :func:`hpcstudy.outputs.run_record.begin` noted when and where the run started (for
    ``run.json``). ``figures``: who draws the report's figures (hpcstudy.report.drawing; here
    by default). ``sketches``: who writes the persons behind the published counts
    (:func:`hpcstudy.secure.sketches.writer`) to ``OUT/private/sketches.json``; its SHA-256
    goes in outputs.json."""
    from ..report import write as write_report
    from ..secure.audit import write_head

    with staged_output(out, overwrite, kind="run") as staging:
        try:
            sections = M.results_sections(res, free_keys(plan))
        except M.ManifestError as e:
            raise UserError(f"the outputs cannot be declared: {e}", where=plan.source,
                            fix="a covariate in rates: {by: …} or a measure's by: may not be "
                                "named like a count, estimate or flag column: rename it") from e
        (staging / "results.json").write_text(json.dumps(res, indent=1, ensure_ascii=False,
                                                         default=jsonable) + "\n")
        entries = [{"path": "results.json", "kind": "results", "sections": sections,
                    "meta": sorted(k for k in M.META if k in res)}]
        # audit.json: the chain head of this run's started record. Not in outputs.json, which
        # stays the same bytes for the same inputs; the gate knows its fixed shape.
        write_head(staging)
        tables = staging / "tables"
        tables.mkdir()

        def declared_table(name: str, section: str, rows: list[dict]) -> None:
            (tables / name).write_text(csv_text(rows, [c["name"] for c in
                                                       sections[section]["columns"]]))
            entries.append({"path": f"tables/{name}", "kind": sections[section]["kind"],
                            "section": section, "columns": sections[section]["columns"]})

        for name in ("cohort", "rates", "curves", "lexis", "hospitals", *M.DESIGN_TABLES):
            if name in res:
                declared_table(f"{name}.csv", name, res[name])
        for g, rows in res["attrition"].items():
            declared_table(f"attrition_{g}.csv", f"attrition.{g}", rows)
        for k, m in res.get("models", {}).items():
            if "terms" in m:
                declared_table(f"model_{k}.csv", f"models.{k}", m["terms"])
        if "lexis_model" in res and "terms" in res["lexis_model"]:
            declared_table("model_lexis_poisson.csv", "lexis_model", res["lexis_model"]["terms"])
        for k, rows in res.get("measures", {}).items():
            declared_table(f"measure_{k}.csv", f"measures.{k}", rows)
        # without the study file's path (free text the gate cannot vouch for)
        rendered = render(plan).split("\n", 1)
        (staging / "plan.txt").write_text(f"plan for study {plan.name!r}\n"
                                          f"{rendered[1] if len(rendered) > 1 else ''}\n")
        entries.append({"path": "plan.txt", "kind": "plan"})
        from . import run_record

        # run.json: launcher, device, hardware, times; apart from results.json (the same bytes
        # on every launcher and machine)
        entries.append(run_record.write(staging, run, engine=engine, device=device))
        private = staging / "private"
        private.mkdir(mode=0o700)
        if sketches is not None:
            sketched = sketches(staging)
        M.write(staging, M.build(staging, entries, study=plan.study,
                                 data_manifest_sha256=data_manifest_sha256,
                                 data_persons_sha256=data_persons_sha256,
                                 min_cell=plan.min_cell, round_to=plan.round_to,
                                 project=project,
                                 sketches_sha256=sketched if sketches is not None else None))
        try:
            write_report(staging, figures)   # report.html, tables/*.md: a function of the above
        except CannotWrite as e:
            # the report's own advice ("run `hpcstudy report` again", naming the hidden
            # staging folder) is wrong here: no OUT was made; the run's I/O line names OUT
            if isinstance(e.__cause__, OSError):
                e.__cause__.filename = str(out)
                raise e.__cause__ from None
            raise
        M.keep_study(staging, plan.study)
        if hasattr(table, "write"):
            table.write(plan, private / "person_table.parquet")
        else:
            from ..engines.dask_engine import write_person_table

            write_person_table(table, private / "person_table.parquet")
