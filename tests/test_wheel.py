"""The package as a user installs it: a wheel built from the repository, installed into a clean
virtual environment (no system site-packages, not editable), runs synth, run and submit from a
folder outside the repository. The Slurm template and profiles must travel as package data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What the wheel is built from; copied so that the build leaves no build/ or egg-info behind in
# the checkout (and no stale build/lib from an earlier build leaks into the wheel).
SOURCES = ("pyproject.toml", "README.md", "hpcstudy", "kernels", "jobs")

pytestmark = pytest.mark.slow


def _sh(*args, cwd: Path, env: dict | None = None, timeout: float = 300):
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"{args}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    """A venv with hpcstudy installed from a freshly built wheel; its bin/ and an environment
    that can reach nothing of the checkout."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.egg-info", "build"))
        else:
            shutil.copy2(p, src / name)
    dist = root / "dist"
    # An isolated build: the setuptools of the test venv may be older than the one
    # pyproject.toml asks for; pip takes a new one from its index or cache.
    _sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(src), "-w", dist, cwd=root)
    wheels = list(dist.glob("hpcstudy-*.whl"))
    assert len(wheels) == 1, wheels
    venv = root / "venv"
    # No pip of its own (faster): the test venv's pip installs into it with --python.
    _sh(sys.executable, "-m", "venv", "--without-pip", venv, cwd=root)
    vpy = venv / "bin" / "python"
    _sh(sys.executable, "-m", "pip", "--python", vpy, "install", "-q", wheels[0], cwd=root,
        timeout=600)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "HPCSTUDY_PROFILE_PATH")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return venv, env


def test_the_wheel_carries_the_slurm_template_and_profiles(installed):
    venv, env = installed
    work = venv.parent
    r = _sh(venv / "bin" / "python", "-c",
            "import hpcstudy, sys; from hpcstudy.cluster import slurm; "
            "print(hpcstudy.__file__); print(slurm.JOBS_DIR); print(sys.prefix != sys.base_prefix)",
            cwd=work, env=env)
    module, jobs, in_venv = r.stdout.splitlines()
    assert in_venv == "True"
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert Path(module).is_relative_to(site), module          # the wheel, not the checkout
    assert Path(jobs) == site / "hpcstudy" / "slurm_jobs"
    for f in ("study.sbatch", "profiles/ci.yaml", "profiles/gefion.yaml"):
        shipped = (Path(jobs) / f).read_bytes()
        assert shipped == (REPO / "jobs" / "slurm" / f).read_bytes(), f
    # no editable finder, no path file: nothing points back to the repository
    assert not list(site.glob("__editable__*"))
    assert not any(str(REPO) in p.read_text() for p in site.glob("*.pth"))
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()


def test_synth_run_and_submit_from_an_installed_wheel(installed, tmp_path):
    venv, env = installed
    hpc = venv / "bin" / "hpcstudy"
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "examples" / "statins_mi.yaml", work)
    env = {**env, "HPCSTUDY_AUDIT_LOG": str(tmp_path / "audit.jsonl")}

    _sh(hpc, "synth", "--persons", 2000, "--seed", 3, "--partitions", 2, "--out", "data",
        cwd=work, env=env)
    assert (work / "data").is_dir()

    _sh(hpc, "run", "statins_mi.yaml", "--data", "data", "--out", "out", "--quiet",
        cwd=work, env=env)
    results = json.loads((work / "out" / "results.json").read_text())
    cox = results["models"]["cox"]
    assert cox["persons"] > 0 and {t["term"] for t in cox["terms"]} >= {"statin", "age", "sex"}
    # the report's template travels as package data
    assert "<section id=\"models\">" in (work / "out" / "report.html").read_text()

    r = _sh(hpc, "submit", "statins_mi.yaml", "--profile", "ci", "--data", "data",
            "--out", "out2", "--dry-run", cwd=work, env=env)
    lines = r.stdout.splitlines()
    assert "#SBATCH --partition=debug" in lines          # the shipped ci profile
    assert sum(x.startswith("#SBATCH ") for x in lines) >= 5
    assert any(x.startswith(f"{venv / 'bin' / 'python'} -m hpcstudy.cli run") for x in lines)
    assert not (work / "out2").exists()                  # a dry run submits and writes nothing

    listed = _sh(hpc, "profiles", cwd=work, env=env).stdout.splitlines()
    for name in ("ci", "gefion"):
        assert any(x.startswith(f"{name} ") and f"slurm_jobs/profiles/{name}.yaml" in x
                   for x in listed), listed

    # an operator's profile of the same name wins over the shipped one
    ops = tmp_path / "site-profiles"
    ops.mkdir()
    ci = (REPO / "jobs" / "slurm" / "profiles" / "ci.yaml").read_text()
    assert "partition: debug" in ci
    (ops / "ci.yaml").write_text(ci.replace("partition: debug", "partition: sitegpu"))
    r = _sh(hpc, "submit", "statins_mi.yaml", "--profile", "ci", "--data", "data",
            "--out", "out2", "--dry-run", cwd=work,
            env={**env, "HPCSTUDY_PROFILE_PATH": str(ops)})
    assert "#SBATCH --partition=sitegpu" in r.stdout.splitlines()
