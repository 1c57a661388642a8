"""An outsider's attacks on the project's promises (session 6): each test is a break that was
found by running the real CLI, kept so it stays fixed (or marked xfail where the fix belongs to
a file owned by someone else this session)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
STATINS = (ROOT / "examples" / "statins_mi.yaml").read_text()


def _one_error_line(r, exit_code: int = 2) -> str:
    """The promise for bad input: exit 2, one line ``hpcstudy: error: …``, no traceback."""
    assert r.returncode == exit_code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcstudy: error: "), r.stderr
    return lines[0]


def test_a_control_character_in_a_study_is_a_one_line_error(tmp_path):
    # a NUL (or BEL) byte pasted into a study was "internal error … a bug in hpcstudy" (exit 70):
    # PyYAML's reader refuses it while the loader is built, outside the YAML error handling
    for ch, code in (("\x00", "#x0000"), ("\x07", "#x0007")):
        study = tmp_path / "s.yaml"
        study.write_text(STATINS.replace("seed: 1", "seed: 1" + ch))
        line = _one_error_line(run_cli("check", study))
        assert f"s.yaml:{STATINS[:STATINS.index('seed: 1')].count(chr(10)) + 1}:" in line
        assert code in line


def test_a_control_character_in_a_project_file_is_a_one_line_error(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(STATINS)
    project = tmp_path / "project.yaml"
    project.write_text("project: FSEID-1\x00\nregisters: {bef: '*'}\n")
    line = _one_error_line(run_cli("check", study, "--project", project))
    assert "project.yaml:1:" in line


# -- a dataset whose files agree with its manifest but not with the registers' schema --------
def _forged(small_data, tmp_path, register: str, change) -> Path:
    """A copy of the dataset with one partition file rewritten by ``change`` (a pyarrow table
    to a table) and the manifest's size, rows and SHA-256 of it recomputed, as a dataset
    written by another tool would be: only the content disagrees with the registers."""
    import hashlib
    import json
    import shutil

    import pyarrow.parquet as pq

    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    rel = f"{register}/part-00000.parquet"
    pq.write_table(change(pq.read_table(data / rel)), data / rel)
    m = json.loads((data / "manifest.json").read_text())
    raw = (data / rel).read_bytes()
    reg = m["registers"][register]
    for f in reg["files"]:
        if f["path"] == rel:
            reg["rows"] += pq.read_metadata(data / rel).num_rows - f["rows"]
            f.update(bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest(),
                     rows=pq.read_metadata(data / rel).num_rows)
    (data / "manifest.json").write_text(json.dumps(m, indent=1))
    return data


def _retyped(column, make):
    def change(t):
        return t.set_column(t.schema.get_field_index(column), column, make(t[column]))
    return change


def _wrong_types():
    import pyarrow as pa

    def nulls_every_third(col):
        vals = col.to_pylist()
        vals[::3] = [None] * len(vals[::3])
        return pa.array(vals, type=col.type)

    return {
        "koen as text": ("bef", _retyped("koen", lambda c: pa.array(map(str, c.to_pylist()))),
                         "column 'koen' is string, not int8"),
        "eksd as a timestamp": ("lmdb", _retyped("eksd", lambda c: c.cast(pa.timestamp("us"))),
                                "column 'eksd' is timestamp[us], not date32[day]"),
        "pnr as text": ("vnds", _retyped("pnr", lambda c: pa.array(map(str, c.to_pylist()))),
                        "column 'pnr' is string, not int64"),
        "empty dates": ("lmdb", _retyped("eksd", nulls_every_third), "column 'eksd' has"),
    }


def test_a_register_column_of_another_type_is_one_line_on_both_engines(small_data, tmp_path):
    # each ran the dask engine to other numbers without a word (eksd read as days: every cell
    # withheld) or stopped both engines as "a bug in hpcstudy" (exit 70): a register file
    # written by another tool passes the manifest's sizes, so the reader checks the types
    for i, (why, (register, change, said)) in enumerate(_wrong_types().items()):
        data = _forged(small_data, tmp_path / str(i), register, change)
        for engine in (("dask", "reference")[i % 2],):   # both read through read_partition
            out = tmp_path / f"out{i}{engine}"
            line = _one_error_line(run_cli("run", ROOT / "examples" / "statins_mi.yaml",
                                           "--data", data, "--out", out, "--engine", engine,
                                           "--quiet"))
            assert f"{register}/part-00000.parquet" in line and said in line, (why, line)
            assert not out.exists()


def test_a_register_written_with_nullable_columns_runs_on_the_reference_engine(small_data,
                                                                              tmp_path):
    # pyarrow writes columns as nullable by default: one such file (no value empty) beside
    # the others stopped the reference engine's concat ("Schema at index 1 was different")
    import pyarrow as pa

    data = _forged(small_data, tmp_path, "lpr_diag",
                   lambda t: pa.table({c: t[c].combine_chunks() for c in t.column_names}))
    r = run_cli("run", ROOT / "examples" / "statins_mi.yaml", "--data", data,
                "--out", tmp_path / "reference", "--engine", "reference", "--quiet")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "reference" / "results.json").read_bytes() != b""


def _content_forgeries():
    import datetime

    import pyarrow as pa

    def set_first(column, *values):
        def change(t):
            vals = t[column].to_pylist()
            vals[:len(values)] = values
            return t.set_column(t.schema.get_field_index(column), column,
                                pa.array(vals, type=t.schema.field(column).type))
        return change

    return {
        "a person twice in bef": ("bef", lambda t: pa.concat_tables([t, t.slice(0, 2)]),
                                  "2 person(s) with more than one row"),
        "a person in another's partition": (
            "bef", set_first("pnr", 1, 2, 3, 4, 5, 6, 7, 8),
            "row(s) of persons who belong to another partition"),
        "an ATC code outside the dictionary": (
            "lmdb", set_first("atc", 99999, -5), "holds codes outside the manifest's atc"),
        "a dispensing in year 9999": (
            "lmdb", set_first("eksd", datetime.date(9999, 12, 31)), "holds dates from"),
    }


def test_data_verify_finds_content_the_engines_would_misread(small_data, tmp_path):
    # each of these ran the dask engine silently to other numbers (a person in another's
    # partition loses the rows stored with their hash; a duplicate bef row is a second
    # person) and stopped the reference engine as "a bug in hpcstudy"; `data verify` said
    # "all files match the manifest" and `run --verify` ran
    for i, (why, (register, change, said)) in enumerate(_content_forgeries().items()):
        data = _forged(small_data, tmp_path / str(i), register, change)
        r = run_cli("data", "verify", data)
        assert r.returncode == 1 and said in r.stdout + r.stderr, (why, r.stdout, r.stderr)
        assert "Traceback" not in r.stdout + r.stderr
        if i:
            continue   # run --verify calls the same check: once is enough
        out = tmp_path / f"out{i}"
        line = _one_error_line(run_cli("run", ROOT / "examples" / "statins_mi.yaml",
                                       "--data", data, "--out", out, "--verify", "--quiet"))
        assert said in line, (why, line)
        assert not out.exists()


def test_a_manifest_period_that_is_no_calendar_day_is_one_line(small_data, tmp_path):
    # "end": "2023-02-30" stopped check, run and data verify as "a bug in hpcstudy" (exit 70)
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    m = json.loads((data / "manifest.json").read_text())
    m["period"]["end"] = "2023-02-30"
    (data / "manifest.json").write_text(json.dumps(m))
    study = ROOT / "examples" / "statins_mi.yaml"
    for args in (("check", study, "--data", data), ("data", "verify", data),
                 ("run", study, "--data", data, "--out", tmp_path / "out")):
        line = _one_error_line(run_cli(*args))
        assert "manifest.json: field period" in line, line
    assert not (tmp_path / "out").exists()


def test_both_engines_refuse_a_constant_propensity_covariate(small_data, tmp_path):
    # prior MI excluded, so prior_mi is 0 for everyone: the dask engine refused the score
    # model, the reference engine fitted it anyway (scikit-learn warning on stderr) and
    # published results: the two engines disagreed on whether the study runs at all
    src = (ROOT / "examples" / "sglt2_dpp4_hf.yaml").read_text()
    src = src.replace("  - exclude: {codelist: hf_hospital, window: [null, 0]}\n",
                      "  - exclude: {codelist: hf_hospital, window: [null, 0]}\n"
                      "  - exclude: {codelist: mi, window: [null, 0]}\n")
    assert "codelist: mi, window: [null, 0]}\n" in src
    study = tmp_path / "s.yaml"
    study.write_text(src)
    lines = set()
    for engine in ("dask", "reference"):
        out = tmp_path / engine
        lines.add(_one_error_line(run_cli("run", study, "--data", small_data, "--out", out,
                                          "--engine", engine, "--quiet")))
        assert not out.exists()
    assert len(lines) == 1 and "['prior_mi'] are constant" in lines.pop()


# -- differencing two exports of the same data ----------------------------------------------
WOMEN_A = """name: mi_all
codelists:
  mi: {system: icd10, codes: [I21*]}
population: {age: [40, 90]}
index: {date: 2010-01-01}
covariates: [age, sex]
outcome: {name: mi, codelist: mi}
analyses:
  rates: {by: [sex]}
"""
WOMEN_B = """name: mi_women
codelists:
  mi: {system: icd10, codes: [I21*]}
population: {age: [40, 90], sex: female}
index: {date: 2010-01-01}
covariates: [age, sex]
outcome: {name: mi, codelist: mi}
follow_up: {max_days: MAX_DAYS}
"""


def _women_runs(small_data, tmp_path, env=None) -> tuple[Path, Path, int, int]:
    """Export 1's run: MIs among women as a rates row (rates[sex=1]); export 2's: the same
    women as a one-cohort study (cohort[label=cohort]) followed a little less. Same persons,
    events k apart (1 <= k <= 4): k women had an MI in the days the second left out.
    Returns the two run folders, the persons and k."""
    import pandas as pd

    (tmp_path / "a.yaml").write_text(WOMEN_A)
    a = tmp_path / "a"
    assert run_cli("run", tmp_path / "a.yaml", "--data", small_data, "--out", a,
                   "--quiet", env=env).returncode == 0
    # the attacker's choice of max_days: the latest MI times among women (the private table
    # stands for what a researcher could learn by trying a few follow-up lengths)
    people = pd.read_parquet(a / "private" / "person_table.parquet")
    times = sorted(people.loc[(people["sex"] == 1) & (people["event"] == 1), "time"],
                   reverse=True)
    k = next(k for k in range(1, 5) if times[k - 1] > times[k])
    (tmp_path / "b.yaml").write_text(WOMEN_B.replace("MAX_DAYS", str(times[k - 1] - 1)))
    b = tmp_path / "b"
    assert run_cli("run", tmp_path / "b.yaml", "--data", small_data, "--out", b,
                   "--quiet", env=env).returncode == 0
    women = pd.read_csv(a / "tables" / "rates.csv").set_index("sex").loc[1]
    cohort = pd.read_csv(b / "tables" / "cohort.csv").iloc[0]
    assert (women["persons"], women["events"] - cohort["events"]) == (cohort["persons"], k)
    return a, b, int(cohort["persons"]), k


def test_events_of_one_population_under_two_labels_are_compared(small_data, tmp_path):
    # the register paired persons whatever the label, but events only under the same name:
    # both exports left, and k women's MIs with them
    a, b, persons, k = _women_runs(small_data, tmp_path)
    assert run_cli("export", a, tmp_path / "dest_a").returncode == 0
    r = run_cli("export", b, tmp_path / "dest_b")
    assert r.returncode == 1, r.stdout + r.stderr
    assert _events_paired(r.stderr, persons, k), r.stderr
    assert not (tmp_path / "dest_b").exists()


def _events_paired(said: str, persons: int, k: int) -> bool:
    """The women's events held: by their counts (outputs without sketches of the persons), or
    by the persons behind them (secure/sketches.py): the k MIs only in the first export."""
    return f"the events among {persons} persons" in said or any(
        "cohort[label=cohort].events is" in x and "rates[sex=1].events is" in x and
        f"differ by 0 person(s) only here and {k} only there" in x
        for x in said.splitlines())


def test_a_site_that_names_the_audit_log_keeps_the_export_register_beside_it(small_data,
                                                                            tmp_path):
    # the site pins the audit log ($HPCSTUDY_AUDIT_LOG is ignored), but the register followed
    # $HPCSTUDY_EXPORT_REGISTER: a fresh file for the second export, nothing to compare with
    site = tmp_path / "site.yaml"
    log = tmp_path / "site-audit" / "audit.jsonl"
    log.parent.mkdir()
    site.write_text(f"audit_log: {log}\n")
    env = {"HPCSTUDY_SITE_CONFIG": str(site)}
    a, b, persons, k = _women_runs(small_data, tmp_path, env)
    assert run_cli("export", a, tmp_path / "dest_a",
                   env={**env, "HPCSTUDY_EXPORT_REGISTER": str(tmp_path / "r1.jsonl")}
                   ).returncode == 0
    r = run_cli("export", b, tmp_path / "dest_b",
                env={**env, "HPCSTUDY_EXPORT_REGISTER": str(tmp_path / "fresh.jsonl")})
    assert r.returncode == 1, r.stdout + r.stderr
    assert _events_paired(r.stderr, persons, k), r.stderr
    assert (log.parent / "exports.jsonl").is_file()
    assert not (tmp_path / "r1.jsonl").exists() and not (tmp_path / "fresh.jsonl").exists()


# -- nothing is lost that hpcstudy did not write ------------------------------------------------
def test_overwrite_keeps_a_run_file_the_user_edited(small_data, tmp_path):
    # a note added to tables/cohort.md (a file the run wrote, listed in its marker) was
    # replaced by `run --overwrite` without a word: the user's text is something hpcstudy
    # did not write
    study = ROOT / "examples" / "statins_mi.yaml"
    out = tmp_path / "out"
    args = ("run", study, "--data", small_data, "--out", out, "--quiet")
    assert run_cli(*args).returncode == 0
    assert run_cli(*args, "--overwrite").returncode == 0   # untouched: replaced as before
    note = "\nThe non-users here exclude my pilot patients (see notebook p. 12).\n"
    with open(out / "tables" / "cohort.md", "a") as f:
        f.write(note)
    line = _one_error_line(run_cli(*args, "--overwrite"))
    assert "tables/cohort.md, changed since the run wrote it" in line
    assert (out / "tables" / "cohort.md").read_text().endswith(note)


def test_synth_overwrite_keeps_a_dataset_file_that_was_changed(tmp_path):
    data = tmp_path / "data"
    args = ("synth", "--persons", 200, "--seed", 3, "--partitions", 1, "--out", data)
    assert run_cli(*args).returncode == 0
    part = data / "dod" / "part-00000.parquet"
    part.write_bytes(part.read_bytes() + b"my appended rows")
    before = part.read_bytes()
    line = _one_error_line(run_cli(*args, "--overwrite"))
    assert "dod/part-00000.parquet, changed since" in line
    assert part.read_bytes() == before


# -- an SMD is a derived value of Table 1's cells ------------------------------------------------
MATCHED = """name: ps_test
seed: 3
codelists:
  statins: {system: atc, codes: [C10AA*]}
  diabetes: {system: icd10, codes: [E11*]}
  mi: {system: icd10, codes: [I21*]}
population: {age: [40, 90]}
exposure:
  name: statin
  first_event: {codelist: statins}
  between: [2005-01-01, 2020-12-31]
  washout_days: 365
comparator: {non_users: true}
covariates: [age, sex, {name: diabetes, codelist: diabetes, window: [null, 0]}, charlson]
outcome: {name: mi, codelist: mi}
propensity: {covariates: [age, sex, diabetes, charlson], method: matching}
analyses: {cox: true}
"""


def _smd_leaks(out: Path) -> list[str]:
    """SMDs after the design shown for a variable Table 1 after the design withholds, in
    results.json and in tables/balance.csv, and withheld SMDs in the design's summary."""
    import csv
    import json

    res = json.loads((out / "results.json").read_text())
    hidden = {r["variable"] for r in res["table1_adjusted"] if r.get("suppressed")}
    assert hidden, "the study no longer withholds a matched flag: the test needs another"
    leaks = [f"results {r['variable']}" for r in res["balance"]
             if r["variable"] in hidden and r["smd_after"] is not None]
    with open(out / "tables" / "balance.csv") as f:
        leaks += [f"csv {r['variable']}" for r in csv.DictReader(f)
                  if r["variable"] in hidden and r["smd_after"] != ""]
    shown = [abs(r["smd_after"]) for r in res["balance"] if r["smd_after"] is not None]
    if res["design"]["max_abs_smd_after"] not in (max(shown, default=None),):
        leaks.append("max_abs_smd_after is a withheld SMD")
    leaks += [w for w in res["design"]["warnings"]
              if any(f"|SMD| of {v} is 0" in w for v in hidden)]
    return leaks


def test_smd_after_matching_is_withheld_with_the_matched_table1_rows(small_data, tmp_path):
    # matched Table 1 withholds sex and diabetes (the persons matching dropped would show by
    # difference), but balance.smd_after showed them: a flag's SMD with the matched arms' sizes
    # and the SMD's denominator (from the shown Table 1) gives the difference of the withheld
    # matched counts exactly (0.0: the arms hold as many)
    (tmp_path / "s.yaml").write_text(MATCHED)
    for engine in ("dask", "reference"):
        out = tmp_path / engine
        r = run_cli("run", tmp_path / "s.yaml", "--data", small_data, "--out", out,
                    "--engine", engine, "--quiet")
        assert r.returncode == 0, r.stderr
        assert _smd_leaks(out) == [], engine
    assert run_cli("check-outputs", tmp_path / "dask").returncode == 0


def test_the_gate_withholds_an_smd_of_a_withheld_variable_and_the_report(small_data, tmp_path,
                                                                          monkeypatch):
    # outputs written the old way (an SMD after matching for every variable Table 1 before
    # shows): the gate withheld nothing of it, and the report page repeated the SMD
    import hpcstudy
    from hpcstudy.designs import balance

    shown_after = balance.balance_rows
    monkeypatch.setattr(balance, "balance_rows",
                        lambda vars_, sb, sa, t1=(), t1_after=(): shown_after(vars_, sb, sa, t1))
    (tmp_path / "s.yaml").write_text(MATCHED)
    out = tmp_path / "old"
    hpcstudy.run(hpcstudy.load_study(tmp_path / "s.yaml"), small_data, out=out)
    assert _smd_leaks(out)   # the way the outputs were
    r = run_cli("check-outputs", out)
    assert r.returncode == 1
    said = r.stdout + r.stderr
    for path in ("results.json", "tables/balance.csv", "report.html", "tables/balance.md"):
        assert f"withheld {path}" in said, (path, said)
    assert "smd_after" in said and "shown for a variable Table 1 withholds" in said


def test_a_codelist_csv_with_two_code_columns_or_a_folder_is_refused(tmp_path):
    # `code,code` took the second column without a word (the study then matched other codes
    # than the file's first column says); a folder was reported as "does not exist"
    study = tmp_path / "s.yaml"
    study.write_text(STATINS.replace("{system: atc, codes: [C10AA*]}",
                                     "{system: atc, file: statins.csv}"))
    (tmp_path / "statins.csv").write_text("code,code\nC10AA,C10AB\n")
    line = _one_error_line(run_cli("check", study))
    assert "statins.csv has 2 columns named code" in line
    (tmp_path / "statins.csv").unlink()
    (tmp_path / "statins.csv").mkdir()
    line = _one_error_line(run_cli("check", study))
    assert "statins.csv is a folder, not a CSV file" in line


def _equipoise_leak(out: Path, m: int = 5) -> int | None:
    """What design.equipoise_share gives back: the share times the persons, less the shown
    preference bins in 0.3–0.7, is the sum of the withheld bins there (None: not shown)."""
    import json

    res = json.loads((out / "results.json").read_text())
    share = res["design"]["equipoise_share"]
    if share is None:
        return None
    first = res["table1"][0]["variable"]
    persons = sum(r["persons"] for r in res["table1"] if r["variable"] == first)
    inside = round(share * persons)
    assert abs(inside - share * persons) < 1e-6   # an exact count of persons
    shown = sum(r["persons"] for r in res["preference"] if r["persons"] is not None and
                0.3 <= float(r["bin"].split("-")[0]) < 0.7)
    return inside - shown


def test_equipoise_share_is_withheld_with_a_preference_bin_in_its_range(small_data, tmp_path,
                                                                         monkeypatch):
    # 50 bins: the bin 0.32-0.34 is withheld in both arms (a small cell and its secondary),
    # but equipoise_share x persons minus the shown bins in 0.3-0.7 was their exact sum (the
    # bin's total: a small cell itself where it is 1 to 4, else one equation more than the
    # margins the suppression was audited against)
    import hpcstudy
    from hpcstudy.designs import disclosure

    study = tmp_path / "s.yaml"
    study.write_text(MATCHED.replace("method: matching}", "method: matching, bins: 50}"))
    for engine in ("dask", "reference"):
        out = tmp_path / engine
        assert run_cli("run", study, "--data", small_data, "--out", out, "--engine", engine,
                       "--quiet").returncode == 0
        assert _equipoise_leak(out) is None, engine
    monkeypatch.setattr(disclosure, "equipoise_shown", lambda pref, share: share)
    old = tmp_path / "old"
    hpcstudy.run(hpcstudy.load_study(study), small_data, out=old)
    leaked = _equipoise_leak(old)
    assert leaked is not None and leaked > 0   # the exact sum of withheld cells
    r = run_cli("check-outputs", old)
    assert r.returncode == 1 and "design.equipoise_share: shown while" in r.stdout + r.stderr


def test_text_the_gate_would_hold_back_is_refused_by_check(tmp_path):
    # a description with an emoji or a bidi override, or a step labelled "a handful died",
    # passed check and ran; the gate then held back results.json, plan.txt and the report
    cases = {
        'description: "Statins \U0001F48A and MI"': "holds PILL (U+1F48A)",
        'description: "Statins \u202ereversed"': "RIGHT-TO-LEFT OVERRIDE",
        "description: three died": "number word(s) ['three']",
    }
    for text, said in cases.items():
        study = tmp_path / "s.yaml"
        study.write_text(STATINS.replace(
            "description: Statin initiation and the hazard of a first myocardial infarction",
            text))
        line = _one_error_line(run_cli("check", study))
        assert "s.yaml:6: description: " in line and said in line, line
    study.write_text(STATINS.replace(
        "  - exclude: {codelist: mi, window: [null, 0]}   # no MI before or on the index day",
        "  - exclude: {codelist: mi, window: [null, 0]}\n    label: a handful died"))
    line = _one_error_line(run_cli("check", study))
    assert "criteria[0].label: " in line and "['handful']" in line
    # what the gate lets leave still passes: Danish letters, dashes, a long description
    study.write_text(STATINS.replace(
        "description: Statin initiation and the hazard of a first myocardial infarction",
        "description: Statiner og hjerteinfarkt — Århus, " + "x" * 200))
    assert run_cli("check", study).returncode == 0


def test_a_name_with_a_number_word_is_refused_by_check(tmp_path):
    # a covariate `twice_diabetic` (or a codelist `three_mi`) ran; plan.txt, the model tables
    # and the report then could not leave ("holds the number word(s) ['twice']")
    study = tmp_path / "s.yaml"
    study.write_text(STATINS.replace("{name: diabetes, codelist: diabetes",
                                     "{name: twice_diabetic, codelist: diabetes")
                     .replace("[age, sex, diabetes", "[age, sex, twice_diabetic"))
    line = _one_error_line(run_cli("check", study))
    assert "covariates[2].name: " in line and "['twice']" in line, line
    study.write_text(STATINS.replace("  mi: {system: icd10", "  three_mi: {system: icd10")
                     .replace("codelist: mi", "codelist: three_mi"))
    r = run_cli("check", study)
    assert r.returncode == 2 and "codelists.three_mi: " in r.stderr and "['three']" in r.stderr


def test_report_keeps_a_table_the_user_edited(statins_run, tmp_path):
    # `hpcstudy report OUT` rewrote tables/cohort.md and report.html over the user's notes
    import shutil

    out = tmp_path / "run"
    shutil.copytree(statins_run, out)
    assert run_cli("report", out).returncode == 0   # unedited: written again, as before
    with open(out / "tables" / "cohort.md", "a") as f:
        f.write("my notes\n")
    line = _one_error_line(run_cli("report", out))
    assert "tables/cohort.md, changed since the run wrote it" in line
    assert (out / "tables" / "cohort.md").read_text().endswith("my notes\n")


def test_a_new_folder_written_meanwhile_by_another_command_is_kept(tmp_path):
    # two runs on one new --out both passed the "new folder" check; the one that finished
    # second exchanged its outputs in, deleted the first's and both exited 0 (no --overwrite).
    # Deterministic here: the other command's folder appears between the check and the commit
    import pytest

    from hpcstudy.errors import UserError
    from hpcstudy.outputs.staging import staged_output

    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        with staged_output(out, False, kind="export") as staging:
            (staging / "mine.txt").write_text("this command's")
            out.mkdir()
            (out / "theirs.txt").write_text("the other command's")
    assert "another command wrote it while this one ran" in str(e.value)
    assert e.value.exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]   # no staging left
