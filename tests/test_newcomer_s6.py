"""What a newcomer working only from the docs tripped over (session 6), held in place.

Each test names the mistake a user makes and the one line that must tell them how to fix it;
real CLI runs through ``run_cli``.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import EXAMPLES, as_compared, run_cli

STUDY = """\
name: sglt2_su
codelists:
  sglt2: {{system: {sglt2_system}, codes: [{sglt2_codes}]}}
  su: {{system: atc, codes: [A10BB*]}}
  hf: {{system: {hf_system}, codes: [{hf_codes}]}}
exposure:
  name: sglt2
  first_event: {{codelist: sglt2}}
  between: [2013-01-01, 2022-12-31]
  washout_days: 365
comparator: {{active: {{first_event: {{codelist: su}}, between: [2013-01-01, 2022-12-31]}}}}
covariates: [age, sex]
outcome: {{name: hf, codelist: hf}}
analyses: {{cox: true}}
"""


def _study(tmp_path, sglt2_system="atc", sglt2_codes="A10BK*", hf_system="icd10",
           hf_codes="I11.0"):
    f = tmp_path / "s.yaml"
    f.write_text(STUDY.format(sglt2_system=sglt2_system, sglt2_codes=sglt2_codes,
                              hf_system=hf_system, hf_codes=hf_codes))
    return f


def test_the_study_as_written_is_valid(tmp_path):
    r = run_cli("check", _study(tmp_path))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("kw, line, code, other", [
    # ATC codes under icd10 matched no diagnosis: the index rule silently matched nobody
    ({"sglt2_system": "icd10"}, 3, "A10BK*", "atc"),
    ({"sglt2_system": "icd10", "sglt2_codes": "A10BK01"}, 3, "A10BK01", "atc"),
    # ICD-10 codes under atc: WHO and Danish forms, with and without the dot
    ({"hf_system": "atc"}, 5, "I11.0", "icd10"),
    ({"hf_system": "atc", "hf_codes": "I21"}, 5, "I21", "icd10"),
    ({"hf_system": "atc", "hf_codes": "DI110"}, 5, "DI110", "icd10"),
])
def test_a_code_under_the_wrong_system_is_named_with_the_fix(tmp_path, kw, line, code, other):
    f = _study(tmp_path, **kw)
    r = run_cli("check", f)
    assert r.returncode == 2
    errors = [x for x in r.stderr.splitlines() if x.startswith("hpcstudy: error:")]
    assert len(errors) == 1, r.stderr
    assert f"s.yaml:{line}:" in errors[0]
    assert f"'{code}' is an" in errors[0]
    assert f"write system: {other}" in errors[0]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("kw", [
    {"sglt2_codes": "C10"},        # an ATC group that is also an ICD-10 category: ATC's reading
    {"sglt2_codes": "N02BE01"},
    {"hf_codes": "DI219"},
    {"hf_codes": "C50"},
])
def test_codes_of_their_own_system_pass(tmp_path, kw):
    r = run_cli("check", _study(tmp_path, **kw))
    assert r.returncode == 0, r.stderr


def test_a_typo_in_an_atc_code_stays_malformed_not_icd10(tmp_path):
    # C1O (letter O) reads as an ICD-10 subcode under the loose pattern: not a system mix-up
    r = run_cli("check", _study(tmp_path, sglt2_codes="C1O"))
    assert r.returncode == 2
    assert "malformed atc code 'C1O'" in r.stderr
    assert "is an ICD-10 code" not in r.stderr


def test_a_withheld_cohort_row_is_not_called_fewer_than_five_persons():
    # a matched arm of 77 persons with 4 events is withheld whole: "<5 persons" was false
    from hpcstudy.cli import run_summary

    res = {"study": "s", "run": {"engine": "dask", "min_cell": 5},
           "cohort": [{"label": "sglt2", "persons": None, "events": None},
                      {"label": "comparator", "persons": 77, "events": None}]}
    lines = run_summary(res, "out").splitlines()
    assert lines[1] == "  sglt2: withheld (a count below 5 here or in a row it would reveal)"
    assert "<5 persons" not in lines[1]
    assert lines[2].startswith("  comparator: 77 persons, <5 events")


def test_plan_states_the_comparative_design(tmp_path, small_data):
    # `plan` is "what will run": it said nothing of the propensity score or of persons in
    # both arms, so a weighted and an unweighted study printed the same plan
    f = tmp_path / "s.yaml"
    f.write_text(STUDY.format(sglt2_system="atc", sglt2_codes="A10BK*", hf_system="icd10",
                              hf_codes="I11.0")
                 + "propensity: {covariates: [age, sex], method: weighting,"
                   " weighting: {estimand: overlap}}\n")
    r = run_cli("plan", f, "--data", small_data)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    at = lines.index("comparative design (dimension: person, both arms):")
    assert lines[at + 1:at + 4] == [
        "  persons in both arms: removed from both",
        "  propensity score (logistic) of age, sex",
        "      weighting, estimand overlap"]
    # the section sits after the covariates it is fitted on, before the outcome
    assert lines.index("covariates at index (dimension: person):") < at
    assert at < next(i for i, x in enumerate(lines) if x.startswith("outcome 'hf'"))
    f.write_text(f.read_text().replace(
        "method: weighting, weighting: {estimand: overlap}",
        "method: matching, matching: {replace: true}, trim: true"))
    r = run_cli("plan", f, "--data", small_data)
    assert "      trimmed to the common support, then nearest-neighbour matching on its " \
           "logit, with replacement" in r.stdout.splitlines()
    # a study without a design prints no such section
    f.write_text(STUDY.format(sglt2_system="atc", sglt2_codes="A10BK*", hf_system="icd10",
                              hf_codes="I11.0").replace("{active: {first_event: {codelist: su},"
                                                        " between: [2013-01-01, 2022-12-31]}}",
                                                        "non_users"))
    r = run_cli("plan", f, "--data", small_data)
    assert r.returncode == 0, r.stderr
    assert "comparative design" not in r.stdout


def test_a_who_code_with_a_dot_does_not_withhold_the_plan(tmp_path, small_data):
    # the study says I11.0, plan.txt says lpr[DI110*]: the export gate took 110 for a number
    # the study never declared and withheld plan.txt from every such run
    f = tmp_path / "s.yaml"
    f.write_text("name: hf_dot\ncodelists:\n  hf: {system: icd10, codes: [I11.0, I50]}\n"
                 "index: {date: 2015-01-01}\ncovariates: [age, sex]\n"
                 "outcome: {name: hf, codelist: hf}\n")
    out = tmp_path / "out"
    r = run_cli("run", f, "--data", small_data, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "lpr[DI110, DI50*]" in (out / "plan.txt").read_text()
    r = run_cli("check-outputs", out)
    assert "plan.txt" not in r.stdout + r.stderr
    assert r.returncode == 0, r.stdout + r.stderr


# -- an operator's first profile, from docs/operators.md alone ----------------------------------
NORDLYS = """\
name: nordlys
description: Nordlys A100 nodes (4 GPUs, 64 cores, 512 GB per node)
partition: a100
account: dst-epi
nodes: 2
gpus_per_node: 4
cpus_per_gpu: 16
mem_per_gpu: 120G
walltime: "1-00:00:00"
launcher: mpi
workers_per_node: 4
interface: ib0
mpi_start: srun --mpi=pmix
signal_before_end: 600
max_requeues: 2
device: gpu
setup:
  - module load GCC/12.3.0 OpenMPI/4.1.5 CUDA/12.1.1 Python/3.11.3
"""


def _profiles(tmp_path, text, file="nordlys.yaml"):
    d = tmp_path / "profiles"
    d.mkdir(exist_ok=True)
    (d / file).write_text(text)
    return {"HPCSTUDY_PROFILE_PATH": str(d)}


def test_an_operators_profile_validates_and_renders(tmp_path, small_data):
    env = _profiles(tmp_path, NORDLYS)
    r = run_cli("profiles", env=env)
    assert r.returncode == 0, r.stderr
    assert any(x.startswith("nordlys ") and "2 node(s) x 4 GPU" in x and "8 worker(s)" in x
               and ", account dst-epi," in x for x in r.stdout.splitlines()), r.stdout
    r = run_cli("submit", _study(tmp_path), "--profile", "nordlys", "--data", small_data,
                "--out", tmp_path / "o", "--dry-run", env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for want in ("#SBATCH --partition=a100", "#SBATCH --account=dst-epi", "#SBATCH --nodes=2",
                 "#SBATCH --ntasks=10", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --mem-per-gpu=120G", "#SBATCH --signal=B:USR1@600",
                 "module load GCC/12.3.0 OpenMPI/4.1.5 CUDA/12.1.1 Python/3.11.3"):
        assert want in lines, want
    assert any(x.startswith("srun --mpi=pmix ") and x.endswith("--device gpu &")
               for x in lines), r.stdout


def test_a_profile_named_unlike_its_file_is_refused_with_the_fix(tmp_path, small_data):
    # name: nordlys2 in nordlys.yaml was listed as nordlys2, which --profile then refused
    # ("no profile named 'nordlys2' — known profiles: …, nordlys2"), while --profile nordlys ran
    env = _profiles(tmp_path, NORDLYS.replace("name: nordlys", "name: nordlys2"))
    for args in (("profiles",), ("submit", _study(tmp_path), "--profile", "nordlys", "--data",
                                 small_data, "--out", tmp_path / "o", "--dry-run")):
        r = run_cli(*args, env=env)
        assert r.returncode == 2
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        f = tmp_path / "profiles" / "nordlys.yaml"
        assert r.stderr.startswith(f"hpcstudy: error: {f}:1: name: 'nordlys2' is not the "
                                   "file's name 'nordlys'"), r.stderr
        assert "write name: nordlys, or name the file nordlys2.yaml" in r.stderr


def test_a_misspelt_profile_field_suggests_the_right_one(tmp_path):
    env = _profiles(tmp_path, NORDLYS.replace("partition: a100", "partiton: a100"))
    r = run_cli("profiles", env=env)
    assert r.returncode == 2
    f = tmp_path / "profiles" / "nordlys.yaml"
    assert r.stderr.startswith(f"hpcstudy: error: {f}:3: partiton: unknown field — did you "
                               "mean 'partition'?"), r.stderr
    assert r.stderr.count("\n") == 1


# -- the docs' examples run as written ---------------------------------------------------------
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _blocks(page: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (DOCS / page).read_text(), re.DOTALL)


def test_the_operators_page_profile_is_a_valid_profile(tmp_path):
    # the field-by-field gefion profile of docs/operators.md, as an operator would copy it
    doc = next(b for b in _blocks("operators.md", "yaml") if b.startswith("name: gefion"))
    env = _profiles(tmp_path, doc, "gefion.yaml")
    r = run_cli("profiles", env=env)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("gefion "))
    assert str(tmp_path / "profiles" / "gefion.yaml") in line   # the copy, not the shipped one
    shipped = yaml.safe_load((EXAMPLES.parent / "jobs/slurm/profiles/gefion.yaml").read_text())
    assert yaml.safe_load(doc) == shipped     # the page shows the shipped profile, every field


def test_the_python_api_page_example_runs(tmp_path, small_data):
    code = _blocks("python-api.md", "python")[0]
    code = code.replace('"examples/statins_mi.yaml"', repr(str(EXAMPLES / "statins_mi.yaml")))
    code = code.replace('"data"', repr(str(small_data))).replace('"results"',
                                                                  repr(str(tmp_path / "r")))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "r" / "results.json").is_file()


def test_a_weighted_study_from_python_writes_the_clis_bytes(tmp_path, small_data):
    # docs/python-api.md: with out=, the same outputs folder as `hpcstudy run --out`; what
    # differs is only what each run records of itself (as_compared takes that out)
    import hpcstudy

    f = tmp_path / "weighted.yaml"
    f.write_text((EXAMPLES / "statins_mi.yaml").read_text().split("\nvariants:")[0]
                 + "\npropensity: {covariates: [age, sex, diabetes, charlson],"
                   " method: weighting, weighting: {estimand: overlap}}\n")
    cli, api = tmp_path / "cli", tmp_path / "api"
    r = run_cli("run", f, "--data", small_data, "--out", cli, "--quiet")
    assert r.returncode == 0, r.stderr
    result = hpcstudy.run(f, small_data, out=api)
    names = sorted(p.relative_to(cli).as_posix() for p in cli.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(api).as_posix() for p in api.rglob("*")
                           if p.is_file())
    assert "tables/balance.csv" in names and "tables/table1_adjusted.csv" in names
    differ = [n for n in names if (cli / n).read_bytes() != (api / n).read_bytes()]
    assert set(differ) <= {"audit.json", "run.json", "report.html", "outputs.json"}, differ
    for n in differ:
        if n != "audit.json":
            assert as_compared(n, (cli / n).read_bytes()) == as_compared(n, (api / n)
                                                                         .read_bytes()), n
    # the design's sections, as the page says; weights other than 1: robust errors
    assert result.exported["balance"] and result.exported["design"]["method"] == "weighting"
    assert result.models["cox"].model.robust_ is True
    assert result.exported["models"]["cox"]["standard_errors"] == "robust"   # and says so


def test_a_codelist_matching_nothing_in_the_data_names_its_line(tmp_path, small_data):
    # check --data named the file alone ("s.yaml: outcome.codelist: …"): which of 50 lines?
    r = run_cli("check", _study(tmp_path, hf_codes="Q99"), "--data", small_data)
    assert r.returncode == 2
    f = tmp_path / "s.yaml"
    line = f.read_text().splitlines().index("outcome: {name: hf, codelist: hf}") + 1
    assert r.stderr.splitlines() == [
        f"hpcstudy: error: {f}:{line}: outcome.codelist: codelist 'hf' matches no code in the "
        "data: no outcome can ever occur — check the codes"]
    # a study built in Python has no lines to give: the problem still names its field
    from hpcstudy.plan.compile import source_line

    assert source_line("<python>", "outcome.codelist") == "<python>"
    assert source_line(str(f), "outcome.nothing_here") == f"{f}:{line}"


def test_a_misspelt_design_method_is_one_error_not_two(tmp_path):
    # method: weighted also said "weighting: is set but method is matching": the default a
    # misspelling fell back to, which the user never wrote
    f = _study(tmp_path)
    f.write_text(f.read_text() + "propensity: {covariates: [age, sex], method: weighted,\n"
                 "             weighting: {estimand: overlap}}\n")
    r = run_cli("check", f)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"hpcstudy: error: {f}:15: propensity.method: must be one of matching | weighting | "
        "stratification | none, not 'weighted' — did you mean 'weighting'?"]
    # a method written right still refuses another method's settings
    f.write_text(f.read_text().replace("method: weighted", "method: matching"))
    r = run_cli("check", f)
    assert r.returncode == 2 and "propensity.weighting: is set but method is matching" in \
        r.stderr


def test_one_to_one_matching_has_the_models_own_errors(tmp_path, small_data):
    # docs/comparative.md: 1:1 matching without replacement of an active comparison leaves
    # every person one row of weight 1, so the Cox errors are model-based (the example once
    # said "robust errors"); against non-users a person can be in both arms: robust
    import hpcstudy

    f = tmp_path / "matched.yaml"
    f.write_text("""\
name: simva_atorva
codelists:
  simva: {system: atc, codes: [C10AA01]}
  atorva: {system: atc, codes: [C10AA05]}
  mi: {system: icd10, codes: [I21]}
exposure: {name: simva, first_event: {codelist: simva}, between: [2000-01-01, 2020-12-31]}
comparator: {active: {first_event: {codelist: atorva}, between: [2000-01-01, 2020-12-31]}}
covariates: [age, sex]
outcome: {name: mi, codelist: mi}
propensity: {covariates: [age, sex]}
analyses: {cox: true}
""")
    result = hpcstudy.run(f, small_data)
    assert result.exported["design"]["method"] == "matching"
    table = result.person_table
    assert set(table["weight"]) == {1.0} and not table["pnr"].duplicated().any()
    cox = result.models["cox"].model
    assert cox.robust_ is False
    # results.json and the report say which errors these are
    assert result.exported["models"]["cox"]["standard_errors"] == "model-based"
    f.write_text((EXAMPLES / "statins_mi.yaml").read_text().split("\nvariants:")[0]
                 + "\npropensity: {covariates: [age, sex, diabetes, charlson]}\n")
    result = hpcstudy.run(f, small_data)
    assert result.person_table["pnr"].duplicated().any()
    assert result.models["cox"].model.robust_ is True
    assert result.exported["models"]["cox"]["standard_errors"] == "robust"


def test_a_window_in_part_days_is_shown_as_written(tmp_path):
    # "[null, -0.5]" was reported as "not a list", which it is
    f = _study(tmp_path)
    f.write_text(f.read_text().replace("covariates: [age, sex]", "covariates: [age, sex, "
                                       "{name: prior_hf, codelist: hf, window: [null, -0.5]}]"))
    r = run_cli("check", f)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"hpcstudy: error: {f}:12: covariates[2].window: must be [from, to] in whole days "
        "relative to index, not [null, -0.5] — e.g. [-365, -1] for the year before; null "
        "leaves an end open"]


@pytest.mark.parametrize("value, shown", [
    (2018.63, "2018.6"), (2019.0, "2019.0"), (999.4, "999"), (61.449, "61.4"),
    (12345.6, "12,346"), (-1500.04, "-1500.0"), (float("nan"), "–")])
def test_a_mean_calendar_year_is_not_printed_as_a_count(value, shown):
    # Table 1 of a comparative study showed the mean index year as "2,019"
    from hpcstudy.report import formatting as fmt

    assert fmt.measure(value) == shown


def test_a_curve_with_no_point_to_show_says_why(tmp_path, small_data):
    # a small comparative study's report showed "Curve points" over an empty table, no word
    f = tmp_path / "s.yaml"
    f.write_text("name: short_mi\ncodelists:\n  mi: {system: icd10, codes: [I21]}\n"
                 "index: {date: 2015-01-01}\npopulation: {age: [80, 90]}\n"
                 "covariates: [age, sex]\noutcome: {name: mi, codelist: mi}\n"
                 "follow_up: {max_days: 30}\nanalyses: {curves: true}\n")
    out = tmp_path / "out"
    r = run_cli("run", f, "--data", small_data, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "results.json").read_text())["curves"] == []
    assert "No point can be shown: a point needs at least 5 persons at risk and 5 events " \
           "since the one before" in (out / "report.html").read_text()
    r = run_cli("check-outputs", out)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_name_the_export_gate_will_withhold_is_refused_at_check(tmp_path):
    # a study named "few" ran, and only check-outputs said that every file was withheld
    f = _study(tmp_path)
    f.write_text(f.read_text().replace("name: sglt2_su", "name: few")
                 .replace("covariates: [age, sex]", "covariates: [age, sex]\ncriteria:\n"
                          "  - exclude: {codelist: hf}\n    label: no hf twice"))
    r = run_cli("check", f)
    assert r.returncode == 2, r.stderr
    said = [x for x in r.stderr.splitlines() if "number word" in x]
    assert len(said) == 2 and all(x.startswith("hpcstudy: error: ") for x in said), r.stderr
    assert f"{f}:1: name: text 'few'" in said[0]
    assert f"{f}:15: criteria[0].label: text 'no hf twice'" in said[1]
    r = run_cli("check", _study(tmp_path))
    assert r.returncode == 0 and "number word" not in r.stderr


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"\[([^]]*)\]\([^)]*\)", r"\1", heading.strip().lower())   # a link: its text
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_every_link_between_the_docs_resolves():
    # a newcomer follows the docs' links: a file that moved or a heading renamed is a dead end
    root = DOCS.parent
    pages = [root / "README.md", *sorted(DOCS.glob("*.md"))]
    anchors = {p.resolve(): {_slug(h) for h in re.findall(r"^#+ (.+)$", p.read_text(), re.M)}
               for p in pages}
    dead = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            f = (page.parent / path).resolve() if path else page.resolve()
            if not f.exists():
                dead.append(f"{page.name}: {target} (no such file)")
            elif anchor and f in anchors and anchor not in anchors[f]:
                dead.append(f"{page.name}: {target} (no such heading)")
    assert not dead, dead
