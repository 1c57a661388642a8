"""The bad-input corpus: every way a user (or the machine) can hand hpcstudy something wrong
that is not the content of a study file (the study language has its own tests).

A case is data: a name, the command line, what to set up first, the exit code and a fragment
the one-line message must contain. ``tests/test_bad_inputs.py`` runs them all and asserts one
line on stderr, the exact exit code, no traceback and nothing written.

Placeholders in ``argv`` and ``env`` (filled by ``Ctx.fill``):
``{tmp}`` the case's own folder (also the working directory), ``{data}`` a shared small dataset
(read-only), ``{study}`` a study valid for it, ``{run}`` a finished run of that study on it
(read-only), ``{key}`` a valid key file, ``{bef}`` a valid ``bef`` extract, ``{long}`` a path
named by 300 characters, ``{longname}`` one named by 128 characters in 256 bytes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BINARY = bytes(range(256)) * 4
LATIN1 = "name: ci\ndescription: Århus sygehus\n".encode("latin-1")


class Ctx:
    """What a case's setup can use; see the module docstring for the placeholders."""

    def __init__(self, tmp: Path, data: Path, study: Path, run: Path):
        self.tmp, self.data, self.study, self.run = tmp, data, study, run
        self.key = self.file("project.key", b"k" * 48)
        self.bef = self.file("bef.csv", "cpr,koen,foed_dag,region\n010150-1234,1,1950-01-01,"
                                        "1084\n0202601111,2,1960-02-02,1081\n")

    def fill(self, text: str) -> str:
        return text.format(tmp=self.tmp, data=self.data, study=self.study, run=self.run,
                           key=self.key, bef=self.bef, long=self.tmp / ("o" * 300),
                           longname=self.tmp / ("æ" * 128))

    def file(self, name: str, content: str | bytes) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
        return p

    def dir(self, name: str) -> Path:
        p = self.tmp / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def copy_data(self, name: str = "data") -> Path:
        return Path(shutil.copytree(self.data, self.tmp / name))

    def copy_run(self, name: str = "out") -> Path:
        return Path(shutil.copytree(self.run, self.tmp / name))

    def edit_manifest(self, root: Path, edit: Callable[[dict], object]) -> None:
        m = json.loads((root / "manifest.json").read_text())
        edit(m)
        (root / "manifest.json").write_text(json.dumps(m))

    def fake(self, command: str, stdout: str = "", stderr: str = "", code: int = 1) -> None:
        """A stand-in for a Slurm command, first on PATH (see ``Case.env``)."""
        script = self.file(f"bin/{command}", "#!/bin/sh\n"
                           f"printf '%s' '{stdout}'\nprintf '%s' '{stderr}' >&2\nexit {code}\n")
        script.chmod(0o755)


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    code: int = 2
    says: str = ""                 # a fragment of the message (case-insensitive)
    setup: Callable[[Ctx], object] | None = None
    env: dict[str, str] = field(default_factory=dict)
    real: bool = False             # also run through a fresh interpreter
    report: bool = False           # a check's report: one line per problem, then the summary
    full_disk: bool = False        # the case's writes land on a full file system
    read_only: bool = False        # {tmp}/disk is a read-only file system (root ignores chmod)
    writes: bool = False           # may leave files in {tmp} (a report, a log): not checked
    may_leave: tuple[str, ...] = ()   # globs (under {tmp}) of whole files it may leave

    @property
    def command(self) -> str:
        words = [a for a in self.argv[:2] if not a.startswith("-") and "{" not in a]
        return " ".join(words[:2] if words[:1] in (["data"], ["audit"], ["exports"]) else words[:1])


CASES: list[Case] = []


def case(name: str, *argv: str, **kw) -> None:
    CASES.append(Case(name, tuple(argv), **kw))


def _numbers(command: tuple[str, ...], option: str, bad: dict[str, str], says: str) -> None:
    for label, value in bad.items():
        case(f"{'-'.join(command).replace(' ', '-')}{option}-{label}", *command, option, value,
             says=says)


# -- numbers of every numeric option ----------------------------------------------------------
NONSENSE = {"negative": "-1", "zero": "0", "huge": "1" + "0" * 30, "text": "many",
            "fraction": "2.5", "empty": ""}
SYNTH = ("synth", "--persons", "100", "--out", "{tmp}/syn")
SYNTH_P = ("synth", "--out", "{tmp}/syn")
RUN = ("run", "{study}", "--data", "{data}", "--out", "{tmp}/out")
INGEST = ("ingest", "--register", "bef", "--input", "{bef}", "--data", "{tmp}/new",
          "--key-file", "{key}")
for what, value in NONSENSE.items():
    case(f"synth-persons-{what}", *SYNTH_P, "--persons", value, says="--persons")
for opt in ("--partitions", "--jobs"):
    for what, value in NONSENSE.items():
        case(f"synth{opt}-{what}", *SYNTH, opt, value, says=opt)
for what, value in {"negative": "-1", "huge": "1" + "0" * 30, "text": "x", "fraction": "0.5"} \
        .items():
    case(f"synth-seed-{what}", *SYNTH, "--seed", value, says="--seed")
for what, value in NONSENSE.items():
    case(f"run-workers-{what}", *RUN, "--launcher", "processes", "--workers", value,
         says="--workers")
for what, value in {"negative": "-1", "huge": "1" + "0" * 30, "text": "all",
                    "fraction": "0.5", "too-many": "100000"}.items():
    case(f"run-gpus-{what}", *RUN, "--gpus", value, says="--gpus")
for what, value in NONSENSE.items():
    case(f"ingest-partitions-{what}", *INGEST, "--partitions", value, says="--partitions")
for what, value in NONSENSE.items():
    case(f"check-outputs-min-cell-{what}", "check-outputs", "{run}", "--min-cell", value,
         says="--min-cell")
    case(f"export-min-cell-{what}", "export", "{run}", "{tmp}/dest", "--min-cell", value,
         says="--min-cell")

# -- usage: unknown commands, options, missing arguments ---------------------------------------
for leaf in (("synth",), ("data", "verify"), ("data", "summary"), ("check",), ("plan",),
             ("run",), ("ingest",), ("check-outputs",), ("export",), ("submit",), ("logs",),
             ("cancel",), ("profiles",), ("status",), ("audit", "verify"), ("audit", "head")):
    name = "-".join(leaf)
    case(f"{name}-unknown-option", *leaf, "--frobnicate", says="no such option")
case("no-such-command", "frobnicate", says="no such command")
case("data-no-such-command", "data", "frobnicate", says="no such command")
case("audit-no-such-command", "audit", "frobnicate", says="no such command")
case("synth-missing-out", "synth", "--persons", "10", says="--out")
case("data-verify-missing-dir", "data", "verify", says="directory")
case("data-summary-missing-dir", "data", "summary", says="directory")
case("check-missing-study", "check", says="study")
case("plan-missing-data", "plan", "{study}", says="--data")
case("run-missing-out", "run", "{study}", "--data", "{data}", says="--out")
case("run-bad-engine", *RUN, "--engine", "spark", says="--engine")
case("run-bad-launcher", *RUN, "--launcher", "kubernetes", says="--launcher")
case("ingest-missing-key", "ingest", "--register", "bef", "--input", "{bef}", "--data",
     "{tmp}/new", says="--key-file")
case("check-outputs-missing-out", "check-outputs", says="out")
case("export-missing-dest", "export", "{run}", says="dest")
case("submit-missing-profile", "submit", "{study}", "--data", "{data}", "--out", "{tmp}/o",
     says="--profile")
case("submit-bad-launcher", "submit", "{study}", "--profile", "ci", "--data", "{data}",
     "--out", "{tmp}/o", "--launcher", "processes", says="--launcher")
case("logs-missing-job", "logs", says="job")
case("cancel-missing-job", "cancel", says="job")
case("status-extra-option-value", "status", "--frob=1", says="no such option")
case("audit-verify-log-missing-value", "audit", "verify", "--log", says="--log")
case("audit-head-log-missing-value", "audit", "head", "--log", says="--log")
case("run-resume-without-value-abuse", *RUN, "--quiet=yes", says="--quiet")

# -- synth: OUT folders ----------------------------------------------------------------------
case("synth-out-is-a-file", *SYNTH_P, "--persons", "10", "--out", "{tmp}/f",
     setup=lambda c: c.file("f", "x"), says="not a folder")
case("synth-out-not-empty", *SYNTH_P, "--persons", "10", "--out", "{tmp}/full",
     setup=lambda c: c.file("full/thesis.tex", "x"), says="already exists", real=True)
case("synth-out-a-folder-above-here", *SYNTH_P, "--persons", "10", "--overwrite", "--out",
     "{tmp}", says="current folder")
case("synth-out-under-a-file", *SYNTH_P, "--persons", "10", "--out", "{tmp}/f/sub",
     setup=lambda c: c.file("f", "x"), says="f")
case("synth-out-300-chars", *SYNTH_P, "--persons", "10", "--out", "{long}", says="too long")
case("synth-out-name-over-255-bytes", *SYNTH_P, "--persons", "10", "--out", "{longname}",
     says="too long", real=True)
case("synth-out-dot", *SYNTH_P, "--persons", "10", "--out", ".",
     setup=lambda c: c.file("notes.txt", "mine"), says="current folder")
case("synth-out-empty-string", *SYNTH_P, "--persons", "10", "--out", "", says="--out")
case("synth-out-root", *SYNTH_P, "--persons", "10", "--out", "/", says="/")
case("synth-out-nul", *SYNTH_P, "--persons", "10", "--out", "a\0b", says="--out")
case("synth-full-disk", "synth", "--persons", "3000", "--partitions", "3", "--jobs", "1",
     "--quiet", "--out", "{tmp}/disk/syn", full_disk=True, code=1, says="cannot write")

READ_ONLY = {
    "synth": ("synth", "--persons", "50", "--quiet", "--out", "{tmp}/disk/syn"),
    "run": ("run", "{study}", "--data", "{data}", "--quiet", "--out", "{tmp}/disk/out"),
    "ingest": (*INGEST[:6], "{tmp}/disk/new", *INGEST[7:]),
    "export": ("export", "{run}", "{tmp}/disk/dest"),
    "submit": ("submit", "{study}", "--profile", "ci", "--data", "{data}", "--out",
               "{tmp}/disk/o"),
}
for cmd, argv in READ_ONLY.items():
    case(f"{cmd}-on-a-read-only-disk", *argv, read_only=True, says="write", code=1,
         env={"PATH": "{tmp}/bin:/usr/bin:/bin"},
         setup=lambda c: c.fake("sbatch", stdout="1", code=0))
case("check-audit-log-on-a-read-only-disk", "check", "{study}", read_only=True, code=1,
     env={"HPCSTUDY_AUDIT_LOG": "{tmp}/disk/audit.jsonl"}, says="audit log")

# -- data verify / data summary: broken dataset folders ---------------------------------------
for cmd in ("verify", "summary"):
    case(f"data-{cmd}-missing", "data", cmd, "{tmp}/nothing", says="does not exist")
    case(f"data-{cmd}-a-file", "data", cmd, "{tmp}/f", setup=lambda c: c.file("f", "x"),
         says="not a directory")
    case(f"data-{cmd}-no-manifest", "data", cmd, "{tmp}/d", setup=lambda c: c.dir("d"),
         says="manifest.json")
    case(f"data-{cmd}-manifest-binary", "data", cmd, "{tmp}/d",
         setup=lambda c: c.file("d/manifest.json", BINARY), says="manifest")
    case(f"data-{cmd}-manifest-not-json", "data", cmd, "{tmp}/d",
         setup=lambda c: c.file("d/manifest.json", "{partitions: 3"), says="not valid JSON")
    case(f"data-{cmd}-manifest-a-list", "data", cmd, "{tmp}/d",
         setup=lambda c: c.file("d/manifest.json", "[1, 2]"), says="manifest")
    case(f"data-{cmd}-manifest-a-directory", "data", cmd, "{tmp}/d",
         setup=lambda c: c.dir("d/manifest.json"), says="manifest.json")
    case(f"data-{cmd}-manifest-without-dictionaries", "data", cmd, "{tmp}/data",
         setup=lambda c: c.edit_manifest(c.copy_data(), lambda m: m.pop("dictionaries")),
         says="dictionaries")
    case(f"data-{cmd}-manifest-without-registers", "data", cmd, "{tmp}/data",
         setup=lambda c: c.edit_manifest(c.copy_data(), lambda m: m.pop("registers")),
         says="registers")
    case(f"data-{cmd}-manifest-partitions-text", "data", cmd, "{tmp}/data",
         setup=lambda c: c.edit_manifest(c.copy_data(), lambda m: m.update(partitions="x")),
         says="partitions")
    case(f"data-{cmd}-manifest-partitions-zero", "data", cmd, "{tmp}/data",
         setup=lambda c: c.edit_manifest(c.copy_data(), lambda m: m.update(partitions=0)),
         says="partitions")
    case(f"data-{cmd}-manifest-files-not-a-list", "data", cmd, "{tmp}/data",
         setup=lambda c: c.edit_manifest(
             c.copy_data(), lambda m: m["registers"]["bef"].update(files={"a": 1})),
         says="bef")
    case(f"data-{cmd}-manifest-truth-a-list", "data", cmd, "{tmp}/data",
         setup=lambda c: c.edit_manifest(c.copy_data(), lambda m: m.update(truth=[1])),
         says="truth")
    case(f"data-{cmd}-manifest-period-missing", "data", cmd, "{tmp}/data",
         setup=lambda c: c.edit_manifest(c.copy_data(), lambda m: m.pop("period")),
         says="period")


def _damage(c: Ctx, how: str, parts: int = 1) -> Path:
    root = c.copy_data()
    for p in range(parts):
        _damage_file(root / "bef" / f"part-{p:05d}.parquet", how)
    return root


def _damage_file(part: Path, how: str) -> None:
    if how == "missing":
        part.unlink()
    elif how == "truncated":
        part.write_bytes(part.read_bytes()[:100])
    elif how == "garbage":
        part.write_bytes(BINARY)
    elif how == "directory":
        part.unlink()
        part.mkdir()
    elif how == "flipped":   # same size, so only the checksum or the reader can tell
        b = bytearray(part.read_bytes())
        b[len(b) // 2] ^= 0xFF
        part.write_bytes(bytes(b))


for how in ("missing", "truncated", "garbage", "directory", "flipped"):
    case(f"data-verify-partition-{how}", "data", "verify", "{tmp}/data",
         setup=lambda c, h=how: _damage(c, h), code=1, report=True, says="bef/part-00000")
case("data-verify-unknown-register-in-manifest", "data", "verify", "{tmp}/data",
     setup=lambda c: c.edit_manifest(
         c.copy_data(), lambda m: m["registers"].update(nonsense=m["registers"]["bef"])),
     code=1, report=True, says="nonsense")

# -- check / plan: data folders and project files ---------------------------------------------
for cmd in ("check", "plan"):
    case(f"{cmd}-data-missing", cmd, "{study}", "--data", "{tmp}/none", says="does not exist")
    case(f"{cmd}-data-a-file", cmd, "{study}", "--data", "{tmp}/f",
         setup=lambda c: c.file("f", "x"), says="not a directory")
    case(f"{cmd}-data-manifest-without-dictionaries", cmd, "{study}", "--data", "{tmp}/data",
         setup=lambda c: c.edit_manifest(c.copy_data(), lambda m: m.pop("dictionaries")),
         says="dictionaries", real=cmd == "plan")
    case(f"{cmd}-data-dictionary-not-a-list", cmd, "{study}", "--data", "{tmp}/data",
         setup=lambda c: c.edit_manifest(
             c.copy_data(), lambda m: m["dictionaries"].update(icd10=7)), says="icd10")
    case(f"{cmd}-study-is-a-directory", cmd, "{tmp}", "--data", "{data}", says="study")
    case(f"{cmd}-study-missing", cmd, "{tmp}/none.yaml", "--data", "{data}", says="none.yaml")
    case(f"{cmd}-project-missing", cmd, "{study}", "--data", "{data}", "--project",
         "{tmp}/none.yaml", says="none.yaml")
    case(f"{cmd}-project-a-directory", cmd, "{study}", "--data", "{data}", "--project",
         "{tmp}", says="project")
    case(f"{cmd}-project-binary", cmd, "{study}", "--data", "{data}", "--project",
         "{tmp}/p.yaml", setup=lambda c: c.file("p.yaml", BINARY), says="p.yaml",
         real=cmd == "check")
    case(f"{cmd}-project-latin-1", cmd, "{study}", "--data", "{data}", "--project",
         "{tmp}/p.yaml", setup=lambda c: c.file(
             "p.yaml", "project: FSEID-1\ntitle: Hjertesygdom i Århus\n".encode("latin-1")),
         says="UTF-8")
    case(f"{cmd}-project-a-list", cmd, "{study}", "--data", "{data}", "--project",
         "{tmp}/p.yaml", setup=lambda c: c.file("p.yaml", "- bef\n- lmdb\n"), says="p.yaml")
    case(f"{cmd}-project-empty", cmd, "{study}", "--data", "{data}", "--project",
         "{tmp}/p.yaml", setup=lambda c: c.file("p.yaml", ""), says="p.yaml")
    case(f"{cmd}-project-broken-yaml", cmd, "{study}", "--data", "{data}", "--project",
         "{tmp}/p.yaml", setup=lambda c: c.file("p.yaml", "project: [a\n"), says="p.yaml")
    case(f"{cmd}-project-from-env-missing", cmd, "{study}", "--data", "{data}",
         env={"HPCSTUDY_PROJECT": "{tmp}/gone.yaml"}, says="gone.yaml")
ALL = "{bef: '*', dod: '*', vnds: '*', lpr_adm: '*', lpr_diag: '*'}"
PROJECT_SHAPES = {
    "a-number": "42\n",
    "a-string": "FSEID-00001234\n",
    "null": "~\n",
    "registers-a-string": "project: X\nregisters: bef\nperiod: [2000-01-01, 2020-12-31]\n",
    "registers-a-list-of-lists": "project: X\nregisters: [[bef]]\n"
                                 "period: [2000-01-01, 2020-12-31]\n",
    "period-a-mapping": "project: X\nregisters: {bef: '*'}\nperiod: {from: 2000}\n",
    "disclosure-a-list": f"project: X\nregisters: {ALL}\nperiod: [1968-01-01, 2023-12-31]\n"
                         "disclosure: [5]\n",
    "min-cell-huge": f"project: X\nregisters: {ALL}\nperiod: [1968-01-01, 2023-12-31]\n"
                     "disclosure: {min_cell: 100000000000000000000000}\n",
    "byte-order-mark-and-tabs": "\ufeffproject: X\n\tregisters: {bef: '*'}\n",
}
for label, content in PROJECT_SHAPES.items():
    case(f"plan-project-{label}", "plan", "{study}", "--data", "{data}", "--project",
         "{tmp}/p.yaml", setup=lambda c, x=content: c.file("p.yaml", x), says="p.yaml")
case("check-project-without-data", "check", "{study}", "--project", "{tmp}/p.yaml",
     setup=lambda c: c.file("p.yaml", "project: X\nregisters: {bef: '*'}\n"
                            "period: [2000-01-01, 2020-12-31]\n"), says="--data")
case("check-study-binary", "check", "{tmp}/s.yaml", setup=lambda c: c.file("s.yaml", BINARY),
     says="s.yaml")

# -- run: data, OUT, launchers ---------------------------------------------------------------
case("run-out-dot", "run", "{study}", "--data", "{data}", "--out", ".",
     setup=lambda c: c.file("chapter1.tex", "mine"), says="--out", real=True)
case("run-out-dotdot", "run", "{study}", "--data", "{data}", "--out", "..", says="--out")
case("run-out-is-the-data", "run", "{study}", "--data", "{tmp}/data", "--out", "{tmp}/data",
     setup=lambda c: c.copy_data(), says="data")
case("run-out-inside-the-data", "run", "{study}", "--data", "{tmp}/data", "--out",
     "{tmp}/data/out", setup=lambda c: c.copy_data(), says="data")
case("run-out-is-a-file", *RUN[:-1], "{tmp}/f", setup=lambda c: c.file("f", "x"),
     says="not a folder")
case("run-out-under-a-file", *RUN[:-1], "{tmp}/f/out", setup=lambda c: c.file("f", "x"),
     says="f")
case("run-out-300-chars", *RUN[:-1], "{long}", says="too long", real=True)
case("run-out-name-over-255-bytes", *RUN[:-1], "{longname}", says="too long")
case("run-out-empty", *RUN[:-1], "", says="--out")
case("run-data-missing", "run", "{study}", "--data", "{tmp}/none", "--out", "{tmp}/out",
     says="does not exist")
case("run-data-a-file", "run", "{study}", "--data", "{tmp}/f", "--out", "{tmp}/out",
     setup=lambda c: c.file("f", "x"), says="not a directory")
case("run-manifest-without-dictionaries", "run", "{study}", "--data", "{tmp}/data", "--out",
     "{tmp}/out", setup=lambda c: c.edit_manifest(c.copy_data(), lambda m: m.pop(
         "dictionaries")), says="dictionaries", real=True)
case("run-manifest-without-registers", "run", "{study}", "--data", "{tmp}/data", "--out",
     "{tmp}/out", setup=lambda c: c.edit_manifest(c.copy_data(), lambda m: m.pop("registers")),
     says="registers")
case("run-manifest-register-dropped", "run", "{study}", "--data", "{tmp}/data", "--out",
     "{tmp}/out", setup=lambda c: c.edit_manifest(c.copy_data(), lambda m: m["registers"].pop(
         "bef")), says="bef")
for how in ("missing", "truncated", "garbage", "directory"):
    case(f"run-partition-{how}", "run", "{study}", "--data", "{tmp}/data", "--out",
         "{tmp}/out", setup=lambda c, h=how: _damage(c, h), says="part-00000",
         real=how == "missing")
    case(f"run-reference-partition-{how}", "run", "{study}", "--data", "{tmp}/data",
         "--out", "{tmp}/out", "--engine", "reference", setup=lambda c, h=how: _damage(c, h),
         says="part-00000")
case("run-manifest-partitions-edited-to-1", "run", "{study}", "--data", "{tmp}/data", "--out",
     "{tmp}/out", setup=lambda c: c.edit_manifest(c.copy_data(), lambda m: m.update(
         partitions=1)), says="partitions")
case("run-manifest-file-size-edited", "run", "{study}", "--data", "{tmp}/data", "--out",
     "{tmp}/out", setup=lambda c: c.edit_manifest(c.copy_data(), lambda m: m["registers"][
         "vnds"]["files"][1].update(bytes=1)), says="vnds/part-00001")
case("run-manifest-truth-mangled", "run", "{study}", "--data", "{tmp}/data", "--out",
     "{tmp}/out", setup=lambda c: c.edit_manifest(c.copy_data(), lambda m: m["truth"].update(
         mi="strong")), says="truth")
case("data-summary-register-without-title", "data", "summary", "{tmp}/data",
     setup=lambda c: c.edit_manifest(c.copy_data(), lambda m: m["registers"]["bef"].pop(
         "title")), code=0)
case("run-reference-with-processes", *RUN, "--engine", "reference", "--launcher", "processes",
     says="dask engine")
case("run-slurm-unknown-profile", *RUN, "--launcher", "slurm", "--profile", "nowhere",
     says="nowhere")
case("run-slurm-binary-profile", *RUN, "--launcher", "slurm", "--profile", "bin",
     env={"HPCSTUDY_PROFILE_PATH": "{tmp}/profiles"},
     setup=lambda c: c.file("profiles/bin.yaml", BINARY), says="bin.yaml")
case("run-interface-nonsense", *RUN, "--launcher", "slurm", "--interface", "eth0; rm -rf /",
     says="interface")
case("run-resume-from-a-file", *RUN, "--resume",
     setup=lambda c: c.file("out.checkpoints", "x"), says="checkpoints")
case("run-variant-unknown", *RUN, "--variant", "nope", says="nope")
case("run-full-disk", "run", "{study}", "--data", "{data}", "--quiet", "--out",
     "{tmp}/disk/out", full_disk=True, code=1, says="cannot write",
     # finished partitions stay for --resume; each is whole (written, then renamed)
     may_leave=("disk/out.checkpoints", "disk/out.checkpoints/part-*"))

# -- ingest -----------------------------------------------------------------------------------
case("ingest-unknown-register", "ingest", "--register", "nope", "--input", "{bef}", "--data",
     "{tmp}/new", "--key-file", "{key}", says="nope")
case("ingest-input-missing", "ingest", "--register", "bef", "--input", "{tmp}/none.csv",
     "--data", "{tmp}/new", "--key-file", "{key}", says="none.csv")
case("ingest-input-a-directory", "ingest", "--register", "bef", "--input", "{tmp}/d.csv",
     "--data", "{tmp}/new", "--key-file", "{key}", setup=lambda c: c.dir("d.csv"),
     says="d.csv")
case("ingest-input-binary-csv", "ingest", "--register", "bef", "--input", "{tmp}/b.csv",
     "--data", "{tmp}/new", "--key-file", "{key}", setup=lambda c: c.file("b.csv", BINARY),
     says="b.csv")
case("ingest-input-empty", "ingest", "--register", "bef", "--input", "{tmp}/e.csv",
     "--data", "{tmp}/new", "--key-file", "{key}", setup=lambda c: c.file("e.csv", ""),
     says="e.csv")
case("ingest-input-unknown-format", "ingest", "--register", "bef", "--input", "{tmp}/x.xlsx",
     "--data", "{tmp}/new", "--key-file", "{key}", setup=lambda c: c.file("x.xlsx", "x"),
     says="format")
case("ingest-input-garbage-parquet", "ingest", "--register", "bef", "--input",
     "{tmp}/x.parquet", "--data", "{tmp}/new", "--key-file", "{key}",
     setup=lambda c: c.file("x.parquet", BINARY), says="x.parquet")
case("ingest-input-garbage-sas", "ingest", "--register", "bef", "--input",
     "{tmp}/x.sas7bdat", "--data", "{tmp}/new", "--key-file", "{key}",
     setup=lambda c: c.file("x.sas7bdat", BINARY), says="x.sas7bdat")
case("ingest-input-garbage-xpt", "ingest", "--register", "bef", "--input", "{tmp}/x.xpt",
     "--data", "{tmp}/new", "--key-file", "{key}", setup=lambda c: c.file("x.xpt", BINARY),
     says="x.xpt")
case("ingest-input-wrong-columns", "ingest", "--register", "lmdb", "--input", "{bef}",
     "--data", "{tmp}/new", "--key-file", "{key}", says="columns")
case("ingest-input-duplicate-columns", "ingest", "--register", "bef", "--input",
     "{tmp}/d.csv", "--data", "{tmp}/new", "--key-file", "{key}",
     setup=lambda c: c.file("d.csv", "cpr,koen,foed_dag,region,koen\n"
                                     "010150-1234,1,1950-01-01,1084,2\n"), says="koen")
# (a ragged row is not bad input to the command: it goes to quarantine with its reason,
# tests/test_ingest_hardened.py)
case("ingest-key-missing", "ingest", "--register", "bef", "--input", "{bef}", "--data",
     "{tmp}/new", "--key-file", "{tmp}/none.key", says="none.key")
case("ingest-key-a-directory", "ingest", "--register", "bef", "--input", "{bef}", "--data",
     "{tmp}/new", "--key-file", "{tmp}", says="key")
case("ingest-key-short", "ingest", "--register", "bef", "--input", "{bef}", "--data",
     "{tmp}/new", "--key-file", "{tmp}/s.key", setup=lambda c: c.file("s.key", b"k" * 5),
     says="bytes")
case("ingest-data-is-a-file", *INGEST[:6], "{tmp}/f", *INGEST[7:],
     setup=lambda c: c.file("f", "x"), says="not a folder")
case("ingest-data-foreign-folder", *INGEST[:6], "{tmp}/thesis", *INGEST[7:],
     setup=lambda c: c.file("thesis/chapter1.tex", "mine"), says="thesis", real=True)
case("ingest-data-manifest-broken", *INGEST[:6], "{tmp}/d", *INGEST[7:],
     setup=lambda c: c.file("d/manifest.json", "{"), says="manifest")
case("ingest-data-manifest-without-dictionaries", *INGEST[:6], "{tmp}/data", *INGEST[7:],
     setup=lambda c: c.edit_manifest(c.copy_data(), lambda m: m.pop("dictionaries")),
     says="dictionaries")
case("ingest-data-partition-garbage", *INGEST[:6], "{tmp}/data", *INGEST[7:],
     setup=lambda c: _damage(c, "garbage", parts=3), says="part-0000")
case("ingest-quarantine-a-directory", *INGEST, "--quarantine", "{tmp}/q",
     setup=lambda c: c.dir("q"), says="quarantine")
case("ingest-data-300-chars", *INGEST[:6], "{long}", *INGEST[7:], says="too long")
case("ingest-data-name-over-255-bytes", *INGEST[:6], "{longname}", *INGEST[7:],
     says="too long")
case("ingest-full-disk", *INGEST[:6], "{tmp}/disk/new", *INGEST[7:], full_disk=True, code=1,
     says="cannot write")


# -- check-outputs / export: OUT folders -------------------------------------------------------
def _broken_run(c: Ctx, rel: str, content: str | bytes) -> Path:
    out = c.copy_run()
    target = out / rel
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content)
    return out


OUTS = {
    "results-json-broken": ("results.json", '{"study": "x", "run": {'),
    "results-json-binary": ("results.json", BINARY),
    "results-json-empty": ("results.json", ""),
    "csv-ragged-long": ("tables/rates.csv", "group,persons,events\na,10,5,99,99\n"),
    "csv-ragged-short": ("tables/rates.csv", "group,persons,events\na\n"),
    "csv-binary": ("tables/rates.csv", BINARY),
    "csv-latin-1": ("tables/rates.csv", "group,persons\nÅrhus,10\n".encode("latin-1")),
}
for label, (rel, content) in OUTS.items():
    case(f"check-outputs-{label}", "check-outputs", "{tmp}/out",
         setup=lambda c, r=rel, x=content: _broken_run(c, r, x), code=1, report=True,
         says=rel, real=label == "results-json-broken")
    case(f"export-{label}", "export", "{tmp}/out", "{tmp}/dest",
         setup=lambda c, r=rel, x=content: _broken_run(c, r, x), code=1, report=True,
         says=rel, writes=True)
for cmd, extra in (("check-outputs", ()), ("export", ("{tmp}/dest",))):
    case(f"{cmd}-out-missing", cmd, "{tmp}/none", *extra, says="not a directory")
    case(f"{cmd}-out-a-file", cmd, "{tmp}/f", *extra, setup=lambda c: c.file("f", "x"),
         says="not a directory")
    case(f"{cmd}-out-300-chars", cmd, "{long}", *extra, says="too long")
case("export-dest-exists", "export", "{run}", "{tmp}/dest",
     setup=lambda c: c.file("dest/mine.txt", "x"), says="already exists")
case("export-dest-is-out", "export", "{tmp}/out", "{tmp}/out", setup=lambda c: c.copy_run(),
     says="DEST")
case("check-outputs-of-a-dataset", "check-outputs", "{data}", code=1, report=True,
     says="outputs.json is missing")
case("export-dest-a-file", "export", "{run}", "{tmp}/dest", setup=lambda c: c.file("dest", "x"),
     says="not a folder")
case("export-dest-inside-out", "export", "{tmp}/out", "{tmp}/out/tables/dest",
     setup=lambda c: c.copy_run(), says="dest")
case("export-dest-under-a-file", "export", "{run}", "{tmp}/f/dest",
     setup=lambda c: c.file("f", "x"), says="f")
case("export-dest-300-chars", "export", "{run}", "{long}", says="too long")


# -- report: OUT folders that are not a run's untouched outputs (nothing is written) -----------
def _edited_outputs(c: Ctx, edit: Callable[[dict], object]) -> Path:
    out = c.copy_run()
    doc = json.loads((out / "outputs.json").read_text())
    edit(doc)
    (out / "outputs.json").write_text(json.dumps(doc))
    return out


case("report-missing-out", "report", says="out")
case("report-unknown-option", "report", "{run}", "--frobnicate", says="no such option")
case("report-out-missing", "report", "{tmp}/none", says="not a directory")
case("report-out-a-file", "report", "{tmp}/f", setup=lambda c: c.file("f", "x"),
     says="not a directory")
case("report-out-300-chars", "report", "{long}", says="too long")
case("report-of-a-dataset", "report", "{data}", says="outputs.json is missing")
case("report-outputs-json-broken", "report", "{tmp}/out",
     setup=lambda c: _broken_run(c, "outputs.json", "{"), says="not JSON", real=True)
case("report-outputs-json-binary", "report", "{tmp}/out",
     setup=lambda c: _broken_run(c, "outputs.json", BINARY), says="outputs.json")
case("report-outputs-json-edited", "report", "{tmp}/out",
     setup=lambda c: _edited_outputs(c, lambda d: d.update(min_cell=3)),
     says="outputs.json, changed since the run wrote it")
for label, (rel, content) in OUTS.items():
    case(f"report-{label}", "report", "{tmp}/out",
         setup=lambda c, r=rel, x=content: _broken_run(c, r, x), says=f"{rel}: edited")

# -- profiles and submit ------------------------------------------------------------------------
PROFILES = {
    "binary": BINARY,
    "latin-1": LATIN1,
    "a-list": "- name\n- partition\n",
    "a-number": "42\n",
    "empty": "",
    "broken-yaml": "name: [x\n",
    "missing-walltime": "name: bad\npartition: gpu\n",
    "walltime-a-number": "name: bad\npartition: gpu\nwalltime: 3600\n",
    "nodes-negative": "name: bad\npartition: gpu\nwalltime: '01:00:00'\nnodes: -2\n",
    "nodes-huge": "name: bad\npartition: gpu\nwalltime: '01:00:00'\nnodes: 100000000000000000\n",
    "name-a-list": "name: [a]\npartition: gpu\nwalltime: '01:00:00'\n",
    "hours-over-59": "name: bad\npartition: gpu\nwalltime: '01:99:00'\n",
    "partition-smuggles-a-line": "name: bad\npartition: \"gpu\\nrm -rf ~\"\n"
                                 "walltime: '01:00:00'\n",
    "account-smuggles-a-line": "name: bad\npartition: gpu\naccount: \"a\\n#SBATCH --x\"\n"
                               "walltime: '01:00:00'\n",
}
for label, content in PROFILES.items():
    case(f"profiles-{label}", "profiles", env={"HPCSTUDY_PROFILE_PATH": "{tmp}/profiles"},
         setup=lambda c, x=content: c.file("profiles/bad.yaml", x), says="bad.yaml",
         real=label == "binary")
    case(f"submit-profile-{label}", "submit", "{study}", "--profile", "bad", "--data", "{data}",
         "--out", "{tmp}/o", "--dry-run", env={"HPCSTUDY_PROFILE_PATH": "{tmp}/profiles"},
         setup=lambda c, x=content: c.file("profiles/bad.yaml", x), says="bad.yaml")
case("profiles-path-is-a-file", "profiles", env={"HPCSTUDY_PROFILE_PATH": "{tmp}/f"},
     setup=lambda c: [c.file("f", "x"), c.file("p/bad.yaml", BINARY)], code=0)
case("profiles-a-directory-named-yaml", "profiles",
     env={"HPCSTUDY_PROFILE_PATH": "{tmp}/profiles"}, setup=lambda c: c.dir("profiles/x.yaml"),
     says="x.yaml")
SUBMIT = ("submit", "{study}", "--profile", "ci", "--data", "{data}", "--dry-run")
case("submit-account-smuggles-a-line", *SUBMIT, "--out", "{tmp}/o", "--account",
     "acc\nrm -rf ~", says="account")
case("submit-account-env-smuggles-a-line", *SUBMIT, "--out", "{tmp}/o",
     env={"HPCSTUDY_ACCOUNT": "acc; rm -rf ~"}, says="account")
case("submit-out-smuggles-a-line", *SUBMIT, "--out", "{tmp}/o\n#SBATCH --x", says="control")
case("run-account-smuggles-a-line", *RUN, "--launcher", "slurm", "--account", "a\nb",
     says="account")
case("run-out-with-a-tab", *RUN[:-1], "{tmp}/a\tb", says="control")
case("submit-unknown-profile", "submit", "{study}", "--profile", "nowhere", "--data", "{data}",
     "--out", "{tmp}/o", "--dry-run", says="nowhere")
case("submit-profile-name-a-path", "submit", "{study}", "--profile", "../../etc/passwd",
     "--data", "{data}", "--out", "{tmp}/o", "--dry-run", says="profile")
case("submit-data-missing", "submit", "{study}", "--profile", "ci", "--data", "{tmp}/none",
     "--out", "{tmp}/o", "--dry-run", says="does not exist")
case("submit-study-missing", "submit", "{tmp}/none.yaml", "--profile", "ci", "--data",
     "{data}", "--out", "{tmp}/o", "--dry-run", says="none.yaml")
case("submit-project-binary", "submit", "{study}", "--profile", "ci", "--data", "{data}",
     "--out", "{tmp}/o", "--dry-run", "--project", "{tmp}/p.yaml",
     setup=lambda c: c.file("p.yaml", BINARY), says="p.yaml")
case("submit-sbatch-missing", "submit", "{study}", "--profile", "ci", "--data", "{data}",
     "--out", "{tmp}/o", env={"PATH": "{tmp}/bin"}, setup=lambda c: c.dir("bin"),
     says="sbatch")
case("submit-sbatch-fails-in-four-lines", "submit", "{study}", "--profile", "ci", "--data",
     "{data}", "--out", "{tmp}/o", env={"PATH": "{tmp}/bin:/usr/bin:/bin"},
     setup=lambda c: c.fake("sbatch", stderr="sbatch: error: Batch job submission failed:\n"
                            "Invalid account\nor partition\ncombination\n"),
     says="sbatch", real=True)
case("submit-out-under-a-file", "submit", "{study}", "--profile", "ci", "--data", "{data}",
     "--out", "{tmp}/f/o", env={"PATH": "{tmp}/bin:/usr/bin:/bin"},
     setup=lambda c: [c.file("f", "x"), c.fake("sbatch", stdout="1", code=0)], says="f")
case("submit-out-300-chars", "submit", "{study}", "--profile", "ci", "--data", "{data}",
     "--out", "{long}", env={"PATH": "{tmp}/bin:/usr/bin:/bin"},
     setup=lambda c: c.fake("sbatch", stdout="1", code=0), says="too long")


# -- status / logs / cancel: job references and Slurm failures --------------------------------
def _job_record(c: Ctx, content: str | bytes, name: str = "o.job.json") -> None:
    c.file(name, content)


JOB_RECORDS = {
    "binary": BINARY,
    "not-json": "{job_id: 1",
    "a-list": "[1]",
    "without-job-id": '{"out": "o"}',
    "job-id-nonsense": '{"job_id": "1; rm -rf /", "log": "x"}',
    "empty": "",
}
for label, content in JOB_RECORDS.items():
    for cmd in ("status", "logs", "cancel"):
        case(f"{cmd}-job-record-{label}", cmd, "{tmp}/o",
             setup=lambda c, x=content: _job_record(c, x), says="o.job.json",
             real=(cmd, label) == ("status", "binary"))
for cmd in ("status", "logs", "cancel"):
    case(f"{cmd}-not-a-job", cmd, "nonsense", says="nonsense")
    case(f"{cmd}-job-record-a-directory", cmd, "{tmp}/o", setup=lambda c: c.dir("o.job.json"),
         says="o")
    case(f"{cmd}-ref-300-chars", cmd, "{long}", says="job")
case("cancel-scancel-fails-in-four-lines", "cancel", "12345",
     env={"PATH": "{tmp}/bin:/usr/bin:/bin"},
     setup=lambda c: c.fake("scancel", stderr="scancel: error: Kill job error on job id 12345:"
                            "\nInvalid job id specified\nscancel: error: retrying\n"
                            "scancel: error: giving up\n"), says="scancel", real=True)
case("cancel-scancel-missing", "cancel", "12345", env={"PATH": "{tmp}/bin"},
     setup=lambda c: c.dir("bin"), says="scancel")
case("cancel-scancel-silent-failure", "cancel", "12345",
     env={"PATH": "{tmp}/bin:/usr/bin:/bin"}, setup=lambda c: c.fake("scancel", code=1),
     says="scancel")
case("status-scontrol-garbage", "status", "12345", env={"PATH": "{tmp}/bin:/usr/bin:/bin"},
     setup=lambda c: [c.fake("sacct", code=1),
                      c.fake("scontrol", stdout="JobId=12345 RunTime=soon JobState=RUNNING",
                             code=0)], code=0)
case("status-sacct-garbage", "status", "12345", env={"PATH": "{tmp}/bin:/usr/bin:/bin"},
     setup=lambda c: c.fake("sacct", stdout="12345|x|RUNNING|soon|gres/gpu=many", code=0),
     code=0)
DOWN = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
case("status-slurm-controller-down", "status", "12345", env={"PATH": "{tmp}/bin:/usr/bin:/bin"},
     setup=lambda c: [c.fake("sacct", code=1), c.fake("scontrol", stderr=DOWN)], code=1,
     says="controller")
case("logs-slurm-controller-down", "logs", "12345", env={"PATH": "{tmp}/bin:/usr/bin:/bin"},
     setup=lambda c: c.fake("scontrol", stderr=DOWN), code=1, says="controller")
case("status-job-unknown-to-slurm", "status", "12345", env={"PATH": "{tmp}/bin:/usr/bin:/bin"},
     setup=lambda c: [c.fake("sacct", code=1),
                      c.fake("scontrol", stderr="slurm_load_jobs error: Invalid job id "
                             "specified\n")], code=0)
case("submit-sbatch-prints-no-job-id", "submit", "{study}", "--profile", "ci", "--data",
     "{data}", "--out", "{tmp}/o", env={"PATH": "{tmp}/bin:/usr/bin:/bin"},
     setup=lambda c: c.fake("sbatch", stdout="Submitted nothing", code=0), says="job id",
     may_leave=("o.sbatch",))   # the job may be queued: its script stays, named in the error
case("status-scontrol-missing", "status", "12345", env={"PATH": "{tmp}/bin"},
     setup=lambda c: c.dir("bin"), says="scontrol")
case("logs-scontrol-missing", "logs", "12345", env={"PATH": "{tmp}/bin"},
     setup=lambda c: c.dir("bin"), says="scontrol")
case("logs-log-is-a-directory", "logs", "{tmp}/o", env={"PATH": "{tmp}/bin:/usr/bin:/bin"},
     setup=lambda c: [c.fake("scontrol", code=1), c.dir("o.slurm-7.out"),
                      c.file("o.job.json", json.dumps(
                          {"job_id": "7", "log": str(c.tmp / "o.slurm-7.out")}))],
     says="no log")

# -- audit verify / audit head: the log's reading ---------------------------------------------
LOGS = {
    "binary": BINARY,
    "latin-1": '{"seq": 1, "command": "Århus"}\n'.encode("latin-1"),
    "a-json-list": "[1, 2]\n",
    "a-json-number": "7\n",
    "seq-text": '{"seq": "one", "hash": "x", "prev": "y"}\n',
}
for label, content in LOGS.items():
    case(f"audit-verify-{label}", "audit", "verify", "--log", "{tmp}/a.jsonl",
         setup=lambda c, x=content: c.file("a.jsonl", x), code=1, report=True, says="a.jsonl",
         real=label == "binary")
    case(f"audit-head-{label}", "audit", "head", "--log", "{tmp}/a.jsonl",
         setup=lambda c, x=content: c.file("a.jsonl", x), code=1, says="a.jsonl")
for cmd in ("verify", "head"):
    case(f"audit-{cmd}-log-a-directory", "audit", cmd, "--log", "{tmp}", says="directory")
    case(f"audit-{cmd}-env-log-a-directory", "audit", cmd, env={"HPCSTUDY_AUDIT_LOG": "{tmp}"},
         says="directory")
    case(f"audit-{cmd}-log-300-chars", "audit", cmd, "--log", "{long}", says="too long")
case("check-audit-log-a-directory", "check", "{study}", env={"HPCSTUDY_AUDIT_LOG": "{tmp}"},
     says="audit log")
case("check-audit-log-under-a-file", "check", "{study}",
     env={"HPCSTUDY_AUDIT_LOG": "{tmp}/f/audit.jsonl"}, setup=lambda c: c.file("f", "x"),
     says="audit log")

# -- exports list / exports release: the export register and a held run -----------------------
REG = {"HPCSTUDY_EXPORT_REGISTER": "{tmp}/exports.jsonl"}
REGISTERS = {
    "binary": BINARY,
    "latin-1": '{"seq": 1, "event": "Århus"}\n'.encode("latin-1"),
    "a-json-list": "[1, 2]\n",
    "a-json-number": "7\n",
    "not-json": "exported everything\n",
}
for label, content in REGISTERS.items():
    case(f"exports-list-register-{label}", "exports", "list", env=REG,
         setup=lambda c, x=content: c.file("exports.jsonl", x), code=1, says="exports.jsonl")
    case(f"exports-release-register-{label}", "exports", "release", "{tmp}/out", "--reason",
         "checked by hand", env=REG, setup=lambda c, x=content: [c.copy_run(),
                                                                 c.file("exports.jsonl", x)],
         code=1, says="exports.jsonl")
case("exports-list-register-a-directory", "exports", "list",
     env={"HPCSTUDY_EXPORT_REGISTER": "{tmp}"}, says="directory")
case("exports-list-register-under-a-file", "exports", "list",
     env={"HPCSTUDY_EXPORT_REGISTER": "{tmp}/f/exports.jsonl"}, setup=lambda c: c.file("f", "x"),
     says="exports.jsonl")
case("exports-list-extra-argument", "exports", "list", "more", says="more")
case("exports-list-unknown-option", "exports", "list", "--all", says="--all")
case("exports-list-register-300-chars", "exports", "list",
     env={"HPCSTUDY_EXPORT_REGISTER": "{long}"}, says="too long")
case("exports-release-no-reason", "exports", "release", "{run}", says="--reason")
case("exports-release-empty-reason", "exports", "release", "{tmp}/out", "--reason", "  ",
     env=REG, setup=lambda c: c.copy_run(), says="--reason")
case("exports-release-out-missing", "exports", "release", "{tmp}/none", "--reason", "ok",
     env=REG, says="none")
case("exports-release-out-a-file", "exports", "release", "{tmp}/f", "--reason", "ok", env=REG,
     setup=lambda c: c.file("f", "x"), says="not a directory")
case("exports-release-of-a-dataset", "exports", "release", "{data}", "--reason", "ok", env=REG,
     code=1, report=True, says="outputs.json")
case("exports-release-min-cell-zero", "exports", "release", "{run}", "--reason", "ok",
     "--min-cell", "0", env=REG, says="--min-cell")
case("exports-release-min-cell-huge", "exports", "release", "{run}", "--reason", "ok",
     "--min-cell", "1" + "0" * 30, env=REG, says="--min-cell")
case("exports-release-project-missing", "exports", "release", "{run}", "--reason", "ok",
     "--project", "{tmp}/gone.yaml", env=REG, says="gone.yaml")
