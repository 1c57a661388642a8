"""An append-only, chained audit log of what was done with the data.

Each line of the log is one JSON record: who, when, which command with which arguments, the
hashes of its inputs and outputs, plus ``seq`` (1, 2, …), ``prev`` (the previous record's
``hash``), ``chain`` and ``hash``. Every audited command writes two records:

* ``event: started`` before it touches any data (its arguments and input hashes); the command
  stops, writing nothing, if this record cannot be written;
* ``event: finished`` after, with the status, the output hashes and ``started: {seq, hash}``.

A command that failed hard or was killed (``kill -9``) is a started record with no finished
one: ``verify`` lists it.

``hash`` is HMAC-SHA256 of the record's canonical JSON (without ``hash``) under the site's key
where the site configures one (``chain: hmac-sha256``; see :mod:`hpcstudy.secure.site`), so
whoever lacks the key cannot rebuild the chain after an edit; otherwise it is plain SHA-256
(``chain: sha256``), which anyone who can write the log can recompute. Cutting records off the
end, or replacing or deleting the whole log, leaves a valid (shorter) chain: the chain head a
run stores in ``OUT/audit.json`` (and what exports carry) exposes that (``verify_heads``).

A half-written last line (a writer killed mid-write, a full disk) is reported by ``verify``;
the next append notes its bytes (``torn: {offset, bytes, sha256}``) and chains on from the last
whole record, so one torn line never stops later commands.

The log is the site's ``audit_log``, else ``$HPCSTUDY_AUDIT_LOG``, else
``~/.local/share/hpcstudy/audit.jsonl``.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import getpass
import hashlib
import hmac
import json
import os
import pwd
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .site import Site, load_site

GENESIS = "0" * 64
HEAD_FILE = "audit.json"            # the chain head a run's outputs carry
RESERVED = ("seq", "time", "user", "host", "prev", "chain", "key_id", "torn", "hash")
KEY_MIN_BYTES = 32


class AuditUnavailable(UserError):
    """The log cannot be written (or its key read): an I/O failure, exit 1."""

    exit_code = 1


def default_path(site: Site | None = None) -> Path:
    site = site or load_site()
    if site.audit_log is not None:
        return site.audit_log
    env = os.environ.get("HPCSTUDY_AUDIT_LOG")
    if env:
        return Path(env)
    return Path.home() / ".local" / "share" / "hpcstudy" / "audit.jsonl"


# -- hashing -----------------------------------------------------------------------------------
def _canonical(record: dict) -> bytes:
    body = {k: v for k, v in record.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _digest(record: dict, key: bytes | None = None) -> str:
    """The record's ``hash``: HMAC-SHA256 under ``key``, or SHA-256 without one."""
    if key is not None:
        return hmac.new(key, _canonical(record), hashlib.sha256).hexdigest()
    return hashlib.sha256(_canonical(record)).hexdigest()


def key_id(key: bytes) -> str:
    """A short name of a key that reveals nothing about it."""
    return hashlib.sha256(b"hpcstudy audit key id\0" + key).hexdigest()[:16]


def read_key(path: Path) -> bytes:
    try:
        key = Path(path).read_bytes()
    except OSError as e:
        raise AuditUnavailable(f"cannot read the audit key {path} ({e.strerror})",
                               fix="an operator must run this through the site's "
                                   "audit_append_command, or fix audit_key_file") from e
    if len(key) < KEY_MIN_BYTES:
        raise AuditUnavailable(f"the audit key {path} is {len(key)} bytes; it needs at least "
                               f"{KEY_MIN_BYTES}",
                               fix="head -c 32 /dev/urandom > KEYFILE (as the operator)")
    return key


def file_sha256(path: str | Path) -> str | None:
    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def tree_sha256(root: str | Path) -> dict[str, str]:
    """SHA-256 of every file below ``root`` (relative paths)."""
    root = Path(root)
    if not root.is_dir():
        return {}
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file()}


# -- reading -----------------------------------------------------------------------------------
def _record(line: bytes) -> dict | None:
    """The record a line holds, or None when it is not one (torn, binary, edited to junk)."""
    try:
        rec = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int) \
            or not isinstance(rec.get("hash"), str):
        return None
    return rec


def _lines(data: bytes):
    """(offset, line without its newline, whether it ended with one) for each line."""
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            yield pos, data[pos:], False
            return
        yield pos, data[pos:end], True
        pos = end + 1


def _tail(fd: int) -> tuple[dict | None, dict | None, bool]:
    """(last whole record, the torn bytes after it, whether the file lacks a final newline);
    reads backwards from the end so an append costs the same on a long log."""
    size = os.fstat(fd).st_size
    block, data, start = 1 << 16, b"", size
    while start > 0:
        step = min(block, start)
        start -= step
        data = os.pread(fd, step, start) + data
        # the first piece may be a line's end: only whole lines after the first newline count
        cut = 0 if start == 0 else data.find(b"\n") + 1
        if start > 0 and cut == 0:
            block *= 2
            continue
        body = data[cut:]
        last, last_end = None, None
        for off, line, _ in _lines(body):
            rec = _record(line)
            if rec is not None:
                last, last_end = rec, start + cut + off + len(line) + 1
        if last is not None or start == 0:
            tail_from = last_end if last is not None else 0
            rest = os.pread(fd, size - tail_from, tail_from) if size > tail_from else b""
            torn = None
            spans = [(off, off + len(line)) for off, line, _ in _lines(rest) if line.strip()]
            if spans:
                junk = rest[spans[0][0]:spans[-1][1]]
                torn = {"offset": tail_from + spans[0][0], "bytes": len(junk),
                        "sha256": hashlib.sha256(junk).hexdigest()}
            return last, torn, size > 0 and not data.endswith(b"\n")
        block *= 2
    return None, None, False


# -- writing -----------------------------------------------------------------------------------
def _who(trust_sudo: bool = False) -> str:
    if trust_sudo and os.environ.get("SUDO_USER"):
        return os.environ["SUDO_USER"]   # the helper, started by sudo for the researcher
    try:
        return pwd.getpwuid(os.getuid()).pw_name   # the real user, not $USER
    except KeyError:
        try:
            return getpass.getuser()
        except (KeyError, OSError):
            return f"uid {os.getuid()}"


def append(entry: dict, path: str | Path | None = None) -> dict:
    """Add a record and return it. Through the site's ``audit_append_command`` where one is
    configured (and no ``path`` is given), else directly, keyed where the site has a key.
    Raises AuditUnavailable when the record cannot be written."""
    site = load_site()
    if path is None and site.audit_append_command:
        return _append_via_helper(entry, site)
    key = read_key(site.audit_key_file) if site.audit_key_file else None
    return append_local(entry, Path(path) if path else default_path(site), key)


def append_local(entry: dict, path: Path, key: bytes | None, user: str | None = None) -> dict:
    """Append under an exclusive lock, so concurrent commands never interleave or fork the
    chain; the caller's fields cannot set seq, prev, hash, user or time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
    except OSError as e:
        # a path that cannot be a log (a folder, under a file) is bad input; the rest is I/O
        bad_path = e.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG)
        raise (UserError if bad_path else AuditUnavailable)(
            f"cannot write the audit log {path} ({e.strerror})",
            fix="make it writable, or set HPCSTUDY_AUDIT_LOG to a writable file") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        prev, torn, no_newline = _tail(fd)
        record = {k: v for k, v in entry.items() if k not in RESERVED}
        record.update({
            "seq": prev["seq"] + 1 if prev else 1,
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "user": user or _who(),
            "host": socket.gethostname(),
            "prev": prev["hash"] if prev else GENESIS,
            "chain": "hmac-sha256" if key is not None else "sha256",
        })
        if key is not None:
            record["key_id"] = key_id(key)
        if torn is not None:
            record["torn"] = torn
        record["hash"] = _digest(record, key)
        line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        data = (b"\n" if no_newline else b"") + line.encode()
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
        return record
    except OSError as e:
        raise AuditUnavailable(f"cannot write the audit log {path} ({e.strerror})",
                               fix="free space or fix permissions on it") from e
    finally:
        os.close(fd)   # closing drops the lock


def _append_via_helper(entry: dict, site: Site) -> dict:
    cmd = list(site.audit_append_command)
    try:
        r = subprocess.run(cmd, input=json.dumps(entry), capture_output=True, text=True,
                           timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AuditUnavailable(f"the audit helper {cmd[0]} cannot be run ({e})",
                               where=site.source, fix="an operator must fix "
                               "audit_append_command") from e
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["no message"])[-1]
        raise AuditUnavailable(f"the audit helper refused the record: {why}",
                               where=site.source)
    try:
        return json.loads(r.stdout)
    except ValueError as e:
        raise AuditUnavailable("the audit helper answered something that is not a record",
                               where=site.source) from e


# -- a command's two records -------------------------------------------------------------------
_current: dict | None = None


def begin(entry: dict) -> dict:
    """Write the started record of this process's command (see ``current``)."""
    global _current
    _current = append({**entry, "event": "started"})
    return _current


def outcome(error: BaseException | None) -> str:
    """The status a finished record gives a command that ended with ``error`` (None: ok)."""
    from ..errors import DataProblem

    if error is None:
        return "ok"
    if isinstance(error, UserError):
        return "refused: " + str(error).splitlines()[0][:300]
    if isinstance(error, DataProblem):
        return "problems found"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return "error"


def finish(started: dict, entry: dict) -> dict:
    """Write the finished record linked to ``started``; the command's head ends with it (a
    later command in the same process, e.g. a notebook's, must not carry it)."""
    global _current
    try:
        return append({**entry, "event": "finished",
                       "started": {"seq": started["seq"], "hash": started["hash"]}})
    finally:
        if _current is not None and _current.get("seq") == started.get("seq"):
            _current = None


def current() -> dict | None:
    """The chain head at the start of this process's command: ``{log, seq, hash, chain,
    command}`` (what a run's outputs and an export carry), or None outside an audited
    command."""
    if _current is None:
        return None
    head = {"log": str(default_path()), "seq": _current["seq"], "hash": _current["hash"],
            "chain": _current.get("chain", "sha256"), "command": _current.get("command")}
    if "key_id" in _current:
        head["key_id"] = _current["key_id"]
    return head


def _grouped(hexdigits: str) -> str:
    # groups of 8: no run of digits in a hash looks like a CPR number or a long integer to
    # the disclosure check that every exported file passes
    return " ".join(hexdigits[i:i + 8] for i in range(0, len(hexdigits), 8))


def write_head(folder: str | Path) -> bool:
    """Write ``folder/audit.json``: the chain head of the command writing ``folder`` (its
    hashes in groups of 8 hex digits); False outside an audited command (nothing written)."""
    head = current()
    if head is None:
        return False
    head = {**head, "hash": _grouped(head["hash"])}
    if "key_id" in head:
        head["key_id"] = _grouped(head["key_id"])
    (Path(folder) / HEAD_FILE).write_text(json.dumps(head, indent=1, sort_keys=True) + "\n")
    return True


def read_head(folder: str | Path) -> tuple[dict | None, str | None]:
    """(the head ``folder/audit.json`` records, or None with the reason)."""
    f = Path(folder) / HEAD_FILE if Path(folder).is_dir() else Path(folder)
    if not f.is_file():
        return None, f"{folder} carries no {HEAD_FILE}: it was not written by an audited command"
    try:
        head = json.loads(f.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, f"{f} is not a chain head (not JSON)"
    if not isinstance(head, dict) or not isinstance(head.get("seq"), int) \
            or not isinstance(head.get("hash"), str):
        return None, f"{f} is not a chain head (needs seq and hash)"
    return {**head, "hash": head["hash"].replace(" ", "")}, None


# -- checking ----------------------------------------------------------------------------------
@dataclass
class Report:
    """What ``check`` found in a log."""

    path: Path
    exists: bool = False
    records: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    by_seq: dict[int, dict] = field(default_factory=dict)
    bad: set[int] = field(default_factory=set)        # seqs of records that fail a check
    finished: dict[int, dict] = field(default_factory=dict)   # started seq -> finished record
    keyed: bool = False        # the site has a key
    key_checked: bool = False  # ... and it was read, so MACs were checked

    @property
    def head(self) -> dict | None:
        return self.by_seq[max(self.by_seq)] if self.by_seq else None

    def unfinished(self) -> list[dict]:
        return [r for s, r in sorted(self.by_seq.items())
                if r.get("event") == "started" and s not in self.finished]


def check(path: str | Path | None = None) -> Report:
    """Check the whole log: every record's hash (MAC), the links, the order, torn lines."""
    site = load_site()
    path = Path(path) if path else default_path(site)
    rep = Report(path)
    key = None
    if site.audit_key_file is not None:
        rep.keyed = True
        try:
            key = read_key(site.audit_key_file)
            rep.key_checked = True
        except AuditUnavailable as e:
            rep.notes.append(f"MACs not checked: {e.what} (run audit verify as the operator)")
    try:
        data = path.read_bytes()
        rep.exists = True
    except FileNotFoundError:
        return rep
    except IsADirectoryError:
        rep.problems.append("is a directory, not an audit log")
        return rep
    except OSError as e:
        rep.problems.append(f"cannot read {path} ({e.strerror})")
        return rep
    prev_hash, prev_seq = GENESIS, 0
    junk: tuple[int, bytes] | None = None   # (offset, bytes) not yet accounted for
    for off, line, _ in _lines(data):
        rec = _record(line) if line.strip() else None
        if rec is None:
            if line.strip():
                start = junk[0] if junk else off
                junk = (start, data[start:off + len(line)])
            continue
        rep.records += 1
        seq = rec["seq"]
        where = f"record {seq} (byte {off})"
        if junk is not None:
            t = rec.get("torn") or {}
            if b"\n" not in junk[1] and (t.get("offset"), t.get("bytes"), t.get("sha256")) == (
                    junk[0], len(junk[1]), hashlib.sha256(junk[1]).hexdigest()):
                # one line only: a write torn by a crash, not a stretch of records replaced
                rep.notes.append(f"bytes {junk[0]}-{junk[0] + len(junk[1])}: a torn record (a "
                                 f"writer stopped mid-write), noted by record {seq}")
            else:
                rep.problems.append(f"bytes {junk[0]}-{junk[0] + len(junk[1])}: not an audit "
                                    "record (edited, corrupted or binary)")
            junk = None
        chain = rec.get("chain", "sha256")
        if chain == "hmac-sha256":
            if key is not None and rec.get("key_id") != key_id(key):
                rep.problems.append(f"{where}: signed with another key ({rec.get('key_id')}) "
                                    "than the site's")
                rep.bad.add(seq)
            elif key is not None and not hmac.compare_digest(rec["hash"], _digest(rec, key)):
                rep.problems.append(f"{where}: its MAC does not match the site's key — the "
                                    "record was edited")
                rep.bad.add(seq)
        elif rep.keyed:
            rep.problems.append(f"{where}: not signed with the site's key — written without it "
                                "or a chain recomputed by someone who lacks it")
            rep.bad.add(seq)
        elif rec["hash"] != _digest(rec):
            rep.problems.append(f"{where}: content does not match its hash — the record was "
                                "edited")
            rep.bad.add(seq)
        if seq != prev_seq + 1:
            if seq > prev_seq + 1:
                what = (f"record(s) {prev_seq + 1}-{seq - 1} removed" if seq - 1 > prev_seq + 1
                        else f"record {prev_seq + 1} removed")
            else:
                what = "records reordered or one inserted"
            rep.problems.append(f"{where}: expected record {prev_seq + 1} — {what}")
            rep.bad.add(seq)
        elif rec.get("prev") != prev_hash:
            rep.problems.append(f"{where}: does not follow the record before it — a record was "
                                "inserted, replaced or reordered")
            rep.bad.add(seq)
        if seq in rep.by_seq:
            rep.bad.add(seq)
        rep.by_seq.setdefault(seq, rec)
        started = rec.get("started")
        if rec.get("event") == "finished" and isinstance(started, dict) \
                and isinstance(started.get("seq"), int):
            rep.finished[started["seq"]] = rec
        prev_hash, prev_seq = rec["hash"], max(seq, prev_seq)
    if junk is not None:
        if rep.records == 0:
            rep.problems.append(f"holds no audit records (bytes 0-{len(data)} are not JSON "
                                "records: a binary or foreign file?)")
        else:
            rep.problems.append(f"bytes {junk[0]}-{junk[0] + len(junk[1])}: the last record is "
                                "torn (half-written, or the file was cut); the next command "
                                "notes it and goes on")
    return rep


def verify(path: str | Path | None = None) -> tuple[int, list[str]]:
    """(number of records, problems): ``check`` in short."""
    rep = check(path)
    return rep.records, rep.problems


def head(path: str | Path | None = None) -> dict | None:
    """The last whole record (its hash anchors the whole log)."""
    path = Path(path) if path else default_path()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _tail(fd)[0]
    finally:
        os.close(fd)


def verify_heads(rep: Report, heads: list[tuple[str, dict]]) -> list[str]:
    """Problems with chain heads recorded elsewhere (``[(where, {seq, hash}), …]``): a head
    whose record the log no longer holds means the log was cut, replaced, emptied or
    deleted."""
    problems = []
    for where, h in heads:
        seq, hsh = h["seq"], h["hash"]
        rec = rep.by_seq.get(seq)
        if not rep.exists or not rep.by_seq:
            state = "does not exist" if not rep.exists else "holds no records"
            problems.append(f"{where}: refers to audit record {seq}, but the log {rep.path} "
                            f"{state} — it was deleted, emptied or replaced")
        elif rec is None:
            problems.append(f"{where}: refers to audit record {seq}, which the log no longer "
                            f"holds (it ends at record {max(rep.by_seq)}) — the log was cut "
                            "or replaced")
        elif rec["hash"] != hsh:
            problems.append(f"{where}: audit record {seq} is not the one it refers to (hash "
                            f"{hsh[:16]}… vs {rec['hash'][:16]}…) — the log was replaced or "
                            "rewritten")
        elif rec.get("event") == "started" and seq not in rep.finished:
            problems.append(f"{where}: its command (audit record {seq}) has no finished record "
                            "— the record was cut from the log, or the command was killed "
                            "after writing")
    return problems


def run_recorded(out: str | Path) -> str | None:
    """Why the run that wrote ``out`` is not (soundly) in the audit log, or None when it is:
    its started record is in the chain with the hash ``out/audit.json`` names, passes its
    checks, and finished ``ok``."""
    h, why = read_head(out)
    if h is None:
        return why
    rep = check()
    problems = verify_heads(rep, [(str(out), h)])
    if problems:
        return problems[0]
    if rep.problems:   # a log in doubt vouches for nothing
        return (f"the audit log {rep.path} fails its checks ({rep.problems[0]}; hpcstudy audit "
                "verify names every problem)")
    seq = h["seq"]
    rec = rep.by_seq[seq]
    if rec.get("event") != "started" or rec.get("command") != "run":
        return f"audit record {seq} is not the start of a run"
    done = rep.finished.get(seq)
    if done is None:
        return f"its run (audit record {seq}) has no finished record: it failed or was killed"
    if done.get("status") != "ok" or done["seq"] in rep.bad:
        return f"its run (audit record {seq}) did not finish ok ({done.get('status')})"
    # the output manifest (which names every file's hash) must be the one the run wrote, so a
    # head copied into other outputs vouches for nothing
    recorded = done.get("outputs") or {}
    for name in ("outputs.json", "manifest.json"):
        want = recorded.get(name)
        if want is not None and file_sha256(Path(out) / name) != want:
            return (f"its {name} is not the one its run wrote (audit record {done['seq']}): "
                    "the outputs were changed or put together from elsewhere")
    return None


# -- the helper a site runs as the log's owner -------------------------------------------------
def _helper(argv: list[str]) -> int:
    """``python -m hpcstudy.secure.audit append``: read an entry (JSON) on stdin, append it to
    the site's log with the site's key, print the record. Run as the user that owns the log and
    the key (sudo or setuid), so the researcher never reads the key."""
    if argv != ["append"]:
        print("usage: python -m hpcstudy.secure.audit append < entry.json", file=sys.stderr)
        return 2
    try:
        site = load_site()
        if site.audit_log is None:
            raise UserError("the site config names no audit_log", where=site.source)
        entry = json.loads(sys.stdin.read())
        if not isinstance(entry, dict):
            raise UserError("the entry must be a JSON object")
        key = read_key(site.audit_key_file) if site.audit_key_file else None
        rec = append_local(entry, site.audit_log, key, user=_who(trust_sudo=True))
    except ValueError:
        print("hpcstudy-audit-append: error: the entry is not JSON", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"hpcstudy-audit-append: error: {e}", file=sys.stderr)
        return e.exit_code
    print(json.dumps(rec, sort_keys=True, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(_helper(sys.argv[1:]))
