"""What a plan reads: the diagnosis and patient type columns only where a stream selects on
them (or an index contact's attribute needs them), and the plan's reads stay truthful: the
engines read nothing else, and an approval that leaves the unread columns out lets the study
run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from hpcstudy.engines import partition
from hpcstudy.pipeline import prepare
from hpcstudy.study import study_from_text

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DIABETES = (EXAMPLES / "diabetes_incidence.yaml").read_text()


def reads(text: str, data) -> dict:
    return prepare(study_from_text(text), data).plan.reads


def test_a_study_of_every_type_reads_no_type_column(small_data):
    r = reads(DIABETES, small_data)
    assert r["lpr_adm"] == ("d_inddto", "pnr", "recnum")
    assert r["lpr_diag"] == ("c_diag", "recnum")


@pytest.mark.parametrize("outcome, column", [
    ("diagnosis_type: [A]", ("lpr_diag", "c_diagtype")),
    ("diagnosis_type: [B]", ("lpr_diag", "c_diagtype")),
    ("patient_type: [inpatient, outpatient]", ("lpr_adm", "c_pattype")),
])
def test_a_stream_that_selects_on_a_type_reads_its_column(small_data, outcome, column):
    text = DIABETES.replace("  codelist: diabetes\n", f"  codelist: diabetes\n  {outcome}\n")
    assert text != DIABETES
    r = reads(text, small_data)
    assert column[1] in r[column[0]]
    other = {"lpr_diag": ("lpr_adm", "c_pattype"), "lpr_adm": ("lpr_diag", "c_diagtype")}
    assert other[column[0]][1] not in r[other[column[0]][0]]


def test_an_index_contact_attribute_reads_the_diagnosis_types(small_data):
    # the index contact is found among contacts with a diagnosis of the index rule's types
    text = (EXAMPLES / "mi_hospitals.yaml").read_text().replace(
        "diagnosis_type: [A], ", "")
    r = reads(text, small_data)
    assert "c_diagtype" in r["lpr_diag"] and "c_sgh" in r["lpr_adm"]


def test_the_engine_reads_only_what_the_plan_says(small_data):
    plan = prepare(study_from_text(DIABETES), small_data).plan
    host = partition.read_host(str(small_data), 0, plan.reads)
    assert {reg: tuple(sorted(cols)) for reg, cols in host.items()} == plan.reads
    # and builds the partition's table from those columns alone
    table, attrition = partition.person_table(host, plan)
    assert len(table["pnr"]) > 0


def test_an_approval_without_the_unread_type_columns_lets_example_2_run(tmp_path, small_data):
    project = tmp_path / "project.yaml"
    project.write_text(
        "project: FSEID-00000002\ntitle: diabetes\n"
        "registers: {bef: \"*\", dod: \"*\", vnds: \"*\", lpr_adm: [pnr, recnum, d_inddto],\n"
        "            lpr_diag: [recnum, c_diag]}\n"
        "period: [1968-04-02, 2023-12-31]\n")
    out = tmp_path / "out"
    r = run_cli("run", EXAMPLES / "diabetes_incidence.yaml", "--data", small_data,
                "--project", project, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "results.json").read_text())["cohort"]
    # a study that selects on the diagnosis type is refused by the same approval, naming it
    study = tmp_path / "typed.yaml"
    study.write_text(DIABETES.replace("  codelist: diabetes\n",
                                      "  codelist: diabetes\n  diagnosis_type: [A]\n"))
    r = run_cli("check", study, "--data", small_data, "--project", project)
    assert r.returncode == 2 and "c_diagtype" in r.stderr, r.stderr
