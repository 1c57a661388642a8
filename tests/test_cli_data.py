"""`hpcstudy synth` and `hpcstudy data verify` as a user meets them: errors, exit codes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("hpcstudy: error:"), lines[0]
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("args, words", [
    (["--persons", "0"], ["--persons", "positive"]),
    (["--persons", "-5"], ["--persons"]),
    (["--persons", "10", "--partitions", "0"], ["--partitions"]),
    (["--persons", "ten"], ["--persons", "ten"]),
    (["--persons", "10", "--bogus"], ["--bogus"]),
])
def test_nonsense_arguments_give_one_line_and_exit_2(tmp_path, args, words):
    r = run_cli("synth", *args, "--out", tmp_path / "out")
    one_line_error(r, *words)
    assert not (tmp_path / "out").exists()


def test_missing_required_option(tmp_path):
    one_line_error(run_cli("synth", "--out", tmp_path / "x"), "--persons")


def test_an_existing_output_needs_overwrite_and_only_ours_is_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    one_line_error(run_cli("synth", "--persons", "50", "--out", out), "already exists",
                   "--overwrite")
    one_line_error(run_cli("synth", "--persons", "50", "--out", out, "--overwrite"),
                   "no dataset manifest")
    assert (out / "precious.txt").read_text() == "keep me"
    (out / "precious.txt").unlink()
    assert run_cli("synth", "--persons", "50", "--out", out, "--quiet").returncode == 2
    r = run_cli("synth", "--persons", "50", "--out", out, "--overwrite", "--quiet")
    assert r.returncode == 0, r.stderr   # an empty folder: nothing to lose
    r = run_cli("synth", "--persons", "60", "--out", out, "--overwrite", "--quiet")
    assert r.returncode == 0, r.stderr   # a dataset hpcstudy wrote
    assert json.loads((out / "manifest.json").read_text())["source"]["persons"] == 60
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging left behind


def test_unwritable_output_directory(tmp_path):
    (tmp_path / "afile").write_text("x")
    one_line_error(run_cli("synth", "--persons", "5", "--out", tmp_path / "afile" / "out"))
    one_line_error(run_cli("synth", "--persons", "5", "--out", "/proc/hpcstudy-test"),
                   "/proc")


def test_interrupted_synth_leaves_nothing_that_looks_complete(tmp_path):
    out = tmp_path / "big"
    proc = subprocess.Popen([sys.executable, "-m", "hpcstudy.cli", "synth", "--persons",
                             "400000", "--out", str(out), "--quiet", "--jobs", "1"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(tmp_path.glob(".big.partial-*/_spill/*")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_synth_prints_a_summary_with_the_planted_truth(tmp_path):
    r = run_cli("synth", "--persons", "300", "--seed", "3", "--out", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    assert "300 persons" in r.stdout and "lmdb" in r.stdout and "HR statin 0.75" in r.stdout


@pytest.fixture
def data_copy(small_data, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(small_data, dst)
    return dst


def test_verify_passes_on_intact_data(data_copy):
    r = run_cli("data", "verify", data_copy)
    assert r.returncode == 0 and "all files match" in r.stdout, r


def test_verify_names_a_missing_file(data_copy):
    (data_copy / "lmdb" / "part-00001.parquet").unlink()
    r = run_cli("data", "verify", data_copy)
    assert r.returncode == 1
    assert "lmdb/part-00001.parquet: missing" in r.stderr


def test_verify_names_a_checksum_mismatch(data_copy):
    f = data_copy / "lpr_adm" / "part-00002.parquet"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    f.write_bytes(bytes(raw))
    r = run_cli("data", "verify", data_copy)
    assert r.returncode == 1
    assert "lpr_adm/part-00002.parquet: checksum mismatch" in r.stderr


def test_verify_names_a_schema_that_drifted(data_copy):
    f = data_copy / "dod" / "part-00000.parquet"
    t = pq.read_table(f)
    t = t.set_column(1, "doddato", t.column("doddato").cast(pa.string()))
    pq.write_table(t, f)
    m = json.loads((data_copy / "manifest.json").read_text())
    from hpcstudy.registers.store import sha256_file
    m["registers"]["dod"]["files"][0]["sha256"] = sha256_file(f)
    (data_copy / "manifest.json").write_text(json.dumps(m))
    r = run_cli("data", "verify", data_copy)
    assert r.returncode == 1
    assert "dod/part-00000.parquet: schema drifted" in r.stderr and "doddato" in r.stderr


def test_verify_names_an_unlisted_file(data_copy):
    shutil.copy(data_copy / "bef" / "part-00000.parquet", data_copy / "bef" / "part-00009.parquet")
    r = run_cli("data", "verify", data_copy)
    assert r.returncode == 1 and "bef/part-00009.parquet: not listed" in r.stderr


def test_verify_of_a_directory_without_manifest_is_bad_input(tmp_path):
    one_line_error(run_cli("data", "verify", tmp_path), "manifest.json")
    one_line_error(run_cli("data", "verify", tmp_path / "nowhere"), "does not exist")
