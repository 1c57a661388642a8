"""The output manifest: what a run declares it exported, so the gate can allow only that.

A run writes ``OUT/outputs.json``::

    {"format": "hpcstudy-outputs/1",
     "study": {"name": "statins_mi.washout_2y", "sha256": "…", "variants": ["washout_2y", …]},
     "data_manifest_sha256": "…", "min_cell": 5, "round_to": 0, "project": "FSEID-…" | null,
     "files": [
       {"path": "results.json", "kind": "results", "sha256": "…",
        "sections": {"cohort": {"kind": "cohort", "columns": [{"name": "label", "role": "key"},
                                                               {"name": "persons", "role": "count"},
                                                               …]},
                     "attrition.statin": {"kind": "attrition", "columns": […]},
                     "models.cox": {"kind": "model", "columns": […terms…],
                                    "scalars": {"persons": "count", "loglik": "derived", …}},
                     …},
        "meta": ["planted_truth", "run", "study"]},
       {"path": "tables/cohort.csv", "kind": "cohort", "section": "cohort", "sha256": "…",
        "columns": [{"name": "label", "role": "key"}, …]},
       {"path": "plan.txt", "kind": "plan", "sha256": "…"}],
     "manifest_sha256": "…"}

``manifest_sha256`` is the SHA-256 of the canonical JSON of everything else: a hand edit that
does not recompute it is caught. ``private/`` is never listed; ``sketches_sha256`` (where the
run kept ``private/sketches.json``, the persons behind its counts for the export register)
binds that private file to the run without exporting it. The kinds and the columns each
may hold are fixed here (``KINDS``): a run can only declare what this catalogue allows, and the
gate (``gate.py``) accepts nothing else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

FORMAT = "hpcstudy-outputs/1"
NAME = "outputs.json"

RATE = ("person_years", "rate_per_1000py", "lower_95", "upper_95")
ESTIMATES = ("coef", "se", "HR", "OR", "RR", "lower_95", "upper_95", "z", "p")
FLAGS = ("suppressed", "withheld")
# names a free key column (a covariate in rates: {by: …} or a measure's by:) may not take:
# they would collapse into, or pass for, a count, an estimate or a flag
RESERVED = {"persons", "events", "at_risk", "n", "persons_other", "events_other", "day",
            "count", "deaths", *RATE, *ESTIMATES, *FLAGS, "proportion", "survival",
            "cumulative_incidence", "pnr", "cpr", "cpr_nr", "date"}


@dataclass(frozen=True)
class Kind:
    """A table kind: its key columns (None: keys are named by the study), count columns and
    derived columns (estimates, rates, intervals). Every column has exactly one role."""
    keys: tuple[str, ...] | None
    counts: tuple[str, ...]
    derived: tuple[str, ...]
    ordered_key: str | None = None      # a key that may take a distinct value on every row
    bands: tuple[str, ...] = ()         # keys whose values are numbers or bands (40-49, 80+)


KINDS: dict[str, Kind] = {
    # a fixed-horizon outcome's cohort and rates tables hold a proportion instead of a rate
    "cohort": Kind(("label",), ("persons", "events"), (*RATE, "proportion")),
    "rates": Kind(None, ("persons", "events"), (*RATE, "proportion")),
    "lexis": Kind(("group", "age_band", "period"), ("persons", "events"), RATE,
                  bands=("age_band", "period")),
    "curves": Kind(("group", "day"), ("at_risk", "events"),
                   ("survival", "lower_95", "upper_95", "cumulative_incidence"),
                   ordered_key="day"),
    "attrition": Kind(("step",), ("persons",), ()),
    "model": Kind(("term",), ("persons", "events", "persons_other", "events_other"),
                  ESTIMATES),
    "hospitals": Kind(("hospital",), ("persons", "events"), (
        "expected", "oe", "lower_95", "upper_95", "limit95_low", "limit95_high",
        "limit998_low", "limit998_high")),
    "measure": Kind(None, ("persons", "events"), (
        "proportion", "lower_95", "upper_95", "person_years", "rate", "standardised_rate",
        "standardised_proportion", "standardised_lower_95", "standardised_upper_95",
        "expected", "sir", "sir_lower_95", "sir_upper_95"),
                    bands=("age_band", "time_band", "interval")),
    # comparative designs (hpcstudy/designs): Table 1, balance, preference-score distribution
    "table1": Kind(("variable", "level", "arm"), ("persons",),
                   ("percent", "mean", "sd", "median", "q1", "q3")),
    "balance": Kind(("variable", "level"), (), ("smd_before", "smd_after")),
    "preference": Kind(("arm", "bin"), ("persons",), (), bands=("bin",)),
    # Table 1 of the matched or weighted cohort: weighted sums, percents, means and SDs
    "table1_adjusted": Kind(("variable", "level", "arm"), ("persons",),
                            ("weighted_persons", "percent", "mean", "sd")),
}
DESIGN_TABLES = ("table1", "balance", "preference", "table1_adjusted")
# results.json's sections: a table of kind K is the top-level list K (cohort, rates, table1 …),
# but for these, which hold several tables or models by name
NESTED = {"attrition": "attrition", "models": "model", "measures": "measure"}
SINGLE = {"lexis_model": "model"}


def table_sections() -> list[str]:
    """The kinds written as one top-level results.json list named like the kind."""
    return [k for k in KINDS if k not in ("model", "attrition", "measure")]


def kind_of_section(path: str) -> str | None:
    """The kind a results.json section of this path must be, None when no section is there."""
    head, dot, name = path.partition(".")
    if dot:
        return NESTED.get(head) if name and "." not in name else None
    return SINGLE.get(head) or (head if head in table_sections() else None)


# a model's single values, by role
MODEL_SCALARS = {"n": "count", "persons": "count", "events": "count", "loglik": "derived",
                 "newton_steps": "meta", "standard_errors": "errors"}
# which standard errors a model reports: sandwich errors clustered by person, or the inverse
# information (a word from this list, never free text)
STANDARD_ERRORS = ("robust", "model-based")
MODEL_NOTES = ("withheld", "error")        # a withheld or failed model: one reason, no numbers
TEXT_KINDS = ("plan",)
# the study report (hpcstudy/report): report.html and its tables as Markdown and formatted CSV,
# checked by the report's own independent parse (hpcstudy/report/verify.py)
REPORT_KINDS = ("report", "report_table")
# the run record (run_record.py): how the run ran, apart from results.json, whose bytes do not
# depend on the launcher or the machine; every field of a fixed type, none a count of persons
RUN_RECORD = "run.json"
RUN_FORMAT = "hpcstudy-run/1"
RUN_FIELDS = {"format": str, "engine": str, "launcher": str, "workers": (int, type(None)),
              "device": str, "peak_device_memory_mib": (int, type(None)), "hardware": list,
              "hpcstudy_version": str, "code_sha256": str, "started": str, "finished": str,
              "wall_seconds": (float, int)}
MACHINE_FIELDS = {"cpu": str, "cores": int, "gpus": list}
RUN_ENGINES = ("reference", "dask")
RUN_LAUNCHERS = ("local", "processes", "slurm", "mpi", "client")
RUN_DEVICES = ("cpu", "gpu", "standin")
FILE_KINDS = ("results", *TEXT_KINDS, "run", *KINDS, *REPORT_KINDS)
# audit.json, beside the manifest rather than in it (it differs from run to run): the run's
# audit chain head and nothing else
AUDIT_HEAD = "audit.json"
AUDIT_FIELDS = {"log": str, "seq": int, "hash": str, "chain": str, "command": str, "key_id": str}
# results.json's fields that hold no counts (design: the method, its settings and warnings)
META = ("study", "run", "planted_truth", "design")


class ManifestError(Exception):
    """A declaration the catalogue does not allow (a bug in the writer, or an edit)."""


def role(kind: str, column: str, keys: tuple[str, ...] = ()) -> str:
    """The role of ``column`` in a table of ``kind``: key, count, derived or flag."""
    k = KINDS[kind]
    if column in k.counts:
        return "count"
    if column in k.derived:
        return "derived"
    if column in FLAGS:
        return "flag"
    if k.keys is not None and column in k.keys:
        return "key"
    if k.keys is None and column in keys and column not in RESERVED:
        return "key"
    raise ManifestError(f"column {column!r} is not one a {kind} table may hold")


# the header an empty table of these kinds still gets: every row of theirs holds all of these
# columns, so a reader of a table with nothing shown gets its columns, not an empty file
EMPTY_HEADER = {"curves": ("group", "day", "at_risk", "events", "survival", "lower_95",
                           "upper_95", "cumulative_incidence")}


def columns_of(rows: list[dict], kind: str | None = None) -> list[str]:
    """Column names in the order the CSV writer uses (first appearance); for an empty table of
    a kind in EMPTY_HEADER, that kind's columns."""
    if not rows and kind in EMPTY_HEADER:
        return list(EMPTY_HEADER[kind])
    return list(dict.fromkeys(k for r in rows for k in r))


def table_schema(kind: str, rows: list[dict], keys: tuple[str, ...] = ()) -> list[dict]:
    return [{"name": c, "role": role(kind, c, keys)} for c in columns_of(rows, kind)]


def model_schema(m: dict) -> dict:
    """A model section: its terms' columns and its single values (or a note only)."""
    notes = [k for k in MODEL_NOTES if k in m]
    if notes:
        return {"kind": "model", "columns": [], "scalars": {k: "note" for k in m}}
    scalars = {}
    for k in m:
        if k == "terms":
            continue
        if k not in MODEL_SCALARS:
            raise ManifestError(f"model field {k!r} is not one a model result may hold")
        scalars[k] = MODEL_SCALARS[k]
    return {"kind": "model", "columns": table_schema("model", m.get("terms", [])),
            "scalars": scalars}


def results_sections(res: dict, free_keys: dict[str, tuple[str, ...]]) -> dict[str, dict]:
    """Every table or model inside a results document, by its path, with its schema.
    ``free_keys`` names the key columns of rates and of each measure ("measures.NAME")."""
    out: dict[str, dict] = {}
    for where, keys in free_keys.items():
        clash = [k for k in keys if k in RESERVED]
        if clash:
            raise ManifestError(f"{where} is by {clash}, the name of an output column")
    for g, rows in res.get("attrition", {}).items():
        out[f"attrition.{g}"] = {"kind": "attrition", "columns": table_schema("attrition", rows)}
    for name in table_sections():
        if name in res:
            out[name] = {"kind": name, "columns": table_schema(name, res[name],
                                                              free_keys.get(name, ()))}
    for k, m in res.get("models", {}).items():
        out[f"models.{k}"] = model_schema(m)
    if "lexis_model" in res:
        out["lexis_model"] = model_schema(res["lexis_model"])
    for k, rows in res.get("measures", {}).items():
        out[f"measures.{k}"] = {"kind": "measure", "columns": table_schema(
            "measure", rows, free_keys.get(f"measures.{k}", ()))}
    return out


def csv_value(v: str):
    """An exported CSV cell read back: None (empty), an int, a float, else the text. The one
    reading the gate and the report share (the report's re-checker keeps its own)."""
    if v == "":
        return None
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(doc: dict) -> bytes:
    body = {k: v for k, v in doc.items() if k != "manifest_sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def study_bytes(study) -> bytes:
    """The study file (the same for all its variants), else its canonical text: what a run
    keeps in ``OUT/private/study`` so the gate can vouch for the text of its outputs."""
    src = Path(study.source)
    if study.source != "<python>" and src.is_file():
        return src.read_bytes()
    return json.dumps(study.to_dict(), sort_keys=True, default=str).encode()


def study_sha256(study) -> str:
    return sha256(study_bytes(study))


def keep_study(out: Path, study) -> None:
    """Keep the study the run ran in ``OUT/private/study`` (never exported): the export gate
    re-derives from it, and only from it, the numbers and codes its outputs' text may hold."""
    from .text import KEPT

    (Path(out) / KEPT).write_bytes(study_bytes(study))


def build(out: Path, entries: list[dict], *, study, data_manifest_sha256: str, min_cell: int,
          round_to: int, project: str | None, data_persons_sha256: str | None = None,
          sketches_sha256: str | None = None) -> dict:
    """The manifest of the files ``entries`` (each path, kind and schema) under ``out``: each
    file's SHA-256 is taken from the bytes written."""
    files = []
    for e in sorted(entries, key=lambda e: e["path"]):
        if e["kind"] not in FILE_KINDS:
            raise ManifestError(f"{e['path']}: unknown kind {e['kind']!r}")
        path = Path(out) / e["path"]
        files.append({**e, "sha256": sha256(path.read_bytes())})
    from . import text

    data = study_bytes(study)
    # the numbers, codes and names the study declares: the text of the outputs may hold these
    # (text.py); the gate re-derives them from the study kept in OUT/private/study
    vocab = text.as_record(text.vocabulary(text.parse(data), min_cell))
    doc = {"format": FORMAT,
           "study": {"name": study.name, "sha256": sha256(data),
                     "variants": list(study.variant_names), "vocabulary": vocab},
           "data_manifest_sha256": data_manifest_sha256,
           "data_persons_sha256": data_persons_sha256, "min_cell": min_cell,
           "round_to": round_to, "project": project, "files": files}
    if sketches_sha256 is not None:
        # private/sketches.json (the persons behind the counts, for the export register):
        # bound to the run here, since the run's audit record names this file's hash
        doc["sketches_sha256"] = sketches_sha256
    doc["manifest_sha256"] = sha256(canonical(doc))
    return doc


def write(out: Path, doc: dict) -> None:
    (Path(out) / NAME).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
