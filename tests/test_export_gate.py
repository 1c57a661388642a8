"""The export gate: only files a run declared in OUT/outputs.json, unchanged, of their declared
kind and columns, with every cell passing the rules, leave; everything else is refused with its
path and reason. Each attack of issue 10's last bullet is planted here, by a careless user
(a file dropped into OUT) and by a deliberate one (who also rewrites the manifest's hashes)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import EXAMPLES, run_cli, same_output

from hpcstudy.outputs import gate
from hpcstudy.outputs import manifest as M


@pytest.fixture
def out(local_run, tmp_path, monkeypatch) -> Path:
    """A fresh copy of a clean run (example 3 on small_data); its own export register."""
    monkeypatch.setenv("HPCSTUDY_EXPORT_REGISTER", str(tmp_path / "exports.jsonl"))
    copy = tmp_path / "run"
    shutil.copytree(local_run, copy)
    return copy


def redeclare(out: Path, change=lambda doc: None) -> None:
    """What a deliberate user does after editing files: recompute every hash in the manifest
    (after ``change`` edits its entries), so that only the content checks stand."""
    doc = json.loads((out / M.NAME).read_text())
    change(doc)
    for e in doc["files"]:
        e["sha256"] = M.sha256((out / e["path"]).read_bytes())
    doc["manifest_sha256"] = M.sha256(M.canonical(doc))
    (out / M.NAME).write_text(json.dumps(doc))


def entry(doc: dict, path: str) -> dict:
    return next(e for e in doc["files"] if e["path"] == path)


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def refused(out: Path, path: str, *words: str, tmp: Path) -> None:
    """check-outputs names the file and the reason; export leaves it behind (exit 1)."""
    r = run_cli("check-outputs", out)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if path in x]
    assert lines, r.stderr
    for w in words:
        assert any(w in x for x in lines), (w, r.stderr)
    assert "Traceback" not in r.stderr
    dest = tmp / "dest"
    r = run_cli("export", out, dest)
    assert r.returncode == 1, r.stdout + r.stderr
    assert not (dest / path).exists()
    assert not (dest / "private").exists()


# -- a clean run ------------------------------------------------------------------------------
def test_a_clean_run_declares_every_exported_file_and_passes(out, tmp_path):
    doc = json.loads((out / M.NAME).read_text())
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*")
                     if p.is_file() and "private" not in p.parts and p.name != M.NAME)
    # every file but the run's audit chain head, which sits beside the manifest
    assert sorted(e["path"] for e in doc["files"]) == [p for p in on_disk if p != M.AUDIT_HEAD]
    assert M.AUDIT_HEAD in on_disk
    for e in doc["files"]:
        assert e["sha256"] == M.sha256((out / e["path"]).read_bytes())
    cohort = entry(doc, "tables/cohort.csv")
    assert cohort["kind"] == "cohort" and cohort["section"] == "cohort"
    assert [(c["name"], c["role"]) for c in cohort["columns"]][:3] == [
        ("label", "key"), ("persons", "count"), ("events", "count")]
    assert entry(doc, "tables/rates.csv")["columns"][0] == {"name": "sex", "role": "key"}
    assert doc["min_cell"] == 5 and doc["study"]["name"] == "diabetes_incidence"

    r = run_cli("check-outputs", out)
    assert r.returncode == 0 and "no violation (threshold 5)" in r.stdout, r.stderr
    dest = tmp_path / "dest"
    r = run_cli("export", out, dest)
    assert r.returncode == 0, r.stderr
    exported = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert exported == sorted([*on_disk, M.NAME])
    for f in exported:
        assert (dest / f).read_bytes() == (out / f).read_bytes()
    # an export leaves everything a second gate needs: the copy passes it too
    assert run_cli("check-outputs", dest).returncode == 0


def test_the_manifest_is_the_same_for_the_same_inputs(local_run, small_data, tmp_path):
    again = tmp_path / "again"
    assert run_cli("run", EXAMPLES / "diabetes_incidence.yaml", "--data", small_data, "--out",
                   again, "--quiet").returncode == 0
    same_output(again / M.NAME, local_run / M.NAME)   # (but run.json's and the page's hashes)


# -- files nobody declared --------------------------------------------------------------------
def _people(out: Path) -> None:
    table = pq.read_table(out / "private" / "person_table.parquet").to_pylist()
    rows = [{k: v for k, v in r.items() if k != "pnr"} for r in table]
    (out / "tables" / "people.csv").write_text(csv_text(rows))


UNDECLARED = {
    "tables/people.csv": _people,
    "tables/count.csv": lambda o: (o / "tables" / "count.csv").write_text(
        "region,count\n1081,3\n1082,40\n"),
    "tables/deaths.csv": lambda o: (o / "tables" / "deaths.csv").write_text(
        "age_band,deaths\n80-90,3\n"),
    "notes.txt": lambda o: (o / "notes.txt").write_text("3 deaths in the 80-90 band\n"),
    "README.md": lambda o: (o / "README.md").write_text("| band | deaths |\n| 80+ | 2 |\n"),
    "extra.json": lambda o: (o / "extra.json").write_text('{"deaths": 3}\n'),
    "tables/dates.json": lambda o: (o / "tables" / "dates.json").write_text(
        '["2012-03-04", "2013-05-06", "2015-07-08"]\n'),
    "tables/daily.csv": lambda o: (o / "tables" / "daily.csv").write_text(
        "day,persons,events\n1,40,2\n2,41,\n"),
    "private.csv": lambda o: (o / "private.csv").write_bytes(
        (o / "private" / "person_table.parquet").read_bytes()),
}


@pytest.mark.parametrize("path", list(UNDECLARED))
def test_an_undeclared_file_is_refused_whatever_it_holds(out, tmp_path, path):
    UNDECLARED[path](out)
    refused(out, path, "not declared in outputs.json", tmp=tmp_path)
    dest = tmp_path / "dest"
    # what was declared still leaves, unchanged
    assert (dest / "results.json").read_bytes() == (out / "results.json").read_bytes()


def test_the_per_person_table_is_also_named_for_what_it_is(out, tmp_path):
    _people(out)
    r = run_cli("check-outputs", out)
    assert r.returncode == 1 and "tables/people.csv: not declared" in r.stderr


def test_a_link_to_the_private_table_is_refused(out, tmp_path):
    (out / "tables" / "model_poisson.csv").unlink()
    (out / "tables" / "model_poisson.csv").symlink_to(out / "private" / "person_table.parquet")
    refused(out, "tables/model_poisson.csv", "not a plain file", tmp=tmp_path)


# -- edited files -----------------------------------------------------------------------------
def _edit_cell(path: Path, row: int, column: str, value: str) -> None:
    header, *rows = path.read_text().splitlines()
    names = header.split(",")
    cells = rows[row - 1].split(",")
    cells[names.index(column)] = value
    rows[row - 1] = ",".join(cells)
    path.write_text("\n".join([header, *rows]) + "\n")


def test_an_edited_file_is_refused_and_what_changed_is_said(out, tmp_path):
    _edit_cell(out / "tables" / "rates.csv", 1, "events", "3")
    refused(out, "tables/rates.csv", "edited after the run",
            "row 1, column 'events': 3 is below 5", tmp=tmp_path)


def test_editing_min_cell_in_results_json_changes_nothing(out, tmp_path):
    res = json.loads((out / "results.json").read_text())
    res["run"]["min_cell"] = 1
    res["rates"][0]["events"] = 3          # the cell the lower threshold would let through
    (out / "results.json").write_text(json.dumps(res, indent=1))
    refused(out, "results.json", "edited after the run", "3 is below 5", tmp=tmp_path)
    # and with the manifest rewritten to say 1 as well: the floor holds
    redeclare(out, lambda doc: doc.update(min_cell=1))
    v = gate.check(out)
    assert v.min_cell == 5
    assert any("3 is below 5" in x for x in v.held["results.json"]), v.held


def test_a_missing_manifest_lets_nothing_out(out, tmp_path):
    (out / M.NAME).unlink()
    r = run_cli("check-outputs", out)
    assert r.returncode == 1 and "outputs.json is missing" in r.stderr
    # export refuses before the gate: the run's audit record names another outputs.json
    r = run_cli("export", out, tmp_path / "dest")
    assert r.returncode == 2 and "outputs.json is not the one its run wrote" in r.stderr
    assert not (tmp_path / "dest").exists()


def test_a_hand_edited_manifest_lets_nothing_out(out, tmp_path):
    _people(out)
    doc = json.loads((out / M.NAME).read_text())
    doc["files"].append({"path": "tables/people.csv", "kind": "rates",
                         "sha256": M.sha256((out / "tables" / "people.csv").read_bytes()),
                         "section": "rates", "columns": []})
    (out / M.NAME).write_text(json.dumps(doc))
    r = run_cli("check-outputs", out)
    assert r.returncode == 1 and "its own SHA-256 does not match" in r.stderr
    r = run_cli("export", out, tmp_path / "dest")
    assert r.returncode == 2 and "outputs.json is not the one its run wrote" in r.stderr
    assert not (tmp_path / "dest").exists()


# -- a deliberate user who rewrites the manifest's hashes: the content checks stand alone ----
@pytest.mark.parametrize("disguise", ["as is", "integers with counts"])
def test_a_declared_per_person_table_is_refused(out, disguise):
    _people(out)
    rows = list(csv.DictReader(io.StringIO((out / "tables" / "people.csv").read_text())))
    if disguise != "as is":    # whole numbers only, and a count of 5 on every row
        rows = [{"sex": r["sex"], "age": int(float(r["age"])), "time": r["time"],
                 "persons": 5, "events": 5} for r in rows]
        (out / "tables" / "people.csv").write_text(csv_text(rows))
    cols = list(rows[0])

    def declare(doc):
        doc["files"].append({"path": "tables/people.csv", "kind": "rates", "section": "rates",
                             "sha256": "0" * 64, "columns": [
                                 {"name": c, "role": M.role("rates", c, tuple(cols))}
                                 for c in cols]})
    redeclare(out, declare)
    v = gate.check(out)
    reasons = " ".join(v.held["tables/people.csv"])
    assert "per-person" in reasons or "without ['persons', 'events']" in reasons, reasons
    assert "tables/people.csv" not in v.passed


@pytest.mark.parametrize("rename, role, words", [
    ("count", "count", "column 'count' is not one a rates table may hold"),
    ("deaths", "derived", "column 'deaths' is not one a rates table may hold"),
    ("day", "key", "column 'day' is not one a rates table may hold"),
])
def test_a_renamed_column_is_refused(out, rename, role, words):
    p = out / "tables" / "rates.csv"
    p.write_text(p.read_text().replace("sex,persons,events", f"sex,persons,{rename}", 1))

    def declare(doc):
        cols = entry(doc, "tables/rates.csv")["columns"]
        cols[2] = {"name": rename, "role": role}
    redeclare(out, declare)
    v = gate.check(out)
    assert any(words in x for x in v.held["tables/rates.csv"]), v.held


def test_an_extra_column_is_refused_even_when_declared(out):
    p = out / "tables" / "cohort.csv"
    lines = p.read_text().splitlines()
    p.write_text("\n".join([lines[0] + ",deaths", *(x + ",3" for x in lines[1:])]) + "\n")
    redeclare(out, lambda doc: entry(doc, "tables/cohort.csv")["columns"].append(
        {"name": "deaths", "role": "count"}))
    v = gate.check(out)
    assert any("'deaths' is not one a cohort table may hold" in x
               for x in v.held["tables/cohort.csv"]), v.held


def test_an_undeclared_column_is_refused(out):
    p = out / "tables" / "cohort.csv"
    lines = p.read_text().splitlines()
    p.write_text("\n".join([lines[0] + ",count", *(x + ",3" for x in lines[1:])]) + "\n")
    redeclare(out)
    v = gate.check(out)
    assert any("undeclared ['count']" in x for x in v.held["tables/cohort.csv"]), v.held


def test_a_table_that_differs_from_results_json_is_refused(out):
    _edit_cell(out / "tables" / "rates.csv", 1, "persons", "700")
    redeclare(out)
    v = gate.check(out)
    assert any("differs from results.json:rates" in x for x in v.held["tables/rates.csv"])


@pytest.mark.parametrize("plant, words", [
    (lambda res: res.update(deaths=3), "deaths: an undeclared field"),
    (lambda res: res["models"]["poisson"].update(deaths=3), "differ from the declared"),
    (lambda res: res.update(dates=["2012-03-04", "2013-05-06"]), "dates: an undeclared field"),
    (lambda res: res["run"].update(note="4 excluded"), "undeclared field(s) ['note']"),
    (lambda res: res["rates"][0].update(day=12), "undeclared column(s) ['day']"),
    (lambda res: res["rates"][0].update(sex="2012-03-04"), "a date"),
    (lambda res: res["models"]["poisson"].update(persons=3), "results.json:models.poisson: "
                                                             "column 'persons': 3 is below 5"),
    # which errors a model reports is a word from a fixed list, not a channel for text
    (lambda res: res["models"]["poisson"].update(standard_errors="robust, 3 died"),
     "standard_errors: 'robust, 3 died' is not one of"),
])
def test_a_json_scalar_list_or_field_is_refused(out, plant, words):
    res = json.loads((out / "results.json").read_text())
    plant(res)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    redeclare(out)
    v = gate.check(out)
    assert any(words in x for x in v.held.get("results.json", [])), v.held


def test_a_day_column_does_not_switch_off_the_checks(out):
    """The old checker skipped the margins of any table with a ``day`` column; here ``day``
    belongs to curves only, and a curve's small counts are still cells."""
    p = out / "tables" / "rates.csv"
    p.write_text(p.read_text().replace("sex,", "day,", 1))
    redeclare(out, lambda doc: entry(doc, "tables/rates.csv")["columns"][0].update(name="day"))
    v = gate.check(out)
    assert "tables/rates.csv" in v.held


# -- the threshold ----------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["1", "0", "-3", "4"])
def test_a_threshold_below_the_floor_is_refused(out, tmp_path, value):
    for cmd in (["check-outputs", out], ["export", out, tmp_path / "dest"]):
        r = run_cli(*cmd, f"--min-cell={value}")
        assert r.returncode == 2, r.stderr
        # 0 and -3 are no threshold at all (refused as the option is read), 1 and 4 are below
        # the floor
        assert r.stderr.startswith("hpcstudy: error: ") and "--min-cell" in r.stderr and \
            len(r.stderr.splitlines()) == 1, r.stderr
    assert not (tmp_path / "dest").exists()


def test_the_threshold_can_be_raised(out):
    r = run_cli("check-outputs", out, "--min-cell", "100000")
    assert r.returncode == 1 and "is below 100000" in r.stderr


def project_file(tmp_path: Path, min_cell: int) -> Path:
    p = tmp_path / f"project{min_cell}.yaml"
    p.write_text("project: FSEID-1\nregisters: {bef: \"*\", dod: \"*\", vnds: \"*\", "
                 "lpr_adm: \"*\", lpr_diag: \"*\", lmdb: \"*\", dodsaarsag: \"*\"}\n"
                 "period: [1968-01-01, 2023-12-31]\n"
                 f"disclosure: {{min_cell: {min_cell}}}\n")
    return p


def test_the_project_sets_the_floor(out, tmp_path):
    p = project_file(tmp_path, 100000)
    r = run_cli("check-outputs", out, "--project", p)
    assert r.returncode == 1 and "is below 100000" in r.stderr, r.stderr
    r = run_cli("check-outputs", out, "--project", p, "--min-cell", "5")
    assert r.returncode == 2 and "project FSEID-1's floor" in r.stderr, r.stderr
    # a project cannot lower hpcstudy's own floor
    r = run_cli("check-outputs", out, "--project", project_file(tmp_path, 1), "--min-cell", "3")
    assert r.returncode == 2, r.stderr


@pytest.mark.parametrize("how", ["study", "variant"])
def test_a_study_below_the_floor_is_refused_before_anything_runs(small_data, tmp_path, how):
    study = tmp_path / "s.yaml"
    text = (EXAMPLES / "diabetes_incidence.yaml").read_text()
    extra = "disclosure: {min_cell: 1}\n" if how == "study" else \
        "variants:\n  - {name: tiny, set: {disclosure.min_cell: 1}}\n"
    study.write_text(text + extra)
    variant = ["--variant", "tiny"] if how == "variant" else []
    if how == "study":
        r = run_cli("check", study)
        assert r.returncode == 2 and "disclosure.min_cell: 1 is below the floor of 5" in r.stderr
    r = run_cli("run", study, "--data", small_data, "--out", tmp_path / "o", *variant)
    assert r.returncode == 2, r.stderr
    assert "disclosure.min_cell: 1 is below the floor of 5" in r.stderr
    assert len(r.stderr.splitlines()) == 1 and not (tmp_path / "o").exists()


def test_min_cell_option_is_checked_in_process_too():
    with pytest.raises(Exception, match="below 5"):
        gate.threshold(1)
    assert gate.threshold(None, None, 3) == 5 and gate.threshold(8, None, 3) == 8


def test_a_withheld_count_with_its_rate_shown_is_refused(out):
    """events = rate × person-years / 1000: a row whose count is withheld shows nothing
    derived from it."""
    res = json.loads((out / "results.json").read_text())
    row = next(r for r in res["lexis"] if r.get("suppressed"))
    row.update(person_years=100.0, rate_per_1000py=30.0)       # 3 events, given back
    (out / "results.json").write_text(json.dumps(res, indent=1))
    redeclare(out)
    v = gate.check(out)
    assert any("a count is withheld but what is derived from it is shown" in x
               for x in v.held["results.json"]), v.held


def test_a_manifest_path_in_another_spelling_is_refused(out):
    redeclare(out, lambda doc: entry(doc, "plan.txt").update(path="./plan.txt"))
    v = gate.check(out)
    assert v.manifest is None and "outputs.json" in v.held and v.passed == []


def test_a_covariate_named_like_a_count_is_refused_before_the_run(small_data, tmp_path):
    """The issue's attack: a covariate `events` in rates: {by: …} collapsed the key column."""
    study = tmp_path / "s.yaml"
    study.write_text((EXAMPLES / "diabetes_incidence.yaml").read_text()
                     .replace("  - sex\n", "  - sex\n  - {name: events, codelist: diabetes, "
                                            "window: [null, 0]}\n", 1)
                     .replace("rates: {by: [sex]}", "rates: {by: [sex, events]}"))
    r = run_cli("run", study, "--data", small_data, "--out", tmp_path / "o")
    assert r.returncode == 2 and "covariates[2].name: 'events' is a column of the outputs" \
        in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_a_job_array_folder_is_not_exported_whole(out, tmp_path):
    array = tmp_path / "array"
    array.mkdir()
    shutil.move(out, array / "v1")
    r = run_cli("check-outputs", array)
    assert r.returncode == 1 and "export each one's folder" in r.stderr


def test_a_model_term_resting_on_a_small_cell_is_refused(out):
    """Model results carry the counts behind each term (issue 10, point 1): each is a cell."""
    res = json.loads((out / "results.json").read_text())
    res["models"]["poisson"]["terms"][1].update(persons=40, events=2)
    for t in res["models"]["poisson"]["terms"][:1] + res["models"]["poisson"]["terms"][2:]:
        t.update(persons=40, events=20)
    (out / "results.json").write_text(json.dumps(res, indent=1))

    def declare(doc):
        sec = entry(doc, "results.json")["sections"]["models.poisson"]
        sec["columns"] += [{"name": "persons", "role": "count"},
                           {"name": "events", "role": "count"}]
    redeclare(out, declare)
    v = gate.check(out)
    held = v.held.get("results.json", [])
    assert any("column 'events': 2 is below 5" in x for x in held), v.held
    assert not any("recoverable" in x for x in held), held
