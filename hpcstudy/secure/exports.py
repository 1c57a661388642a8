"""The project's export register: what has left, so that no two exports differ by a few persons.

Two outputs of the same data that differ by 1 to threshold − 1 persons in a count they both
publish give those persons away by subtraction (703 persons in one variant, 699 in another:
4 persons with the one criterion they differ by). Each export is recorded here — when, by
whom, from which run folder to where, the study's and the data manifest's SHA-256, the
threshold and every count it published — and an export whose counts differ from an earlier
export of the same data (or from a sibling variant of the same study, exported or not) by
between 1 and threshold − 1 is held for an output checker, with both named. The checker
releases it with ``hpcstudy exports release OUT --reason TEXT``; the release is recorded too.

Comparable counts: the same count in the same table at the same key (``cohort[label=statin]
.persons``, ``attrition.statin[step=…].persons``, ``models.cox.events``, a term's persons …),
and, whatever their labels, the sizes of the cohorts' arms and of the models' populations.

The register is ``$HPCSTUDY_EXPORT_REGISTER``, else ``exports.jsonl`` next to the audit log
(``$HPCSTUDY_AUDIT_LOG``'s folder, default ``~/.local/share/hpcstudy/``): one JSON record a
line, appended under an exclusive lock held for the whole of an export.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import getpass
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataProblem, UserError
from ..outputs import manifest as M

SIZE_FIELDS = ("persons", "n")


def default_path() -> Path:
    """``$HPCSTUDY_EXPORT_REGISTER``, else exports.jsonl beside the audit log. Where the site
    config names the audit log, the register lies beside it and the variable is ignored, as
    ``$HPCSTUDY_AUDIT_LOG`` is: a researcher who pointed it at a new file exported a variant
    4 persons apart with nothing to compare it with (an outside tester, session 6)."""
    from .audit import default_path as audit_log
    from .site import load_site

    site = load_site()
    env = os.environ.get("HPCSTUDY_EXPORT_REGISTER")
    if env and site.audit_log is None:
        return Path(env)
    return audit_log(site).parent / "exports.jsonl"


def _key(row: dict, keys: list[str]) -> str:
    return ",".join(f"{k}={row.get(k)}" for k in keys)


def _table_counts(section: str, kind: str, rows: list[dict], out: dict[str, int]) -> None:
    k = M.KINDS[kind]
    cols = M.columns_of(rows)
    keys = [c for c in cols if c not in k.counts and c not in k.derived and c not in M.FLAGS]
    for r in rows:
        for c in k.counts:
            v = r.get(c)
            if isinstance(v, int) and not isinstance(v, bool):
                out[f"{section}[{_key(r, keys)}].{c}"] = v


def published(contents: dict[str, tuple[str, object]], manifest: dict) -> dict:
    """The counts a set of passed files publishes: ``{"counts": {name: n}, "sizes": [n…]}``."""
    counts: dict[str, int] = {}
    sections = {e["path"]: e.get("section") for e in manifest.get("files", [])}
    for path, (kind, data) in sorted(contents.items()):
        if kind == "results":
            for sec, spec in next(e for e in manifest["files"]
                                  if e["path"] == path)["sections"].items():
                head, _, name = sec.partition(".")
                part = data.get(head) if not name else data.get(head, {}).get(name)
                if spec["kind"] == "model":
                    _model_counts(sec, part, counts)
                elif isinstance(part, list):
                    _table_counts(sec, spec["kind"], part, counts)
        elif kind == "model":
            _model_counts(sections[path], {"terms": data}, counts)
        elif kind in M.KINDS and isinstance(data, list):
            _table_counts(sections[path], kind, data, counts)
    # every count of persons, whatever table, key or label publishes it: a population shown as
    # a rates row in one export and as a cohort in another is one population (an outside
    # tester recovered 3 women with a prior MI from 226 and 223)
    sizes = sorted({v for k, v in counts.items()
                    if k.endswith((".persons", ".persons_other")) or
                    (k.startswith(("models.", "lexis_model")) and "[" not in k and
                     k.rsplit(".", 1)[1] in SIZE_FIELDS)})
    # and the events of every population, whatever table, key or label: 22 MIs among 535
    # women as a rates row and 21 among the same 535 women as a cohort followed 212 days less
    # gave one woman's MI away (an outside tester, session 6)
    rows = {}
    for k, v in counts.items():
        head, _, field = k.rpartition(".")
        rows.setdefault(head, {})[field] = v
    populations = sorted({(r[p], r[e]) for r in rows.values()
                          for p, e in (("persons", "events"), ("persons_other", "events_other"))
                          if p in r and e in r})
    return {"counts": counts, "sizes": sizes, "populations": [list(x) for x in populations]}


def _model_counts(section: str, m, out: dict[str, int]) -> None:
    if not isinstance(m, dict) or any(k in m for k in M.MODEL_NOTES):
        return
    for k, role in M.MODEL_SCALARS.items():
        v = m.get(k)
        if role == "count" and isinstance(v, int) and not isinstance(v, bool):
            out[f"{section}.{k}"] = v
    if isinstance(m.get("terms"), list):
        _table_counts(section, "model", m["terms"], out)


@dataclass
class Difference:
    """A count that differs by a few persons from one already published (or about to be)."""
    name: str
    here: int
    there: int
    other: str          # the other export or run, in words

    def __str__(self) -> str:
        return (f"{self.name} is {self.here} here and {self.there} in {self.other}: a "
                f"difference of {abs(self.here - self.there)} persons")


def differences(mine: dict, theirs: dict, min_cell: int, other: str) -> list[Difference]:
    """Counts (same name), sizes (any name) and the events of populations of one size (any
    name) that differ by 1 to min_cell − 1."""
    out = []
    a, b = mine["counts"], theirs["counts"]
    for name in sorted(set(a) & set(b)):
        if 0 < abs(a[name] - b[name]) < min_cell:
            out.append(Difference(name, a[name], b[name], other))
    named = {(d.here, d.there) for d in out}
    # two numbers that both outputs publish are no new difference (a re-run by the other
    # engine, a variant that changed nothing: held 56 times over for its own counts)
    both = set(mine["sizes"]) & set(theirs["sizes"])
    for x in mine["sizes"]:
        for y in theirs["sizes"]:
            if 0 < abs(x - y) < min_cell and (x, y) not in named and \
                    not (x in both and y in both):
                out.append(Difference("a count of persons", x, y, other))
                named.add((x, y))
    theirs_pop = {tuple(p) for p in theirs.get("populations", ())}   # (none before session 6)
    mine_pop = {tuple(p) for p in mine.get("populations", ())}
    theirs_events: dict[int, set[int]] = {}
    for n, e in theirs_pop:
        theirs_events.setdefault(n, set()).add(e)
    for n, e in sorted(mine_pop):
        for f in sorted(theirs_events.get(n, ())):
            if 0 < abs(e - f) < min_cell and (e, f) not in named and \
                    not ((n, e) in theirs_pop and (n, f) in mine_pop):
                out.append(Difference(f"the events among {n} persons", e, f, other))
                named.add((e, f))
    return out


def same_data(a: dict, b: dict) -> bool:
    """Two outputs (or an export record and outputs) are of the same data: one manifest, or
    the same persons."""
    if a.get("data_manifest_sha256") == b.get("data_manifest_sha256"):
        return True
    persons = a.get("data_persons_sha256")
    return persons is not None and persons == b.get("data_persons_sha256")


class Register:
    """The records of an export register, read under its lock."""

    def __init__(self, path: Path, records: list[dict], handle=None):
        self.path, self.records, self._f = path, records, handle

    def exports_of(self, manifest: dict) -> list[dict]:
        """Earlier exports of the same data: the same data manifest, or the same persons
        (another partitioning of one extract writes another manifest)."""
        return [r for r in self.records if r.get("event") == "export" and same_data(r, manifest)]

    def released(self, manifest_sha: str) -> dict | None:
        return next((r for r in self.records if r.get("event") == "release" and
                     r.get("manifest_sha256") == manifest_sha), None)

    def compare(self, manifest: dict, mine: dict, min_cell: int) -> list[Difference]:
        """Differences from every earlier export of the same data (other outputs only)."""
        out = []
        for r in self.exports_of(manifest):
            if r.get("manifest_sha256") == manifest["manifest_sha256"]:
                continue   # the same outputs exported again
            other = (f"export #{r['seq']} of study {r['study']['name']!r} from {r['out']} "
                     f"to {r['dest']} ({r['time']}, {r['user']})")
            out += differences(mine, r["published"], min_cell, other)
        return out

    def append(self, entry: dict) -> dict:
        if self._f is None:
            raise RuntimeError("the register is open for reading only")
        record = {"seq": (self.records[-1]["seq"] + 1) if self.records else 1,
                  "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                  "user": getpass.getuser(), "host": socket.gethostname(), **entry}
        self._f.seek(0, os.SEEK_END)
        self._f.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.records.append(record)
        return record


def _records(f, path: Path) -> list[dict]:
    f.seek(0)
    out = []
    try:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    raise DataProblem(f"{path}:{i}: the export register is damaged ({e}) — "
                                      "restore it from the project's backup") from e
                if not isinstance(rec, dict):
                    raise DataProblem(f"{path}:{i}: the export register is damaged (not a "
                                      "record) — restore it from the project's backup")
                out.append(rec)
    except UnicodeDecodeError as e:
        raise DataProblem(f"{path}: the export register is damaged (not UTF-8 text) — restore "
                          "it from the project's backup") from e
    return out


def _usable(path: Path) -> Path:
    """``path``, or a one-line error when no register can be kept there."""
    if path.exists() and not path.is_file():
        raise UserError(f"the export register {path} is a directory, not a file",
                        fix="set HPCSTUDY_EXPORT_REGISTER to the register file itself")
    if any(p.exists() and not p.is_dir() for p in path.parents):
        raise UserError(f"the export register {path} lies under a file",
                        fix="set HPCSTUDY_EXPORT_REGISTER to a file in a folder")
    return path


@contextlib.contextmanager
def locked(path: str | Path | None = None):
    """``with locked() as register:`` read and append, no other export in between."""
    path = _usable(Path(path) if path else default_path())
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield Register(path, _records(f, path), f)
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read(path: str | Path | None = None) -> Register:
    """The register as it stands (empty when none was written yet), read-only."""
    path = _usable(Path(path) if path else default_path())
    if not path.is_file():
        return Register(path, [])
    with open(path, encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        return Register(path, _records(f, path))


def siblings(out: Path, manifest: dict) -> list[tuple[Path, dict]]:
    """Other runs of the same study file on the same data in folders next to OUT (a job
    array's OUT/VARIANT, or variants run side by side), with their manifests."""
    out = Path(out).resolve()
    found = []
    try:
        entries = sorted(out.parent.iterdir())
    except OSError:
        return []
    for d in entries[:500]:
        if d == out or not (d / M.NAME).is_file():
            continue
        try:
            doc = json.loads((d / M.NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("study"), dict) and \
                doc["study"].get("sha256") == manifest["study"]["sha256"] and \
                same_data(doc, manifest):
            found.append((d, doc))
    return found


def held_by(verdict, register: Register) -> list[Difference]:
    """Why the passed files of a gate verdict may not leave yet: their counts against every
    earlier export of the same data and against the sibling variants' outputs (exported or
    not). Empty when the outputs were released by an output checker."""
    from ..outputs import gate

    m = verdict.manifest
    if m is None or register.released(m["manifest_sha256"]):
        return []
    mine = published(verdict.contents, m)
    found = register.compare(m, mine, verdict.min_cell)
    for d, doc in siblings(verdict.out, m):
        if doc.get("manifest_sha256") == m["manifest_sha256"]:
            continue
        try:
            other = gate.check(d, verdict.min_cell)
        except (UserError, OSError):   # gone meanwhile: nothing to compare
            continue
        if other.manifest is None:
            continue
        name = other.manifest["study"].get("name")
        found += differences(mine, published(other.contents, other.manifest),
                             verdict.min_cell, f"sibling run {name!r} in {d}")
    return found


def export_record(verdict, dest: Path, files: list[str]) -> dict:
    m = verdict.manifest
    return {"event": "export", "out": str(Path(verdict.out).resolve()),
            "dest": str(Path(dest).resolve()), "manifest_sha256": m["manifest_sha256"],
            "study": {"name": m["study"]["name"], "sha256": m["study"]["sha256"]},
            "data_manifest_sha256": m["data_manifest_sha256"],
            "data_persons_sha256": m.get("data_persons_sha256"), "min_cell": verdict.min_cell,
            "project": m.get("project"), "files": files,
            "published": published({p: c for p, c in verdict.contents.items() if p in files},
                                   m)}
