"""A run, from study to output folder, in one place:

    prepare      study + data manifest → Prepared: one compile, one manifest read and hash
    check_run    the output folder may be written, the data's files agree with the manifest
    execute      plan → person tables (engines/run.py: the engine, then the design)
                 → analyses (engines/results.py) → disclosure (outputs/publish.py)
                 → writers (outputs/writers.py)

The audit records around a run are the caller's: ``hpcstudy run`` (the CLI's audited
commands) and :func:`hpcstudy.run` (the Python API) both run exactly this (through
:func:`hpcstudy.api.execute`), so the same study and data give the same bytes either way.
"""

from __future__ import annotations

import importlib
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from .errors import UserError
from .plan import compile_study
from .plan.nodes import Plan
from .registers.store import Dataset
from .study import Study, StudyErrors, load_study


@dataclass(frozen=True)
class Prepared:
    """A study checked and compiled against one reading of the data's manifest. Unpacks as
    ``study, plan, ds``."""

    study: Study
    plan: Plan
    ds: Dataset
    approval: object = None

    @property
    def manifest_sha256(self) -> str:
        """SHA-256 of the manifest bytes the plan was compiled from."""
        return self.ds.manifest_sha256

    def __iter__(self):
        return iter((self.study, self.plan, self.ds))


def prepare(study: Study | str | Path, data: str | Path, approval=None) -> Prepared:
    """Load and check a study against the data's catalog (and the project's approval, when
    given); raise StudyErrors with every problem. Only the manifest is read, once."""
    from .outputs.gate import key_name_problems, min_cell_floor, min_cell_problems

    if not isinstance(study, Study):
        study = load_study(study)
    ds = Dataset.open(data)
    if approval is not None:   # the project hides hospital codes: the study can only hide more
        from .secure.approval import approved_study

        study = approved_study(study, approval)
    plan, problems = compile_study(study, ds)
    if approval is not None:
        from .secure.approval import check as check_approval

        problems += check_approval(plan, approval)
    problems += min_cell_problems(study, approval) + key_name_problems(study)
    floor = min_cell_floor(approval)
    if problems:
        raise StudyErrors(problems)
    if floor > study.min_cell:
        # the project's threshold is a floor a study can only raise
        study = replace(study, min_cell=floor)
        plan = replace(plan, study=study, min_cell=floor)
    return Prepared(study, plan, ds, approval)


def check_data(prep: Prepared, verify: bool = False) -> None:
    """Refuse data with fewer registers than the plan reads, or whose files disagree with
    the manifest (``verify``: every file's checksum too)."""
    ds = prep.ds
    missing = [r for r in prep.plan.reads if r not in ds.registers]
    if missing:   # never run on silently fewer registers than the study reads
        raise UserError(f"{ds.root}/manifest.json: register {missing[0]}, which the study "
                        "reads, is not in the manifest", fix="restore the manifest that synth "
                        "or ingest wrote, or ingest the register")
    ds.check_files(checksums=verify)


def check_run(out, prep: Prepared | Dataset, *, overwrite: bool = False,
              study: Study | None = None, approval=None, verify: bool = False,
              plan: Plan | None = None) -> None:
    """Refuse a run before it reads anything: an ``out`` it may not write (it is, holds or lies
    in what the run reads; it exists without --overwrite or without a run marker; see
    :mod:`hpcstudy.outputs.targets`) or data whose files disagree with the manifest."""
    from .outputs import targets

    if isinstance(prep, Dataset):    # the older call: check_run(out, ds, study=…, plan=…)
        prep = Prepared(study, plan, prep, approval)
    study, approval = prep.study, prep.approval
    reads = [prep.ds.root,
             study.source if study is not None and study.source != "<python>" else None,
             approval.source if approval is not None else None]
    targets.check_target(out, kind="run", overwrite=overwrite, reads=reads)
    if prep.plan is not None:
        check_data(prep, verify)
    else:
        prep.ds.check_files(checksums=verify)


@dataclass
class Executed:
    """What a run computed: the raw results (private), what may be exported, the fitted model
    objects and the per-person table (private; None unless gathered)."""

    results: dict
    exported: dict
    table: dict | None
    fitted: dict = field(default_factory=dict)


def run_section(prep: Prepared, engine: str, device: dict | None = None) -> dict:
    """results.json's ``run`` section: how and on what the run ran. No data path: a folder
    name is free text the gate cannot vouch for (the manifest's SHA-256 says which data)."""
    from .engines.common import STATUS

    plan = prep.plan
    run = {"engine": engine, "data_manifest_sha256": prep.manifest_sha256,
           "min_cell": plan.min_cell, "round_to": plan.round_to,
           "status_codes": {str(k): v for k, v in STATUS.items()}}
    run["study_warnings"] = list(plan.warnings)
    if device is not None:
        run["device"] = device
    if prep.approval is not None:
        run["approval"] = prep.approval.as_dict()
    return run


def choose_device(engine: str, device: str, client=None) -> str:
    """The device a run computes on (``cpu``, ``gpu`` or ``auto``: see
    :mod:`hpcstudy.cluster.gpus`); the reference engine runs on the CPU only."""
    if engine != "dask" and device == "gpu":
        raise UserError(f"the {engine} engine runs on the CPU only",
                        fix="use the dask engine for device gpu, or leave the device out")
    if engine == "dask":
        from .cluster.gpus import choose

        return choose(device, client)
    return "cpu"


def execute(prep: Prepared, out: str | Path | None, *, engine: str = "dask", client=None,
            progress=None, overwrite: bool = False, resume: bool = False,
            report: dict | None = None, device: str = "cpu", gather: bool = False,
            figures=None) -> Executed:
    """Run a prepared study (``check_run`` done). The dask engine checkpoints every finished
    partition next to OUT, in the private folder OUT.checkpoints/ (mode 0700); ``resume``
    reuses them; a finished run removes them. Without ``out`` nothing is written.
    ``gather``: bring the per-person table to this process (the Python API's); otherwise the
    dask engine's tables are written where they were computed. ``figures``: the report's
    figure process (:class:`~hpcstudy.report.drawing.FigureProcess`) where the caller started
    it earlier (the command line, before its imports); one is started here otherwise. It is
    closed here either way."""
    # started first, beside this process's imports: the first partitions' reads and (for a
    # run that writes a report, computed here) the figure process
    here = engine == "dask" and client is None
    if here and device == "cpu" and not resume:
        from .engines import read_ahead

        # two partitions a core: the reads outlast the imports (a partition's read is about
        # 0.06 s of CPU at 1 M persons, the imports after them about 0.2 s)
        cores = os.cpu_count() or 1
        read_ahead.start(prep.ds.root, prep.plan.reads,
                         range(min(prep.ds.partitions, 2 * cores)), threads=cores)
    if not (out is not None and here):
        if figures is not None and hasattr(figures, "close"):
            figures.close()   # (a run that draws its figures in this process, if any)
        figures = None
    elif figures is None:
        from .report.drawing import FigureProcess

        figures = FigureProcess.start()   # imports matplotlib beside the partitions
    persons = None
    try:
        # only what the partitions need is imported before they start: the analyses', the
        # outputs' and the report's modules import in the warm-up thread beside them
        from .engines import checkpoint
        from .engines.run import check_engine, person_table
        from .outputs.run_record import begin

        plan = prep.plan
        report = {} if report is None else report
        if out is not None:
            warm_up(AFTER_THE_PARTITIONS)
            # who the data is about (outputs.json), read beside the partitions, not after them
            persons = ahead(prep.ds.persons_sha256, "hpcstudy-persons")
            # the key of the sketches' ids (secure/sketches.py), read beside them too
            sketch_key = ahead(partial(_sketch_key, prep.ds), "hpcstudy-persons-key")
        check_engine(plan, engine)          # "not supported by this engine": before the run
        begin(report, client)   # when and where the run started, for run.json
        device = choose_device(engine, device, client)
        ckpt = checkpoint.directory(Path(out)) if out is not None and engine == "dask" else None
        if ckpt is not None and ckpt.is_dir():
            checkpoint.private_folder(ckpt)   # one an older hpcstudy left readable by others
        built = person_table(plan, prep.ds, engine, client, progress, ckpt, resume, report,
                             device)
        if out is not None and not gather and hasattr(built.tables, "write_ahead"):
            built.tables.write_ahead(plan)   # the private table's bytes while the analyses run
        from . import demo
        from .engines.results import analyse
        from .engines.run import combined
        from .outputs.publish import exported
        from .outputs.writers import write_run

        fitted: dict = {}
        early = None
        if figures is not None and hasattr(figures, "early"):
            from .report.ahead import Early

            early = Early(figures, plan)   # each figure drawn once its analysis is done
        results = analyse(plan, built.parts, built.attrition, fitted, ds=prep.ds,
                          design=built.design, finished=early)
        table = combined(plan, built.tables) if gather or engine != "dask" else None
        res = exported(results, plan.min_cell, plan.round_to)
        if out is not None:
            res["run"] = run_section(prep, engine, report.get("device"))
            truth = demo.planted_truth(plan, prep.ds.manifest)
            if truth is not None:
                res["planted_truth"] = truth
            write_run(Path(out), plan, res, table if table is not None else built.tables,
                      overwrite=overwrite, data_manifest_sha256=prep.manifest_sha256,
                      data_persons_sha256=persons.result(),
                      project=prep.approval.project if prep.approval is not None else None,
                      engine=engine, device=report.get("device"), run=report,
                      figures=figures, sketches=_sketches(plan, built.parts, results,
                                                          persons.result(),
                                                          sketch_key.result(), res))
            if ckpt is not None:
                checkpoint.clear(ckpt)
    finally:
        if figures is not None and hasattr(figures, "close"):
            figures.close()
        if here:
            from .engines import read_ahead

            read_ahead.clear()
        join_background()
    return Executed(results, res, table, fitted)


def join_background(timeout: float = 60.0) -> None:
    """Wait for the run's background threads (the warm-up's imports, reads ahead, the private
    table's bytes, the figure process's pipes): where a run stops early, a daemon thread still
    importing or inside pyarrow when the interpreter exits can abort it (exit -6, after the
    one-line error)."""
    import time

    end = time.monotonic() + timeout
    for t in threading.enumerate():   # (not the kept pools' threads: they wait for work)
        if t.daemon and t.name.startswith(BACKGROUND) and t is not threading.current_thread():
            t.join(max(0.0, end - time.monotonic()))


BACKGROUND = ("hpcstudy-warm-up", "hpcstudy-read-ahead", "hpcstudy-person-table",
              "hpcstudy-figures", "hpcstudy-persons")


# what a run that writes its outputs needs only after the partitions, imported (and, for
# "module:function", called) beside them in the warm-up thread, in this order: the analyses and
# the writers (execute imports them after the partitions), the report's page and its template,
# compiled (about 0.1 s of CPU each), the code's version and hash (run.json, the report: about
# 0.03 s). matplotlib (about 0.6 s) only in the figure process (report/drawing.py)
AFTER_THE_PARTITIONS = ("hpcstudy.engines.results", "hpcstudy.outputs.publish",
                        "hpcstudy.outputs.writers", "hpcstudy.demo",
                        "hpcstudy.report.build", "hpcstudy.report.ahead",
                        "hpcstudy.report:template",
                        "hpcstudy.measures.compute", "hpcstudy.outputs.run_record",
                        "hpcstudy.secure.audit", "importlib.metadata",
                        "hpcstudy.outputs.run_record:code_version")


def warm_up(modules) -> threading.Thread:
    """Import ``modules`` (``module:function``: and call it) in a background thread: while the
    partitions compute (NumPy and pyarrow release the GIL) rather than after them, on one core,
    when the run needs them. Python's import lock makes a later ``import`` of one of them wait
    for this one to finish; one that fails here is left for that later import to report."""
    def load():
        for name in modules:
            module, _, call = name.partition(":")
            try:
                m = importlib.import_module(module)
                if call:
                    getattr(m, call)()
            except Exception:   # noqa: BLE001 - the run's own import says what went wrong
                return

    t = threading.Thread(target=load, name="hpcstudy-warm-up", daemon=True)
    t.start()
    return t


def ahead(fn, name: str) -> Future:
    """``fn()`` in a background thread (named ``name``, one of :data:`BACKGROUND`): its Future,
    whose ``result()`` gives the value or raises what ``fn`` raised, in the caller's thread."""
    f: Future = Future()

    def work():
        try:
            f.set_result(fn())
        except BaseException as e:   # noqa: BLE001 - raised where the value is asked for
            f.set_exception(e)

    threading.Thread(target=work, name=name, daemon=True).start()
    return f


def run(study, data, out, engine: str = "dask", client=None, progress=None,
        overwrite: bool = False, approval=None, resume: bool = False, report=None,
        verify: bool = False, checked: bool = False, device: str = "cpu") -> dict:
    """Prepare, check and execute a study; the exported results (what results.json holds).
    ``checked``: the caller has done :func:`check_run` already. No audit records: callers
    audit (see the module docstring)."""
    prep = prepare(study, data, approval)
    if not checked:
        check_run(out, prep, overwrite=overwrite, verify=verify)
    return execute(prep, out, engine=engine, client=client, progress=progress,
                   overwrite=overwrite, resume=resume, report=report,
                   device=device).exported


def write_outputs(out: Path, plan: Plan, results: dict, table, *, engine: str,
                  ds: Dataset, overwrite: bool = True, approval=None,
                  device: dict | None = None, run: dict | None = None,
                  figures=None) -> dict:
    """Disclosure, then the writers, for raw ``results`` computed elsewhere (the older entry
    point; :func:`execute` is the run's). Returns what was exported. ``figures``: who draws
    the report's figures (:mod:`hpcstudy.report.drawing`; here by default)."""
    from . import demo
    from .outputs.publish import exported
    from .outputs.writers import write_run

    prep = Prepared(plan.study, plan, ds, approval)
    res = exported(results, plan.min_cell, plan.round_to)
    res["run"] = run_section(prep, engine, device)
    truth = demo.planted_truth(plan, ds.manifest)
    if truth is not None:
        res["planted_truth"] = truth
    persons = ds.persons_sha256()
    write_run(Path(out), plan, res, table, overwrite=overwrite,
              data_manifest_sha256=prep.manifest_sha256,
              data_persons_sha256=persons,
              project=approval.project if approval is not None else None,
              engine=engine, device=device, run=run, figures=figures,
              sketches=_sketches(plan, table, results, persons, _sketch_key(ds), res)
              if isinstance(table, dict) else None)
    return res


def _sketch_key(ds: Dataset) -> bytes:
    from .secure.sketches import data_secret

    return data_secret(ds)


def _sketches(plan: Plan, parts, results: dict, persons_sha256: str | None, key: bytes,
              shown: dict | None = None):
    """Who writes the persons behind the run's published counts (``shown``: the exported
    results), for the export register (secure/sketches.py)."""
    if persons_sha256 is None:
        return None
    from .secure.sketches import writer

    return writer(plan, parts, results, persons_sha256, key, shown)
