"""A throwaway single-node Slurm cluster on loopback, for tests and local trials.

It starts a private munged, slurmctld and slurmd (no systemd, no cgroups), with fake GPUs
declared as GRES, waits until ``sinfo`` shows the node idle, and stops exactly the daemons
it started, by pid. Every file lives under one state directory, and the client commands
find the cluster through ``SLURM_CONF``, which :meth:`LoopbackSlurm.env` supplies.

    with LoopbackSlurm(state_dir) as cluster:
        subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env(), check=True)

The configuration follows what was measured to work on a 2-core Debian 12 box with Slurm
22.05 (see DESIGN.md): proctrack/linuxproc, task/none, select/cons_tres, no accounting.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run on this machine (missing binaries or not root)."""


def why_unavailable() -> str | None:
    """Return why a loopback cluster cannot start here, or None if it can."""
    missing = [d for d in DAEMONS + ("sbatch", "sinfo") if shutil.which(d) is None
               and not Path("/usr/sbin", d).exists()]
    if missing:
        return (f"Slurm/munge binaries not installed: {', '.join(missing)} "
                "(make test installs them as root)")
    if os.geteuid() != 0:
        return "the loopback Slurm cluster must be started as root (slurmd needs it)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (install the Debian munge package)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    found = shutil.which(name) or str(Path("/usr/sbin", name))
    return found


@dataclass
class LoopbackSlurm:
    """One node, ``gpus`` fake GPUs, all state under ``state_dir``."""

    state_dir: Path
    gpus: int = 4
    cpus: int | None = None
    memory_mb: int | None = None
    partition: str = "debug"
    _pids: dict[str, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self.node = socket.gethostname().split(".")[0]
        # munged runs as user munge and must reach its directory: the state dir may sit
        # below a private (0700) folder such as pytest's, so munge gets one of its own.
        self._munge_dir = Path(tempfile.gettempdir()) / "hpcstudy-munge-unset"

    # -- paths -------------------------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.state_dir / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self._munge_dir / "munge.socket"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment in which sbatch, squeue, sinfo ... talk to this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        return env

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> LoopbackSlurm:
        why = why_unavailable()
        if why:
            raise SlurmUnavailable(why)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_munge()
            self._write_config()
            self._start_daemon("slurmctld", [_binary("slurmctld"), "-D", "-f", str(self.conf)])
            self._start_daemon("slurmd", [_binary("slurmd"), "-D", "-f", str(self.conf),
                                          "-N", self.node])
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the daemons this object started (and only those), newest first."""
        for name in reversed(list(self._pids)):
            pid = self._pids.pop(name)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                if not _alive(pid):
                    break
                time.sleep(0.1)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in getattr(self, "_procs", {}).values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self._munge_dir.name.startswith("hpcstudy-munge-") and self._munge_dir.exists():
            shutil.rmtree(self._munge_dir, ignore_errors=True)

    def __enter__(self) -> LoopbackSlurm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- pieces --------------------------------------------------------------------------------
    def _start_munge(self) -> None:
        self._munge_dir = Path(tempfile.mkdtemp(prefix="hpcstudy-munge-"))
        mdir = self._munge_dir
        key = mdir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        munge = pwd.getpwnam("munge")
        for p in (mdir, key):
            os.chown(p, munge.pw_uid, munge.pw_gid)
        os.chmod(mdir, 0o755)  # clients (slurmctld, slurmd, jobs) connect to the socket
        os.chmod(key, 0o600)
        cmd = [_binary("munged"), "--foreground", f"--socket={self.munge_socket}",
               f"--key-file={key}", f"--pid-file={mdir / 'munged.pid'}",
               f"--log-file={mdir / 'munged.log'}", f"--seed-file={mdir / 'munged.seed'}",
               "--force"]
        self._start_daemon("munged", cmd, user=munge)
        deadline = time.monotonic() + 15
        while not self.munge_socket.exists():
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"munged did not create its socket; see {mdir}/munged.log")
            time.sleep(0.05)

    def _start_daemon(self, name: str, cmd: list[str], user: pwd.struct_passwd | None = None):
        log = open(self.state_dir / f"{name}.out", "ab")
        preexec = None
        if user is not None:
            def preexec() -> None:  # noqa: D401 - drop to the daemon's own user
                os.setgid(user.pw_gid)
                os.initgroups(user.pw_name, user.pw_gid)
                os.setuid(user.pw_uid)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=preexec, start_new_session=True, env=self.env())
        log.close()
        self._pids[name] = proc.pid
        if not hasattr(self, "_procs"):
            self._procs: dict[str, subprocess.Popen] = {}
        self._procs[name] = proc
        time.sleep(0.2)
        if proc.poll() is not None:
            tail = (self.state_dir / f"{name}.out").read_text(errors="replace")[-800:]
            raise SlurmUnavailable(f"{name} exited at start (code {proc.returncode}): {tail}")

    def _node_hardware(self) -> tuple[int, int]:
        cpus = self.cpus or os.cpu_count() or 1
        if self.memory_mb:
            return cpus, self.memory_mb
        with open("/proc/meminfo") as f:
            total_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        # Below the real figure: slurmd drains a node that reports less than configured.
        return cpus, max(512, int(total_kb / 1024 * 0.8))

    def _write_config(self) -> None:
        sd = self.state_dir
        gpu_dir = sd / "fakegpu"
        gpu_dir.mkdir(exist_ok=True)
        for i in range(self.gpus):
            dev = gpu_dir / f"fakegpu{i}"
            if not dev.exists():
                # Slurm accepts only character devices as GRES files; 1,3 is /dev/null.
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))
        for d in ("ctld", "d", "logs"):
            (sd / d).mkdir(exist_ok=True)
        cpus, mem = self._node_hardware()
        gres = f"Gres=gpu:{self.gpus} " if self.gpus else ""
        self.conf.write_text("\n".join([
            "# written by hpcstudy.cluster.loopback_slurm; throwaway single-node cluster",
            "ClusterName=hpcstudy-loopback",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            # the node may be declared with more CPUs than the machine has (tests of MPI
            # layouts on a 2-core box): trust the configuration instead of draining the node
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2",
            "MessageTimeout=30",
            "SlurmdTimeout=120",
            "InactiveLimit=0",
            "KillWait=5",
            "MinJobAge=600",
            "GresTypes=gpu",
            # Without a default, a job that gives no --mem takes the whole node's memory.
            f"DefMemPerCPU={max(256, mem // (2 * cpus))}",
            f"StateSaveLocation={sd / 'ctld'}",
            f"SlurmdSpoolDir={sd / 'd'}",
            f"SlurmctldPidFile={sd / 'slurmctld.pid'}",
            f"SlurmdPidFile={sd / 'slurmd.pid'}",
            f"SlurmctldLogFile={sd / 'logs' / 'slurmctld.log'}",
            f"SlurmdLogFile={sd / 'logs' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} "
            f"{gres}State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE "
            "State=UP OverSubscribe=NO",
            "",
        ]))
        (sd / "gres.conf").write_text(
            f"Name=gpu File={gpu_dir}/fakegpu[0-{self.gpus - 1}]\n" if self.gpus else "")

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    tail = (self.state_dir / f"{name}.out").read_text(errors="replace")[-800:]
                    raise SlurmUnavailable(f"{name} died while starting: {tail}")
            r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env(),
                               capture_output=True, text=True)
            last = (r.stdout + r.stderr).strip()
            if r.returncode == 0 and last.split() and all(s == "idle" for s in last.split()):
                return
            time.sleep(0.5)
        raise SlurmUnavailable(f"node not idle after {timeout:.0f}s (sinfo said: {last!r}); "
                               f"logs in {self.state_dir / 'logs'}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child still "exists": reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True
