"""Check that an engine change left every output byte as it was: run the five examples at
2e5 persons and example 2 (diabetes incidence) at 1e6 with this checkout's hpcstudy and with
another one's (``--before SRC``: a folder holding that commit's ``hpcstudy`` and ``kernels``,
e.g. from ``git archive``), and compare the SHA-256 of every file the runs wrote, the run's
own record aside:
``run.json`` (its times, host and code version), ``audit.json`` (the audit log's chain), the
report's lines taken from ``run.json``, and in ``outputs.json`` the two hashes that follow
from those (``run.json``'s and the report's: the report is compared itself) and the hash of
the whole manifest.

    git archive BASE | tar -x -C /tmp/base
    python benchmarks/same_bytes.py --before /tmp/base --work /tmp/same-bytes \
        --data-2e5 DATA   # a dataset of 2e5 persons from this hpcstudy synth (example 4's codes)

Exits 1 and lists the files that differ, if any.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
DATA = Path("/tmp/hpcstudy-bench")
RUNS = [(f"{ex}-200000", EXAMPLES / f"{ex}.yaml", 200_000) for ex in
        ("statins_mi", "diabetes_incidence", "mi_mortality", "mi_hospitals", "sglt2_dpp4_hf")]
RUNS.append(("diabetes_incidence-1000000", EXAMPLES / "diabetes_incidence.yaml", 1_000_000))
SKIP = {"run.json", "audit.json"}
RUN_LINE = re.compile(r'(<span data-source="run\.json"[^>]*>).*?(</span>)', re.S)


def _bytes(p: Path) -> bytes:
    """A file's bytes, the run's own record left out (see the module docstring)."""
    data = p.read_bytes()
    if p.name == "report.html":
        return RUN_LINE.sub(r"\1\2", data.decode()).encode()
    if p.name == "outputs.json" and p.parent.name != "private":
        m = json.loads(data)
        m.pop("manifest_sha256", None)
        for f in m.get("files", []):
            if f.get("path") in ("run.json", "report.html"):
                f.pop("sha256", None)
        return json.dumps(m, sort_keys=True).encode()
    return data


def hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` by relative path (the run's record aside)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name not in SKIP:
            out[str(p.relative_to(folder))] = hashlib.sha256(_bytes(p)).hexdigest()
    return out


def _env(src: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if src is not None:
        # the other commit's packages first on the path; its kernels under their import name
        link = src / "hpcstudy_kernels"
        if not link.exists():
            link.symlink_to("kernels")
        env["PYTHONPATH"] = str(src)
    return env


def imported_from(src: Path | None) -> list[str]:
    """Where the runs of one side import hpcstudy and its kernels from (checked before any
    run: a checkout's own hpcstudy must not shadow the other commit's)."""
    got = subprocess.run([sys.executable, "-P", "-c", "import hpcstudy, hpcstudy_kernels; "
                          "print(hpcstudy.__file__); print(hpcstudy_kernels.__file__)"],
                         env=_env(src), check=True, capture_output=True, text=True)
    return got.stdout.split()


def run(study: Path, data: Path, out: Path, src: Path | None) -> None:
    # -P: the current folder is not put first on the path, where a checkout's hpcstudy would
    # shadow the other commit's on PYTHONPATH
    subprocess.run([sys.executable, "-P", "-m", "hpcstudy.cli", "run", str(study), "--data",
                    str(data), "--out", str(out), "--overwrite", "--quiet"], env=_env(src),
                   check=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/same-bytes"))
    ap.add_argument("--data-root", type=Path, default=DATA)
    ap.add_argument("--data-2e5", type=Path, default=None,
                    help="the 2e5-person dataset (default: DATA_ROOT/persons-200000)")
    a = ap.parse_args()
    before = imported_from(a.before.resolve())
    after = imported_from(None)
    print(f"before: {before[0]}\nafter: {after[0]}")
    if not all(Path(f).resolve().is_relative_to(a.before.resolve()) for f in before) or \
            any(Path(f).resolve().is_relative_to(a.before.resolve()) for f in after):
        print("the two sides do not import their own hpcstudy", file=sys.stderr)
        return 2
    bad = 0
    for name, study, persons in RUNS:
        data = a.data_root / f"persons-{persons}"
        if persons == 200_000 and a.data_2e5 is not None:
            data = a.data_2e5
        got = {}
        for side, src in (("before", a.before), ("after", None)):
            out = a.work / side / name
            run(study, data, out, src)
            got[side] = hashes(out)
        differ = sorted(k for k in set(got["before"]) | set(got["after"])
                        if got["before"].get(k) != got["after"].get(k))
        bad += bool(differ)
        print(f"{name}: {len(got['after'])} files, "
              + ("the same bytes" if not differ else "DIFFER: " + ", ".join(differ)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
