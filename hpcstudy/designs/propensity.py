"""The propensity score: P(exposed | covariates), fitted where the cohort lives.

The fit is the project's partitioned logistic regression (one reduction of Xᵀ·W·X per Newton
step; the rows never move), on columns centred at their means. With ``penalty`` (an L2 strength
λ, scikit-learn's 1/C, the intercept unpenalised) the same Newton steps maximise
ll(β) − λ/2·Σβⱼ²: the penalty's gradient and Hessian are added on the host to the partitions'
sums (centring moves only the intercept, which is not penalised).
"""

from __future__ import annotations

import numpy as np

from hpcstudy_kernels._namespace import array_namespace

from ..errors import UserError
from ..models import Logistic
from ..models.base import ModelError
from ..models.partitions import Partitions, on_device


def _x(part, spec):
    from ..engines.analyses import _matrix

    return _matrix(part, spec)


def _ps_part(part, spec, center=None):
    X = _x(part, spec)
    xp = array_namespace(X)   # the partition's arrays may live on a device
    if center is not None:
        X = X - center   # (a host argument goes to the partition's device with the task)
    n = X.shape[0]
    return {"X": xp.concatenate([xp.ones((n, 1)), X], axis=1),
            "y": (part["group"] == 1).astype(xp.float64), "weights": xp.ones(n)}


def _col_sums(part, spec):
    """The columns' sums and the row count, as one vector (partitions add elementwise)."""
    X = _x(part, spec)
    xp = array_namespace(X)
    return xp.concatenate([X.sum(axis=0), xp.full((1,), float(X.shape[0]))])


def terms(plan, parts: Partitions) -> tuple[list[str], list]:
    """Names and spec of the score model's columns (a region becomes level indicators)."""
    from ..engines.analyses import design_columns

    names, spec = design_columns(plan, parts, plan.propensity.covariates)
    if plan.has_comparator:   # design_columns puts the exposure first: the score predicts it
        names, spec = names[1:], spec[1:]
    return names, spec


def fit(plan, parts: Partitions, source: str) -> tuple[list[str], list, np.ndarray]:
    """(term names, spec, coefficients with the intercept first)."""
    names, spec = terms(plan, parts)
    pr = plan.propensity
    try:
        # centred columns: a covariate far from 0 (calendar year) leaves the intercept small,
        # so Newton's divergence check sees only true separation
        sums = np.asarray(on_device(parts).map_reduce(_col_sums, spec), float)
        center = sums[:-1] / max(sums[-1], 1.0)
        m = Logistic(robust=False, penalty=pr.penalty or 0.0).fit_partitions(
            on_device(parts).map(_ps_part, spec, center), ["intercept", *names])
        coef = np.array(m.coef_, float)
        coef[0] -= float(coef[1:] @ center)
    except ModelError as e:
        raise UserError(f"propensity score model: {e}", where=source,
                        fix="drop or merge the covariate that separates the arms "
                            "(propensity.covariates), or set propensity.penalty") from e
    return names, spec, coef


def score_part(part, spec, coef):
    """The partition with ``logit`` and ``ps`` (the score) added."""
    X = _x(part, spec)
    xp = array_namespace(X)
    eta = coef[0] + X @ coef[1:]
    out = dict(part)
    out["logit"] = eta
    out["ps"] = 1.0 / (1.0 + xp.exp(-xp.clip(eta, -700, 700)))
    return out
