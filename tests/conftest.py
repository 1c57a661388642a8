"""Shared fixtures: small synthetic datasets and the real loopback Slurm cluster."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session", autouse=True)
def audit_log(tmp_path_factory):
    """Every command the tests run audits into a log of the test session, not the home dir."""
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    os.environ["HPCSTUDY_AUDIT_LOG"] = str(path)
    return path


@pytest.fixture(autouse=True)
def export_register(tmp_path_factory, monkeypatch):
    """Each test its own export register (outside its tmp_path, which some tests compare
    before and after): exports of one test on the shared datasets must not hold another's for
    differencing (tests/test_export_register.py sets its own)."""
    path = tmp_path_factory.mktemp("register") / "exports.jsonl"
    monkeypatch.setenv("HPCSTUDY_EXPORT_REGISTER", str(path))
    return path


def run_cli(*args, cwd: Path | None = None, timeout: float = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``hpcstudy ARGS`` in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, "-m", "hpcstudy.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


RUN_SECTION = re.compile(r'<section id="run">.*?</section>', re.DOTALL)


def as_compared(name: str, data: bytes) -> bytes:
    """A run's output file as two runs of a study on the same data must share it: whole, but
    for what each run records of itself. Of run.json (how, where and when it ran) its fields;
    of report.html all but its Run section, which shows run.json; of outputs.json all but the
    SHA-256 of those two files (and so its own)."""
    if name == "run.json":
        return " ".join(json.loads(data)).encode()
    if name == "report.html":
        return RUN_SECTION.sub("", data.decode()).encode()
    if name == "outputs.json":
        doc = json.loads(data)
        doc.pop("manifest_sha256", None)
        for e in doc.get("files", []):
            if e.get("kind") in ("run", "report"):
                e.pop("sha256", None)
        return json.dumps(doc, sort_keys=True).encode()
    return data


def same_output(a: Path, b: Path) -> None:
    """One output file of two runs of a study on the same data: the same bytes, but for what
    each run records of itself (:func:`as_compared`; audit.json, the audit chain head at the
    run's start, is not compared)."""
    if a.name != "audit.json":
        assert as_compared(a.name, a.read_bytes()) == as_compared(b.name, b.read_bytes()), a


# what two runs of one study on one data must share in their run records, whatever ran them
SHARED_RECORD = ("format", "engine", "hpcstudy_version", "code_sha256")


def same_but_how_it_ran(a: Path, b: Path) -> tuple[dict, dict]:
    """Two runs of a study on the same data (launchers, workers or devices apart): each run
    record passes the gate's check and agrees with the other where it must; the report pages
    are the same bytes but for their Run sections. Returns the two records."""
    from hpcstudy.outputs.checks import run_record

    ra, rb = (json.loads((d / "run.json").read_text()) for d in (a, b))
    for d in (a, b):
        assert run_record((d / "run.json").read_text(), str(d)) == []
    assert {k: ra[k] for k in SHARED_RECORD} == {k: rb[k] for k in SHARED_RECORD}
    pages = [RUN_SECTION.sub("", (d / "report.html").read_text()) for d in (a, b)]
    assert pages[0] == pages[1]
    return ra, rb


def same_files(a: Path, b: Path) -> None:
    """The same files under both folders, byte for byte but for what each run records of
    itself (see :func:`same_output`)."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        same_output(a / f, b / f)


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _dataset(factory, name: str, **spec) -> Path:
    from hpcstudy.registers.generate import generate

    out = factory.mktemp("data") / name
    generate(out, **spec)
    return out


def _local_run(factory, example: str, data: Path) -> Path:
    out = factory.mktemp("run") / "out"
    assert run_cli("run", EXAMPLES / example, "--data", data, "--out", out,
                   "--quiet").returncode == 0
    return out


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """3 000 persons, seed 11, three partitions: shared by read-only tests."""
    return _dataset(tmp_path_factory, "small", persons=3000, seed=11, partitions=3, jobs=1)


@pytest.fixture(scope="session")
def medium_data(tmp_path_factory) -> Path:
    """20 000 persons, seed 5, four partitions: enough events for the example studies."""
    return _dataset(tmp_path_factory, "medium", persons=20_000, seed=5, partitions=4, jobs=2)


@pytest.fixture(scope="session")
def many_parts(tmp_path_factory) -> Path:
    """40 000 persons, seed 9, 16 partitions: runs long enough to be interrupted mid-way."""
    return _dataset(tmp_path_factory, "many", persons=40_000, seed=9, partitions=16, jobs=2)


@pytest.fixture(scope="session")
def local_run(small_data, tmp_path_factory) -> Path:
    """Example 3 (diabetes incidence) on ``small_data`` with the local launcher: what every
    other launcher and every submitted job must reproduce."""
    return _local_run(tmp_path_factory, "diabetes_incidence.yaml", small_data)


@pytest.fixture(scope="session")
def statins_run(small_data, tmp_path_factory) -> Path:
    """Example 1 (statins and MI: curves, Cox, Poisson) on ``small_data`` by the CLI with the
    local launcher. Shared: copy it before editing anything in it."""
    return _local_run(tmp_path_factory, "statins_mi.yaml", small_data)


@pytest.fixture(scope="session")
def mortality_run(medium_data, tmp_path_factory):
    """Example 2 (logistic with region indicators, measures) on ``medium_data`` by the Python
    API on the reference engine, its outputs written: the StudyResult (``.out``, the folder).
    Shared: copy the folder before editing anything in it."""
    import hpcstudy

    out = tmp_path_factory.mktemp("run") / "mortality"
    return hpcstudy.run(EXAMPLES / "mi_mortality.yaml", medium_data, out=out,
                        engine="reference")


@pytest.fixture(scope="session")
def synthetic_report(tmp_path_factory) -> Path:
    """A hand-written run folder holding every table kind other helpers write (Table 1,
    balance, preference score, hospitals, a measure by group), suppressed cells included, and
    its report (tests/test_report.py::synthetic_outputs). Shared: copy it before editing."""
    from test_report import synthetic_outputs

    from hpcstudy.report import write

    root = synthetic_outputs(tmp_path_factory.mktemp("synthetic") / "out")
    write(root)
    return root


@pytest.fixture(scope="session")
def processes_run(small_data, tmp_path_factory) -> Path:
    """``local_run``'s study and data on two worker processes (the processes launcher)."""
    out = tmp_path_factory.mktemp("run") / "processes"
    r = run_cli("run", EXAMPLES / "diabetes_incidence.yaml", "--data", small_data, "--out", out,
                "--quiet", "--launcher", "processes", "--workers", "2")
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def uninterrupted(many_parts, tmp_path_factory) -> Path:
    """Example 1 on ``many_parts``, run locally without interruption: what resumed runs,
    requeued jobs and runs that lost a worker must reproduce."""
    return _local_run(tmp_path_factory, "statins_mi.yaml", many_parts)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real single-node Slurm on loopback with 4 fake GPUs, for tests marked ``slurm``."""
    from hpcstudy.cluster.loopback_slurm import LoopbackSlurm, why_unavailable

    why = why_unavailable()
    if why:
        if IN_CI:
            pytest.fail(f"CI must run the Slurm tests, but: {why}")
        pytest.skip(f"Slurm cannot run here: {why}")
    # 8 CPUs declared on a 2-core box (config_overrides): room for the 4 ranks of an mpi job
    cluster = LoopbackSlurm(tmp_path_factory.mktemp("slurm"), gpus=4, cpus=8)
    cluster.start()
    yield cluster
    cluster.stop()


def _alias_kernels() -> None:
    """Let tests import ``hpcstudy_kernels`` from a bare checkout (e.g. on a GPU machine where
    only NumPy, CuPy and pytest are installed and hpcstudy itself is not)."""
    import importlib.util

    if importlib.util.find_spec("hpcstudy_kernels") is None:
        root = Path(__file__).resolve().parent.parent
        spec = importlib.util.spec_from_file_location(
            "hpcstudy_kernels", root / "kernels" / "__init__.py",
            submodule_search_locations=[str(root / "kernels")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["hpcstudy_kernels"] = module
        spec.loader.exec_module(module)
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))


_alias_kernels()
