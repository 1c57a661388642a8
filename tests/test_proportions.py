"""A fixed-horizon outcome (30-day mortality) is a proportion of persons with a Wilson CI, in
results.json, the tables and the printed summary; never a rate per person-years."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest
from conftest import EXAMPLES, run_cli
from statsmodels.stats.proportion import proportion_confint


@pytest.fixture(scope="module")
def mortality_run(small_data, tmp_path_factory):
    # example 3 without its logistic model (3 000 persons are too few for it)
    text = (EXAMPLES / "mi_mortality.yaml").read_text()
    text = text.split("  logistic:")[0]
    base = tmp_path_factory.mktemp("prop")
    (base / "s.yaml").write_text(text)
    out = base / "out"
    r = run_cli("run", base / "s.yaml", "--data", small_data, "--out", out,
                "--engine", "reference")
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_the_cohort_is_a_proportion_with_a_wilson_ci(mortality_run):
    out, _ = mortality_run
    person = pd.read_parquet(out / "private" / "person_table.parquet")
    n, k = len(person), int(person["event"].sum())
    row = json.loads((out / "results.json").read_text())["cohort"][0]
    assert "person_years" not in row and "rate_per_1000py" not in row
    assert (row["persons"], row["events"]) == (n, k)
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert row["proportion"] == pytest.approx(k / n, rel=1e-12)
    assert (row["lower_95"], row["upper_95"]) == pytest.approx((lo, hi), rel=1e-9)
    with open(out / "tables" / "cohort.csv") as f:
        head = next(csv.reader(f))
    assert "proportion" in head and "rate_per_1000py" not in head


def test_the_summary_prints_a_percentage(mortality_run):
    _, stdout = mortality_run
    assert "person-years" not in stdout
    line = next(x for x in stdout.splitlines() if x.startswith("  cohort:"))
    assert "% with the outcome (95% CI" in line, stdout


def test_an_open_outcome_stays_a_rate(local_run):
    cohort = json.loads((local_run / "results.json").read_text())["cohort"]
    assert all("rate_per_1000py" in r and "proportion" not in r for r in cohort)
