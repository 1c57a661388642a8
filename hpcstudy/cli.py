"""The ``hpcstudy`` command line.

Every command reports bad input as one line on stderr (``hpcstudy: error: …``) and exits 2;
a data check that finds problems, or an I/O failure (full disk, permission), exits 1; success
exits 0; an unexpected exception is a bug: one line, the traceback in a file, exit 70.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from dataclasses import replace
from pathlib import Path

import click

from .errors import DataProblem, UserError


def _progress_bar(enabled: bool):
    """A progress callback (stage, done, total) drawing one tqdm bar per stage."""
    if not enabled:
        return None
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="step", leave=False,
                                     file=sys.stderr)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def audited(fn):
    """Audit every use of the command: a started record before it touches any data (it stops,
    writing nothing, if that cannot be written) and a finished record after, whatever the
    outcome."""

    @functools.wraps(fn)
    def wrapper(**kw):
        command = fn.__name__.replace("_", " ")
        if command == "run" and kw.get("launcher") == "mpi":   # (submit --launcher mpi: no)
            started = _audit_mpi(command, kw)
        else:
            started = _audit(command, kw)
        from .secure.audit import outcome

        status = "error"
        try:
            result = fn(**kw)
            status = outcome(None)
            return result
        except BaseException as e:
            status = outcome(e)
            raise
        finally:
            if started is not None:
                _audit(command, kw, status, started, failing=status != "ok")

    return wrapper


def _audit_mpi(command: str, kw: dict) -> dict | None:
    """The started record of an mpi run: the client rank writes it, and every rank stops if
    it could not (else the others would wait for the client forever)."""
    from .cluster import mpi

    mpi.start()   # which rank this is decides who audits (and says if mpi4py is missing)
    from mpi4py import MPI
    try:
        started, failed = _audit(command, kw), None
    except UserError as e:
        started, failed = None, e
    # every rank exits with the client's code, whichever rank mpirun hears from first
    code = MPI.COMM_WORLD.allreduce(failed.exit_code if failed else 0, op=MPI.MAX)
    if code:
        from .secure.audit import AuditUnavailable

        if failed is None:
            failed = AuditUnavailable("the client rank could not write the audit log")
            failed.exit_code = code
        raise failed
    return started


# the folder each command writes (its outputs are hashed into its finished record)
_WRITES = {"synth": "out", "run": "out", "ingest": "data", "export": "dest",
           "report": "out"}


def _audit(command: str, kw: dict, status: str | None = None, started: dict | None = None,
           failing: bool = False) -> dict | None:
    """Write the started record (``status`` None) or the finished one; return the record."""
    from .secure import audit

    if not _speaks():
        return None   # an mpi scheduler or worker rank: the client rank audits the run
    entry: dict = {"command": command, "args": sys.argv[1:]}
    if started is None:
        if kw.get("study"):
            entry["study_sha256"] = audit.file_sha256(kw["study"])
        data = kw.get("data") or kw.get("directory")
        if data:
            entry["data_manifest_sha256"] = audit.file_sha256(Path(data) / "manifest.json")
        if kw.get("project"):
            entry["approval_sha256"] = audit.file_sha256(kw["project"])
        if kw.get("input_"):
            entry["input_sha256"] = audit.file_sha256(kw["input_"])
        if command == "export":
            entry["run_audit"] = audit.read_head(kw["out"])[0]
        return audit.begin(entry)
    entry["status"] = status
    out = kw.get(_WRITES.get(command, ""))
    if out and status == "ok":
        # a run's output manifest (outputs.json) or a dataset's manifest names every file's hash
        names = [n for n in ("outputs.json", "manifest.json") if (Path(out) / n).is_file()]
        entry["outputs"] = {names[0]: audit.file_sha256(Path(out) / names[0])} if names \
            else audit.tree_sha256(out)
    try:
        return audit.finish(started, entry)
    except UserError:
        if failing:
            return None   # the command's own error is the one to tell; the record shows it
        raise


class _PathOption(click.Path):
    """A path the file system can take and a batch script can carry: not empty, no control
    character (NUL, newline…), no name over 255 bytes. Checked when the command line is parsed,
    so no command starts on a path it cannot create."""

    def convert(self, value, param, ctx):
        text = os.fsdecode(value) if isinstance(value, bytes) else str(value)
        if not text:
            self.fail("an empty path", param, ctx)
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
            self.fail(f"{text!r}: a path cannot hold a control character (a NUL, a newline, "
                      "a tab…)", param, ctx)
        long = [n for n in text.split("/") if len(os.fsencode(n)) > 255]
        if long:
            self.fail(f"the name {long[0][:40]}… is too long ({len(os.fsencode(long[0]))} "
                      "bytes; a file system takes at most 255 a name) — choose a shorter path",
                      param, ctx)
        return super().convert(value, param, ctx)


PATH = _PathOption(path_type=Path)


class _Between(click.IntRange):
    """A whole number bounded on both sides: a huge value is refused when parsed, never passed
    on to allocate memory or start processes."""

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            what = "a positive whole number" if self.min == 1 else "a whole number"
            self.fail(f"{value!r} is not {what} from {self.min} to {self.max}", param, ctx)


def _slurm_name(ctx, param, value: str | None) -> str | None:
    """A Slurm account name: it is written into a batch script, so nothing else may ride in."""
    if value is None:   # a local run never loads the Slurm module
        return None
    from .cluster.slurm import SLURM_NAME

    if not SLURM_NAME.match(value):
        raise click.BadParameter(f"{value!r} is not a Slurm account name (letters, digits, "
                                 "_ . + -)", ctx, param)
    return value


def _between(lo: int, hi: int) -> click.IntRange:
    return _Between(lo, hi)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpcstudy")
def cli() -> None:
    """Cohort studies on Danish-style health registers, from a laptop to GPU nodes."""


@cli.command()
@click.option("--persons", type=_between(1, 10**9), required=True,
              help="Number of persons (N > 0).")
@click.option("--seed", type=_between(0, 2**63 - 1), default=1, show_default=True,
              help="Random seed (≥ 0).")
@click.option("--out", "out", type=PATH, required=True,
              help="New folder to create (never the current folder or one holding other files).")
@click.option("--partitions", type=_between(1, 4096), default=8, show_default=True,
              help="Number of hash partitions by pnr (P > 0).")
@click.option("--jobs", type=_between(1, 256), default=None,
              help="Worker processes (default: number of CPUs, at most 4).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --out, if it is a dataset hpcstudy wrote and holds "
                   "nothing else.")
@click.option("--quiet", is_flag=True, help="No progress bar or summary.")
@audited
def synth(persons: int, seed: int, out: Path, partitions: int, jobs: int | None,
          overwrite: bool, quiet: bool) -> None:
    """Generate deterministic synthetic registers (bef, dod, dodsaarsag, vnds, lpr_adm,
    lpr_diag, lmdb) with planted effects, as a partitioned Parquet dataset."""
    from .registers.generate import generate

    jobs = jobs or min(4, os.cpu_count() or 1)
    manifest = generate(out, persons, seed, partitions, overwrite=overwrite, jobs=jobs,
                        progress=_progress_bar(not quiet and sys.stderr.isatty()))
    if not quiet:
        click.echo(summary(manifest, out))


def summary(manifest: dict, where: Path | str) -> str:
    """A short, human summary of a dataset's manifest."""
    src = manifest.get("source", {})
    lines = [f"{where}: {src.get('persons', '?')} persons, seed {src.get('seed', '?')}, "
             f"{manifest['partitions']} partitions, {manifest['period']['start']} to "
             f"{manifest['period']['end']}"]
    total = 0
    for name, reg in manifest["registers"].items():
        size = sum(f.get("bytes", 0) if isinstance(f.get("bytes"), int) else 0
                   for f in reg["files"])
        total += reg["rows"]
        lines.append(f"  {name:<11} {reg['rows']:>13,} rows  {size / 1e6:9.1f} MB  "
                     f"{reg.get('title', '')}")
    lines.append(f"  {'all':<11} {total:>13,} rows")
    import math

    # every outcome's planted hazard ratios (what a study on these data should recover)
    for outcome, t in sorted((manifest.get("truth") or {}).items()):
        hrs = t.get("log_hr") if isinstance(t, dict) else None
        if isinstance(hrs, dict) and hrs:
            lines.append(f"  planted truth ({outcome.replace('_', ' ')}): " + ", ".join(
                f"HR {k} {math.exp(v):.2f}" for k, v in sorted(hrs.items())))
    return "\n".join(lines)


@cli.group()
def data() -> None:
    """Inspect and check register datasets."""


@data.command("verify")
@click.argument("directory", type=PATH)
@audited
def data_verify(directory: Path) -> None:
    """Check every file against the manifest: presence, SHA-256, schema, row counts."""
    from .registers.verify import verify

    problems = verify(directory)
    if problems:
        for p in problems:
            click.echo(f"{directory}/{p}" if not p.startswith(str(directory)) else p, err=True)
        raise DataProblem(f"{len(problems)} problem(s) in {directory}")
    click.echo(f"{directory}: all files match the manifest")


@data.command("summary")
@click.argument("directory", type=PATH)
def data_summary(directory: Path) -> None:
    """Print what a dataset holds."""
    from .registers.store import Dataset

    click.echo(summary(Dataset.open(directory).manifest, directory))


# -- studies ----------------------------------------------------------------------------------
def _approval(project: Path | None):
    if project is None:
        return None
    from .secure.approval import load_approval

    return load_approval(project)


def _load_checked(study: Path, data: Path | None, project: Path | None = None,
                  variant: str | None = None):
    """Study (and plan, dataset when data is given), raising StudyErrors with every problem."""
    from .study import load_study

    if data is not None and project is None:
        from .secure.approval import require_project

        require_project()
    approval = _approval(project)
    if approval is not None and data is not None:
        from .secure.approval import check_dataset

        check_dataset(approval, data)   # the manifest only: before any data file is read
    s = load_study(study, variant)
    if data is None:
        from .outputs.gate import min_cell_problems
        from .study import StudyErrors

        if min_cell_problems(s, approval):
            raise StudyErrors(min_cell_problems(s, approval))
        if approval is not None:
            raise UserError("checking against a project's approval needs the data's catalog",
                            fix="add --data DIR")
        return s, None, None
    from .pipeline import prepare

    return prepare(s, data, approval)   # a Prepared: unpacks as study, plan, dataset


def _warn(s) -> None:
    """The study's warnings (harmless oddities), one line each on stderr."""
    for w in s.warnings if _speaks() else ():
        click.echo(f"hpcstudy: warning: {w}", err=True)


VARIANT = click.option("--variant", default=None,
                       help="This variant of the study (its variants:).")


PROJECT = click.option("--project", type=PATH,
                       envvar="HPCSTUDY_PROJECT",
                       help="Project approval file (registers, columns, period); refuses a "
                            "study that reaches outside it. Default: $HPCSTUDY_PROJECT.")


@cli.command()
@click.argument("study", type=PATH)
@click.option("--data", type=PATH, help="Check against this dataset's "
              "catalog too (registers, code dictionaries, period).")
@VARIANT
@PROJECT
@audited
def check(study: Path, data: Path | None, project: Path | None, variant: str | None) -> None:
    """Check a study and each of its variants (or the one --variant names): the language, and
    with --data the data's catalog. All errors at once; warnings too."""
    from .study import StudyErrors

    s, plan, _ = _load_checked(study, data, project, variant)
    problems = []
    for v in s.variant_names if data is not None and variant is None else ():
        try:
            _load_checked(study, data, project, v)
        except StudyErrors as e:
            from .plan.compile import variant_line

            # a variant's problem comes from its set: (the base study passed this check)
            at = variant_line(str(study), v)
            problems += [replace(p, where=at, field=f"variant {v}: {p.field}")
                         for p in e.problems]
    if problems:
        raise StudyErrors(problems)
    _warn(s)
    what = f"against {data}" if data else "(language only; add --data DIR for the catalog)"
    more = f" with its {len(s.variants)} variant(s)" if s.variants and variant is None else ""
    click.echo(f"{study}: study {s.name!r}{more} is valid {what}")


@cli.command()
@click.argument("study", type=PATH)
@click.option("--data", type=PATH, required=True,
              help="Dataset whose code dictionaries resolve the codelists.")
@VARIANT
@PROJECT
@audited
def plan(study: Path, data: Path, project: Path | None, variant: str | None) -> None:
    """Print the compiled plan: groups, criteria, covariates, outcome, what is read."""
    from .plan import render

    s, p, _ = _load_checked(study, data, project, variant)
    _warn(s)
    click.echo(render(p))


DEVICE = click.option(
    "--device", type=click.Choice(["cpu", "gpu", "auto"]), default=None,
    help="Where partitions are computed: cpu (NumPy), gpu (CuPy, one GPU per worker) or auto "
         "(gpu where CuPy finds one). Default: the site profile's device, else cpu.")


@cli.command()
@click.argument("study", type=PATH)
@click.option("--data", type=PATH, required=True, help="Register dataset.")
@click.option("--out", type=PATH, required=True,
              help="New output folder (outside the data, the study and the project).")
@click.option("--engine", type=click.Choice(["dask", "reference"]), default="dask",
              show_default=True)
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --out, if an earlier run wrote it and it holds nothing "
                   "else (its private/hpcstudy-run.json lists what the run wrote).")
@click.option("--verify", is_flag=True,
              help="Check every data file's SHA-256 against the manifest before reading.")
@click.option("--quiet", is_flag=True)
@click.option("--launcher", type=click.Choice(["local", "processes", "slurm", "mpi"]),
              default="local", show_default=True,
              help="Where the dask engine's tasks run (mpi: start under mpirun/srun, 3+ ranks).")
@click.option("--workers", type=_between(1, 1024), default=2, show_default=True,
              help="Workers for the processes and slurm launchers.")
@click.option("--gpus", type=_between(0, 1024), default=0,
              help="processes launcher: one worker per GPU.")
@click.option("--profile", "profile_name", default=None,
              help="Site profile (hpcstudy profiles): the slurm launcher's workers, and the "
                   "default --device.")
@click.option("--account", envvar="HPCSTUDY_ACCOUNT", default=None, callback=_slurm_name,
              help="slurm launcher: Slurm account of the worker jobs.")
@click.option("--interface", default=None,
              help="mpi and slurm launchers: network interface of scheduler and workers (ib0).")
@click.option("--resume", is_flag=True,
              help="Reuse the partitions an interrupted run finished (in the private folder "
                   "OUT.checkpoints/).")
@DEVICE
@VARIANT
@PROJECT
@audited
def run(study: Path, data: Path, out: Path, engine: str, overwrite: bool, verify: bool,
        quiet: bool, launcher: str, workers: int, gpus: int, profile_name: str | None,
        account: str | None, interface: str | None, resume: bool, device: str | None,
        variant: str | None, project: Path | None) -> None:
    """Run a study: results.json, tables/*.csv and the private per-person table in OUT."""
    figures = None
    if launcher == "local" and engine == "dask":
        from .report.drawing import FigureProcess

        # the report's figure process, started first: its Python and matplotlib import on the
        # core that the run's own imports and checks leave idle (killed, unused, if the run
        # stops before its report)
        figures = FigureProcess.start()
        if hasattr(figures, "close"):
            click.get_current_context().call_on_close(figures.close)
    from . import api, pipeline
    from .cluster.launchers import client_for

    if launcher == "mpi":
        from .cluster import mpi

        mpi.start()   # from here on only the client rank prints, writes and audits
    # every rank checks the study: a bad one fails everywhere at once, nothing waits for it
    _approval(project)
    prep = _load_checked(study, data, project, variant)
    s, _, ds = prep
    _warn(s)
    # every rank refuses a bad --out or broken data at once: none waits for another
    pipeline.check_run(out, prep, overwrite=overwrite, verify=verify)
    if launcher != "local" and engine != "dask":
        raise UserError(f"the {launcher} launcher runs the dask engine",
                        fix="drop --engine reference, or use --launcher local")
    prof, part = None, None
    if launcher == "slurm" or profile_name:
        from .cluster.slurm import load_profile

        prof = load_profile(profile_name or "ci")
    from .cluster.gpus import default_device

    device = device or default_device(prof)
    if engine != "dask" and device == "gpu":
        raise UserError("the reference engine runs on the CPU only",
                        fix="use --engine dask with --device gpu, or drop --device")
    if launcher == "mpi":
        part = mpi.join(interface)
        if part.role != "client":
            mpi.serve(part, interface)
            return
    progress = _progress_bar(not quiet and sys.stderr.isatty())
    # worker jobs' Slurm logs go next to OUT, not into whatever directory the run started in
    logs = Path(out).parent / f"{Path(out).name}.worker-logs" if launcher == "slurm" else None
    with client_for(launcher, workers, gpus, prof, account=account, interface=interface,
                    part=part, log_directory=logs) as client:
        done: dict = {"launcher": launcher}   # (for run.json)
        # the Python API's code path: the same bytes either way; the dask engine's tables
        # stay where they were computed (gather=False)
        res = api.execute(prep, out, engine=engine, client=client, progress=progress,
                          overwrite=overwrite, resume=resume, report=done, checked=True,
                          device=device if engine == "dask" else "cpu", gather=False,
                          figures=figures).exported
    if resume:
        click.echo(f"resumed {done.get('resumed', 0)} of {ds.partitions} partitions from "
                   "checkpoints")
    if not quiet:
        click.echo(run_summary(res, out))


def run_summary(res: dict, out: Path) -> str:
    """A short text report of a run's results."""

    lines = [f"study {res['study']!r} ({res['run']['engine']} engine) -> {out}"]
    for c in res["cohort"]:
        if c["persons"] is None:
            # a withheld row is not "<5 persons": it may hold many, withheld for its events
            # or so that another withheld cell cannot be worked out
            lines.append(f"  {c['label']}: withheld (a count below {res['run']['min_cell']} "
                         "here or in a row it would reveal)")
            continue
        n = c["persons"]
        ev = c["events"] if c["events"] is not None else f"<{res['run']['min_cell']}"
        rate = "" if c.get("rate_per_1000py") is None else (
            f", {c['rate_per_1000py']:.2f} per 1000 person-years "
            f"({c['lower_95']:.2f}-{c['upper_95']:.2f})")
        if c.get("proportion") is not None:   # a fixed-horizon outcome: a share of persons
            rate = (f", {100 * c['proportion']:.2f} % with the outcome "
                    f"(95% CI {100 * c['lower_95']:.2f}-{100 * c['upper_95']:.2f} %)")
        lines.append(f"  {c['label']}: {n} persons, {ev} events{rate}")
    if res.get("hospitals"):
        h = res["hospitals"]
        shown = [r for r in h if r.get("oe") is not None]
        high = sum(r["oe"] > r["limit998_high"] for r in shown)
        low = sum(r["oe"] < r["limit998_low"] for r in shown)
        lines.append(f"  hospitals: {len(h)} compared by observed/expected; {high} above and "
                     f"{low} below the 99.8 % funnel limits")
    for name, m in res.get("models", {}).items():
        if "terms" not in m:
            lines.append(f"  {name}: withheld ({m.get('withheld') or m.get('error')})")
            continue
        terms = [t for t in m["terms"] if t["term"] != "intercept"] or m["terms"]
        t = terms[0]
        ratio = next(k for k in ("HR", "OR", "RR") if k in t)
        if t.get("withheld"):
            lines.append(f"  {name}: {t['term']} withheld ({t['withheld']})")
            continue
        lines.append(f"  {name}: {ratio} {t['term']} {t[ratio]:.3f} "
                     f"(95% CI {t['lower_95']:.3f}-{t['upper_95']:.3f}), "
                     f"{m['persons']} persons, {m['events']} events")
    from .demo import report_line

    truth = report_line(res)    # the demo's study on the demo's data: its answer is planted
    if truth is not None:
        lines.append(truth)
    return "\n".join(lines)


@cli.command("report")
@click.argument("out", type=PATH)
@audited
def report(out: Path) -> None:
    """Write OUT/report.html (and tables/*.md, tables/publication/*.csv) from the run's
    exported outputs, and list them in OUT/outputs.json. `hpcstudy run` already does this; the
    same outputs always give the same bytes."""
    if not Path(out).is_dir():   # (before loading the report's libraries)
        raise UserError(f"{out} is not a directory", fix="give the --out of a run")
    from .outputs.targets import changed_since_written
    from .report import REPORT, write

    if (edited := changed_since_written(Path(out), "run", ("report", "report_table"))):
        raise UserError(f"{out} {edited}; the report would replace it",
                        fix="move your edits into a file of your own, or run the study again")
    before = (Path(out) / "outputs.json").read_bytes() if (Path(out) / "outputs.json").is_file() \
        else None
    written = write(out)
    click.echo(f"{Path(out) / REPORT}: the study report ({len(written) - 1} table file(s))")
    if before is not None and (Path(out) / "outputs.json").read_bytes() != before:
        click.echo("hpcstudy: outputs.json now lists a new report: the run's audit record "
                   "names the old one, so export refuses this folder; re-run the study to "
                   "export it", err=True)


@cli.command()
@click.option("--register", required=True, help="Register of the extract (bef, lpr_adm, …).")
@click.option("--input", "input_", type=PATH, required=True,
              help="Extract: .csv, .parquet, .sas7bdat or .xpt, keyed by cpr.")
@click.option("--data", type=PATH, required=True,
              help="Dataset to add to (created if absent; an existing folder must be an "
                   "hpcstudy dataset holding nothing else).")
@click.option("--key-file", type=PATH, required=True,
              help="The project's pseudonymisation key (≥ 32 bytes); never printed.")
@click.option("--quarantine", type=PATH, default=None,
              help="Where rejected rows go (default: next to the input).")
@click.option("--partitions", type=_between(1, 4096), default=8, show_default=True,
              help="P for a new dataset.")
@audited
def ingest(register: str, input_: Path, data: Path, key_file: Path, quarantine: Path | None,
           partitions: int) -> None:
    """Validate CPR numbers, pseudonymise them with the project key, check every row, and add
    the extract to the partitioned dataset; rejected rows go to quarantine with a reason."""
    from .outputs.targets import check_target
    from .secure.ingest import ingest as do

    # a new folder or an hpcstudy dataset holding nothing else: never a folder of other files
    check_target(data, kind="dataset", overwrite=True, option="--data",
                 reads=[("the extract", input_), ("the key file", key_file),
                        ("the quarantine file", quarantine)])
    s = do(register, input_, data, key_file, quarantine, partitions)
    if s["skipped"]:
        click.echo(f"{input_}: {s['reason']}")
        return
    q = f", {s['quarantined']} quarantined in {s['quarantine']}" if s["quarantined"] else ""
    there = f", {s['already_present']} already present" if s["already_present"] else ""
    click.echo(f"{input_}: {s['rows']} rows added to {register} in {data}{there}{q}")


def _gate(out: Path, min_cell: int | None, project: Path | None):
    """The gate's verdict on OUT, and why its passed files would be held for review."""
    from .outputs import gate
    from .secure import exports

    if min_cell is not None and min_cell < 1:
        raise UserError(f"--min-cell {min_cell} is not a threshold",
                        fix=f"leave it out or give {gate.MIN_CELL_FLOOR} or more")
    verdict = gate.check(out, min_cell, _approval(project))
    return verdict, exports


def _say_held(verdict) -> None:
    for path in sorted(verdict.held):
        for reason in verdict.held[path]:
            click.echo(f"withheld {path}: {reason}" if not reason.startswith(path) else
                       f"withheld {reason}", err=True)


def _say_review(found, out: Path) -> None:
    for d in found:
        click.echo(f"held for review: {out}: {d}", err=True)
    click.echo(f"hpcstudy: an output checker who has judged the difference harmless releases "
               f"it with `hpcstudy exports release {out} --reason TEXT`", err=True)


MIN_CELL = click.option("--min-cell", type=_between(1, 10**9), default=None,
                        help="Raise the threshold (never below 5 or the project's min_cell).")


@cli.command("check-outputs")
@click.argument("out", type=PATH)
@MIN_CELL
@PROJECT
@audited
def check_outputs(out: Path, min_cell: int | None, project: Path | None) -> None:
    """Check a run's outputs as export would: only files listed in OUT/outputs.json, unchanged,
    of their declared kind and columns, with every cell passing the disclosure rules, and no
    count a few persons away from an earlier export or a sibling variant. Exit 1 on anything."""
    verdict, exports = _gate(out, min_cell, project)
    _say_held(verdict)
    found = exports.held_by(verdict, exports.read())
    if found:
        _say_review(found, out)
    if verdict.held or found:
        n = sum(map(len, verdict.held.values()))
        raise DataProblem(f"{n} violation(s) in {len(verdict.held)} file(s)" +
                          (f"; {len(found)} difference(s) to review" if found else ""))
    click.echo(f"{out}: {len(verdict.passed)} exported file(s), no violation "
               f"(threshold {verdict.min_cell})")


@cli.command("export")
@click.argument("out", type=PATH)
@click.argument("dest", type=PATH)
@MIN_CELL
@PROJECT
@audited
def export(out: Path, dest: Path, min_cell: int | None, project: Path | None) -> None:
    """Copy the files of a run that pass the gate (never private/) to DEST, all at once, and
    record the export in the project's export register. An export whose counts differ from an
    earlier one's by a few persons is held whole for an output checker."""
    from .registers.store import staged_output

    if not Path(out).is_dir():
        raise UserError(f"{out} is not a directory", fix="give the --out of a run")
    from .secure.audit import run_recorded

    if why := run_recorded(out):
        raise UserError(f"{out} is not exported: {why}", fix="export only what an audited "
                        "hpcstudy run wrote; hpcstudy audit verify tells more")
    verdict, exports = _gate(out, min_cell, project)
    files = list(verdict.passed)
    if verdict.manifest is None or files == [] or files == ["outputs.json"]:
        _say_held(verdict)
        raise DataProblem(f"nothing exported from {out}: no file passed the gate")
    with exports.locked() as register:
        found = exports.held_by(verdict, register)
        if found:
            register.append({"event": "held", "out": str(Path(out).resolve()),
                             "manifest_sha256": verdict.manifest["manifest_sha256"],
                             "differences": [str(d) for d in found]})
            _say_held(verdict)
            _say_review(found, out)
            raise DataProblem(f"export of {out} held for review: {len(found)} count(s) differ "
                              "by fewer persons than the threshold; nothing was copied")
        with staged_output(dest, overwrite=False, kind="export",
                           reads=[("the run", out)]) as staging:
            for f in files:   # the bytes the gate checked, not whatever is there by now
                (staging / f).parent.mkdir(parents=True, exist_ok=True)
                (staging / f).write_bytes(verdict.blobs[f])
        register.append(exports.export_record(verdict, dest, files))
    _say_held(verdict)
    click.echo(f"exported {len(files)} file(s) to {dest}")
    if verdict.held:
        raise DataProblem(f"{len(verdict.held)} file(s) withheld")


@cli.group()
def exports() -> None:
    """The project's export register (what has left; exports held for review)."""


@exports.command("list")
def exports_list() -> None:
    """One line per record: exports, held exports and releases."""
    from .secure import exports as X

    reg = X.read()
    for r in reg.records:
        what = {"export": lambda r: f"{r['study']['name']!r} {r['out']} -> {r['dest']}",
                "held": lambda r: f"{r['out']}: {len(r.get('differences', []))} difference(s)",
                "release": lambda r: f"{r['out']}: {r.get('reason', '')}"}.get(
                    r.get("event"), lambda r: "")(r)
        click.echo(f"#{r.get('seq')} {r.get('time')} {r.get('user')} {r.get('event')} {what}")
    if not reg.records:
        click.echo(f"{reg.path}: no exports yet")


@exports.command("release")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--reason", required=True, help="The output checker's judgement, recorded.")
@MIN_CELL
@PROJECT
@audited
def exports_release(out: Path, reason: str, min_cell: int | None,
                    project: Path | None) -> None:
    """Release a run's outputs held for review: the next export of OUT (unchanged) is not held
    for differences. Recorded in the register and the audit log, with the reason."""
    verdict, X = _gate(out, min_cell, project)
    if verdict.manifest is None:
        _say_held(verdict)
        raise DataProblem(f"{out}: no valid output manifest: nothing to release")
    if not reason.strip():
        raise UserError("--reason is empty", fix="say why the difference is harmless")
    with X.locked() as register:
        found = X.held_by(verdict, register)
        register.append({"event": "release", "out": str(Path(out).resolve()),
                         "manifest_sha256": verdict.manifest["manifest_sha256"],
                         "reason": reason.strip(), "differences": [str(d) for d in found]})
    click.echo(f"released {out} ({len(found)} difference(s) judged harmless)")


# -- Slurm -------------------------------------------------------------------------------------
@cli.command()
def profiles() -> None:
    """List the site profiles (from $HPCSTUDY_PROFILE_PATH and jobs/slurm/profiles)."""
    from .cluster.slurm import list_profiles

    found = list_profiles()
    width = max([10, *(len(p.name) for p in found)])
    for p in found:
        mem = f"{p.mem_per_gpu}/GPU" if p.mem_per_gpu else (p.mem or "-")
        net = f", interface {p.interface}" if p.interface else ""
        net += f", account {p.account}" if p.account else ""
        click.echo(f"{p.name:<{width}} partition {p.partition:<8} {p.nodes} node(s) x "
                   f"{p.gpus_per_node} GPU, mem {mem}, walltime {p.walltime}, {p.launcher} "
                   f"launcher, {p.workers} worker(s){net}, device {p.device}  {p.description}"
                   f"  ({p.source})")


@cli.command()
@click.argument("study", type=PATH)
@click.option("--profile", "profile_name", required=True, help="Site profile (hpcstudy profiles).")
@click.option("--data", type=PATH, required=True)
@click.option("--out", type=PATH, required=True)
@click.option("--account", envvar="HPCSTUDY_ACCOUNT", default=None, callback=_slurm_name,
              help="Slurm account (default: the profile's; $HPCSTUDY_ACCOUNT).")
@click.option("--launcher", type=click.Choice(["local", "mpi", "slurm"]), default=None,
              help="How the job runs the dask engine: local (one process), mpi (ranks in the "
              "allocation, a worker per GPU), slurm (worker jobs); default: the profile's.")
@click.option("--dry-run", is_flag=True, help="Print the batch script; submit nothing.")
@DEVICE
@PROJECT
@audited
def submit(study: Path, profile_name: str, data: Path, out: Path, account: str | None,
           launcher: str | None, dry_run: bool, device: str | None,
           project: Path | None) -> None:
    """Check the study, render an sbatch script from the profile and submit it; the job id
    is recorded next to OUT (OUT.job.json)."""
    from .cluster import slurm

    s, _, _ = _load_checked(study, data, project)  # refuse before anything is queued
    from .outputs.targets import check_target

    check_target(out, kind="run", reads=[data, study, project])   # a job writes a new OUT
    for v in s.variant_names:
        _load_checked(study, data, project, v)      # every variant too
    prof = slurm.load_profile(profile_name)
    slurm.check_launcher_installed(launcher or prof.launcher)
    script = slurm.render_sbatch(prof, study=Path(study).resolve(), data=Path(data).resolve(),
                                 out=Path(out).resolve(), study_name=s.name, account=account,
                                 project=Path(project).resolve() if project else None,
                                 variants=s.variant_names, launcher=launcher, device=device)
    if dry_run:
        click.echo(script, nl=False)
        return
    job = slurm.submit(script, Path(out).resolve(), array=bool(s.variants))
    what = f"job array of the study and its {len(s.variants)} variants ({s.name} and " \
        f"{', '.join(s.variant_names)} under {out})" if s.variants else "job"
    click.echo(f"submitted {what} {job['job_id']} ({prof.name}, {launcher or prof.launcher} "
               f"launcher); log {job['log']}")


@cli.command()
@click.argument("jobs", nargs=-1)
def status(jobs: tuple[str, ...]) -> None:
    """State, elapsed time and GPU-hours of jobs (all of yours if none given). A job is its id,
    or the OUT it was submitted with."""
    from .cluster.slurm import job_of
    from .cluster.slurm import status as st

    for j in st([job_of(ref)[0] for ref in jobs]):
        if "elapsed_s" in j:
            again = f"  (requeued {j['restarts']}x)" if j.get("restarts") else ""
            click.echo(f"{j['job_id']:>8}  {j['state']:<12} {j['elapsed_s']:>7d} s  "
                       f"{j['gpus']} GPU  {j['gpu_hours']:.4f} GPU-h  {j['name']}{again}")
        else:
            click.echo(f"{j['job_id']:>8}  {j['state']}")


@cli.command()
@click.argument("job")
def logs(job: str) -> None:
    """Print a job's output (every task's, for an array). JOB: its id, or the OUT it was
    submitted with."""
    from .cluster.slurm import logs_of

    files = logs_of(job)
    if not files:
        raise UserError(f"no log found for job {job}",
                        fix="the job may not have started yet; hpcstudy status tells")
    for f in files:
        if len(files) > 1:
            click.echo(f"==> {f} <==")
        click.echo(f.read_text(errors="replace"), nl=False)


@cli.command()
@click.argument("job")
@audited
def cancel(job: str) -> None:
    """Cancel a job (all tasks of an array). JOB: its id, or the OUT it was submitted with."""
    from .cluster.slurm import cancel as c
    from .cluster.slurm import job_of

    job_id, _ = job_of(job)
    c(job_id)
    click.echo(f"cancelled {job_id}")


@cli.group()
def audit() -> None:
    """The hash-chained audit log of every check, plan, run, synth, ingest and export."""


def _audit_log(log: Path | None) -> Path:
    from .secure import audit as A

    where = Path(log) if log else A.default_path()
    if where.exists() and not where.is_file():
        raise UserError(f"the audit log {where} is a directory, not a file",
                        fix="give --log (or $HPCSTUDY_AUDIT_LOG) the log file itself")
    return where


@audit.command("verify")
@click.option("--log", "log", type=PATH, default=None,
              help="Log file (default: the site's, $HPCSTUDY_AUDIT_LOG or "
                   "~/.local/share/hpcstudy).")
@click.option("--outputs", "outputs", type=PATH, multiple=True,
              help="A run's OUT or an export (or its audit.json) whose recorded chain head must "
                   "still be in the log; repeat for more.")
def audit_verify(log: Path | None, outputs: tuple[Path, ...]) -> None:
    """Check the chain: name every edited, removed, inserted or reordered record, torn lines,
    and commands that started but never finished; with --outputs, detect a log that was cut,
    replaced, emptied or deleted."""
    from .secure import audit as A

    _audit_log(log)
    rep = A.check(log)
    where = rep.path
    problems = list(rep.problems)
    heads = []
    for o in outputs:
        h, why = A.read_head(o)
        if h is None:
            problems.append(why)
        else:
            heads.append((str(o), h))
    problems += A.verify_heads(rep, heads)
    for n in rep.notes:
        click.echo(f"{where}: note: {n}")
    for r in rep.unfinished():
        cmd = " ".join(map(str, r.get("args", [])))
        click.echo(f"{where}: unfinished: record {r['seq']} `hpcstudy {cmd}` by {r.get('user')} "
                   f"at {r.get('time')} never finished (failed, killed, or still running)")
    if len(problems) == 1:
        raise DataProblem(f"{where}: {problems[0]}")    # one line
    if problems:
        for p in problems:
            click.echo(f"{where}: {p}", err=True)
        raise DataProblem(f"{len(problems)} problem(s) in the audit log {where}")
    if rep.keyed:
        kind = "keyed (HMAC-SHA256 with the site's key)" if rep.key_checked else \
            "keyed, but the key could not be read: links checked, MACs not"
    else:
        kind = ("UNKEYED: anyone who can write the log can rewrite it and recompute the chain; "
                "only chain heads kept elsewhere (--outputs) expose that")
    if not rep.exists or not rep.records:
        click.echo(f"{where}: {'does not exist' if not rep.exists else 'no records'} — a new, "
                   "emptied or deleted log look the same; give --outputs to check against "
                   f"recorded heads; {kind}")
        return
    h = rep.head
    click.echo(f"{where}: {rep.records} records, chain intact; head {h['seq']} {h['hash']}; "
               f"{kind}" + (f"; {len(heads)} recorded head(s) found" if heads else ""))


@audit.command("head")
@click.option("--log", "log", type=PATH, default=None)
def audit_head(log: Path | None) -> None:
    """Print the last record's seq and hash: keep them elsewhere to detect records cut off the
    end."""
    from .secure import audit as A

    where = _audit_log(log)
    rep = A.check(log)
    if rep.problems:   # a head read off a damaged log would vouch for what it cannot
        more = f" (and {len(rep.problems) - 1} more)" if len(rep.problems) > 1 else ""
        raise DataProblem(f"{where}: {rep.problems[0]}{more} — hpcstudy audit verify names "
                          "every problem")
    head = A.head(log)
    click.echo("empty log" if head is None else f"{head['seq']} {head['hash']}")


def _interrupt_on_sigterm() -> None:
    """Turn SIGTERM (scancel, a killed job) and SIGUSR1 (what a submitted job's script passes
    on before the walltime: mpirun and srun forward it to every rank) into KeyboardInterrupt,
    so clean-up code runs."""
    import signal

    def handler(signum, frame):  # noqa: ARG001
        _quiet_shutdown()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGUSR1, handler)


def _quiet_shutdown() -> None:
    """An interrupted run closes its client while futures are still tracked: the connections
    that close under them are expected, not tracebacks for the user's log."""
    import logging

    for name in ("tornado", "asyncio", "distributed"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _speaks() -> bool:
    """False on the scheduler and worker ranks of an mpi run (see cluster/mpi.py)."""
    m = sys.modules.get("hpcstudy.cluster.mpi")
    return m is None or m.speaks()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning user errors into one line and exit code 2."""
    code = _main(argv)
    if argv is None:   # this process's own command line: the process ends when main returns
        import gc

        # what is alive now is left to the exit, not collected on one core by the
        # interpreter's teardown (about 0.05 s of CPU after a 1 M-person run)
        gc.freeze()
    return code


def _main(argv: list[str] | None) -> int:
    _interrupt_on_sigterm()
    try:
        cli.main(args=argv, prog_name="hpcstudy", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:   # click's form of Ctrl-C / SIGTERM inside a command
        if _speaks():
            click.echo("hpcstudy: interrupted; nothing half-written was left in place (a run "
                       "keeps its finished partitions: --resume goes on from them)", err=True)
        return 130
    except click.UsageError as e:
        where = f" (in `hpcstudy {e.ctx.command_path.split(' ', 1)[1]}`)" \
            if e.ctx and " " in e.ctx.command_path else ""
        click.echo(f"hpcstudy: error: {e.format_message()}{where} — see --help", err=True)
        return 2
    except click.ClickException as e:
        click.echo(f"hpcstudy: error: {e.format_message()}", err=True)
        return 2
    except UserError as e:
        lines = e.lines() if hasattr(e, "lines") else [str(e)]
        for line in lines if _speaks() else []:   # an mpi run's error, said once
            click.echo(f"hpcstudy: error: {line}", err=True)
        return e.exit_code
    except DataProblem as e:
        click.echo(f"hpcstudy: {e}", err=True)
        return e.exit_code
    except OSError as e:
        code, line = _os_error(e)
        click.echo(line, err=True)
        return code
    except KeyboardInterrupt:
        click.echo("hpcstudy: interrupted; nothing half-written was left in place", err=True)
        return 130
    except Exception as e:  # noqa: BLE001 - the last resort: a bug, said in one line
        if _interrupted(e):
            click.echo("hpcstudy: interrupted; nothing half-written was left in place", err=True)
            return 130
        line = _bug(e)
        if _speaks():
            click.echo(line, err=True)
        return BUG_EXIT
    return 0


def _interrupted(e: BaseException) -> bool:
    """Whether an error arose while an interrupt unwound the run: a SIGTERM raised inside a
    lock's acquire or a condition's wait can leave ``release unlocked lock`` in the
    KeyboardInterrupt's place. The run was interrupted, not broken (clean-up has run)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, KeyboardInterrupt):
            return True
        e = e.__cause__ or e.__context__
    return False


BUG_EXIT = 70   # EX_SOFTWARE (sysexits.h): an internal error, not the user's input
_FULL = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
         errno.EFBIG: "a file would exceed the size limit"}


def _os_error(e: OSError) -> tuple[int, str]:
    """(exit code, one line) for a failed file operation: a path the user gave that cannot be
    used is bad input (2); a full disk, a refused permission or a failing device is an I/O
    failure (1)."""
    where = e.filename if e.filename is not None else ""
    text = str(e)
    number = e.errno
    if number is None:   # pyarrow's errors carry the errno only in their text
        number = next((n for n, why in ((errno.ENOSPC, "No space left"),
                                        (errno.EDQUOT, "Disk quota"),
                                        (errno.EFBIG, "File too large")) if why in text), None)
    if number in _FULL:
        return 1, (f"hpcstudy: cannot write{' ' + str(where) if where else ''}: "
                   f"{_FULL[number]}; nothing half-written was kept — free some space or "
                   "choose another location")
    if number in (errno.EACCES, errno.EPERM, errno.EROFS):
        return 1, (f"hpcstudy: permission denied: {where} ({e.strerror}) — choose a location "
                   "you can read and write")
    if number == errno.ENAMETOOLONG:
        return 2, (f"hpcstudy: error: {where}: file name too long (at most 255 bytes a name) "
                   "— choose a shorter path")
    if number == errno.ENOTDIR:
        return 2, (f"hpcstudy: error: {where}: a part of this path is a file, not a directory "
                   "— choose another path")
    if number == errno.EEXIST:
        return 2, (f"hpcstudy: error: {where} already exists, where hpcstudy needs to make a "
                   "directory — choose another path")
    if number == errno.EISDIR:
        return 2, f"hpcstudy: error: {where} is a directory, where a file is expected"
    if number == errno.ENOENT:
        return 2, f"hpcstudy: error: {where}: no such file or directory"
    first = text.splitlines()[0] if text else type(e).__name__
    return 1, f"hpcstudy: cannot read or write {where or 'a file'}: {first[:300]}"


def _bug(e: BaseException) -> str:
    """Write the traceback to a file (never the terminal); return the one line to print."""
    import tempfile
    import time
    import traceback

    folder = Path(os.environ.get("HPCSTUDY_CRASH_DIR") or tempfile.gettempdir())
    path = folder / f"hpcstudy-crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    try:   # private to the user: a traceback can quote values from the data
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"hpcstudy {' '.join(sys.argv[1:])}\n" + traceback.format_exc())
        saved = f"the traceback is in {path}"
    except OSError:
        saved = "the traceback could not be saved"
    what = (str(e).splitlines() or [""])[0][:200]
    return (f"hpcstudy: internal error ({type(e).__name__}: {what}) — this is a bug in "
            f"hpcstudy, not in your input; {saved}; please report it")


if __name__ == "__main__":
    sys.exit(main())
