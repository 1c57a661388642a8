"""Faults: an interrupted run keeps its finished partitions; --resume computes only the rest
and gives outputs identical to an uninterrupted run; a damaged checkpoint is recomputed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli, same_files

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.slow


def interrupted_run(data: Path, out: Path, at_least: int) -> Path:
    ckpt = out.parent / f"{out.name}.checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "hpcstudy.cli", "run",
                             str(EXAMPLES / "statins_mi.yaml"), "--data", str(data), "--out",
                             str(out), "--quiet"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(ckpt.glob("*.json"))) < at_least:
        assert proc.poll() is None, "the run finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; nothing half-written" in err and "Traceback" not in err
    assert not out.exists()
    return ckpt


def test_resume_redoes_only_unfinished_partitions(many_parts, uninterrupted, tmp_path):
    out = tmp_path / "out"
    ckpt = interrupted_run(many_parts, out, at_least=3)
    finished = len(list(ckpt.glob("*.json")))
    assert 3 <= finished < 16
    r = run_cli("run", EXAMPLES / "statins_mi.yaml", "--data", many_parts, "--out", out,
                "--resume")
    assert r.returncode == 0, r.stderr
    assert f"resumed {finished} of 16 partitions" in r.stdout
    same_files(uninterrupted, out)
    assert not ckpt.exists()   # a finished run clears its checkpoints


def test_a_damaged_checkpoint_is_recomputed(many_parts, uninterrupted, tmp_path):
    out = tmp_path / "out"
    ckpt = interrupted_run(many_parts, out, at_least=2)
    finished = len(list(ckpt.glob("*.json")))
    victim = sorted(ckpt.glob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    r = run_cli("run", EXAMPLES / "statins_mi.yaml", "--data", many_parts, "--out", out,
                "--resume")
    assert r.returncode == 0, r.stderr
    assert f"resumed {finished - 1} of 16 partitions" in r.stdout
    same_files(uninterrupted, out)


def test_checkpoints_of_another_study_are_not_used(many_parts, tmp_path):
    out = tmp_path / "out"
    ckpt = interrupted_run(many_parts, out, at_least=2)
    rec = json.loads(sorted(ckpt.glob("*.json"))[0].read_text())
    assert len(rec["fingerprint"]) == 64
    r = run_cli("run", EXAMPLES / "diabetes_incidence.yaml", "--data", many_parts, "--out", out,
                "--resume")
    assert r.returncode == 0 and "resumed 0 of 16 partitions" in r.stdout, r.stderr


def test_an_interrupt_that_surfaces_as_a_lock_error_is_still_an_interrupt(tmp_path):
    """SIGTERM raised inside a lock's acquire/release (a thread pool's wait) can leave
    ``release unlocked lock`` in the KeyboardInterrupt's place: exit 130 and the interrupt's
    line, not the internal-error exit 70."""
    script = tmp_path / "lock_race.py"
    script.write_text(
        "import sys, threading, click\n"
        "from hpcstudy import cli\n"
        "@cli.cli.command('lock-race')\n"
        "def lock_race():\n"
        "    lock = threading.Lock()\n"
        "    try:\n"
        "        raise KeyboardInterrupt\n"
        "    finally:\n"
        "        lock.release()   # never acquired: RuntimeError, the interrupt its context\n"
        "@cli.cli.command('plain-bug')\n"
        "def plain_bug():\n"
        "    threading.Lock().release()\n"
        "sys.exit(cli.main(sys.argv[1:]))\n")
    race = subprocess.run([sys.executable, str(script), "lock-race"], capture_output=True,
                          text=True, timeout=60)
    assert race.returncode == 130, race.stderr
    assert race.stderr.strip() == "hpcstudy: interrupted; nothing half-written was left in place"
    bug = subprocess.run([sys.executable, str(script), "plain-bug"], capture_output=True,
                         text=True, timeout=60)
    assert bug.returncode == 70 and "Traceback" not in bug.stderr, bug.stderr
    assert len(bug.stderr.strip().splitlines()) == 1
