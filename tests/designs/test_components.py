"""Covariates the design adds on request: every Charlson category and every codelist as a
flag. Both engines agree; the score equals scikit-learn on the flags kept; the rule that leaves
rare flags out is checked against the table; flags the study has already are not added twice;
a name clash is refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from hpcstudy.engines import run as R
from hpcstudy.errors import UserError
from hpcstudy.study import study_from_text

from .test_designs import BASE, both_engines, compare


def spec(method="none", **extra):
    s = yaml.safe_load(yaml.safe_dump(BASE))
    s["propensity"] = {"covariates": ["age", "sex"], "method": method,
                       "charlson_components": True, "codelist_flags": True, **extra}
    return study_from_text(yaml.safe_dump(s))


@pytest.fixture(scope="module")
def runs(small_data):
    return both_engines(spec(), small_data)


def test_engines_agree(runs):
    (ta, aa, ra, _), (tb, ab, rb, _) = runs["reference"], runs["dask"]
    assert aa == ab
    compare(ra, rb)
    for k in ta:
        if k == "ps":
            np.testing.assert_allclose(ta[k], tb[k], rtol=1e-8)
        else:
            assert np.array_equal(ta[k], tb[k]), k


def test_flags_added_kept_and_left_out_by_the_rule(runs):
    table, _, res, plan = runs["dask"]
    t = pd.DataFrame(table)
    added = [c.name for c in plan.columns if c.name.startswith(("charlson_", "codelist_"))]
    assert len([a for a in added if a.startswith("charlson_")]) == 19
    # the arms' own codelist (statins) is no flag; diabetes is flagged by the study already
    assert {a for a in added if a.startswith("codelist_")} == {"codelist_mi", "codelist_ras"}
    design = res["design"]
    for name in added:
        fewest = min(int(((t.group == arm) & (t[name] == v)).sum()) for arm in (0, 1)
                     for v in (0, 1))
        rare = fewest < 5
        assert (name in design.get("left_out", [])) == rare, name
        assert (name in design["covariates"]) == (not rare), name
    assert design["left_out"] and design["covariates"][:2] == ["age", "sex"]


def test_score_equals_scikit_learn_on_the_kept_flags(runs):
    table, _, res, _ = runs["dask"]
    t = pd.DataFrame(table)
    X = t[res["design"]["covariates"]].to_numpy(float)
    ref = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12,
                             max_iter=500).fit(X, (t.group == 1).astype(int))
    np.testing.assert_allclose(t.ps, ref.predict_proba(X)[:, 1], rtol=1e-6)


def test_a_name_clash_is_refused(small_data):
    s = yaml.safe_load(yaml.safe_dump(BASE))
    s["covariates"].append({"name": "codelist_mi", "codelist": "mi", "window": [-365, 0]})
    s["propensity"] = {"covariates": ["age"], "codelist_flags": True}
    with pytest.raises(UserError) as e:
        R.prepare(study_from_text(yaml.safe_dump(s), "s.yaml"), small_data)
    assert "propensity.codelist_flags: adds the covariate codelist_mi" in str(e.value)
