"""The run record (OUT/run.json): how a run ran — engine, launcher, workers, device, hardware,
code, times — listed in outputs.json, shown in the report's Run section and checked by the
gate; results.json and the per-person table do not depend on it (test_launchers.py compares
the runs of every launcher, and conftest.py's :func:`same_but_how_it_ran` their records)."""

from __future__ import annotations

import json
import os
import re
import shutil
from importlib import metadata
from pathlib import Path

import pytest
from conftest import RUN_SECTION, run_cli, same_but_how_it_ran

from hpcstudy.outputs import gate
from hpcstudy.outputs import manifest as M
from hpcstudy.outputs.checks import run_record as check_record


def _record(out: Path) -> dict:
    return json.loads((out / M.RUN_RECORD).read_text())


def _cpu_model() -> str | None:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return " ".join(line.split(":", 1)[1].split())
    return None


def test_a_run_records_how_it_ran_apart_from_its_results(local_run):
    rec = _record(local_run)
    assert list(rec) == list(M.RUN_FIELDS)
    assert (rec["format"], rec["engine"], rec["launcher"], rec["workers"], rec["device"],
            rec["peak_device_memory_mib"]) == (M.RUN_FORMAT, "dask", "local", None, "cpu", None)
    assert rec["hpcstudy_version"] == metadata.version("hpcstudy")
    assert len(rec["hardware"]) == 1
    machine = rec["hardware"][0]
    assert machine["cores"] == len(os.sched_getaffinity(0))
    model = _cpu_model()
    if model and re.fullmatch(r"[A-Za-z0-9 @.,:+/_-]+", model):   # (no vendor signs to drop)
        assert machine["cpu"] == model
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rec["started"])
    assert rec["started"] <= rec["finished"] and rec["wall_seconds"] > 0
    # listed in the manifest as its own kind; results.json says nothing of launcher or time
    doc = json.loads((local_run / M.NAME).read_text())
    assert {"path": "run.json", "kind": "run", "sha256": M.sha256(
        (local_run / "run.json").read_bytes())} in doc["files"]
    res = json.loads((local_run / "results.json").read_text())
    assert not {"launcher", "workers", "hardware", "started", "wall_seconds"} & set(res["run"])


def test_the_page_shows_the_run_record_traced_to_it(local_run):
    rec = _record(local_run)
    html = (local_run / "report.html").read_text()
    run = RUN_SECTION.search(html).group(0)
    fields = dict(re.findall(r'data-source="run.json" data-field="([^"]+)"[^>]*>(?:<code>)?'
                             r'([^<]*)<', run))
    assert fields["engine"] == "dask" and fields["launcher"] == "local"
    assert fields["device"] == "cpu" and fields["started"] == rec["started"]
    assert fields["wall_seconds"] == str(rec["wall_seconds"])
    assert fields["hardware.0.cpu"] == rec["hardware"][0]["cpu"]
    assert fields["hardware.0.cores"] == str(rec["hardware"][0]["cores"])
    assert fields["code_sha256"] == rec["code_sha256"]
    assert "workers" not in fields   # the local launcher: the threads of the run's process


def test_the_processes_launcher_is_recorded_as_such(processes_run, local_run):
    """The run of test_launchers.py on two worker processes: its record says so; the results,
    the per-person table and the page outside its Run section are the local run's."""
    local, procs = same_but_how_it_ran(local_run, processes_run)
    assert (procs["launcher"], procs["workers"]) == ("processes", 2)
    assert (local["launcher"], local["workers"]) == ("local", None)
    assert procs["hardware"] == local["hardware"]   # the same machine


# -- the gate: run.json as the run wrote it passes; a tampered one is held --------------------
def _plant(rec: dict, change) -> str:
    rec = json.loads(json.dumps(rec))
    change(rec)
    return json.dumps(rec, indent=1)


PLANTS = {
    "an added count": (lambda r: r.update(persons=3), "not ones a run record holds"),
    "a table": (lambda r: r.update(cohort=[{"label": "a", "persons": 3}]),
                "not ones a run record holds"),
    "a count in a machine": (lambda r: r["hardware"][0].update(events=3), "not a machine"),
    "a CPR number as a CPU": (lambda r: r["hardware"][0].update(cpu="Xeon 010170-1234"),
                              "shaped like a CPR number"),
    "a CPR number as a GPU": (lambda r: r["hardware"][0].update(gpus=["A100 0101701234"]),
                              "shaped like a CPR number"),
    "a long integer": (lambda r: r["hardware"][0].update(cpu="EPYC 123456789012345"),
                       "long integer"),
    "a number word": (lambda r: r["hardware"][0].update(cpu="three deaths"), "number word"),
    "a sentence for a launcher": (lambda r: r.update(launcher="3 deaths"), "is not one of"),
    "a count as the workers": (lambda r: r.update(workers=0), "not a number of workers"),
    "a text as the workers": (lambda r: r.update(workers="3"), "not of its type"),
    "a flag as the cores": (lambda r: r["hardware"][0].update(cores=True), "not a machine"),
    "another alphabet": (lambda r: r["hardware"][0].update(cpu="EPYC ³"), "not a hardware"),
    "a run time that is not the times'": (lambda r: r.update(wall_seconds=99999.0),
                                          "not the time from started to finished"),
    "a date that is no time": (lambda r: r.update(started="24/11/2026"), "not a UTC time"),
    "a peak memory on the CPU": (lambda r: r.update(peak_device_memory_mib=3),
                                 "not a GPU's peak memory"),
    "a field gone": (lambda r: r.pop("engine"), "missing"),
    "an ungrouped hash": (lambda r: r.update(code_sha256="ab" * 32), "groups of 8"),
}


def test_the_run_record_of_a_run_passes_the_check(local_run):
    assert check_record((local_run / M.RUN_RECORD).read_text(), "run.json") == []


@pytest.mark.parametrize("plant", list(PLANTS))
def test_a_tampered_run_record_is_refused(local_run, plant):
    change, why = PLANTS[plant]
    problems = check_record(_plant(_record(local_run), change), "run.json")
    assert any(why in p for p in problems), problems


def test_check_outputs_holds_a_tampered_run_record_and_the_page_showing_it(local_run,
                                                                           tmp_path):
    out = tmp_path / "run"
    shutil.copytree(local_run, out)
    rec = _record(out)
    (out / "run.json").write_text(_plant(rec, lambda r: r.update(persons=3)))
    html = (out / "report.html").read_text()
    wall = f'data-field="wall_seconds" data-kind="text">{rec["wall_seconds"]}<'
    assert wall in html
    (out / "report.html").write_text(html.replace(wall, wall.replace(   # (not the run's)
        str(rec["wall_seconds"]), f"{rec['wall_seconds'] + 1000:.1f}")))
    doc = json.loads((out / M.NAME).read_text())   # every hash recomputed: a deliberate edit
    for e in doc["files"]:
        e["sha256"] = M.sha256((out / e["path"]).read_bytes())
    doc["manifest_sha256"] = M.sha256(M.canonical(doc))
    (out / M.NAME).write_text(json.dumps(doc))
    held = gate.check(out).held
    assert any("['persons'] are not ones a run record holds" in p for p in held["run.json"])
    assert any("wall_seconds" in p for p in held["report.html"])
    assert "results.json" not in held and "tables/cohort.csv" not in held
    r = run_cli("check-outputs", out)
    assert r.returncode == 1 and "withheld run.json" in r.stderr, r.stderr


@pytest.mark.parametrize("raw, shown", [
    ("Intel(R) Xeon(R) Platinum 8480+", "Intel Xeon Platinum 8480+"),
    ("AMD Ryzen 7 5800X Eight-Core Processor", "AMD Ryzen 7 5800X 8-Core Processor"),
    ("AMD EPYC 7763 64-Core Processor", "AMD EPYC 7763 64-Core Processor"),
    ("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"),
    ("Grace\u2122 CPU\u00b3 \"x\"", "Grace CPU x"), ("", "unknown")])
def test_hardware_names_leave_in_a_shape_the_gate_accepts(raw, shown):
    from hpcstudy.outputs.checks import HARDWARE_NAME
    from hpcstudy.outputs.run_record import hardware_name
    from hpcstudy.outputs.text import problems

    assert hardware_name(raw) == shown
    assert HARDWARE_NAME.fullmatch(shown) and problems(shown, None, "cpu") == []
