"""Submitting studies to Slurm: site profiles, the rendered sbatch script, job status.

    profile = load_profile("gefion")
    script = render_sbatch(profile, study=..., data=..., out=...)   # a pure function
    job = submit(script, out)                                        # sbatch, job id saved
    status([job])                                                    # one squeue/scontrol call

Profiles are YAML files in ``$HPCSTUDY_PROFILE_PATH`` (colon-separated) and in
``jobs/slurm/profiles/``; the script template is ``jobs/slurm/study.sbatch``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from ..errors import UserError
from ..study.yamlio import Node, load

JOBS_DIR = Path(__file__).resolve().parents[2] / "jobs" / "slurm"
PROFILE_KEYS = {"name", "description", "partition", "account", "nodes", "gpus_per_node",
                "cpus_per_gpu", "mem_per_gpu", "mem", "walltime", "setup"}
WALLTIME = re.compile(r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$")
MEMORY = re.compile(r"^\d+[KMGT]?$")


@dataclass(frozen=True)
class Profile:
    name: str
    partition: str
    walltime: str
    description: str = ""
    account: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_gpu: int | None = None
    mem_per_gpu: str | None = None
    mem: str | None = None
    setup: tuple[str, ...] = field(default=())
    source: str = ""


def profile_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("HPCSTUDY_PROFILE_PATH", "").split(":") if p]
    return [*extra, JOBS_DIR / "profiles"]


def list_profiles() -> list[Profile]:
    seen: dict[str, Profile] = {}
    for d in profile_dirs():
        for f in sorted(d.glob("*.yaml")) if d.is_dir() else []:
            p = read_profile(f)
            seen.setdefault(p.name, p)
    return sorted(seen.values(), key=lambda p: p.name)


def load_profile(name: str) -> Profile:
    for d in profile_dirs():
        f = d / f"{name}.yaml"
        if f.is_file():
            return read_profile(f)
    known = ", ".join(p.name for p in list_profiles()) or "none"
    raise UserError(f"no profile named {name!r}", fix=f"known profiles: {known}; an operator "
                    "adds one as NAME.yaml in a directory of $HPCSTUDY_PROFILE_PATH")


def read_profile(path: Path) -> Profile:
    doc = load(path)

    def bad(key, message, fix=""):
        line = doc.line_of(key) if isinstance(doc, Node) else 0
        raise UserError(f"{key}: {message}", where=f"{path}:{line}", fix=fix or None)


    for k in doc:
        if k not in PROFILE_KEYS:
            bad(k, "unknown field", f"allowed: {', '.join(sorted(PROFILE_KEYS))}")
    for k in ("name", "partition", "walltime"):
        if not isinstance(doc.get(k), str) or not doc[k]:
            bad(k, "missing")
    if not WALLTIME.match(doc["walltime"]):  # [D-]HH:MM:SS
        bad("walltime", f"{doc['walltime']!r} is not [D-]HH:MM:SS")
    for k in ("mem", "mem_per_gpu"):
        if doc.get(k) is not None and not MEMORY.match(str(doc[k])):
            bad(k, f"{doc[k]!r} is not a Slurm memory size like 240G")
    if doc.get("mem") and doc.get("mem_per_gpu"):
        bad("mem", "give mem or mem_per_gpu, not both (sbatch refuses --mem with --mem-per-gpu)")
    for k in ("nodes", "gpus_per_node", "cpus_per_gpu"):
        v = doc.get(k)
        if v is not None and (not isinstance(v, int) or v < 0):
            bad(k, f"must be a whole number ≥ 0, not {v!r}")
    setup = doc.get("setup") or []
    if not isinstance(setup, list) or not all(isinstance(s, str) for s in setup):
        bad("setup", "must be a list of shell lines")
    return Profile(name=doc["name"], partition=doc["partition"], walltime=doc["walltime"],
                   description=str(doc.get("description") or ""), account=doc.get("account"),
                   nodes=doc.get("nodes") or 1, gpus_per_node=doc.get("gpus_per_node") or 0,
                   cpus_per_gpu=doc.get("cpus_per_gpu"), mem_per_gpu=doc.get("mem_per_gpu"),
                   mem=doc.get("mem"), setup=tuple(setup),
                   source=str(path))


def sbatch_lines(profile: Profile, job_name: str, output: str,
                 account: str | None = None) -> list[str]:
    """The #SBATCH header for a profile (one place where sbatch options are written)."""
    # Slurm reads a double-quoted value in an #SBATCH line whole (paths with spaces)
    out_arg = f'"{output}"' if re.search(r"\s", output) else output
    lines = [f"--job-name={job_name}", f"--partition={profile.partition}",
             f"--nodes={profile.nodes}", f"--time={profile.walltime}", f"--output={out_arg}"]
    acct = account or profile.account
    if acct:
        lines.append(f"--account={acct}")
    if profile.gpus_per_node:
        lines.append(f"--gpus-per-node={profile.gpus_per_node}")
        if profile.cpus_per_gpu:
            lines.append(f"--cpus-per-gpu={profile.cpus_per_gpu}")
        if profile.mem_per_gpu:
            lines.append(f"--mem-per-gpu={profile.mem_per_gpu}")
    if profile.mem:
        lines.append(f"--mem={profile.mem}")
    return [f"#SBATCH {x}" for x in lines]


def render_sbatch(profile: Profile, *, study: Path, data: Path, out: Path,
                  study_name: str, python: str | None = None, account: str | None = None,
                  project: Path | None = None, variants: tuple[str, ...] = ()) -> str:
    """The batch script for one study run — or, for a study with variants, a job array with
    one task per variant writing to OUT/VARIANT: a pure function of its inputs."""
    template = Template((JOBS_DIR / "study.sbatch").read_text())
    q = shlex.quote
    log = f"{out}.slurm-%A_%a.out" if variants else f"{out}.slurm-%j.out"
    header = sbatch_lines(profile, f"hpcstudy-{study_name}", log, account)
    pick, out_arg, variant_arg = "", q(str(out)), ""
    if variants:
        header.append(f"#SBATCH --array=0-{len(variants) - 1}")
        pick = (f"VARIANTS=({' '.join(q(v) for v in variants)})\n"
                'VARIANT="${VARIANTS[$SLURM_ARRAY_TASK_ID]}"\n')
        out_arg = f'{q(str(out))}/"$VARIANT"'
        variant_arg = ' --variant "$VARIANT"'
    return template.substitute(
        study_name=study_name, profile=profile.name, sbatch_lines="\n".join(header),
        setup_lines="\n".join(profile.setup) + ("\n" + pick if pick else ""),
        python=q(python or sys.executable), study=q(str(study)), data=q(str(data)),
        out=out_arg, extra_args=variant_arg + (f" --project {q(str(project))}" if project else ""))


def submit(script: str, out: Path, env: dict | None = None, array: bool = False) -> dict:
    """sbatch the script (saved next to OUT), and record the job next to OUT."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.sbatch"
    path.write_text(script)
    r = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True,
                       env=env)
    if r.returncode != 0:
        raise UserError(f"sbatch refused the job: {r.stderr.strip() or r.stdout.strip()}",
                        where=str(path), fix="check the profile against the site's limits")
    job_id = r.stdout.strip().split(";")[0]
    record = {"job_id": job_id, "script": str(path), "out": str(out),
              "log": f"{out}.slurm-{job_id}_*.out" if array else f"{out}.slurm-{job_id}.out"}
    (out.parent / f"{out.name}.job.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


STATES = {"PENDING": "waiting", "CONFIGURING": "starting", "RUNNING": "running",
          "COMPLETING": "finishing", "COMPLETED": "done", "FAILED": "failed",
          "CANCELLED": "cancelled", "TIMEOUT": "out of time", "NODE_FAIL": "node failed",
          "PREEMPTED": "preempted", "OUT_OF_MEMORY": "out of memory", "REQUEUED": "requeued"}


def _seconds(t: str) -> int:
    days = 0
    if "-" in t:
        d, t = t.split("-", 1)
        days = int(d)
    parts = [int(x) for x in t.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts
    return days * 86400 + h * 3600 + m * 60 + s


def _gpus(f: dict) -> int:
    """GPUs of a job: from its TRES where the site tracks them, else per node x nodes."""
    m = re.search(r"gres/gpu(?::[^=,]+)?=(\d+)", f.get("AllocTRES", "") + "," + f.get("TRES", ""))
    if m:
        return int(m.group(1))
    m = re.search(r"gres[:/]gpu(?::[^:,]+)?:(\d+)", f.get("TresPerNode", ""))
    if m:
        nodes = re.match(r"\d+", f.get("NumNodes", "1"))
        return int(m.group(1)) * (int(nodes.group(0)) if nodes else 1)
    m = re.search(r"gres[:/]gpu(?::[^:,]+)?:(\d+)", f.get("TresPerJob", ""))
    return int(m.group(1)) if m else 0


def status(job_ids: list[str], env: dict | None = None) -> list[dict]:
    """State, elapsed time and GPU-hours of jobs: one ``scontrol show job`` call (it knows
    running and recently finished jobs, and works where accounting is off)."""
    r = subprocess.run(["scontrol", "show", "job", "-o", *([",".join(job_ids)] if job_ids
                                                          else [])],
                       capture_output=True, text=True, env=env)
    found = {}
    for line in r.stdout.splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if "JobId" not in f:
            continue
        gpus = _gpus(f)
        elapsed = _seconds(f.get("RunTime", "0:00:00"))
        state = f.get("JobState", "UNKNOWN")
        found[f["JobId"]] = {"job_id": f["JobId"], "name": f.get("JobName", ""),
                             "state": STATES.get(state, state.lower()), "slurm_state": state,
                             "elapsed_s": elapsed, "gpus": gpus,
                             "gpu_hours": round(gpus * elapsed / 3600, 4),
                             "log": f.get("StdOut", "")}
    return [found.get(j, {"job_id": j, "state": "unknown (finished long ago or never "
                          "existed)", "slurm_state": "UNKNOWN"}) for j in (job_ids or found)]


def cancel(job_id: str, env: dict | None = None) -> None:
    r = subprocess.run(["scancel", job_id], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise UserError(f"scancel {job_id} failed: {r.stderr.strip()}")
