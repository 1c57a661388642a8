"""Every bad input of the corpus (tests/bad_inputs/cases.py) gives one line on stderr, the exact
exit code, no traceback, and leaves nothing written where the command would have written.

Most cases run in this process through ``hpcstudy.cli.main`` (an uncaught exception fails the
test outright); those marked ``real`` run in a fresh interpreter as a user would.

A full disk is a tmpfs of 32 KiB mounted on the case's folder (this needs root and
``mount -t tmpfs``; both work in the development containers). Where mounting is refused (or
with ``HPCSTUDY_TEST_FULL_DISK=rlimit``) the case falls back to ``RLIMIT_FSIZE`` of 4 KiB in the
child: Python ignores SIGXFSZ, so a write beyond the limit fails with EFBIG ("File too large")
the way a full disk fails with ENOSPC, and hpcstudy reports both as one line, exit 1.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import click
import pyarrow.parquet as pq
import pytest
from bad_inputs.cases import CASES, Case, Ctx
from conftest import EXAMPLES

from hpcstudy import cli

STUDY = EXAMPLES / "diabetes_incidence.yaml"
BUG = "this is a bug in hpcstudy"
DISK_BYTES = 32 * 1024   # the tmpfs
FILE_BYTES = 4096        # the RLIMIT_FSIZE fallback: above one audit record, below a manifest


def _tree(root: Path, content: bool = True) -> dict[str, object]:
    """What lies under root: each path with its bytes' hash (or size and mtime)."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, root)
            if content:
                with open(p, "rb") as fh:
                    out[rel] = hashlib.sha256(fh.read()).hexdigest()
            else:
                st = os.stat(p)
                out[rel] = (st.st_size, st.st_mtime_ns)
    return out


@contextlib.contextmanager
def _read_only(where: Path):
    """An empty read-only file system at ``where`` (root writes through chmod 000, not this)."""
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(where)],
                      capture_output=True).returncode != 0:
        pytest.skip("mount -t tmpfs is refused here: no read-only file system to try")
    try:
        yield None
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=True)


@contextlib.contextmanager
def _full_disk(where: Path):
    """A tiny file system at ``where``; yields the child's preexec_fn (None with tmpfs)."""
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs",
                        str(where)], capture_output=True)
    if r.returncode != 0 or os.environ.get("HPCSTUDY_TEST_FULL_DISK") == "rlimit":
        if r.returncode == 0:
            subprocess.run(["umount", str(where)], check=True)

        def limit():
            resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES))
        yield limit
        return
    try:
        yield None
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=True)   # busy a moment longer


@pytest.fixture(scope="module")
def world(small_data, local_run):
    return {"data": small_data, "run": local_run}


def _in_process(argv: list[str]) -> int:
    """cli.main in this process; its signal handlers are put back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        return cli.main(argv)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, world, tmp_path, monkeypatch, capsys):
    tmp = tmp_path / "case"     # its parent is this test's own: `--out ..` stays inside
    tmp.mkdir()
    ctx = Ctx(tmp, world["data"], STUDY, world["run"])
    if case.setup:
        case.setup(ctx)
    argv = [ctx.fill(a) for a in case.argv]
    env = {k: ctx.fill(v) for k, v in case.env.items()}
    monkeypatch.chdir(tmp)
    shared = {k: _tree(v, content=False) for k, v in world.items()}
    shared_parents = {k: sorted(os.listdir(v.parent)) for k, v in world.items()}
    disk = _full_disk(tmp / "disk") if case.full_disk else \
        _read_only(tmp / "disk") if case.read_only else contextlib.nullcontext()
    with disk as limit:
        before = _tree(tmp_path)
        if case.real or case.full_disk:
            if limit is not None:   # a fresh audit log: the session's would exceed the limit
                env.setdefault("HPCSTUDY_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
            r = subprocess.run([sys.executable, "-m", "hpcstudy.cli", *argv], cwd=tmp,
                               capture_output=True, text=True, timeout=300,
                               env={**os.environ, **env}, preexec_fn=limit)
            code, err = r.returncode, r.stderr
        else:
            for k, v in env.items():
                monkeypatch.setenv(k, v)
            code = _in_process(argv)
            err = capsys.readouterr().err
        after = _tree(tmp_path)
        after.pop("audit.jsonl", None)   # the fallback's own audit log, not the command's output
        for k in after:   # what a case may leave must be whole (read before the unmount)
            if k.endswith(".parquet") and any(fnmatch.fnmatch(k, f"case/{g}")
                                              for g in case.may_leave):
                pq.read_table(tmp_path / k)

    assert "Traceback" not in err, err
    assert BUG not in err, f"reached the last-resort handler: {err}"
    assert code == case.code, f"exit {code}, expected {case.code}: {err}"
    lines = err.splitlines()
    if case.code == 0:
        assert err == ""
    elif case.report:
        assert lines and lines[-1].startswith("hpcstudy: "), err
        assert all(line.strip() for line in lines), err
    else:
        assert len(lines) == 1, f"{len(lines)} lines: {err}"
        assert lines[0].startswith("hpcstudy: error: " if case.code == 2 else "hpcstudy: "), err
    assert case.says.lower() in err.lower(), f"{case.says!r} not in {err!r}"
    if not case.writes:
        left = {k: v for k, v in after.items()
                if not any(fnmatch.fnmatch(k, f"case/{g}") for g in case.may_leave)}
        assert left == before, "the command wrote or removed files"
    assert {k: _tree(v, content=False) for k, v in world.items()} == shared
    assert {k: sorted(os.listdir(v.parent)) for k, v in world.items()} == shared_parents


def _leaves(group: click.Group, prefix: str = "") -> list[str]:
    out = []
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += _leaves(cmd, f"{prefix}{name} ")
        else:
            out.append(prefix + name)
    return out


AT_LEAST = 10


def test_every_command_is_in_the_corpus_often():
    counts = {c: 0 for c in _leaves(cli.cli)}
    for case in CASES:
        if case.command in counts:
            counts[case.command] += 1
    assert len(counts) >= 16
    assert {c: n for c, n in counts.items() if n < AT_LEAST} == {}, counts
    assert len(CASES) >= 200
    assert len({c.name for c in CASES}) == len(CASES), "case names must be unique"


def test_the_last_resort_handler_writes_the_traceback_to_a_file(tmp_path, monkeypatch, capsys):
    """An unexpected exception (a bug) is one line naming a file that holds the traceback."""
    monkeypatch.setenv("HPCSTUDY_CRASH_DIR", str(tmp_path))

    @cli.cli.command("explode-for-test", hidden=True)
    def explode():
        raise ZeroDivisionError("planted")

    try:
        code = _in_process(["explode-for-test"])
    finally:
        del cli.cli.commands["explode-for-test"]
    err = capsys.readouterr().err
    assert code == 70
    assert len(err.splitlines()) == 1 and BUG in err and "Traceback" not in err
    reports = list(tmp_path.glob("hpcstudy-crash-*.txt"))
    assert len(reports) == 1 and str(reports[0]) in err
    text = reports[0].read_text()
    assert "Traceback" in text and "ZeroDivisionError: planted" in text
    assert reports[0].stat().st_mode & 0o077 == 0   # only its owner reads it
