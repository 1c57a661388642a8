"""The audit log tells the truth: every command leaves a started record before it touches data
and a finished one after; editing, removing, inserting, reordering, cutting, replacing,
emptying or deleting records is detected (by the chain, by the site's key, or by the chain
heads that outputs carry); torn lines and binary logs never crash a command; concurrent
writers keep one chain."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcstudy.secure import audit

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STUDY = EXAMPLES / "diabetes_incidence.yaml"


# -- a forger's tools, written from the documented format, not taken from the code ----------------
def _body(rec: dict) -> bytes:
    b = {k: v for k, v in rec.items() if k != "hash"}
    return json.dumps(b, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def rechain(recs: list[dict], key: bytes | None = None, renumber: bool = True) -> list[dict]:
    """Recompute seq, prev and hash of every record, as a careful forger would."""
    prev = "0" * 64
    out = []
    for i, r in enumerate(recs, 1):
        r = dict(r)
        if renumber:
            r["seq"] = i
        r["prev"] = prev
        if key is None:
            r["hash"] = hashlib.sha256(_body(r)).hexdigest()
        else:
            r["hash"] = hmac.new(key, _body(r), hashlib.sha256).hexdigest()
        prev = r["hash"]
        out.append(r)
    return out


def records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def write(path: Path, recs: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs))


def verify(log: Path, *outputs: Path, env: dict | None = None):
    args = [a for o in outputs for a in ("--outputs", o)]
    r = run_cli("audit", "verify", "--log", log, *args, env=env)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    return r


# -- unit: the chain itself ---------------------------------------------------------------------
@pytest.fixture
def log(tmp_path):
    path = tmp_path / "audit.jsonl"
    for i in range(5):
        audit.append({"command": "run", "args": [f"study{i}.yaml"], "status": "ok"}, path)
    return path


def test_an_intact_log_verifies(log):
    rep = audit.check(log)
    assert (rep.records, rep.problems) == (5, [])
    assert [r["seq"] for r in records(log)] == [1, 2, 3, 4, 5]
    assert audit.head(log)["seq"] == 5
    # what a forger recomputes is what the log holds: the documented format is the real one
    assert rechain(records(log)) == records(log)


def test_an_edited_record_is_named(log):
    recs = records(log)
    recs[2]["status"] = "refused"
    write(log, recs)
    problems = audit.check(log).problems
    assert len(problems) == 1 and problems[0].startswith("record 3 (byte ")
    assert "content does not match its hash" in problems[0]


def test_a_removed_record_is_named(log):
    recs = records(log)
    del recs[1]
    write(log, recs)
    assert any("expected record 2 — record 2 removed" in p for p in audit.check(log).problems)


def test_reordered_records_are_named(log):
    recs = records(log)
    recs[1], recs[2] = recs[2], recs[1]
    write(log, recs)
    assert "expected record 2" in audit.check(log).problems[0]


def test_the_caller_cannot_set_the_chain_fields(tmp_path):
    path = tmp_path / "a.jsonl"
    rec = audit.append({"command": "x", "seq": 99, "prev": "f" * 64, "hash": "0", "user": "eve",
                        "time": "1999"}, path)
    assert rec["seq"] == 1 and rec["prev"] == "0" * 64 and rec["user"] != "eve"
    assert rec["time"] != "1999" and audit.check(path).problems == []


def test_long_records_and_a_long_log_chain_on_from_the_true_last_record(tmp_path):
    """The writer reads the log backwards from its end: records longer than its first read,
    and a torn tail longer than that, still chain on from the last whole record."""
    path = tmp_path / "a.jsonl"
    for i in range(6):
        audit.append({"command": "x", "args": ["y" * (30_000 * i)]}, path)
    torn = b'{"seq": 7, "args": ["' + b"z" * 150_000
    with open(path, "ab") as f:
        f.write(torn)
    rec = audit.append({"command": "after"}, path)
    assert rec["seq"] == 7 and rec["prev"] == records_tolerant(path)[5]["hash"]
    assert rec["torn"]["bytes"] == len(torn)
    rep = audit.check(path)
    assert rep.problems == [] and rep.records == 7 and len(rep.notes) == 1


def test_concurrent_writers_keep_one_chain(tmp_path):
    """8 processes append 25 records each at once: 200 records, one unbroken chain."""
    path = tmp_path / "a.jsonl"
    code = ("import sys; from hpcstudy.secure import audit\n"
            "for i in range(25): audit.append({'command': 'w', 'args': [sys.argv[1], i]}, "
            "sys.argv[2])\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w), str(path)])
             for w in range(8)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 8
    recs = records(path)
    assert [r["seq"] for r in recs] == list(range(1, 201))
    assert sorted((r["args"][0], r["args"][1]) for r in recs) == sorted(
        (str(w), i) for w in range(8) for i in range(25))
    assert audit.check(path).problems == []


def test_concurrent_commands_each_leave_their_two_records(tmp_path):
    path = tmp_path / "cmd.jsonl"
    env = {**os.environ, "HPCSTUDY_AUDIT_LOG": str(path)}
    procs = [subprocess.Popen([sys.executable, "-m", "hpcstudy.cli", "check", str(STUDY)],
                              env=env, stdout=subprocess.DEVNULL) for _ in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    rep = audit.check(path)
    assert rep.problems == [] and rep.records == 8 and rep.unfinished() == []
    assert len(rep.finished) == 4


# -- commands: started before, finished after -----------------------------------------------------
def test_a_command_writes_started_then_finished(tmp_path, small_data):
    path = tmp_path / "cmd.jsonl"
    env = {"HPCSTUDY_AUDIT_LOG": str(path)}
    out = tmp_path / "out"
    r = run_cli("run", STUDY, "--data", small_data, "--out", out, "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    assert run_cli("check", tmp_path / "missing.yaml", env=env).returncode == 2
    started, finished, s2, f2 = records(path)
    assert (started["event"], finished["event"]) == ("started", "finished")
    assert started["command"] == "run" and "status" not in started and "outputs" not in started
    assert started["study_sha256"] == hashlib.sha256(STUDY.read_bytes()).hexdigest()
    assert started["data_manifest_sha256"] == hashlib.sha256(
        (small_data / "manifest.json").read_bytes()).hexdigest()
    assert finished["started"] == {"seq": started["seq"], "hash": started["hash"]}
    assert finished["status"] == "ok"
    # the output manifest, which names every exported file's hash
    assert finished["outputs"] == {"outputs.json": hashlib.sha256(
        (out / "outputs.json").read_bytes()).hexdigest()}
    head = json.loads((out / "audit.json").read_text())
    assert (head["seq"], head["hash"].replace(" ", ""), head["log"]) == (
        1, started["hash"], str(path))
    # no run of digits in the head looks like an identifier to the disclosure check
    assert max(len(x) for x in head["hash"].split()) == 8
    assert f2["status"].startswith("refused") and f2["started"]["seq"] == s2["seq"]
    r = verify(path, out)
    assert r.returncode == 0 and "4 records, chain intact" in r.stdout and "UNKEYED" in r.stdout


@pytest.mark.parametrize("make_unwritable", ["a directory", "inside a file"])
def test_an_unwritable_log_stops_the_command_before_it_starts(tmp_path, small_data,
                                                              make_unwritable):
    """(tampering 13) The log cannot be written: one line, no OUT (root may write any file, so
    the log is made impossible rather than read-only: a log path that cannot be a file is bad
    input, exit 2; a full or read-only disk is exit 1, tests/bad_inputs)."""
    if make_unwritable == "a directory":
        log = tmp_path / "log"
        log.mkdir()
    else:
        (tmp_path / "afile").write_text("x")
        log = tmp_path / "afile" / "audit.jsonl"
    env = {"HPCSTUDY_AUDIT_LOG": str(log)}
    for cmd in (["run", STUDY, "--data", small_data, "--out", tmp_path / "out"],
                ["synth", "--persons", "50", "--out", tmp_path / "syn"]):
        r = run_cli(*cmd, env=env)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("hpcstudy: error: cannot write the audit log")
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "syn").exists()
    assert not list(tmp_path.glob(".out*")) and not list(tmp_path.glob(".syn*"))


def test_kill_9_leaves_a_started_record_that_verify_lists(tmp_path):
    """(tampering 14) A command killed outright is visible: started, never finished."""
    path = tmp_path / "cmd.jsonl"
    env = {**os.environ, "HPCSTUDY_AUDIT_LOG": str(path)}
    p = subprocess.Popen([sys.executable, "-m", "hpcstudy.cli", "synth", "--persons", "400000",
                          "--out", str(tmp_path / "syn"), "--jobs", "1", "--quiet"], env=env)
    deadline = time.monotonic() + 120
    while not (path.exists() and path.read_text().endswith("\n")) and p.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    (rec,) = records(path)
    assert rec["event"] == "started" and rec["command"] == "synth"
    r = verify(path)
    assert r.returncode == 0, r.stderr
    assert "unfinished: record 1 `hpcstudy synth --persons 400000" in r.stdout


# -- tamperings of a log whose run left its head in OUT ------------------------------------------
@pytest.fixture(scope="module")
def audited_run(small_data, tmp_path_factory):
    """A log: two checks (records 1-4), then a run (5 started, 6 finished) whose OUT holds
    audit.json (head 5)."""
    d = tmp_path_factory.mktemp("audited")
    log = d / "audit.jsonl"
    env = {"HPCSTUDY_AUDIT_LOG": str(log)}
    for _ in range(2):
        assert run_cli("check", STUDY, "--data", small_data, env=env).returncode == 0
    out = d / "out"
    assert run_cli("run", STUDY, "--data", small_data, "--out", out, "--quiet",
                   env=env).returncode == 0
    assert json.loads((out / "audit.json").read_text())["seq"] == 5
    return log, out


def _edit_and_rechain(recs):
    recs[1]["args"] = ["innocent.yaml"]
    return rechain(recs)


def _insert_and_rechain(recs):
    forged = dict(recs[1], args=["forged.yaml"])
    return rechain(recs[:2] + [forged] + recs[2:])


def _other_chain(n):
    def make(recs):
        return rechain([{"command": "check", "args": [], "event": "started", "user": "eve",
                         "time": "2020-01-01T00:00:00+00:00", "host": "h", "chain": "sha256"}
                        for _ in range(n)])
    return make


TAMPERINGS = {
    # 1-8: rewriting with a recomputed chain passes the chain check; the run's head does not
    "1 edit without recomputing": (lambda r: [*r[:1], dict(r[1], args=["x.yaml"]), *r[2:]],
                                   "content does not match its hash"),
    "2 edit and recompute": (_edit_and_rechain, "is not the one it refers to"),
    "3 delete and recompute": (lambda r: rechain(r[:1] + r[2:]), "is not the one it refers to"),
    "4 insert and recompute": (_insert_and_rechain, "is not the one it refers to"),
    "5 reorder and recompute": (lambda r: rechain([r[1], r[0], *r[2:]]),
                                "is not the one it refers to"),
    "6 cut the last record": (lambda r: r[:-1], "has no finished record"),
    "7 cut the run's records": (lambda r: r[:-2], "which the log no longer holds"),
    "8 replace with a shorter valid chain": (_other_chain(3), "which the log no longer holds"),
    "9 replace with a longer valid chain": (_other_chain(9), "is not the one it refers to"),
    "10 empty it": (lambda r: [], "holds no records"),
    "11 delete it": (None, "does not exist"),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_a_tampered_log_is_caught_by_the_head_in_the_outputs(audited_run, tmp_path, name):
    log, out = audited_run
    tamper, words = TAMPERINGS[name]
    bad = tmp_path / "audit.jsonl"
    if tamper is not None:
        write(bad, tamper(records(log)))
    rep = audit.check(bad)       # what `audit verify --log BAD --outputs OUT` reports
    problems = rep.problems + audit.verify_heads(rep, [(str(out), audit.read_head(out)[0])])
    assert any(words in p for p in problems), (name, problems)
    # ... and export refuses the run's outputs, saying why in one line
    r = run_cli("export", out, tmp_path / "dest", env={"HPCSTUDY_AUDIT_LOG": str(bad)})
    assert r.returncode == 2 and r.stderr.startswith(f"hpcstudy: error: {out} is not exported")
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "dest").exists()


def test_export_takes_a_recorded_run_and_refuses_one_without_a_head(audited_run, tmp_path):
    log, out = audited_run
    env = {"HPCSTUDY_AUDIT_LOG": str(tmp_path / "copy.jsonl")}
    shutil.copy(log, tmp_path / "copy.jsonl")
    r = run_cli("export", out, tmp_path / "dest", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "dest" / "audit.json").read_text()) == json.loads(
        (out / "audit.json").read_text())             # the export carries the run's head
    exp = records(tmp_path / "copy.jsonl")[-2]
    assert exp["command"] == "export" and exp["run_audit"]["seq"] == 5
    # the export's copy of the head exposes a log cut back before the run, as OUT's does
    write(tmp_path / "cut.jsonl", records(log)[:4])
    r = verify(tmp_path / "cut.jsonl", tmp_path / "dest")
    assert r.returncode == 1 and "which the log no longer holds" in r.stderr
    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    (bare / "audit.json").unlink()
    r = run_cli("export", bare, tmp_path / "dest2", env=env)
    assert r.returncode == 2 and "carries no audit.json" in r.stderr
    assert not (tmp_path / "dest2").exists()


def test_a_head_copied_into_other_outputs_does_not_vouch_for_them(tmp_path, monkeypatch):
    """A run's finished record names its output manifest; outputs with another manifest are
    refused even with the run's audit.json."""
    monkeypatch.setenv("HPCSTUDY_AUDIT_LOG", str(tmp_path / "a.jsonl"))
    monkeypatch.setattr(audit, "_current", None)   # this process's command: reset afterwards
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"files": ["results.json"]}\n')
    started = audit.begin({"command": "run", "args": ["run"]})
    audit.write_head(out)
    audit.finish(started, {"command": "run", "status": "ok", "outputs": {
        "manifest.json": hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()}})
    assert audit.run_recorded(out) is None
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(out / "audit.json", other / "audit.json")
    (other / "manifest.json").write_text('{"files": ["results.json", "leak.csv"]}\n')
    assert "manifest.json is not the one its run wrote" in audit.run_recorded(other)
    (other / "manifest.json").unlink()
    assert "manifest.json is not the one its run wrote" in audit.run_recorded(other)


def test_a_torn_last_line_is_reported_and_later_commands_go_on(audited_run, tmp_path):
    """(tampering 15) Half a record at the end: verify says so; the next command notes it and
    chains on; verify then shows the note and an intact chain."""
    log, _ = audited_run
    bad = tmp_path / "audit.jsonl"
    text = log.read_text()
    bad.write_text(text + text.splitlines()[-1][:57])
    r = verify(bad)
    assert r.returncode == 1 and "the last record is torn" in r.stderr
    env = {"HPCSTUDY_AUDIT_LOG": str(bad)}
    r = run_cli("check", STUDY, env=env)
    assert r.returncode == 0, r.stderr
    recs = records_tolerant(bad)
    assert recs[-2]["seq"] == 7 and recs[-2]["prev"] == records(log)[-1]["hash"]
    assert recs[-2]["torn"]["bytes"] == 57
    r = verify(bad)
    assert r.returncode == 0, r.stderr
    assert "a torn record (a writer stopped mid-write), noted by record 7" in r.stdout


def records_tolerant(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_a_binary_log_is_one_line_and_does_not_stop_work(tmp_path):
    """(tampering 16)"""
    bad = tmp_path / "audit.jsonl"
    bad.write_bytes(bytes(range(256)) * 40)
    r = verify(bad)
    assert r.returncode == 1
    assert r.stderr.startswith(f"hpcstudy: {bad}: holds no audit records")
    assert len(r.stderr.strip().splitlines()) == 1
    # no head is read off a damaged log: one line, exit 1 (tests/bad_inputs has the variants)
    r = run_cli("audit", "head", "--log", bad)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and not r.stdout
    r = run_cli("check", STUDY, env={"HPCSTUDY_AUDIT_LOG": str(bad)})
    assert r.returncode == 0, r.stderr
    r = verify(bad)
    assert r.returncode == 1 and "not an audit record" in r.stderr   # never hidden as "torn"


# -- a keyed chain: what a forger without the key cannot do ---------------------------------------
@pytest.fixture
def keyed_site(tmp_path):
    key = tmp_path / "audit.key"
    key.write_bytes(os.urandom(32))
    site = tmp_path / "site.yaml"
    site.write_text(f"audit_key_file: {key}\n")
    return {"HPCSTUDY_SITE_CONFIG": str(site), "HPCSTUDY_AUDIT_LOG": str(tmp_path / "k.jsonl")}


@pytest.mark.parametrize("forge", [
    lambda r: _edit_and_rechain(r),                       # recomputed as an unkeyed chain
    lambda r: rechain(r[:1] + r[2:], key=b"k" * 32),      # deleted, re-MACed with a guess
    lambda r: rechain(r[:2] + [dict(r[1])] + r[2:], key=b"k" * 32),   # inserted
    lambda r: rechain([dict(x, args=["x"]) for x in r], key=b"k" * 32, renumber=False),
], ids=["edit-recompute", "delete-recompute", "insert-recompute", "edit-all-with-a-guessed-key"])
def test_a_keyed_chain_cannot_be_recomputed_without_the_key(keyed_site, monkeypatch, forge):
    """(tampering 12) Edited, deleted or inserted records re-hashed without the site's key."""
    for k, v in keyed_site.items():
        monkeypatch.setenv(k, v)
    log = Path(keyed_site["HPCSTUDY_AUDIT_LOG"])
    for i in range(4):
        audit.append({"command": "check", "args": [f"s{i}.yaml"]})
    recs = records(log)
    assert all(r["chain"] == "hmac-sha256" for r in recs)
    assert audit.check().problems == []
    write(log, forge(recs))
    problems = audit.check().problems
    assert problems and all("not signed with the site's key" in p or "signed with another key"
                            in p or "MAC does not match" in p for p in problems[:1]), problems


def test_a_keyed_log_rewritten_as_an_unkeyed_one_is_caught(keyed_site, monkeypatch):
    for k, v in keyed_site.items():
        monkeypatch.setenv(k, v)
    log = Path(keyed_site["HPCSTUDY_AUDIT_LOG"])
    for i in range(3):
        audit.append({"command": "check", "args": [f"s{i}.yaml"]})
    plain = [{k: v for k, v in r.items() if k != "key_id"} | {"chain": "sha256"}
             for r in records(log)]
    write(log, rechain(plain))
    problems = audit.check().problems
    assert len(problems) == 3 and all("not signed with the site's key" in p for p in problems)


def test_without_the_key_verify_checks_the_links_and_says_so(keyed_site, monkeypatch, tmp_path):
    for k, v in keyed_site.items():
        monkeypatch.setenv(k, v)
    for i in range(3):
        audit.append({"command": "check", "args": [f"s{i}.yaml"]})
    site = tmp_path / "researcher-site.yaml"          # the same site, seen without the key
    site.write_text(f"audit_key_file: {tmp_path / 'unreadable.key'}\n")
    monkeypatch.setenv("HPCSTUDY_SITE_CONFIG", str(site))
    rep = audit.check()
    assert rep.problems == [] and rep.keyed and not rep.key_checked
    assert rep.notes[0].startswith("MACs not checked: cannot read the audit key")


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1, exclude_max=True), byte=st.integers(0, 255))
def test_any_changed_byte_of_a_keyed_log_is_caught(keyed_site, monkeypatch, where, byte):
    """Whatever byte a forger changes, verify finds a problem — unless the change leaves every
    record as it was (say, a space for a tab between fields)."""
    for k, v in keyed_site.items():
        monkeypatch.setenv(k, v)
    log = Path(keyed_site["HPCSTUDY_AUDIT_LOG"])
    if not log.exists():
        for i in range(4):
            audit.append({"command": "check", "args": [f"s{i}.yaml"], "status": "ok"})
    data = log.read_bytes()
    i = int(where * len(data))
    bad = log.with_suffix(".bad")
    bad.write_bytes(data[:i] + bytes([byte]) + data[i + 1:])
    try:
        same = records(bad) == records(log)
    except (ValueError, UnicodeDecodeError):
        same = False
    assert same or audit.check(bad).problems


def test_a_keyed_log_verifies_as_keyed_and_names_an_edited_record(keyed_site):
    log = Path(keyed_site["HPCSTUDY_AUDIT_LOG"])
    assert run_cli("check", STUDY, env=keyed_site).returncode == 0
    r = verify(log, env=keyed_site)
    assert r.returncode == 0 and "2 records, chain intact" in r.stdout, r.stderr
    assert "keyed (HMAC-SHA256 with the site's key)" in r.stdout
    recs = records(log)
    recs[0]["args"] = ["other.yaml"]
    write(log, recs)
    r = verify(log, env=keyed_site)
    assert r.returncode == 1 and "record 1 (byte 0): its MAC does not match" in r.stderr


def test_a_missing_key_stops_commands_before_they_start(tmp_path, small_data):
    site = tmp_path / "site.yaml"
    site.write_text(f"audit_key_file: {tmp_path / 'nokey'}\n")
    env = {"HPCSTUDY_SITE_CONFIG": str(site), "HPCSTUDY_AUDIT_LOG": str(tmp_path / "a.jsonl")}
    r = run_cli("run", STUDY, "--data", small_data, "--out", tmp_path / "out", env=env)
    assert r.returncode == 1 and r.stderr.startswith("hpcstudy: error: cannot read the audit key")
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_the_append_helper_writes_the_keyed_records(tmp_path):
    """A site's helper (here started directly; a site starts it with sudo or setuid as the
    log's owner) appends for the command, which never reads the key."""
    key = tmp_path / "audit.key"
    key.write_bytes(os.urandom(40))
    log = tmp_path / "site.jsonl"
    site = tmp_path / "site.yaml"
    site.write_text(f"audit_log: {log}\naudit_key_file: {key}\naudit_append_command: "
                    f"[{sys.executable}, -m, hpcstudy.secure.audit, append]\n")
    env = {"HPCSTUDY_SITE_CONFIG": str(site),
           "HPCSTUDY_AUDIT_LOG": str(tmp_path / "ignored.jsonl"), "SUDO_USER": "researcher7"}
    r = run_cli("check", STUDY, env=env)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "ignored.jsonl").exists()    # the site's log wins
    recs = records(log)
    assert [r["event"] for r in recs] == ["started", "finished"]
    assert all(r["chain"] == "hmac-sha256" and r["user"] == "researcher7" for r in recs)
    want = hmac.new(key.read_bytes(), _body(recs[0]), hashlib.sha256).hexdigest()
    assert recs[0]["hash"] == want
    r = run_cli("audit", "verify", env=env)
    assert r.returncode == 0 and "2 records, chain intact" in r.stdout, r.stderr
