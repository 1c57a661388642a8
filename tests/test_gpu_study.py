"""The whole study path on a real GPU (``make test-gpu``): the same per-person table byte for
byte and the same estimates to 1e-10 as on the CPU, and the same bytes from the processes
launcher as from the local one. Skipped where CuPy finds no device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def gpu():
    from hpcstudy.cluster.gpus import gpu_problem

    why = gpu_problem()
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def data(tmp_path_factory, gpu) -> Path:
    from hpcstudy.registers.generate import generate

    out = tmp_path_factory.mktemp("data") / "d"
    generate(out, persons=20_000, seed=5, partitions=4, jobs=1)
    return out


def _run(data, out, device, client=None):
    from hpcstudy.engines.run import run

    run(EXAMPLES / "statins_mi.yaml", data, out, device=device, client=client)
    return json.loads((out / "results.json").read_text())


def _estimates(res: dict) -> dict:
    return {k: {t["term"]: t for t in m.get("terms", [])} for k, m in res["models"].items()}


def test_gpu_and_cpu_give_the_same_study(data, tmp_path):
    from study.test_engines_agree import compare

    cpu, gpu_ = _run(data, tmp_path / "cpu", "cpu"), _run(data, tmp_path / "gpu", "gpu")
    private = Path("private") / "person_table.parquet"
    assert (tmp_path / "cpu" / private).read_bytes() == (tmp_path / "gpu" / private).read_bytes()
    assert gpu_["run"]["device"]["name"] == "gpu"
    peaks = gpu_["run"]["device"]["peak_memory_mib"]
    assert len(peaks) == 4 and all(v > 0 for v in peaks.values())
    for r in (cpu, gpu_):
        r.pop("run")
    compare(cpu, gpu_, rel=1e-10)


def test_processes_launcher_on_the_gpu_gives_the_local_bytes(data, tmp_path):
    from hpcstudy.cluster.launchers import client_for

    local = _run(data, tmp_path / "local", "gpu")
    with client_for("processes", gpus=1) as client:
        far = _run(data, tmp_path / "far", "gpu", client)
    private = Path("private") / "person_table.parquet"
    assert (tmp_path / "local" / private).read_bytes() == (tmp_path / "far" / private).read_bytes()
    local["run"].pop("device"), far["run"].pop("device")   # peak memory differs by process
    assert local == far
