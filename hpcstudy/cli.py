"""The ``hpcstudy`` command line.

Every command reports bad input as one line on stderr (``hpcstudy: error: …``) and exits 2;
a data check that finds problems exits 1; success exits 0.
"""

from __future__ import annotations

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


def _interrupt_on_sigterm() -> None:
    """Turn SIGTERM (scancel, a killed job) into KeyboardInterrupt so clean-up code runs."""
    import signal

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning user errors into one line and exit code 2."""
    _interrupt_on_sigterm()
    try:
        cli.main(args=argv, prog_name="hpcstudy", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("hpcstudy: aborted", err=True)
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
        click.echo(f"hpcstudy: error: {e}", err=True)
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
