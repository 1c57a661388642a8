"""The plan is the engines' only input and the run is prepared once.

- what each engine supports is its registry of node functions: a node it lacks is refused
  ("not supported by this engine"), before any data is read, and registering a function is
  what makes it supported;
- the data's period comes from the data manifest: a dataset whose manifest ends earlier ends
  follow-up earlier;
- a run reads and hashes the manifest once and compiles the study once, and what it records
  is the manifest it compiled against;
- one catalogue of event sources: no other module spells out their registers and columns;
- the CLI and the Python API write the same bytes; the planted truth is the demo's alone.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import shutil
import signal
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpcstudy.engines import partition, reference
from hpcstudy.engines import run as R
from hpcstudy.plan import nodes
from hpcstudy.plan.dispatch import NotSupported, supported
from hpcstudy.registers import schema
from hpcstudy.registers.sources import SOURCES
from hpcstudy.study import StudyErrors, study_from_text
from tests.conftest import EXAMPLES, run_cli, same_files

ROOT = Path(__file__).resolve().parents[1]

COHORT = """
name: period
codelists:
  mi: {system: icd10, codes: [I21*]}
population: {age: [40, 90]}
index: {date: 2005-01-01}
covariates: [age, sex]
outcome: {name: mi, codelist: mi}
"""


def day(iso: str) -> int:
    return int(np.datetime64(iso, "D").astype(np.int64))


def node_types(base: type) -> list[type]:
    """The concrete node types nodes.py defines under ``base`` (read from the module)."""
    return [t for _, t in inspect.getmembers(nodes, inspect.isclass)
            if issubclass(t, base) and t is not base and t.__module__ == nodes.__name__]


@dataclass(frozen=True)
class BornOnAnEvenPnr(nodes.Eligibility):
    """Persons whose pseudonym is even (a node no engine ships)"""

    @property
    def label(self) -> str:
        return "even pnr"


def with_step(plan, step):
    return replace(plan, population=(*plan.population, step))


# -- support is derived from the registries ----------------------------------------------------
def test_every_node_type_the_plan_defines_runs_on_both_engines():
    defined = {t for base in (nodes.IndexPlan, nodes.Eligibility, nodes.ColumnPlan,
                              nodes.TableStep, nodes.Analysis) for t in node_types(base)}
    assert len(defined) >= 27   # the introspection finds them (27 today)
    for engine in ("reference", "dask"):
        missing = sorted(t.__name__ for t in defined - set(supported(engine)))
        assert not missing, (engine, missing)


@pytest.mark.parametrize("engine", ["reference", "dask"])
def test_a_node_the_engine_lacks_is_not_supported(engine, small_data, tmp_path):
    _, plan, ds = R.prepare(study_from_text(COHORT), small_data)
    odd = with_step(plan, BornOnAnEvenPnr())
    with pytest.raises(NotSupported, match=rf"BornOnAnEvenPnr \(Persons whose pseudonym is "
                                           rf"even.*\) is not supported by this engine "
                                           rf"\({engine}\)") as e:
        R.person_table(odd, ds, engine)
    assert "no engine supports it yet" in e.value.fix
    # the pipeline refuses it before writing anything
    from hpcstudy import pipeline

    prep = pipeline.prepare(study_from_text(COHORT), small_data)
    with pytest.raises(NotSupported):
        pipeline.execute(replace(prep, plan=odd), tmp_path / "out", engine=engine)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_registering_a_function_is_what_makes_a_node_supported(small_data):
    _, plan, ds = R.prepare(study_from_text(COHORT), small_data)
    before, _, _ = R.person_table(plan, ds, "reference")
    odd = with_step(plan, BornOnAnEvenPnr())

    def even(node, g):
        return pd.Series(g.c.index.to_numpy() % 2 == 0, index=g.c.index)

    reference.STEPS.register(BornOnAnEvenPnr)(even)
    try:
        assert BornOnAnEvenPnr in supported("reference")
        assert BornOnAnEvenPnr not in supported("dask")
        tables, attrition, _ = R.person_table(odd, ds, "reference")
        with pytest.raises(NotSupported, match=r"not supported by this engine \(dask\)") as e:
            R.person_table(odd, ds, "dask")
        assert "reference" in e.value.fix
    finally:
        del reference.STEPS.functions[BornOnAnEvenPnr]
    # the step keeps exactly the persons with an even pnr, in its place in the attrition
    pnr = before[0]["pnr"]
    assert np.array_equal(tables[0]["pnr"], pnr[pnr % 2 == 0])
    steps = [s for s, _ in attrition["cohort"]]
    assert steps[-1] == "even pnr" and steps[:-1] == [s for s, _ in
                                                      R.person_table(plan, ds,
                                                                     "reference")[1]["cohort"]]


def test_the_engines_read_only_the_plan():
    found = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "hpcstudy" / "engines").glob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if "plan.study" in line]
    assert found == []


# -- the data period comes from the manifest -----------------------------------------------------
def earlier_copy(src: Path, dest: Path, end: str) -> Path:
    shutil.copytree(src, dest)
    m = json.loads((dest / "manifest.json").read_text())
    m["period"]["end"] = end
    (dest / "manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True) + "\n")
    return dest


@pytest.mark.parametrize("engine", ["reference", "dask"])
def test_follow_up_ends_where_the_manifest_says_the_data_ends(engine, small_data, tmp_path):
    cut = "2012-06-30"
    short = earlier_copy(small_data, tmp_path / "short", cut)
    study = study_from_text(COHORT)
    _, plan, ds = R.prepare(study, small_data)
    _, plan_s, ds_s = R.prepare(study, short)
    assert plan_s.data_end == day(cut) and plan.data_end == day("2023-12-31")
    a = R.combined(plan, R.person_table(plan, ds, engine)[0])
    b = R.combined(plan_s, R.person_table(plan_s, ds_s, engine)[0])
    assert np.array_equal(a["pnr"], b["pnr"])          # the same cohort, shorter follow-up
    later = a["exit_date"] > day(cut)
    assert later.sum() > 100 and b["exit_date"].max() == day(cut)
    assert np.array_equal(b["exit_date"], np.minimum(a["exit_date"], day(cut)))
    assert np.array_equal(b["status"], np.where(later, 0, a["status"]))
    assert np.array_equal(b["time"], b["exit_date"] - b["index_date"] + 1)


def test_an_index_date_after_the_manifests_end_is_a_study_error(small_data, tmp_path):
    short = earlier_copy(small_data, tmp_path / "short", "2004-12-31")
    R.prepare(study_from_text(COHORT), small_data)      # fine on the full period
    with pytest.raises(StudyErrors, match="index.date: 2005-01-01 is after the data end"):
        R.prepare(study_from_text(COHORT), short)


def test_the_plan_says_the_manifests_end(small_data, tmp_path):
    short = earlier_copy(small_data, tmp_path / "short", "2019-03-31")
    text = tmp_path / "s.yaml"
    text.write_text(COHORT)
    r = run_cli("plan", text, "--data", short)
    assert r.returncode == 0, r.stderr
    assert "end of data 2019-03-31" in r.stdout


# -- one prepare ---------------------------------------------------------------------------------
def test_a_cli_run_opens_the_manifest_once_and_compiles_once(small_data, tmp_path,
                                                              monkeypatch):
    from hpcstudy import cli, pipeline
    from hpcstudy.registers.store import Dataset

    calls = {"open": 0, "compile": 0}
    real_open, real_compile = Dataset.open.__func__, pipeline.compile_study

    def counted_open(cls, root):
        calls["open"] += 1
        return real_open(cls, root)

    def counted_compile(*a, **kw):
        calls["compile"] += 1
        return real_compile(*a, **kw)

    monkeypatch.setattr(Dataset, "open", classmethod(counted_open))
    monkeypatch.setattr(pipeline, "compile_study", counted_compile)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        code = cli.main(["run", str(EXAMPLES / "diabetes_incidence.yaml"), "--data",
                         str(small_data), "--out", str(tmp_path / "out"), "--quiet"])
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert code == 0
    assert calls == {"open": 1, "compile": 1}


def test_a_run_records_the_manifest_it_compiled_against(small_data, tmp_path):
    """The manifest is read and hashed once: replaced after the run was prepared, the run
    still follows, and records, the manifest it read."""
    from hpcstudy import api

    data = shutil.copytree(small_data, tmp_path / "data")
    first = (data / "manifest.json").read_bytes()
    prep = api.prepared(study_from_text(COHORT), data)
    earlier_copy(data, tmp_path / "other", "2010-12-31")
    shutil.copy(tmp_path / "other" / "manifest.json", data / "manifest.json")
    assert (data / "manifest.json").read_bytes() != first
    result = api.execute(prep, tmp_path / "out", engine="dask")
    sha = hashlib.sha256(first).hexdigest()
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    outputs = json.loads((tmp_path / "out" / "outputs.json").read_text())
    assert res["run"]["data_manifest_sha256"] == sha == prep.manifest_sha256
    assert outputs["data_manifest_sha256"] == sha
    assert result.person_table["exit_date"].max() > day("2010-12-31")


# -- one catalogue of event sources ------------------------------------------------------------
def test_the_catalogue_matches_the_register_schema():
    for name, src in SOURCES.items():
        table = schema.REGISTERS[src.table]
        codes = schema.REGISTERS[src.code_table]
        assert table.column(src.pnr) and table.column(src.date), name
        assert codes.column(src.code).code_system == src.system, name
        for col in (src.link, src.tie, src.patient_type):
            if col is not None:
                assert table.column(col), (name, col)
        if src.link is not None:
            assert codes.column(src.link), name
        for col in src.filters:
            assert table.column(col), (name, col)


def _code_strings(path: Path) -> set[str]:
    """String constants of a module's code (docstrings left out: they may show examples)."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef)
            and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs}


def test_no_other_module_spells_out_the_event_sources():
    """The language, the compiler, approvals and both engines take the event sources' tables
    and columns from registers/sources.py."""
    names = {v for s in SOURCES.values() for v in (s.table, s.code_table, s.date, s.code,
                                                   s.link, s.diagnosis_type, s.patient_type)
             if v is not None} | {c for s in SOURCES.values() for c in s.filters}
    # less what means something else too: the population registers' columns (dod's doddato)
    # and the code systems' names (atc)
    names -= {c.name for r in ("bef", "dod", "vnds") for c in schema.REGISTERS[r].columns}
    names -= {s.system for s in SOURCES.values()}
    assert {"lpr_adm", "d_inddto", "dodsaarsag", "c_dodtilgrundl", "eksd"} <= names
    users = [*sorted((ROOT / "hpcstudy" / "engines").glob("*.py")),
             *sorted((ROOT / "hpcstudy" / "plan").glob("*.py")),
             *sorted((ROOT / "hpcstudy" / "study").glob("*.py")),
             ROOT / "hpcstudy" / "secure" / "approval.py"]
    found = {str(p.relative_to(ROOT)): sorted(_code_strings(p) & names) for p in users}
    assert {k: v for k, v in found.items() if v} == {}


# -- one code path for the CLI and the API; the demo's truth ------------------------------------
def test_cli_and_api_write_the_same_bytes_and_no_truth_off_the_demo(small_data, tmp_path):
    import hpcstudy

    study = EXAMPLES / "diabetes_incidence.yaml"
    r = run_cli("run", study, "--data", small_data, "--out", tmp_path / "cli",
                "--engine", "reference")
    assert r.returncode == 0, r.stderr
    hpcstudy.run(study, small_data, out=tmp_path / "api", engine="reference")
    same_files(tmp_path / "cli", tmp_path / "api")
    res = json.loads((tmp_path / "cli" / "results.json").read_text())
    # synthetic data with a planted truth, but not the study it was planted for
    assert "truth" in json.loads((small_data / "manifest.json").read_text())
    assert "planted_truth" not in res and "planted truth" not in r.stdout


def test_the_truth_is_the_demos(small_data):
    from hpcstudy import demo

    _, plan, ds = R.prepare(EXAMPLES / "statins_mi.yaml", small_data)
    truth = demo.planted_truth(plan, ds.manifest)
    assert truth["mi_log_hr"]["statin"] == pytest.approx(np.log(0.75))
    no_truth = {k: v for k, v in ds.manifest.items() if k != "truth"}
    assert demo.planted_truth(plan, no_truth) is None
    text = (EXAMPLES / "statins_mi.yaml").read_text().replace("codes: [I21*]", "codes: [I50*]")
    _, heart_failure, _ = R.prepare(study_from_text(text), small_data)
    assert demo.planted_truth(heart_failure, ds.manifest) is None


def test_checks_refuse_before_data_is_read(small_data):
    """The engines' check functions need the plan only."""
    _, plan, _ = R.prepare(study_from_text(COHORT), small_data)
    reference.check(plan)
    partition.check(plan)
    with pytest.raises(NotSupported):
        partition.check(with_step(plan, BornOnAnEvenPnr()))


@dataclass(frozen=True)
class HalfTheArms(nodes.TableStep):
    """Every other person of each arm (a whole-table step no engine ships)"""


@pytest.mark.parametrize("engine", ["reference", "dask"])
def test_a_whole_table_step_the_engine_lacks_is_refused_before_reading(engine, small_data,
                                                                       tmp_path):
    """Persons in both arms and the design are dispatched like every other node: a step of
    an unknown type is refused by the check the pipeline runs first, so no data is read."""
    _, plan, _ = R.prepare(study_from_text(COHORT), small_data)
    odd = replace(plan, both_arms=HalfTheArms())
    gone = tmp_path / "no-data"          # a dataset whose files are not there at all
    with pytest.raises(NotSupported, match=rf"HalfTheArms .* not supported by this engine "
                                           rf"\({engine}\)"):
        R.check_engine(odd, engine)
    with pytest.raises(NotSupported):
        R.person_table(odd, replace(R.prepare(study_from_text(COHORT), small_data).ds,
                                    root=gone), engine)
    assert not gone.exists()


def test_the_docs_show_what_each_engine_supports():
    from hpcstudy.plan.dispatch import support_table

    assert support_table() in (ROOT / "docs" / "architecture.md").read_text(), \
        "regenerate the table in docs/architecture.md (see its last step)"
