"""Output folders written whole or not at all: a command writes into a staging folder beside
its output and swaps it into place when complete (runs, datasets, exports).

    with staged_output(out, overwrite, kind="run") as staging:
        (staging / "results.json").write_text(...)
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from ..errors import CannotWrite, UserError


def prepare_output(out: Path, overwrite: bool, *, kind: str, reads=()) -> Path:
    """Check ``out`` may be written (see :mod:`hpcstudy.outputs.targets`); return a fresh
    staging folder beside it.

    Data is written to the staging folder and swapped into place only when complete, so an
    interrupted command never leaves an output that looks whole, nor a missing one.
    """
    from . import targets

    out = Path(out)
    targets.check_target(out, kind=kind, overwrite=overwrite, reads=reads)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_refusal(e)(f"cannot create the directory {parent} ({e.strerror})",
                          fix="choose a writable --out") from e
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CannotWrite(f"cannot write in {parent}", fix="choose a writable --out")
    staging = targets.leftover(out, "partial")
    try:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
    except OSError as e:
        raise write_refusal(e)(f"cannot create a directory in {parent} ({e.strerror})",
                          fix="choose a writable --out") from e
    return staging


def write_refusal(e: OSError) -> type[UserError]:
    """The machine refused (permissions, read-only: exit 1), or the path is wrong (exit 2)."""
    import errno

    return CannotWrite if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else UserError


@contextmanager
def staged_output(out: Path, overwrite: bool, *, kind: str, reads=()):
    """``with staged_output(out, overwrite, kind="run") as staging:`` write into ``staging``;
    on success it replaces ``out`` in one step, on any failure (an interrupt too) it is removed
    and ``out`` is untouched. ``kind`` is run, dataset or export: what ``out`` may replace
    (:func:`hpcstudy.outputs.targets.check_target`); a run's staging gets the run marker."""
    from . import targets

    staging = prepare_output(out, overwrite, kind=kind, reads=reads)
    try:
        yield staging
        if kind == "run":
            targets.run_marker(staging)
        commit_output(staging, out, replace=overwrite)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        # a failed write names OUT, not the hidden staging folder just removed (or nothing)
        if isinstance(e, OSError) and (e.filename is None or
                                       str(e.filename).startswith(str(staging))):
            e.filename = str(out)
        raise


def commit_output(staging: Path, out: Path, replace: bool = True) -> None:
    """Swap a finished staging folder into place (no moment without ``out``), drop the old;
    without ``replace`` an ``out`` that appeared meanwhile stays and this is refused."""
    from . import targets

    targets.commit(staging, Path(out), replace)
