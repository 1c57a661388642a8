"""The index contact's diagnoses as a 0/1 covariate (``index_contact: diagnoses``): a spec
table on both engines (the index contact's own diagnoses count, another contact's on the same
day or later do not), as a measure's key and as a model term."""

from __future__ import annotations

import pytest

from hpcstudy.engines import run as R
from hpcstudy.study import study_from_text

from .builder import Registers

STUDY = """
name: contact_diagnoses
codelists:
  mi: {system: icd10, codes: [I21*]}
  diabetes: {system: icd10, codes: [E11*]}
index:
  first_event: {codelist: mi, patient_type: [inpatient]}
  between: [2010-01-01, 2020-12-31]
covariates:
  - age
  - {name: hospital, index_contact: c_sgh}
  - {name: dm_at_mi, index_contact: diagnoses, codelist: diabetes}
  - {name: dm_action, index_contact: diagnoses, codelist: diabetes, diagnosis_type: [A]}
outcome: {name: death, death: true, window: [0, 30]}
analyses:
  measures:
    - {name: by_dm, by: [dm_at_mi]}
"""


def registers() -> Registers:
    r = Registers()
    r.person(1, "M", "1950-01-01").contact(1, "2012-01-01", "DI219", secondary=["DE119"])
    r.death(1, "2012-01-15")
    r.person(2, "F", "1950-01-01").contact(2, "2012-05-05", "DI219")
    r.contact(2, "2012-05-05", "DE110", sgh=4202)         # same day, another contact: no
    r.person(3, "M", "1950-01-01").contact(3, "2013-02-02", "DI211")
    r.contact(3, "2013-03-01", "DI219", secondary=["DE119"])   # a later MI contact: no
    r.person(4, "F", "1950-01-01").contact(4, "2014-01-01", "DI219", secondary=["DE149"])
    r.death(4, "2014-01-20")
    r.person(5, "M", "1950-01-01").contact(5, "2015-01-01", "DE119", pattype=0,
                                           secondary=["DI219"])  # diabetes as action diagnosis
    r.person(6, "F", "1950-01-01").contact(6, "2011-01-01", "DI219", pattype=2,
                                           secondary=["DE119"])  # outpatient: not the index
    r.contact(6, "2011-06-01", "DI219")
    r.death(6, "2011-06-10")
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return registers().write(tmp_path_factory.mktemp("dx") / "data", partitions=2)


@pytest.mark.parametrize("engine", ["reference", "dask"])
def test_the_index_contacts_diagnoses(engine, data):
    _, plan, ds = R.prepare(study_from_text(STUDY), data)
    tables, attrition, parts = R.person_table(plan, ds, engine)
    t = R.combined(plan, tables)
    got = {int(p): (int(t["dm_at_mi"][i]), int(t["dm_action"][i]))
           for i, p in enumerate(t["pnr"])}
    assert got == {1: (1, 0), 2: (0, 0), 3: (0, 0), 4: (0, 0), 5: (1, 1), 6: (0, 0)}
    assert t["dm_at_mi"].dtype.name == "int8"
    rows = R.analyse(plan, parts, attrition, ds=ds)["measures"]["by_dm"]
    # persons 1 (day 14), 4 (day 19) and 6 (day 9) die within 30 days; 1 had diabetes coded
    assert [(r["dm_at_mi"], r["persons"], r["events"]) for r in rows] == [(0, 4, 2), (1, 2, 1)]


def test_a_model_term_and_a_plan_line(data):
    from hpcstudy.plan import render

    text = STUDY + "  logistic: {adjust: [dm_at_mi]}\n"
    _, plan, ds = R.prepare(study_from_text(text), data)
    assert "dm_at_mi: any diagnosis of the index contact in" in render(plan)
    rows = {}
    for engine in ("reference", "dask"):
        _, attrition, parts = R.person_table(plan, ds, engine)
        res = R.analyse(plan, parts, attrition, ds=ds)
        rows[engine] = [t["term"] for t in res["models"]["logistic"]["terms"]]
    assert rows["reference"] == rows["dask"] == ["intercept", "dm_at_mi"]


def test_the_partition_engine_flags_on_the_device_standin(data):
    from hpcstudy.devices import get_device
    from hpcstudy.engines import partition

    _, plan, ds = R.prepare(study_from_text(STUDY), data)
    ref = R.combined(plan, R.person_table(plan, ds, "reference")[0])
    got = {}
    for p in range(ds.partitions):   # the stand-in refuses any implicit host conversion
        table, _ = partition.run_partition(str(data), p, plan, get_device("standin"))
        got.update({int(k): int(v) for k, v in zip(table["pnr"], table["dm_at_mi"],
                                                     strict=True)})
    assert got == {int(k): int(v) for k, v in zip(ref["pnr"], ref["dm_at_mi"], strict=True)}


def test_the_docs_example_is_this_study():
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "measures.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)
                 if b.startswith("# docs/measures.md: the contact diagnoses example"))
    for line in block.split("\n")[1:]:
        assert line in STUDY, line
