"""The ``hpcstudy`` command line.

Every command reports bad input as one line on stderr (``hpcstudy: error: …``) and exits 2;
a data check that finds problems exits 1; success exits 0.
"""

from __future__ import annotations

import functools
import os
import sys
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
    """Append an audit record for every use of the command, whatever its outcome."""

    @functools.wraps(fn)
    def wrapper(**kw):
        status = "error"
        try:
            result = fn(**kw)
            status = "ok"
            return result
        except UserError as e:
            status = "refused: " + str(e).splitlines()[0][:300]
            raise
        except DataProblem:
            status = "problems found"
            raise
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            _audit(fn.__name__.replace("_", " "), kw, status)

    return wrapper


def _audit(command: str, kw: dict, status: str) -> None:
    from .secure import audit

    if not _speaks():
        return   # an mpi scheduler or worker rank: the client rank audits the run

    entry: dict = {"command": command, "args": sys.argv[1:], "status": status}
    if kw.get("study"):
        entry["study_sha256"] = audit.file_sha256(kw["study"])
    data = kw.get("data") or kw.get("directory")
    if data:
        entry["data_manifest_sha256"] = audit.file_sha256(Path(data) / "manifest.json")
    if kw.get("project"):
        entry["approval_sha256"] = audit.file_sha256(kw["project"])
    if kw.get("input_"):
        entry["input_sha256"] = audit.file_sha256(kw["input_"])
    out = kw.get("out") or kw.get("dest")
    if out and status == "ok":
        manifest = Path(out) / "manifest.json"
        entry["outputs"] = {"manifest.json": audit.file_sha256(manifest)} if manifest.is_file() \
            else audit.tree_sha256(out)
    try:
        audit.append(entry)
    except OSError as e:
        raise UserError(f"cannot write the audit log {audit.default_path()} ({e.strerror})",
                        fix="set HPCSTUDY_AUDIT_LOG to a writable file") from e


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpcstudy")
def cli() -> None:
    """Cohort studies on Danish-style health registers, from a laptop to GPU nodes."""


@cli.command()
@click.option("--persons", type=int, required=True, help="Number of persons (N > 0).")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed (≥ 0).")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="Directory to create.")
@click.option("--partitions", type=int, default=8, show_default=True,
              help="Number of hash partitions by pnr (P > 0).")
@click.option("--jobs", type=int, default=None,
              help="Worker processes (default: number of CPUs, at most 4).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@click.option("--quiet", is_flag=True, help="No progress bar or summary.")
@audited
def synth(persons: int, seed: int, out: Path, partitions: int, jobs: int | None,
          overwrite: bool, quiet: bool) -> None:
    """Generate deterministic synthetic registers (bef, dod, dodsaarsag, vnds, lpr_adm,
    lpr_diag, lmdb) with planted effects, as a partitioned Parquet dataset."""
    if persons <= 0:
        raise UserError(f"--persons must be positive, got {persons}", fix="e.g. --persons 10000")
    if partitions <= 0 or partitions > 4096:
        raise UserError(f"--partitions must be in 1..4096, got {partitions}",
                        fix="e.g. --partitions 8")
    if seed < 0:
        raise UserError(f"--seed must be ≥ 0, got {seed}")
    if jobs is not None and jobs <= 0:
        raise UserError(f"--jobs must be positive, got {jobs}")
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
        size = sum(f.get("bytes", 0) for f in reg["files"])
        total += reg["rows"]
        lines.append(f"  {name:<11} {reg['rows']:>13,} rows  {size / 1e6:9.1f} MB  {reg['title']}")
    lines.append(f"  {'all':<11} {total:>13,} rows")
    truth = manifest.get("truth", {}).get("mi", {}).get("log_hr")
    if truth:
        import math
        lines.append("  planted truth (MI): " + ", ".join(
            f"HR {k} {math.exp(v):.2f}" for k, v in truth.items()))
    return "\n".join(lines)


@cli.group()
def data() -> None:
    """Inspect and check register datasets."""


@data.command("verify")
@click.argument("directory", type=click.Path(path_type=Path))
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
@click.argument("directory", type=click.Path(path_type=Path))
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

    approval = _approval(project)
    s = load_study(study, variant)
    if data is None:
        if approval is not None:
            raise UserError("checking against a project's approval needs the data's catalog",
                            fix="add --data DIR")
        return s, None, None
    from .engines.run import prepare

    return prepare(s, data, approval)


PROJECT = click.option("--project", type=click.Path(path_type=Path),
                       envvar="HPCSTUDY_PROJECT",
                       help="Project approval file (registers, columns, period); refuses a "
                            "study that reaches outside it. Default: $HPCSTUDY_PROJECT.")


@cli.command()
@click.argument("study", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), help="Check against this dataset's "
              "catalog too (registers, code dictionaries, period).")
@PROJECT
@audited
def check(study: Path, data: Path | None, project: Path | None) -> None:
    """Check a study: the language, and with --data the data's catalog. All errors at once."""
    s, plan, _ = _load_checked(study, data, project)
    what = f"against {data}" if data else "(language only; add --data DIR for the catalog)"
    click.echo(f"{study}: study {s.name!r} is valid {what}")


@cli.command()
@click.argument("study", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Dataset whose code dictionaries resolve the codelists.")
@PROJECT
@audited
def plan(study: Path, data: Path, project: Path | None) -> None:
    """Print the compiled plan: groups, criteria, covariates, outcome, what is read."""
    from .plan import render

    _, p, _ = _load_checked(study, data, project)
    click.echo(render(p))


@cli.command()
@click.argument("study", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Register dataset.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory.")
@click.option("--engine", type=click.Choice(["dask", "reference"]), default="dask",
              show_default=True)
@click.option("--overwrite/--no-overwrite", default=True, show_default=True,
              help="Replace an existing --out.")
@click.option("--quiet", is_flag=True)
@click.option("--launcher", type=click.Choice(["local", "processes", "slurm", "mpi"]),
              default="local", show_default=True,
              help="Where the dask engine's tasks run (mpi: start under mpirun/srun, 3+ ranks).")
@click.option("--workers", type=int, default=2, show_default=True,
              help="Workers for the processes and slurm launchers.")
@click.option("--gpus", type=int, default=0, help="processes launcher: one worker per GPU.")
@click.option("--profile", "profile_name", default=None,
              help="Site profile for the slurm launcher (hpcstudy profiles).")
@click.option("--account", envvar="HPCSTUDY_ACCOUNT", default=None,
              help="slurm launcher: Slurm account of the worker jobs.")
@click.option("--interface", default=None,
              help="mpi and slurm launchers: network interface of scheduler and workers (ib0).")
@click.option("--resume", is_flag=True,
              help="Reuse the partitions an interrupted run finished (OUT.checkpoints/).")
@click.option("--variant", default=None, help="Run this variant of the study (its variants:).")
@PROJECT
@audited
def run(study: Path, data: Path, out: Path, engine: str, overwrite: bool, quiet: bool,
        launcher: str, workers: int, gpus: int, profile_name: str | None,
        account: str | None, interface: str | None, resume: bool,
        variant: str | None, project: Path | None) -> None:
    """Run a study: results.json, tables/*.csv and the private per-person table in OUT."""
    from .cluster.launchers import client_for
    from .engines import run as R

    if launcher == "mpi":
        from .cluster import mpi

        mpi.start()   # from here on only the client rank prints, writes and audits
    # every rank checks the study: a bad one fails everywhere at once, nothing waits for it
    approval = _approval(project)
    s, p, ds = _load_checked(study, data, project, variant)
    if launcher != "local" and engine != "dask":
        raise UserError(f"the {launcher} launcher runs the dask engine",
                        fix="drop --engine reference, or use --launcher local")
    prof, part = None, None
    if launcher == "slurm":
        from .cluster.slurm import load_profile

        prof = load_profile(profile_name or "ci")
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
        done: dict = {}
        res = R.run(s, data, out, engine=engine, client=client, progress=progress,
                    overwrite=overwrite, approval=approval, resume=resume, report=done)
    if resume:
        click.echo(f"resumed {done.get('resumed', 0)} of {ds.partitions} partitions from "
                   "checkpoints")
    if not quiet:
        click.echo(report(res, out))


def report(res: dict, out: Path) -> str:
    """A short text report of a run's results."""
    import math

    lines = [f"study {res['study']!r} ({res['run']['engine']} engine) -> {out}"]
    for c in res["cohort"]:
        n = c["persons"] if c["persons"] is not None else f"<{res['run']['min_cell']}"
        ev = c["events"] if c["events"] is not None else f"<{res['run']['min_cell']}"
        rate = "" if c.get("rate_per_1000py") is None else (
            f", {c['rate_per_1000py']:.2f} per 1000 person-years "
            f"({c['lower_95']:.2f}-{c['upper_95']:.2f})")
        lines.append(f"  {c['label']}: {n} persons, {ev} events{rate}")
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
    truth = res.get("planted_truth")
    if truth and "cox" in res.get("models", {}):
        hr = math.exp(truth["mi_log_hr"]["statin"])
        lines.append(f"  planted truth in the synthetic data: HR statin -> MI {hr:.3f}")
    return "\n".join(lines)


@cli.command()
@click.option("--register", required=True, help="Register of the extract (bef, lpr_adm, …).")
@click.option("--input", "input_", type=click.Path(path_type=Path), required=True,
              help="Extract: .csv, .parquet, .sas7bdat or .xpt, keyed by cpr.")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Dataset to add to (created if absent).")
@click.option("--key-file", type=click.Path(path_type=Path), required=True,
              help="The project's pseudonymisation key (≥ 32 bytes); never printed.")
@click.option("--quarantine", type=click.Path(path_type=Path), default=None,
              help="Where rejected rows go (default: next to the input).")
@click.option("--partitions", type=int, default=8, show_default=True,
              help="P for a new dataset.")
@audited
def ingest(register: str, input_: Path, data: Path, key_file: Path, quarantine: Path | None,
           partitions: int) -> None:
    """Validate CPR numbers, pseudonymise them with the project key, check every row, and add
    the extract to the partitioned dataset; rejected rows go to quarantine with a reason."""
    from .secure.ingest import ingest as do

    s = do(register, input_, data, key_file, quarantine, partitions)
    if s["skipped"]:
        click.echo(f"{input_}: {s['reason']}")
        return
    q = f", {s['quarantined']} quarantined in {s['quarantine']}" if s["quarantined"] else ""
    click.echo(f"{input_}: {s['rows']} rows added to {register} in {data}{q}")


@cli.command("check-outputs")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--min-cell", type=int, default=None,
              help="Threshold (default: the run's, from results.json, else 5).")
@audited
def check_outputs(out: Path, min_cell: int | None) -> None:
    """Re-check every exported file of a run (all but private/) against the disclosure rules;
    list each violation with file, row and column."""
    from .outputs.disclosure import check_outputs as check

    if not Path(out).is_dir():
        raise UserError(f"{out} is not a directory", fix="give the --out of a run")
    report = check(out, min_cell)
    bad = {f: v for f, v in report.items() if v}
    for violations in bad.values():
        for v in violations:
            click.echo(v, err=True)
    if bad:
        raise DataProblem(f"{sum(map(len, bad.values()))} violation(s) in {len(bad)} file(s)")
    click.echo(f"{out}: {len(report)} exported file(s), no violation")


@cli.command("export")
@click.argument("out", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--min-cell", type=int, default=None)
@audited
def export(out: Path, dest: Path, min_cell: int | None) -> None:
    """Copy the files of a run that pass the disclosure check (never private/) to DEST."""
    import shutil as _shutil

    from .outputs.disclosure import check_outputs as check
    from .registers.store import staged_output

    if not Path(out).is_dir():
        raise UserError(f"{out} is not a directory", fix="give the --out of a run")
    report = check(out, min_cell)
    with staged_output(dest, overwrite=False) as staging:
        for f, violations in report.items():
            if not violations:
                (staging / f).parent.mkdir(parents=True, exist_ok=True)
                _shutil.copy2(Path(out) / f, staging / f)
    held = {f: v for f, v in report.items() if v}
    for f, violations in held.items():
        click.echo(f"withheld {f}: {violations[0]}", err=True)
    click.echo(f"exported {len(report) - len(held)} file(s) to {dest}")
    if held:
        raise DataProblem(f"{len(held)} file(s) withheld")


# -- Slurm -------------------------------------------------------------------------------------
@cli.command()
def profiles() -> None:
    """List the site profiles (from $HPCSTUDY_PROFILE_PATH and jobs/slurm/profiles)."""
    from .cluster.slurm import list_profiles

    for p in list_profiles():
        mem = f"{p.mem_per_gpu}/GPU" if p.mem_per_gpu else (p.mem or "-")
        net = f", interface {p.interface}" if p.interface else ""
        click.echo(f"{p.name:<10} partition {p.partition:<8} {p.nodes} node(s) x "
                   f"{p.gpus_per_node} GPU, mem {mem}, walltime {p.walltime}, {p.launcher} "
                   f"launcher, {p.workers} worker(s){net}  {p.description}  ({p.source})")


@cli.command()
@click.argument("study", type=click.Path(path_type=Path))
@click.option("--profile", "profile_name", required=True, help="Site profile (hpcstudy profiles).")
@click.option("--data", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--account", envvar="HPCSTUDY_ACCOUNT", default=None,
              help="Slurm account (default: the profile's; $HPCSTUDY_ACCOUNT).")
@click.option("--launcher", type=click.Choice(["local", "mpi", "slurm"]), default=None,
              help="How the job runs the dask engine: local (one process), mpi (ranks in the "
              "allocation, a worker per GPU), slurm (worker jobs); default: the profile's.")
@click.option("--dry-run", is_flag=True, help="Print the batch script; submit nothing.")
@PROJECT
@audited
def submit(study: Path, profile_name: str, data: Path, out: Path, account: str | None,
           launcher: str | None, dry_run: bool, project: Path | None) -> None:
    """Check the study, render an sbatch script from the profile and submit it; the job id
    is recorded next to OUT (OUT.job.json)."""
    from .cluster import slurm

    s, _, _ = _load_checked(study, data, project)  # refuse before anything is queued
    for v in s.variants:
        _load_checked(study, data, project, v)      # every variant too
    prof = slurm.load_profile(profile_name)
    slurm.check_launcher_installed(launcher or prof.launcher)
    script = slurm.render_sbatch(prof, study=Path(study).resolve(), data=Path(data).resolve(),
                                 out=Path(out).resolve(), study_name=s.name, account=account,
                                 project=Path(project).resolve() if project else None,
                                 variants=s.variants, launcher=launcher)
    if dry_run:
        click.echo(script, nl=False)
        return
    job = slurm.submit(script, Path(out).resolve(), array=bool(s.variants))
    what = f"job array of {len(s.variants)} variants" if s.variants else "job"
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


@audit.command("verify")
@click.option("--log", "log", type=click.Path(path_type=Path), default=None,
              help="Log file (default: $HPCSTUDY_AUDIT_LOG or ~/.local/share/hpcstudy).")
def audit_verify(log: Path | None) -> None:
    """Check the chain: name every edited, removed, inserted or reordered record."""
    from .secure import audit as A

    n, problems = A.verify(log)
    where = log or A.default_path()
    if problems:
        for p in problems:
            click.echo(f"{where}: {p}", err=True)
        raise DataProblem(f"{len(problems)} problem(s) in the audit log {where}")
    head = A.head(log)
    click.echo(f"{where}: {n} records, chain intact"
               + (f"; head {head['hash']}" if head else ""))


@audit.command("head")
@click.option("--log", "log", type=click.Path(path_type=Path), default=None)
def audit_head(log: Path | None) -> None:
    """Print the last record's hash: keep it elsewhere to detect records cut off the end."""
    from .secure import audit as A

    head = A.head(log)
    click.echo("empty log" if head is None else f"{head['seq']} {head['hash']}")


def _interrupt_on_sigterm() -> None:
    """Turn SIGTERM (scancel, a killed job) and SIGUSR1 (what a submitted job's script passes
    on before the walltime: mpirun and srun forward it to every rank) into KeyboardInterrupt,
    so clean-up code runs."""
    import signal

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGUSR1, handler)


def _speaks() -> bool:
    """False on the scheduler and worker ranks of an mpi run (see cluster/mpi.py)."""
    m = sys.modules.get("hpcstudy.cluster.mpi")
    return m is None or m.speaks()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning user errors into one line and exit code 2."""
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
    except PermissionError as e:
        click.echo(f"hpcstudy: error: permission denied: {e.filename} — choose a writable "
                   "location", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("hpcstudy: interrupted; nothing half-written was left in place", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
