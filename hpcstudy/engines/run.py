"""Running a study: check, compile, build the per-person table, analyse, write the outputs.

    OUT/results.json       attrition, cohort, rates, model estimates (no person-level data)
    OUT/tables/*.csv       the same, as tables; small cells suppressed
    OUT/plan.txt           the plan that ran
    OUT/outputs.json       the output manifest: each exported file's kind, schema and SHA-256
    OUT/private/           the per-person analysis table: never exported

Outputs are written to a staging folder next to OUT and moved into place at the end.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..models.base import ModelError
from ..models.partitions import LocalPartitions
from ..outputs import disclosure as D
from ..outputs.gate import key_name_problems, min_cell_floor, min_cell_problems
from ..plan import compile_study, render
from ..plan.nodes import Plan
from ..registers.store import Dataset, staged_output
from ..study import Study, StudyErrors, load_study
from . import analyses as A
from .common import STATUS, table_columns  # noqa: F401 - R.table_columns, for tests
from .dask_engine import DaskEngine, write_person_table
from .reference import ReferenceEngine

ENGINES = ("reference", "dask")


def prepare(study: Study | str | Path, data: str | Path,
            approval=None) -> tuple[Study, Plan, Dataset]:
    """Load and check a study against the data's catalog (and the project's approval, when
    given); raise StudyErrors with every problem. Only the manifest is read."""
    if not isinstance(study, Study):
        study = load_study(study)
    ds = Dataset.open(data)
    plan, problems = compile_study(study, ds)
    if approval is not None:
        from ..secure.approval import check as check_approval

        problems += check_approval(plan, approval)
    problems += min_cell_problems(study, approval) + key_name_problems(study)
    floor = min_cell_floor(approval)
    if problems:
        raise StudyErrors(problems)
    if floor > study.min_cell:
        # the project's threshold is a floor a study can only raise
        from dataclasses import replace

        study = replace(study, min_cell=floor)
        plan = replace(plan, study=study)
    from ..secure.approval import approved_study

    if approved_study(study, approval) is not study:   # the project hides hospital codes
        from dataclasses import replace

        study = approved_study(study, approval)
        plan = replace(plan, study=study)
    return study, plan, ds


def person_table(plan: Plan, ds: Dataset, engine: str = "dask", client=None, progress=None,
                 checkpoints: Path | None = None, resume: bool = False, report=None,
                 device: str = "cpu"):
    """(per-partition tables, attrition, partitions object); ``report["resumed"]`` says how
    many partitions came from checkpoints, ``report["device"]`` what the run computed on."""
    design = None   # a comparative design's results (hpcstudy/designs), for analyse()
    if engine == "reference":
        df, attrition = ReferenceEngine().person_table(ds, plan)
        if plan.study.propensity is not None:
            from ..designs.reference import design as reference_design

            df, attrition, design = reference_design(plan, df, attrition)
        tables = [{c: df[c].to_numpy() for c in df.columns}]
        parts = LocalPartitions(tables)
        parts.design_results = design
        parts.frame = df   # measures and hospitals: the reference engine's own pandas code
        return tables, attrition, parts
    if engine == "dask":
        eng = DaskEngine(client=client, progress=progress, device=device)
        tables, attrition = eng.person_tables(ds, plan, checkpoints, resume)
        if report is not None:
            report["resumed"] = eng.resumed
            report["device"] = eng.device_record()
        if plan.study.propensity is not None:
            from ..designs.apply import run as apply_design
            from .dask_engine import PartitionTables

            # the design's global step (matching, weights) runs here on the gathered tables:
            # the rows come to this process for propensity studies only
            tables, attrition, design = apply_design(plan, list(tables), attrition)
            tables = PartitionTables(tables)
        parts = eng.partitions(tables)
        parts.design_results = design
        return tables, attrition, parts
    raise UserError(f"unknown engine {engine!r}", fix=f"use one of {', '.join(ENGINES)}")


def combined(plan: Plan, tables) -> dict:
    from .dask_engine import combined as combine

    return combine(plan, tables)


def analyse(plan: Plan, parts, attrition, fitted: dict | None = None, ds=None) -> dict:
    """The results dict; ``fitted``, when given, receives the fitted model objects by the
    results' model names (and ``lexis_poisson``): what the Python API hands a notebook."""
    kept = _keeper(fitted)
    s = plan.study
    an = s.analyses
    res: dict = {"study": s.name, "attrition": {g: [{"step": k, "persons": n} for k, n in st]
                                                for g, st in attrition.items()}}
    share = A.fixed_horizon(plan)
    res["cohort"] = [{"group": g.code, "label": g.label, **r} for g in plan.groups
                     for r in A.rates(parts, ("group",), share) if r["group"] == g.code]
    for r in res["cohort"]:
        r.pop("group", None)
    res.update(getattr(parts, "design_results", None) or {})   # table1, balance, preference
    if an.rates_by is not None and an.rates_by != ("group",):
        res["rates"] = A.rates(parts, an.rates_by, share)
    models = {}
    try:
        if an.cox is not None:
            m = A.cox(plan, parts, an.cox.adjust, an.cox.strata)
            models["cox"] = _model_result(kept("cox", m))
        if an.logistic is not None:
            models["logistic"] = _model_result(kept("logistic", A.glm(plan, parts,
                                                                      an.logistic.adjust, False)))
        if an.poisson is not None:
            models["poisson"] = _model_result(kept("poisson", A.glm(plan, parts,
                                                                    an.poisson.adjust, True)))
    except ModelError as e:
        raise UserError(f"model cannot be fitted: {e}", where=s.source,
                        fix="simplify the model or widen the cohort") from e
    if models:
        res["models"] = models
    if an.curves:
        res["curves"] = A.curves(plan, parts)
    if an.lexis is not None:
        sums = A.lexis_sums(plan, parts)
        rows = A.lexis(plan, parts, sums)
        res["lexis"] = rows
        if sum(r["events"] for r in rows) > 0 and len(rows) > 1:
            try:
                res["lexis_model"] = _model_result(kept("lexis_poisson", A.lexis_poisson(
                    rows, plan, sums)))
            except ModelError as e:
                res["lexis_model"] = {"error": str(e)}
    from .reference_measures import analyse as measures_and_hospitals

    res.update(measures_and_hospitals(plan, parts, ds, fitted))
    return res


def _keeper(fitted: dict | None):
    def kept(name: str, model):
        if fitted is not None:
            fitted[name] = model
        return model
    return kept


def _model_result(m) -> dict:
    """A fitted model as results: totals, estimates and the counts behind each term; the
    private ``_variables`` and ``_patterns`` feed the disclosure rules and never leave."""
    cells = getattr(m, "cells_", None)
    res = {"persons": m.n_obs_, "events": getattr(m, "n_events_", None), "loglik": m.loglik_,
           "newton_steps": m.n_iter_, "terms": m.summary}
    if cells is None:
        return res
    res["persons"], res["events"] = cells["persons"], cells["events"]
    by_name = {c["term"]: c for c in cells["terms"]}
    res["terms"] = [{**t, **{k: by_name[t["term"]][k] for k in D.TERM_COUNTS}}
                    for t in res["terms"]]
    res["_variables"] = {c["term"]: c["variable"] for c in cells["terms"] if c["variable"]}
    res["_patterns"] = cells["patterns"]
    return res


# -- writing -----------------------------------------------------------------------------------
def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(round(v, 10))
    return str(v)


def _csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys)
    for r in rows:
        w.writerow([_fmt(r.get(k)) for k in keys])
    return buf.getvalue()


def _rate_again(row: dict) -> None:
    from ..models.rates import poisson_ci

    if "proportion" in row:   # a fixed-horizon outcome's cohort or rates table
        _proportion_again(row)
        return

    py = row.get("person_years")
    if py:
        lo, hi = poisson_ci(row["events"], py)
        row.update(rate_per_1000py=1000 * row["events"] / py, lower_95=1000 * lo,
                   upper_95=1000 * hi)


def _proportion_again(row: dict) -> None:
    from ..models.rates import wilson_ci

    if row.get("persons"):
        lo, hi = wilson_ci(row["events"], row["persons"])
        row.update(proportion=row["events"] / row["persons"], lower_95=lo, upper_95=hi)


def _measure_again(row: dict) -> None:
    from ..models.rates import poisson_ci

    if "proportion" in row:
        _proportion_again(row)
    elif row.get("person_years"):
        lo, hi = poisson_ci(row["events"], row["person_years"])
        row.update(rate=1000 * row["events"] / row["person_years"], lower_95=1000 * lo,
                   upper_95=1000 * hi)


def _oe_again(row: dict) -> None:
    from ..models.rates import poisson_ci

    if row.get("expected"):
        lo, hi = poisson_ci(row["events"], row["expected"])
        row.update(oe=row["events"] / row["expected"], lower_95=lo, upper_95=hi)


def exported(results: dict, min_cell: int, round_to: int = 0) -> dict:
    """The results with every disclosure rule applied (what may leave OUT/private)."""
    r = _disclosed(results, min_cell)
    if round_to:
        for g in r["attrition"]:
            r["attrition"][g] = D.rounded(r["attrition"][g], round_to)
        for key in ("cohort", "rates", "lexis"):
            if key in r:
                r[key] = D.rounded(r[key], round_to, _rate_again)
        for k in r.get("measures", {}):
            r["measures"][k] = D.rounded(r["measures"][k], round_to, _measure_again)
        if "curves" in r:
            r["curves"] = D.rounded(r["curves"], round_to)
        if "hospitals" in r:
            r["hospitals"] = D.rounded(r["hospitals"], round_to, _oe_again)
        for m in [*r.get("models", {}).values(), r.get("lexis_model", {})]:
            for row in [m, *m.get("terms", [])]:
                for f in D.TERM_COUNTS:
                    if isinstance(row.get(f), int):
                        row[f] = int(round_to * round(row[f] / round_to))
    return r


def _disclosed(results: dict, min_cell: int) -> dict:
    r = json.loads(json.dumps(results, default=_jsonable))
    rate = ("person_years", "rate_per_1000py", "proportion", "lower_95", "upper_95")
    r["cohort"] = D.suppress(r["cohort"], min_cell, rate, keys=("label",))
    shown = {c["label"]: c["persons"] is not None for c in r["cohort"]}
    for g in r["attrition"]:
        # the last step is the cohort table's persons of the group: one number, one verdict
        last = shown.get(g, next(iter(shown.values())) if len(shown) == 1 else None)
        r["attrition"][g] = D.attrition(r["attrition"][g], min_cell, last)
    if "rates" in r:
        r["rates"] = D.suppress(r["rates"], min_cell, rate, keys=_keys(r["rates"],
                                                                       A.RATE_COLUMNS))
    if "lexis" in r:
        r["lexis"] = D.suppress(r["lexis"], min_cell, rate, keys=A.LEXIS_KEYS)
    from ..measures.compute import COLUMNS as MEASURE_COLUMNS

    for k in r.get("measures", {}):
        r["measures"][k] = D.suppress(r["measures"][k], min_cell, MEASURE_COLUMNS[2:-1],
                                      keys=_keys(r["measures"][k], MEASURE_COLUMNS))
    if "curves" in r:
        r["curves"] = D.curve(r["curves"], min_cell)
    if "hospitals" in r:
        from ..measures.hospitals import COLUMNS as HOSPITAL_COLUMNS

        r["hospitals"] = D.suppress(r["hospitals"], min_cell, HOSPITAL_COLUMNS[2:-1],
                                    keys=("hospital",))
    for k, m in list(r.get("models", {}).items()):
        r["models"][k] = D.model(m, min_cell)
    if "lexis_model" in r:
        r["lexis_model"] = D.model(r["lexis_model"], min_cell)
    return r


def _keys(rows: list[dict], columns: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(k for k in (rows[0] if rows else {}) if k not in columns)


def _jsonable(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    raise TypeError(type(o))


def write_outputs(out: Path, plan: Plan, results: dict, table, *, engine: str,
                  ds: Dataset, overwrite: bool = True, approval=None,
                  device: dict | None = None) -> dict:
    """Write the exported files, the private per-person table and the output manifest
    (``OUT/outputs.json``: every exported file with its kind, schema and SHA-256). ``table``
    is a dict of arrays, or the dask engine's PartitionTables (written where its rows are)."""
    from ..outputs import manifest as M

    with staged_output(out, overwrite, kind="run") as staging:
        res = exported(results, plan.study.min_cell, plan.study.round_to)
        manifest_sha = hashlib.sha256((ds.root / "manifest.json").read_bytes()).hexdigest()
        # no data path: a folder name is free text the gate cannot vouch for (the manifest's
        # SHA-256 says which data)
        res["run"] = {"engine": engine, "data_manifest_sha256": manifest_sha,
                      "min_cell": plan.study.min_cell, "round_to": plan.study.round_to,
                      "status_codes": {str(k): v for k, v in STATUS.items()}}
        # without file:line: a path and a line number are free text the gate cannot vouch for
        res["run"]["study_warnings"] = [str(w).split(": ", 1)[1] for w in plan.study.warnings]
        if device is not None:
            res["run"]["device"] = device
        if approval is not None:
            res["run"]["approval"] = approval.as_dict()
        truth = ds.manifest.get("truth")
        if truth:
            res["planted_truth"] = {"mi_log_hr": truth["mi"]["log_hr"],
                                    "mi_per_year_of_age": truth["mi"]["per_year"]}
        an = plan.study.analyses
        free_keys = {"rates": tuple(an.rates_by or ()),
                     **{f"measures.{m.name}": (*m.by, "interval") for m in an.measures}}
        try:
            sections = M.results_sections(res, free_keys)
        except M.ManifestError as e:
            raise UserError(f"the outputs cannot be declared: {e}", where=plan.study.source,
                            fix="a covariate in rates: {by: …} or a measure's by: may not be "
                                "named like a count, estimate or flag column: rename it") from e
        (staging / "results.json").write_text(json.dumps(res, indent=1, ensure_ascii=False,
                                                         default=_jsonable) + "\n")
        entries = [{"path": "results.json", "kind": "results", "sections": sections,
                    "meta": sorted(k for k in M.META if k in res)}]
        from ..secure.audit import write_head

        # audit.json: the chain head of this run's started record. Not in outputs.json, which
        # stays the same bytes for the same inputs; the gate knows its fixed shape.
        write_head(staging)
        tables = staging / "tables"
        tables.mkdir()

        def declared_table(name: str, section: str, rows: list[dict]) -> None:
            (tables / name).write_text(_csv(rows))
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
        (staging / "plan.txt").write_text(f"plan for study {plan.study.name!r}\n"
                                          f"{rendered[1] if len(rendered) > 1 else ''}\n")
        entries.append({"path": "plan.txt", "kind": "plan"})
        M.write(staging, M.build(staging, entries, study=plan.study,
                                 data_manifest_sha256=manifest_sha,
                                 data_persons_sha256=ds.persons_sha256(),
                                 min_cell=plan.study.min_cell, round_to=plan.study.round_to,
                                 project=approval.project if approval is not None else None))
        from ..report import write as write_report

        write_report(staging)   # report.html and tables/*.md: a pure function of the above
        private = staging / "private"
        private.mkdir(mode=0o700)
        M.keep_study(staging, plan.study)
        if hasattr(table, "write"):
            table.write(plan, private / "person_table.parquet")
        else:
            write_person_table(table, private / "person_table.parquet")
    return res


def check_run(out, ds: Dataset, *, overwrite: bool = False, study: Study | None = None,
              approval=None, verify: bool = False, plan: Plan | None = None) -> None:
    """Refuse a run before it reads anything: an ``out`` it may not write (it is, holds or lies
    in what the run reads; it exists without --overwrite or without a run marker; see
    :mod:`hpcstudy.outputs.targets`) or data whose files disagree with the manifest."""
    from ..outputs import targets

    reads = [ds.root, study.source if study is not None and study.source != "<python>" else None,
             approval.source if approval is not None else None]
    targets.check_target(out, kind="run", overwrite=overwrite, reads=reads)
    missing = [r for r in (plan.reads if plan is not None else ()) if r not in ds.registers]
    if missing:   # never run on silently fewer registers than the study reads
        raise UserError(f"{ds.root}/manifest.json: register {missing[0]}, which the study "
                        "reads, is not in the manifest", fix="restore the manifest that synth "
                        "or ingest wrote, or ingest the register")
    ds.check_files(checksums=verify)


def run(study, data, out, engine: str = "dask", client=None, progress=None,
        overwrite: bool = False, approval=None, resume: bool = False, report=None,
        verify: bool = False, checked: bool = False, device: str = "cpu") -> dict:
    """Run a study. The dask engine checkpoints every finished partition next to OUT, in the
    private folder OUT.checkpoints/ (mode 0700); ``resume`` reuses them; a finished run removes
    them. ``checked``: the caller has done :func:`check_run` already. ``device``: ``cpu``,
    ``gpu`` or ``auto`` (see :mod:`hpcstudy.cluster.gpus`; the dask engine only)."""
    from . import checkpoint

    study, plan, ds = prepare(study, data, approval)
    if not checked:
        check_run(out, ds, overwrite=overwrite, study=study, approval=approval, verify=verify,
                  plan=plan)
    ckpt = checkpoint.directory(Path(out)) if engine == "dask" else None
    if ckpt is not None and ckpt.is_dir():
        checkpoint.private_folder(ckpt)   # one an older hpcstudy left readable by others
    report = {} if report is None else report
    if engine != "dask" and device == "gpu":
        raise UserError(f"the {engine} engine runs on the CPU only",
                        fix="use --engine dask for --device gpu, or drop --device")
    if engine == "dask":
        from ..cluster.gpus import choose

        device = choose(device, client)
    tables, attrition, parts = person_table(plan, ds, engine, client, progress, ckpt, resume,
                                            report, device)
    results = analyse(plan, parts, attrition, ds=ds)
    # the dask engine's tables are written where they were computed (by a worker)
    table = tables if engine == "dask" else combined(plan, tables)
    res = write_outputs(Path(out), plan, results, table, engine=engine, ds=ds,
                        overwrite=overwrite, approval=approval, device=report.get("device"))
    if ckpt is not None:
        checkpoint.clear(ckpt)
    return res
