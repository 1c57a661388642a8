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
Counts whose persons the runs sketched (secure/sketches.py: the cohort's arms, the rates,
Lexis and measure rows, the curves' events, the models and their terms, the last attrition
step), and the sums of rows a reader forms from them (:func:`_sums_of`), are compared by those
persons instead (:func:`nested`): a population nested in another but for 1 to threshold − 1
persons is held whatever the sizes, unrelated populations are not; the populations of two
other outputs are summed and subtracted against this one's (:func:`combined`).

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


def row_names(section: str, kind: str, rows: list[dict]) -> list[str]:
    """Each row's name in the register: ``section[key=value,…]`` (a count's name adds
    ``.persons``, ``.events`` …)."""
    k = M.KINDS[kind]
    cols = M.columns_of(rows)
    keys = [c for c in cols if c not in k.counts and c not in k.derived and c not in M.FLAGS]
    return [f"{section}[{_key(r, keys)}]" for r in rows]


# tables whose rows the runs sketch, so that sums of their rows are sets of persons too
SUMMED = ("cohort", "rates", "lexis", "measure", "curves")


def _table_counts(section: str, kind: str, rows: list[dict], out: dict[str, int],
                  sums: dict[str, list[str]] | None = None) -> None:
    k = M.KINDS[kind]
    names = row_names(section, kind, rows)
    for name, r in zip(names, rows, strict=True):
        for c in k.counts:
            v = r.get(c)
            if isinstance(v, int) and not isinstance(v, bool):
                out[f"{name}.{c}"] = v
    if sums is not None and kind in SUMMED and len(rows) > 1:
        _sums_of(section, kind, rows, names, sums)


def _sums_of(section: str, kind: str, rows: list[dict], names: list[str],
             sums: dict[str, list[str]]) -> None:
    """The sums a reader forms of a table's rows: over the rows sharing the values of a
    proper subset of its keys (protection.margin_groups: a measure by sex and statin summed
    over statin is the women, plus those who switched), and along a curve its events up to
    each shown day. Sketches are linear: the sum of the rows' sketches is the sketch of the
    persons behind the sum (a person in two rows twice)."""
    from ..outputs.protection import margin_groups

    k = M.KINDS[kind]
    cols = M.columns_of(rows)
    keys = [c for c in cols if c not in k.counts and c not in k.derived and c not in M.FLAGS]
    labelled = [(",".join(f"{c}={rows[m[0]].get(c)}" if len({rows[i].get(c) for i in m}) == 1
                          else f"{c}=*" for c in keys), m) for m in margin_groups(rows, keys)]
    if kind == "curves":   # the events to each shown day but the first and the last
        for g in sorted({r.get("group") for r in rows}, key=str):
            at = [i for i, r in enumerate(rows) if r.get("group") == g]
            # (a run: each sum is the one before plus a row; listed whole, they would grow
            # as the square of the curve's points, 27 MB a record at 1 M persons)
            sums[f"{section}[group={g},day<=*].events"] = [
                [f"{section}[group={g},day<={rows[i].get('day')}].events"
                 if 0 < k < len(at) - 1 else None, f"{names[i]}.events"]
                for k, i in enumerate(at)]
    for label, members in labelled:
        for c in ("persons", "events") if kind != "curves" else ("events",):
            sums[f"{section}[{label}].{c}"] = [f"{names[i]}.{c}" for i in members]


def published(contents: dict[str, tuple[str, object]], manifest: dict) -> dict:
    """The counts a set of passed files publishes: ``{"counts": {name: n}, "sizes": [n…]}``."""
    counts: dict[str, int] = {}
    sums: dict[str, list[str]] = {}
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
                    _table_counts(sec, spec["kind"], part, counts, sums)
        elif kind == "model":
            _model_counts(sections[path], {"terms": data}, counts)
        elif kind in M.KINDS and isinstance(data, list):
            _table_counts(sections[path], kind, data, counts, sums)
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
    # sums of rows whose counts are all shown (a withheld row leaves its sum unknown); a
    # curve's run of sums to each day: [[sum's name or None, row], …]
    sums = {k: v for k, v in sorted(sums.items())
            if all((m[1] if isinstance(m, list) else m) in counts for m in v)}
    return {"counts": counts, "sizes": sizes, "populations": [list(x) for x in populations],
            "sums": sums}


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


def _is_size(name: str) -> bool:
    return name.endswith((".persons", ".persons_other")) or \
        (name.startswith(("models.", "lexis_model")) and "[" not in name and
         name.rsplit(".", 1)[1] in SIZE_FIELDS)


def _only_sketched(counts: dict, sketched: set) -> tuple[set, set]:
    """(sizes, populations) that only counts with sketches publish: the persons behind them
    tell nested from unrelated (:func:`nested`), so the count rules leave them out."""
    sizes: dict[int, bool] = {}
    for k, v in counts.items():
        if _is_size(k):
            sizes[v] = sizes.get(v, True) and k in sketched
    rows: dict[str, dict] = {}
    for k, v in counts.items():
        head, _, field = k.rpartition(".")
        rows.setdefault(head, {})[field] = (v, k in sketched)
    pops: dict[tuple, bool] = {}
    for r in rows.values():
        if "persons" in r and "events" in r:
            key = (r["persons"][0], r["events"][0])
            pops[key] = pops.get(key, True) and r["persons"][1] and r["events"][1]
        if "persons_other" in r and "events_other" in r:
            pops[(r["persons_other"][0], r["events_other"][0])] = False
    return {v for v, ok in sizes.items() if ok}, {p for p, ok in pops.items() if ok}


def differences(mine: dict, theirs: dict, min_cell: int, other: str,
                sketched: tuple[set, set] | None = None) -> list[Difference]:
    """Counts (same name), sizes (any name) and the events of populations of one size (any
    name) that differ by 1 to min_cell − 1. ``sketched``: the names of each side's counts
    whose persons both sides' sketches hold; :func:`nested` compares those, not this."""
    out = []
    a, b = mine["counts"], theirs["counts"]
    mine_sk, theirs_sk = sketched if sketched is not None else (set(), set())
    for name in sorted(set(a) & set(b)):
        if name in mine_sk and name in theirs_sk:
            continue
        if 0 < abs(a[name] - b[name]) < min_cell:
            out.append(Difference(name, a[name], b[name], other))
    named = {(d.here, d.there) for d in out}
    sizes_a, pops_a = _only_sketched(a, mine_sk)
    sizes_b, pops_b = _only_sketched(b, theirs_sk)
    # two numbers that both outputs publish are no new difference (a re-run by the other
    # engine, a variant that changed nothing: held 56 times over for its own counts)
    both = set(mine["sizes"]) & set(theirs["sizes"])
    for x in mine["sizes"]:
        for y in theirs["sizes"]:
            if x in sizes_a and y in sizes_b:
                continue
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
            if (n, e) in pops_a and (n, f) in pops_b:
                continue   # their persons tell nested from unrelated (nested())
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


def _named(r: dict) -> str:
    return (f"export #{r['seq']} of study {r['study']['name']!r} from {r['out']} "
            f"to {r['dest']} ({r['time']}, {r['user']})")


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

    def compare(self, manifest: dict, mine: dict, min_cell: int,
                mine_sets: dict | None = None) -> list:
        """Differences from every earlier export of the same data (other outputs only): of
        counts, and (:func:`nested`) of the persons behind them."""
        out: list = []
        for r in self.exports_of(manifest):
            if r.get("manifest_sha256") == manifest["manifest_sha256"]:
                continue   # the same outputs exported again
            out += compare(mine, mine_sets, r["published"], r.get("sketches"), min_cell,
                           _named(r), manifest.get("data_persons_sha256"))
        return out

    def others(self, manifest: dict) -> list[tuple[dict, dict | None, str]]:
        """(published, sketches, in words) of every earlier export of the same data but of
        other outputs."""
        return [(r["published"], r.get("sketches"), _named(r)) for r in self.exports_of(manifest)
                if r.get("manifest_sha256") != manifest["manifest_sha256"]]

    def sketches_of(self, manifest_sha: str) -> dict | None:
        """The sketches an earlier export of exactly these outputs recorded (an exported
        copy, which has no private folder)."""
        return next((r.get("sketches") for r in reversed(self.records)
                     if r.get("event") == "export" and r.get("manifest_sha256") == manifest_sha
                     and r.get("sketches")), None)

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
    if m is None:
        return []
    # (before a release is looked at: an export with its sketches edited or deleted is refused)
    mine_sets = verdict.person_sets = sketches_of(verdict.out, m, register)
    if register.released(m["manifest_sha256"]):
        return []
    mine = published(verdict.contents, m)
    others = register.others(m)
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
        try:
            their_sets = sketches_of(d, other.manifest, None)
        except UserError:   # a sibling's sketches edited or gone: compared as if it had none
            their_sets = None
        others.append((published(other.contents, other.manifest), their_sets,
                       f"sibling run {name!r} in {d}"))
    key_text = m.get("data_persons_sha256")
    cache: dict = {}
    found = []
    for theirs, their_sets, where in others:
        found += compare(mine, mine_sets, theirs, their_sets, verdict.min_cell, where,
                         key_text, cache)
    found += combined(mine, mine_sets, others, verdict.min_cell, key_text, cache, found)
    return found + itself(mine, mine_sets, verdict.min_cell, key_text, cache)


def itself(mine: dict, mine_sets: dict | None, min_cell: int, key_text: str | None,
           cache: dict | None = None) -> list:
    """Two counts of this export alone whose persons are nested but for 1 to min_cell − 1:
    what the disclosure rules did not see (a Lexis model's 385 events beside the cohort's 386:
    one event outside the Lexis bands)."""
    from . import sketches as S

    keyed = _keyed(mine_sets, mine_sets, key_text)
    if keyed is None:
        return []
    sets = _sets(mine, mine_sets, cache)
    out, named = [], set()
    for i, j in _nested_candidates(sets, sets, min_cell):
        (na, va, sa), (nb, vb, sb) = sets[i], sets[j]
        if i > j or (va, vb) in named or (vb, va) in named:
            continue
        got = keyed.difference(sa, sb, S.limit(min_cell))
        if got is not None and got[0] >= 0 and _nested(got, min_cell):
            out.append(Nested(na, va, nb, vb, "this export itself", *got))
            named.add((va, vb))
    return out


# the populations of an output, which three outputs combine: its arms, its rates rows, the
# models' persons and events (not every row and sum: their pairs would be too many)
POPULATIONS = ("cohort[", "rates[", "models.")


def _population(name: str) -> bool:
    """A count of a population (an arm, a rates row, a model's persons or events, the last
    attrition step: what session 7 sketched), not a row, sum, curve point or term."""
    return (name.startswith(POPULATIONS) or name.startswith("attrition.")) and \
        (not name.startswith("models.") or "[" not in name) and "=*" not in name


def _populations(pub: dict, doc: dict, cache: dict) -> list:
    return [x for x in _sets(pub, doc, cache) if _population(x[0]) and
            not x[0].startswith("attrition.")]


def combined(mine: dict, mine_sets: dict | None, others: list, min_cell: int,
             key_text: str | None, cache: dict, found: list) -> list:
    """Three outputs together: a population of this export against the sum or difference
    of two populations of other outputs (all aged 40-90 in one, the men in another and the
    women aged 40-89 here give the 3 women aged 89), by the linearity of the sketches: the
    sketch of Y + Z or of Z − Y is the sum or difference of theirs."""
    from . import sketches as S

    keyed = None
    theirs = []
    for o, (pub, doc, where) in enumerate(others):
        k = _keyed(mine_sets, doc, key_text)
        if k is not None:
            keyed = k
            theirs += [(f"{n} in {where}", v, sk, o) for n, v, sk in
                       _populations(pub, doc, cache)]
    if keyed is None or len(theirs) < 2:
        return []
    mine_l = _populations(mine, mine_sets, cache)
    combos = []
    for i, (ny, vy, sy, oy) in enumerate(theirs):
        for nz, vz, sz, oz in theirs[i + 1:]:
            if oy == oz:
                continue   # (two of one output: a pair of outputs, compared already)
            combos += [(f"{ny} plus {nz}", vy + vz, sy + sz),
                       (f"{nz} minus {ny}", vz - vy, sz - sy),
                       (f"{ny} minus {nz}", vy - vz, sy - sz)]
    named = {(d.here, d.there) for d in found}
    most = S.limit(min_cell)
    out = []
    for i, j in _nested_candidates(mine_l, combos, min_cell):
        (na, va, sa), (nb, vb, sb) = mine_l[i], combos[j]
        if (va, vb) in named:
            continue
        got = keyed.difference(sa, sb, most)
        if got is None or got[0] < 0:
            continue   # (undecided here is a sum's persons counted twice: not a few persons)
        if _nested(got, min_cell):
            out.append(Nested(na, va, nb, vb, "those outputs together", *got))
            named.add((va, vb))
    return out


def _nested(got: tuple[int, int], min_cell: int) -> bool:
    """One side empty, the other 1 to min_cell − 1 persons."""
    return min(got) == 0 and 1 <= max(got) <= min_cell - 1


def export_record(verdict, dest: Path, files: list[str]) -> dict:
    m = verdict.manifest
    return {"event": "export", "out": str(Path(verdict.out).resolve()),
            "dest": str(Path(dest).resolve()), "manifest_sha256": m["manifest_sha256"],
            "study": {"name": m["study"]["name"], "sha256": m["study"]["sha256"]},
            "data_manifest_sha256": m["data_manifest_sha256"],
            "data_persons_sha256": m.get("data_persons_sha256"), "min_cell": verdict.min_cell,
            "project": m.get("project"), "files": files,
            "published": (pub := published({p: c for p, c in verdict.contents.items()
                                             if p in files}, m)),
            "sketches": _recorded_sketches(verdict.person_sets, pub)}


# -- the persons behind the counts (secure/sketches.py) -----------------------------------------
def sketches_of(out: Path, manifest: dict, register: Register | None) -> dict | None:
    """The sketches of the persons behind a run's counts, checked against the SHA-256 its
    outputs.json records (which the run's audit record names), or None for a run that
    recorded none (an hpcstudy before sketches). An exported copy (no private folder) uses
    those the register recorded with an export of exactly its outputs. A recorded file missing
    or changed is a one-line refusal: without it nested populations would pass."""
    from . import sketches as S

    want = manifest.get("sketches_sha256")
    if want is None:
        return None
    path = Path(out) / S.NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if not (Path(out) / "private").exists():
            # an exported copy: what the register recorded for exactly these outputs (a run
            # whose private folder is gone has no kept study either, so the gate holds it all)
            return register.sketches_of(manifest["manifest_sha256"]) if register else None
        raise UserError(f"{out}: {S.NAME} is missing: the run recorded the persons behind "
                        "its counts there, and the export register needs them",
                        fix="export only outputs as the run left them, or run the study "
                            "again") from None
    except OSError as e:
        raise UserError(f"{out}: {S.NAME} cannot be read ({e.strerror})",
                        fix="export only outputs as the run left them") from e
    import hashlib

    if hashlib.sha256(data).hexdigest() != want:
        raise UserError(f"{out}: {S.NAME} is not the one its run wrote (its SHA-256 differs "
                        f"from outputs.json's): the persons behind the counts were edited",
                        fix="export only outputs as the run left them, or run the study "
                            "again")
    try:
        doc = json.loads(data)
        S.load(doc)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{out}: {S.NAME} is damaged ({e})",
                        fix="run the study again") from e
    return doc


def _recorded_sketches(doc: dict | None, pub: dict) -> dict | None:
    """What the register keeps of a run's sketches: those of the counts this export
    published."""
    if doc is None:
        return None
    return {**{k: v for k, v in doc.items() if k != "sets"},
            "sets": {k: v for k, v in doc["sets"].items() if k in pub["counts"]}}


@dataclass
class Nested:
    """Two counts whose persons differ, one set against the other, by a few persons."""
    name: str
    here: int
    other_name: str
    there: int
    other: str
    only_here: int | None     # None: the register could not tell how many
    only_there: int | None

    def __str__(self) -> str:
        if self.only_here is None:
            size = "may differ by a few persons (the register could not tell how many)"
        else:
            size = (f"differ by {self.only_here} person(s) only here and {self.only_there} "
                    "only there")
        there = "" if self.other_name == self.name else f"{self.other_name} is "
        return (f"{self.name} is {self.here} here and {there}{self.there} in {self.other}: "
                f"the persons behind them {size}")


def _sets(pub: dict, doc: dict, cache: dict | None = None) -> list[tuple[str, int, object]]:
    """(name, published count, sketch) for every sketched count a run published, for every
    sum of rows it publishes whose rows are all sketched (``pub["sums"]``: the sum of their
    sketches), and for persons − events where a row or sum has both (the persons without the
    event)."""
    from . import sketches as S

    if cache is not None and id(doc) in cache:
        return cache[id(doc)][1]
    counts = pub["counts"]
    _, sk = S.load(doc)
    out = [(k, counts[k], s) for k, s in sorted(sk.items()) if isinstance(counts.get(k), int)]
    have = {k: (v, s) for k, v, s in out}
    for name, members in sorted((pub.get("sums") or {}).items()):
        if members and isinstance(members[0], list):   # a curve's sums to each day, a run
            if all(m in have for _, m in members):
                v, total = 0, None
                for sum_name, m in members:
                    v, total = v + have[m][0], have[m][1] if total is None else \
                        total + have[m][1]
                    if sum_name is not None:
                        out.append((sum_name, v, total))
                        have[sum_name] = (v, total)
        elif members and all(m in have for m in members):
            total = sum((have[m][1] for m in members[1:]), have[members[0]][1])
            out.append((name, sum(have[m][0] for m in members), total))
            have[name] = out[-1][1:]
    for k, v, s in list(out):
        if k.endswith(".persons"):
            e = k[:-len(".persons")] + ".events"
            if e in have:
                out.append((f"{k}-events", v - have[e][0], s - have[e][1]))
    if cache is not None:
        cache[id(doc)] = (doc, out)   # (the document kept: its id stays its own)
    return out


def _candidates(mine: list, theirs: list, min_cell: int) -> list[tuple[int, int]]:
    """The pairs (i, j) whose persons may differ by 1 to min_cell − 1 on one side while their
    published counts differ. A difference with ``a`` persons only on one side raises its
    cells' counts by at most 3·a in all, so a pair whose counts differ by more than
    3·(min_cell − 1) both ways has at least min_cell persons on each side: never held (and
    never peeled). Vectorised, so that thousands of rows and sums compare in a second."""
    import numpy as np

    if not mine or not theirs:
        return []
    a = np.stack([s.count for _, _, s in mine])
    b = np.stack([s.count for _, _, s in theirs])
    va = np.array([v for _, v, _ in mine])
    vb = np.array([v for _, v, _ in theirs])
    na = np.array([s.n for _, _, s in mine])
    nb = np.array([s.n for _, _, s in theirs])
    out: list[tuple[int, int]] = []
    step = max(1, 20_000 // len(theirs))
    for lo in range(0, len(mine), step):
        d = a[lo:lo + step, None, :] - b[None, :, :]
        pos = np.clip(d, 0, None).sum(axis=2)
        neg = pos - d.sum(axis=2)
        ok = (np.minimum(pos, neg) <= 3 * (min_cell - 1)) & \
            (va[lo:lo + step, None] != vb[None, :]) & \
            (np.abs(na[lo:lo + step, None] - nb[None, :]) <= a.shape[1])
        out += [(int(i) + lo, int(j)) for i, j in zip(*np.nonzero(ok), strict=True)]
    return out


def _keyed(mine_sets: dict | None, their_sets: dict | None, key_text: str | None):
    """The hashes both sides' sketches were made with, or None when they cannot be
    subtracted (one has none, or another size or key)."""
    from . import sketches as S

    if mine_sets is None or their_sets is None or key_text is None or \
            any(mine_sets.get(k) != their_sets.get(k)
                for k in ("format", "cells", "key_id", "hash_id")):
        return None
    keyed = S.Keyed(key_text, mine_sets["cells"])   # (the cells and checks: no ids' key)
    return keyed if keyed.hash_id == mine_sets["hash_id"] else None


def compare(mine: dict, mine_sets: dict | None, theirs: dict, their_sets: dict | None,
            min_cell: int, other: str, key_text: str | None, cache: dict | None = None) -> list:
    """Everything two outputs of the same data publish that differs by a few persons: their
    counts (:func:`differences`) and the persons behind them (:func:`nested`)."""
    keyed = _keyed(mine_sets, their_sets, key_text)
    sketched = None if keyed is None else (set(mine_sets["sets"]), set(their_sets["sets"]))
    found = differences(mine, theirs, min_cell, other, sketched)
    return found + nested(mine, mine_sets, theirs, their_sets, min_cell, other, keyed, found,
                          cache)


def nested(mine: dict, mine_sets: dict | None, theirs: dict, their_sets: dict | None,
           min_cell: int, other: str, keyed, found: list, cache: dict | None = None) -> list:
    """Counts of this export whose persons differ from those behind a count of the other
    outputs by 1 to min_cell − 1 persons on one side while the two published counts differ
    (always found up to 2·(min_cell − 1) persons in all, or held as undecided; beyond, where
    the sketches peel: about 98 % of differences of 100 persons in all with 3 × 64 cells).
    Where either has no sketches (an older run: ``keyed`` is None), the events of every
    population are paired with those of every other population whatever its size.
    ``found``: the differences already named (not repeated)."""
    from . import sketches as S

    named = {(d.here, d.there) for d in found}
    if keyed is None:
        return _without_sketches(mine, theirs, min_cell, other, named)
    most = S.limit(min_cell)
    out = []
    mine_l = _sets(mine, mine_sets, cache)
    theirs_l = _sets(theirs, their_sets, cache)
    # two populations: held on a small side alone (session 7's rule: the other side may be
    # published later, and populations are few); every other pair (rows, sums, curve points,
    # terms: many and often small, so that on a small side alone nearly any two would be
    # held) when one is nested in the other but for 1 to min_cell − 1 persons
    pop_a = [x for x in mine_l if _population(x[0])]
    pop_b = [x for x in theirs_l if _population(x[0])]
    pairs = [(pop_a[i], pop_b[j], True) for i, j in _candidates(pop_a, pop_b, min_cell)]
    pairs += [(mine_l[i], theirs_l[j], False)
              for i, j in _nested_candidates(mine_l, theirs_l, min_cell)
              if not (_population(mine_l[i][0]) and _population(theirs_l[j][0]))]
    # the same count in both first: a pair of numbers is named once, by its own name if it can
    pairs.sort(key=lambda p: p[0][0] != p[1][0])
    for (na, va, sa), (nb, vb, sb), broad in pairs:
        if (va, vb) in named:
            continue
        got = keyed.difference(sa, sb, most)
        if got is None:
            out.append(Nested(na, va, nb, vb, other, None, None))
        elif got[0] >= 0 and (any(1 <= x <= min_cell - 1 for x in got) if broad
                              else _nested(got, min_cell)):
            # (beyond 2·(min_cell − 1) in all, wherever it peels: 1 only here and 20 only
            # there gives the 1 away beside a count of the 20 published elsewhere)
            out.append(Nested(na, va, nb, vb, other, *got))
        else:
            continue
        named.add((va, vb))
    return out


def _support(sets: list):
    """Each set's cells with anybody in them, as bits (192 cells: three 64-bit words)."""
    import numpy as np

    on = np.stack([s.count > 0 for _, _, s in sets])
    words = on.shape[1] // 64 + (on.shape[1] % 64 > 0)
    on = np.pad(on, ((0, 0), (0, 64 * words - on.shape[1])))
    return np.packbits(on.reshape(len(sets), words, 64), axis=2,
                      bitorder="little").view(np.uint64).reshape(len(sets), words)


def _nested_candidates(mine: list, theirs: list, min_cell: int) -> list[tuple[int, int]]:
    """The pairs (i, j) that may be one set inside the other but for 1 to min_cell − 1
    persons, with different published counts: their sizes 1 to min_cell − 1 apart, the
    smaller's cells among the larger's (as bits, then as counts: a set inside another adds
    nothing to any cell). Sorted by size and screened with NumPy, so that thousands of rows,
    sums and curve points compare in a fraction of a second."""
    import numpy as np

    if not mine or not theirs:
        return []
    na = np.array([s.n for _, _, s in mine])
    nb = np.array([s.n for _, _, s in theirs])
    order = np.argsort(nb, kind="stable")
    lo = np.searchsorted(nb[order], na - (min_cell - 1), side="left")
    hi = np.searchsorted(nb[order], na + (min_cell - 1), side="right")
    i = np.repeat(np.arange(len(mine)), hi - lo)
    if i.size == 0:
        return []
    j = order[np.arange(i.size) - np.repeat(np.cumsum(hi - lo) - (hi - lo), hi - lo) +
              np.repeat(lo, hi - lo)]
    va = np.array([v for _, v, _ in mine])
    vb = np.array([v for _, v, _ in theirs])
    keep = (na[i] != nb[j]) & (va[i] != vb[j])
    i, j = i[keep], j[keep]
    sa, sb = _support(mine), _support(theirs)
    big_a = na[i] > nb[j]
    inside = np.where(big_a[:, None], sb[j] & ~sa[i], sa[i] & ~sb[j])
    keep = ~inside.any(axis=1)
    i, j, big_a = i[keep], j[keep], big_a[keep]
    if i.size == 0:
        return []
    ca = np.stack([s.count for _, _, s in mine])
    cb = np.stack([s.count for _, _, s in theirs])
    d = ca[i] - cb[j]
    keep = np.where(big_a, (d >= 0).all(axis=1), (d <= 0).all(axis=1))
    return list(zip(i[keep].tolist(), j[keep].tolist(), strict=True))


def _without_sketches(mine: dict, theirs: dict, min_cell: int, other: str,
                      named: set) -> list:
    """Outputs without sketches: nested populations cannot be told from unrelated ones, so
    every population's events (and persons without the event) are paired with every other's,
    whatever their sizes."""
    out = []
    for n, e in sorted({tuple(p) for p in mine.get("populations", ())}):
        for m_, f in sorted({tuple(p) for p in theirs.get("populations", ())}):
            for what, x, y in (("events", e, f), ("persons without the event", n - e, m_ - f)):
                if 0 < abs(x - y) < min_cell and (x, y) not in named:
                    out.append(Difference(f"the {what} among {n} persons here and {m_} "
                                          "there (no sketches to tell nested from unrelated)",
                                          x, y, other))
                    named.add((x, y))
    return out
