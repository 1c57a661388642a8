"""Submitting studies to Slurm: site profiles, the rendered sbatch script, job status.

    profile = load_profile("gefion")
    script = render_sbatch(profile, study=..., data=..., out=...)   # a pure function
    job = submit(script, out)                                        # sbatch, job id saved
    status([job])                                      # one sacct (or scontrol) call for all

Profiles are YAML files in ``$HPCSTUDY_PROFILE_PATH`` (colon-separated) and in
``jobs/slurm/profiles/``; the script template is ``jobs/slurm/study.sbatch``. An installed
package carries that folder as ``hpcstudy/slurm_jobs/`` (package data, see pyproject.toml).
"""

from __future__ import annotations

import difflib
import importlib.resources
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


def _jobs_dir() -> Path:
    """The template and shipped profiles: packaged in a wheel install, ``jobs/slurm`` of the
    source tree in an editable one (where the package folder has no copy)."""
    packaged = Path(str(importlib.resources.files("hpcstudy") / "slurm_jobs"))
    if (packaged / "study.sbatch").is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "jobs" / "slurm"


JOBS_DIR = _jobs_dir()
PROFILE_KEYS = {"name", "description", "partition", "account", "nodes", "gpus_per_node",
                "cpus_per_gpu", "mem_per_gpu", "mem", "walltime", "setup", "launcher",
                "workers_per_node", "interface", "mpi_start", "signal_before_end",
                "max_requeues", "device"}
SUBMIT_LAUNCHERS = ("local", "mpi", "slurm")
DEVICES = ("cpu", "gpu", "auto")   # a profile's default for run --device
INTERFACE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
WALLTIME = re.compile(r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$")
MEMORY = re.compile(r"^\d+[KMGT]?$")
SLURM_NAME = re.compile(r"^[A-Za-z0-9_.+,-]{1,200}$")   # partitions (a,b) and accounts


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
    launcher: str = "local"          # how a submitted job runs the dask engine
    workers_per_node: int | None = None   # default: one per GPU, or 1 without GPUs
    interface: str | None = None     # network interface of scheduler and workers (ib0)
    mpi_start: str = "mpirun"        # what starts the ranks inside the allocation
    signal_before_end: int = 300     # seconds: USR1 this long before the walltime, then requeue
    max_requeues: int = 3
    device: str = "cpu"              # run --device of its jobs: gpu on GPU nodes
    source: str = ""

    @property
    def workers(self) -> int:
        """Dask workers in one submitted job (mpi and slurm launchers)."""
        per_node = self.workers_per_node or self.gpus_per_node or 1
        return self.nodes * per_node


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
    doc = load(path, "profile")

    def bad(key, message, fix=""):
        line = doc.line_of(key) if isinstance(doc, Node) else 0
        raise UserError(f"{key}: {message}", where=f"{path}:{line}", fix=fix or None)


    for k in doc:
        if k not in PROFILE_KEYS:
            near = difflib.get_close_matches(str(k), sorted(PROFILE_KEYS), n=1)
            bad(k, "unknown field" + (f" — did you mean {near[0]!r}?" if near else ""),
                f"allowed: {', '.join(sorted(PROFILE_KEYS))}")
    for k in ("name", "partition", "walltime"):
        if not isinstance(doc.get(k), str) or not doc[k]:
            bad(k, "missing")
    if doc["name"] != Path(path).stem:
        # --profile finds a profile by its file's name, `profiles` lists it by name:
        # two names would list one the other refuses
        bad("name", f"{doc['name']!r} is not the file's name {Path(path).stem!r}",
            f"write name: {Path(path).stem}, or name the file {doc['name']}.yaml")
    if not WALLTIME.match(doc["walltime"]) or any(  # [D-]HH:MM:SS
            int(x) > 59 for x in doc["walltime"].split(":")[1:]):
        bad("walltime", f"{doc['walltime']!r} is not [D-]HH:MM:SS")
    for k in ("partition", "account"):   # written into the batch script's header
        if doc.get(k) is not None and not SLURM_NAME.match(str(doc[k])):
            bad(k, f"{doc[k]!r} is not a Slurm {k} name (letters, digits, _ . + -)")
    for k in ("mem", "mem_per_gpu"):
        if doc.get(k) is not None and not MEMORY.match(str(doc[k])):
            bad(k, f"{doc[k]!r} is not a Slurm memory size like 240G")
    if doc.get("mem") and doc.get("mem_per_gpu"):
        bad("mem", "give mem or mem_per_gpu, not both (sbatch refuses --mem with --mem-per-gpu)")
    for k in ("nodes", "gpus_per_node", "cpus_per_gpu", "workers_per_node",
              "signal_before_end", "max_requeues"):
        v = doc.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)
                              or not 0 <= v <= 1_000_000):
            bad(k, f"must be a whole number from 0 to 1000000, not {v!r}")
    setup = doc.get("setup") or []
    if not isinstance(setup, list) or not all(isinstance(s, str) for s in setup):
        bad("setup", "must be a list of shell lines")
    launcher = doc.get("launcher") or "local"
    if launcher not in SUBMIT_LAUNCHERS:
        bad("launcher", f"{launcher!r} is not a launcher for submitted jobs",
            f"use one of {', '.join(SUBMIT_LAUNCHERS)}")
    interface = doc.get("interface")
    if interface is not None and not (isinstance(interface, str) and INTERFACE.match(interface)):
        bad("interface", f"{interface!r} is not a network interface name like ib0")
    mpi_start = doc.get("mpi_start") or "mpirun"
    if not isinstance(mpi_start, str) or "\n" in mpi_start:
        bad("mpi_start", "must be one command line, like mpirun or srun --mpi=pmix")
    device = doc.get("device") or "cpu"
    if device not in DEVICES:
        bad("device", f"{device!r} is not a device", f"use one of {', '.join(DEVICES)}")
    if device == "gpu" and not doc.get("gpus_per_node"):
        bad("device", "gpu on nodes without GPUs (gpus_per_node is 0)",
            "give gpus_per_node, or device: cpu")

    def given(key):   # the profile's value, or the default Profile declares
        return getattr(Profile, key) if doc.get(key) is None else doc[key]

    wall = seconds(doc["walltime"])
    signal_s = given("signal_before_end")
    if signal_s and signal_s >= wall:
        bad("signal_before_end", f"{signal_s} s is not before the end of a {wall} s walltime",
            "give fewer seconds than the walltime, or 0 for no signal and no requeue")
    return Profile(name=doc["name"], partition=doc["partition"], walltime=doc["walltime"],
                   description=str(doc.get("description") or ""), account=doc.get("account"),
                   nodes=doc.get("nodes") or 1, gpus_per_node=doc.get("gpus_per_node") or 0,
                   cpus_per_gpu=doc.get("cpus_per_gpu"), mem_per_gpu=doc.get("mem_per_gpu"),
                   mem=doc.get("mem"), setup=tuple(setup), launcher=launcher,
                   workers_per_node=doc.get("workers_per_node"), interface=interface,
                   mpi_start=mpi_start, signal_before_end=signal_s,
                   max_requeues=given("max_requeues"), device=device,
                   source=str(path))


def sbatch_lines(profile: Profile, job_name: str, output: str, account: str | None = None,
                 launcher: str = "local") -> list[str]:
    """The #SBATCH header for a profile and launcher (one place where sbatch options are
    written).

    * ``local``: one process on the profile's nodes and GPUs;
    * ``mpi``: the same allocation, one task per worker plus two (scheduler, client);
    * ``slurm``: a small driving job, no GPU (the workers are jobs of their own, which
      dask-jobqueue submits with the profile's GPU shape).
    """
    # Slurm reads a double-quoted value in an #SBATCH line whole (paths with spaces)
    out_arg = f'"{output}"' if re.search(r"\s", output) else output
    driver = launcher == "slurm"
    lines = [f"--job-name={job_name}", f"--partition={profile.partition}",
             f"--nodes={1 if driver else profile.nodes}", f"--time={profile.walltime}",
             f"--output={out_arg}", "--open-mode=append"]   # a requeued run adds to the log
    acct = account or profile.account
    if acct:
        lines.append(f"--account={acct}")
    if profile.signal_before_end:
        lines += [f"--signal=B:USR1@{profile.signal_before_end}", "--requeue"]
    if launcher == "mpi":
        lines.append(f"--ntasks={profile.workers + 2}")
    if driver:
        # the driver holds the client and scheduler: one worker's CPUs and memory
        lines += ["--ntasks=1", f"--cpus-per-task={profile.cpus_per_gpu or 1}"]
        memory = profile.mem or profile.mem_per_gpu
        if memory:
            lines.append(f"--mem={memory}")
        return [f"#SBATCH {x}" for x in lines]
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
                  project: Path | None = None, variants: tuple[str, ...] = (),
                  launcher: str | None = None, device: str | None = None) -> str:
    """The batch script for one study run — or, for a study with variants, a job array: task
    0 the study as written, writing to OUT/STUDY_NAME, then one task per variant writing to
    OUT/VARIANT (the language keeps the names apart): a pure function of its inputs."""
    launcher = launcher or profile.launcher
    if launcher not in SUBMIT_LAUNCHERS:
        raise UserError(f"unknown launcher {launcher!r} for a submitted job",
                        fix=f"use one of {', '.join(SUBMIT_LAUNCHERS)}")
    template = Template((JOBS_DIR / "study.sbatch").read_text())
    q = shlex.quote
    log = f"{out}.slurm-%A_%a.out" if variants else f"{out}.slurm-%j.out"
    header = sbatch_lines(profile, f"hpcstudy-{study_name}", log, account, launcher)
    pick, out_arg, args = "", q(str(out)), ""
    if variants:
        header.append(f"#SBATCH --array=0-{len(variants)}")
        # task 0: the study as written (no --variant); task k: variant k, each in its folder
        pick = (f"VARIANTS=('' {' '.join(q(v) for v in variants)})\n"
                'VARIANT="${VARIANTS[$SLURM_ARRAY_TASK_ID]}"\n'
                f'FOLDER="${{VARIANT:-{study_name}}}"\n')
        out_arg = f'{q(str(out))}/"$FOLDER"'
        args = '${VARIANT:+ --variant "$VARIANT"}'
    if project:
        args += f" --project {q(str(project))}"
    start = ""
    if launcher == "mpi":
        start = profile.mpi_start + " "
        args += " --launcher mpi"
    elif launcher == "slurm":
        args += f" --launcher slurm --profile {q(profile.name)} --workers {profile.workers}"
        if account or profile.account:
            args += f" --account {q(account or profile.account)}"
    if launcher != "local" and profile.interface:
        args += f" --interface {q(profile.interface)}"
    device = device or profile.device
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}", fix=f"use one of {', '.join(DEVICES)}")
    args += f" --device {device}"
    return template.substitute(
        study_name=study_name, profile=profile.name, launcher=launcher,
        sbatch_lines="\n".join(header),
        setup_lines="\n".join(profile.setup) + ("\n" + pick if pick else ""),
        start=start, python=q(python or sys.executable), study=q(str(study)),
        data=q(str(data)), out=out_arg, extra_args=args,
        max_requeues=profile.max_requeues)


def check_launcher_installed(launcher: str) -> None:
    """Refuse at submit time, not hours later in the queue, a launcher whose Python package
    this environment (which the job's set-up lines are expected to reproduce) lacks."""
    import importlib.util

    need = {"slurm": ("dask_jobqueue", "slurm"), "mpi": ("mpi4py", "mpi")}.get(launcher)
    if need and importlib.util.find_spec(need[0]) is None:
        raise UserError(f"the {launcher} launcher needs {need[0]}, which is not installed",
                        fix=f"pip install 'hpcstudy[{need[1]}]', or submit --launcher local")


def submit(script: str, out: Path, env: dict | None = None, array: bool = False) -> dict:
    """sbatch the script (saved next to OUT), and record the job next to OUT."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.sbatch"
    path.write_text(script)
    try:
        r = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True,
                           env=env)
    except FileNotFoundError:
        path.unlink()
        raise UserError("sbatch is not installed here (not on PATH)",
                        fix="submit from a login node of the Slurm cluster") from None
    if r.returncode != 0:
        path.unlink()   # nothing was queued: leave nothing behind
        raise UserError(f"sbatch refused the job: {_one_line(r.stderr or r.stdout)}",
                        fix="check the profile against the site's limits")
    job_id = r.stdout.strip().split(";")[0]
    if not JOB_ID.match(job_id):
        raise UserError(f"sbatch printed no job id ({_one_line(r.stdout)[:100]}); the job may "
                        f"still be queued, its script is {path}",
                        fix="look with squeue --me; cancel it with scancel if it is there")
    record = {"job_id": job_id, "script": str(path), "out": str(out),
              "log": f"{out}.slurm-{job_id}_*.out" if array else f"{out}.slurm-{job_id}.out"}
    (out.parent / f"{out.name}.job.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


STATES = {"PENDING": "waiting", "CONFIGURING": "starting", "RUNNING": "running",
          "COMPLETING": "finishing", "COMPLETED": "done", "FAILED": "failed",
          "CANCELLED": "cancelled", "TIMEOUT": "out of time", "NODE_FAIL": "node failed",
          "PREEMPTED": "preempted", "OUT_OF_MEMORY": "out of memory", "REQUEUED": "requeued",
          "SIGNALING": "signalled", "SUSPENDED": "suspended", "DEADLINE": "past its deadline",
          "BOOT_FAIL": "node failed to boot"}
# States a job does not leave again (REQUEUED, SIGNALING, COMPLETING … are on the way)
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                "OUT_OF_MEMORY", "DEADLINE", "BOOT_FAIL"}


def seconds(t: str) -> int:
    days = 0
    if "-" in t:
        d, t = t.split("-", 1)
        days = int(d)
    parts = [int(x) for x in t.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts
    return days * 86400 + h * 3600 + m * 60 + s


def _seconds_or_0(t: str) -> int:
    """Elapsed time from Slurm's output; 0 where it is not [D-]HH:MM:SS (UNLIMITED, garbage)."""
    try:
        return seconds(t)
    except ValueError:
        return 0


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
    """State, elapsed time and GPU-hours of jobs, in one call for all of them: ``sacct``, which
    keeps finished jobs for good; where the site runs no accounting, ``scontrol show job``,
    which knows running jobs and those finished in the last MinJobAge seconds.
    An array job's id stands for all its tasks, a row each (``JOBID_TASK``)."""
    rows = _sacct(job_ids, env)
    if rows is None:
        rows = _scontrol(job_ids, env)
    if not job_ids:
        return rows
    out = []
    for j in job_ids:
        mine = [r for r in rows if j in (r["job_id"], r["array_job"])]
        out += mine or [{"job_id": j, "state": "unknown (finished long ago or never existed)",
                         "slurm_state": "UNKNOWN"}]
    return out


def _row(job_id: str, name: str, state: str, elapsed: int, gpus: int, log: str = "") -> dict:
    array_job = job_id.split("_")[0] if "_" in job_id else None
    return {"job_id": job_id, "array_job": array_job, "name": name,
            "state": STATES.get(state, state.lower()),
            "slurm_state": state, "elapsed_s": elapsed, "gpus": gpus,
            "gpu_hours": round(gpus * elapsed / 3600, 4), "log": log}


SACCT_FORMAT = "JobID,JobName,State,ElapsedRaw,AllocTRES"


def _sacct(job_ids: list[str], env: dict | None) -> list[dict] | None:
    """None where accounting is off (or sacct is missing): the caller asks scontrol."""
    cmd = ["sacct", "-X", "-n", "-P", f"--format={SACCT_FORMAT}"]
    if job_ids:
        cmd += ["-j", ",".join(job_ids)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    except FileNotFoundError:
        return None
    if r.returncode != 0 or "accounting storage is disabled" in r.stdout + r.stderr:
        return None
    return parse_sacct(r.stdout)


def parse_sacct(text: str) -> list[dict]:
    """Rows of ``sacct -X -n -P --format=SACCT_FORMAT`` output."""
    rows = []
    for line in text.splitlines():
        f = line.split("|")
        if len(f) < 5:
            continue
        job, name, state, elapsed, tres = f[:5]
        state = state.split()[0] if state else "UNKNOWN"   # "CANCELLED by 1000"
        rows.append(_row(job, name, state, int(elapsed) if elapsed.isdigit() else 0,
                         _gpus({"AllocTRES": tres})))
    return rows


def _scontrol(job_ids: list[str], env: dict | None) -> list[dict]:
    try:
        r = subprocess.run(["scontrol", "show", "job", "-o", *([",".join(job_ids)] if job_ids
                                                              else [])],
                           capture_output=True, text=True, env=env)
    except FileNotFoundError:
        raise UserError("scontrol is not installed here (not on PATH)",
                        fix="ask from a login node of the Slurm cluster") from None
    if r.returncode != 0 and "Invalid job id" not in r.stderr:   # unknown jobs are no failure
        raise SlurmUnreachable(f"scontrol failed: {_one_line(r.stderr or r.stdout)}",
                               fix="is the Slurm controller up? try again, or ask the operators")
    return parse_scontrol(r.stdout)


class SlurmUnreachable(UserError):
    """Slurm itself failed (its controller down, a timeout): not the user's input."""

    exit_code = 1


def parse_scontrol(text: str) -> list[dict]:
    """Rows of ``scontrol show job -o`` output (one job a line)."""
    rows = []
    for line in text.splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if "JobId" not in f:
            continue
        job = f["JobId"]
        if f.get("ArrayJobId") and f.get("ArrayTaskId"):
            job = f"{f['ArrayJobId']}_{f['ArrayTaskId']}"   # as sacct and squeue name it
        row = _row(job, f.get("JobName", ""), f.get("JobState", "UNKNOWN"),
                   _seconds_or_0(f.get("RunTime", "0:00:00")), _gpus(f), f.get("StdOut", ""))
        restarts = f.get("Restarts", "0")
        row["restarts"] = int(restarts) if restarts.isdigit() else 0   # requeued this many times
        if f.get("JobState") == "PENDING" and f.get("Reason") not in (None, "None"):
            row["state"] = f"waiting ({f['Reason']})"   # Resources, Priority, BeginTime ...
        rows.append(row)
    return rows


JOB_ID = re.compile(r"^\d+(_\d+)?$")


def job_of(ref: str) -> tuple[str, dict | None]:
    """A job id as given, or the job that ``submit`` recorded next to OUT (OUT.job.json)."""
    if JOB_ID.match(ref):
        return ref, None
    record = Path(f"{ref.rstrip('/')}.job.json")
    if record.is_file():
        try:
            rec = json.loads(record.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise UserError(f"{record}: not a job record ({e})",
                            fix="give the job id that sbatch printed instead") from e
        if not isinstance(rec, dict) or not JOB_ID.match(str(rec.get("job_id", ""))):
            raise UserError(f"{record}: not a job record of hpcstudy submit (no job_id)",
                            fix="give the job id that sbatch printed instead")
        return str(rec["job_id"]), rec
    raise UserError(f"{ref!r} is neither a job id nor an OUT that hpcstudy submit wrote to",
                    fix="give the number sbatch printed, or the --out given to submit "
                    "(its OUT.job.json names the job)")


def logs_of(ref: str, env: dict | None = None) -> list[Path]:
    """The output files of a job (every task of an array): from scontrol while Slurm knows the
    job, else from the record ``submit`` left next to OUT."""
    job, rec = job_of(ref)
    try:
        rows = _scontrol([job], env)
    except SlurmUnreachable:
        if rec is None:
            raise
        rows = []   # the record submit left names the log
    found = [Path(r["log"]) for r in rows if r["log"] and job in (r["job_id"], r["array_job"])]
    if not found and rec:
        found = sorted(Path(rec["log"]).parent.glob(Path(rec["log"]).name))
    return [p for p in dict.fromkeys(found) if p.is_file()]


def _one_line(text: str) -> str:
    """A command's (often multi-line) complaint as one line."""
    return "; ".join(ln.strip() for ln in text.splitlines() if ln.strip()) or "no message"


def cancel(job_id: str, env: dict | None = None) -> None:
    try:
        r = subprocess.run(["scancel", job_id], capture_output=True, text=True, env=env)
    except FileNotFoundError:
        raise UserError("scancel is not installed here (not on PATH)",
                        fix="cancel from a login node of the Slurm cluster") from None
    if r.returncode != 0:
        raise UserError(f"scancel {job_id} failed: {_one_line(r.stderr or r.stdout)}",
                        fix="hpcstudy status tells whether the job still exists")
