"""An append-only, hash-chained audit log of what was done with the data.

Each line of the log is one JSON record: who, when, which command with which arguments, the
hashes of the study file, the data manifest and the outputs, the project approval, the outcome
— plus ``seq`` (1, 2, …), ``prev`` (the previous record's hash) and ``hash`` (SHA-256 of the
record's canonical JSON without ``hash``). Editing, removing, inserting or reordering records
breaks the chain, and ``verify`` names the first record where it breaks. (Cutting records off
the end leaves a shorter valid chain: keep ``audit head`` somewhere else to detect that.)

The log is ``$HPCSTUDY_AUDIT_LOG`` or ``~/.local/share/hpcstudy/audit.jsonl``.
"""

from __future__ import annotations

import datetime
import fcntl
import getpass
import hashlib
import json
import os
import socket
from pathlib import Path

GENESIS = "0" * 64


def default_path() -> Path:
    env = os.environ.get("HPCSTUDY_AUDIT_LOG")
    if env:
        return Path(env)
    return Path.home() / ".local" / "share" / "hpcstudy" / "audit.jsonl"


def _digest(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


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


def append(entry: dict, path: str | Path | None = None) -> dict:
    """Add a record (under an exclusive lock, so concurrent commands never interleave)."""
    path = Path(path) if path else default_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            last = None
            for line in f:
                if line.strip():
                    last = line
            prev = json.loads(last) if last else None
            record = {
                "seq": (prev["seq"] + 1) if prev else 1,
                "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "user": getpass.getuser(),
                "host": socket.gethostname(),
                **entry,
                "prev": prev["hash"] if prev else GENESIS,
            }
            record["hash"] = _digest(record)
            f.seek(0, os.SEEK_END)
            f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    return record


def verify(path: str | Path | None = None) -> tuple[int, list[str]]:
    """(number of records, problems); each problem names the record (line) where the chain
    breaks and how."""
    path = Path(path) if path else default_path()
    if not path.is_file():
        return 0, []
    problems: list[str] = []
    prev_hash, prev_seq, n = GENESIS, 0, 0
    # undecodable bytes become U+FFFD: such a line is reported, never fatal
    text = path.read_text(encoding="utf-8", errors="replace")
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        n += 1
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a record")
        except ValueError:
            problems.append(f"line {lineno}: not a JSON record (edited or corrupted)")
            prev_hash, prev_seq = None, prev_seq + 1
            continue
        seq = rec.get("seq")
        if rec.get("hash") != _digest(rec):
            problems.append(f"line {lineno} (record {seq}): content does not match its hash "
                            "— the record was edited")
        if seq != prev_seq + 1:
            if isinstance(seq, int) and seq > prev_seq + 1:
                what = f"record(s) {prev_seq + 1}–{seq - 1} removed" if seq - 1 > prev_seq + 1 \
                    else f"record {prev_seq + 1} removed"
            else:
                what = "records reordered or one inserted"
            problems.append(f"line {lineno} (record {seq}): expected record {prev_seq + 1} — "
                            f"{what}")
        elif prev_hash is not None and rec.get("prev") != prev_hash:
            problems.append(f"line {lineno} (record {seq}): does not follow the record before "
                            "it — a record was inserted, replaced or reordered")
        prev_hash = rec.get("hash")
        prev_seq = seq if isinstance(seq, int) else prev_seq + 1
    return n, problems


def head(path: str | Path | None = None) -> dict | None:
    """The last record (its hash anchors the whole log)."""
    path = Path(path) if path else default_path()
    if not path.is_file():
        return None
    lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()
             if ln.strip()]
    if not lines:
        return None
    try:
        rec = json.loads(lines[-1])
    except ValueError:
        rec = None
    if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int) \
            or not isinstance(rec.get("hash"), str):
        from ..errors import DataProblem

        raise DataProblem(f"{path}: its last line is not an audit record — hpcstudy audit "
                          "verify tells where the log was damaged")
    return rec
