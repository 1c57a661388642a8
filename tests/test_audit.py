"""The audit log: every command leaves a record; editing, removing, inserting or reordering
records is detected and the record named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from hpcstudy.secure import audit

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "audit.jsonl"
    for i in range(5):
        audit.append({"command": "run", "args": [f"study{i}.yaml"], "status": "ok"}, path)
    return path


def lines(path):
    return path.read_text().splitlines()


def test_an_intact_log_verifies(log):
    n, problems = audit.verify(log)
    assert (n, problems) == (5, [])
    assert audit.head(log)["seq"] == 5


def test_an_edited_record_is_named(log):
    ls = lines(log)
    rec = json.loads(ls[2])
    rec["status"] = "refused"
    ls[2] = json.dumps(rec, sort_keys=True)
    log.write_text("\n".join(ls) + "\n")
    _, problems = audit.verify(log)
    assert problems and problems[0].startswith("line 3 (record 3): content does not match")


def test_a_removed_record_is_named(log):
    ls = lines(log)
    del ls[1]
    log.write_text("\n".join(ls) + "\n")
    _, problems = audit.verify(log)
    assert problems == ["line 2 (record 3): expected record 2 — record 2 removed"]


def test_an_inserted_record_is_named(log, tmp_path):
    other = tmp_path / "other.jsonl"
    for _ in range(3):
        audit.append({"command": "export", "args": [], "status": "ok"}, other)
    ls = lines(log)
    forged = lines(other)[2]  # a valid record 3 from another log
    ls.insert(3, forged)
    log.write_text("\n".join(ls) + "\n")
    _, problems = audit.verify(log)
    assert any(p.startswith("line 4 (record 3)") for p in problems), problems


def test_reordered_records_are_named(log):
    ls = lines(log)
    ls[1], ls[2] = ls[2], ls[1]
    log.write_text("\n".join(ls) + "\n")
    _, problems = audit.verify(log)
    assert problems[0].startswith("line 2 (record 3): expected record 2")


def test_a_record_rebuilt_with_a_fresh_hash_still_breaks_the_chain(log):
    ls = lines(log)
    rec = json.loads(ls[1])
    rec["args"] = ["innocent.yaml"]
    rec["hash"] = audit._digest(rec)  # a careful forger recomputes the hash …
    ls[1] = json.dumps(rec, sort_keys=True)
    log.write_text("\n".join(ls) + "\n")
    _, problems = audit.verify(log)
    assert problems == ["line 3 (record 3): does not follow the record before it — a record "
                        "was inserted, replaced or reordered"]


def test_commands_leave_records_and_audit_verify_reports(tmp_path, small_data):
    path = tmp_path / "cmd.jsonl"
    env = {"HPCSTUDY_AUDIT_LOG": str(path)}
    assert run_cli("check", EXAMPLES / "statins_mi.yaml", "--data", small_data,
                   env=env).returncode == 0
    out = tmp_path / "out"
    assert run_cli("run", EXAMPLES / "diabetes_incidence.yaml", "--data", small_data, "--out",
                   out, "--quiet", env=env).returncode == 0
    assert run_cli("check", tmp_path / "missing.yaml", env=env).returncode == 2
    recs = [json.loads(x) for x in lines(path)]
    assert [r["command"] for r in recs] == ["check", "run", "check"]
    assert recs[0]["study_sha256"] == audit.file_sha256(EXAMPLES / "statins_mi.yaml")
    assert recs[1]["data_manifest_sha256"] == audit.file_sha256(small_data / "manifest.json")
    assert recs[1]["outputs"]["results.json"] == audit.file_sha256(out / "results.json")
    assert recs[2]["status"].startswith("refused")
    r = run_cli("audit", "verify", env=env)
    assert r.returncode == 0 and "3 records, chain intact" in r.stdout
    ls = lines(path)
    path.write_text("\n".join([ls[0], ls[2]]) + "\n")
    r = run_cli("audit", "verify", "--log", path)
    assert r.returncode == 1 and "record 2 removed" in r.stderr
