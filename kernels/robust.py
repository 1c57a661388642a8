"""Robust (sandwich) variance, clustered: per-row score contributions summed per cluster.

The sandwich is ``I⁻¹ B I⁻¹`` with ``B = Σ_c U_c U_cᵀ`` and ``U_c`` the sum of the score
contributions of the rows of cluster ``c`` (a person). Persons never cross partitions, so every
cluster lies in one partition: each partition returns its own ``Σ_c U_c U_cᵀ`` (a p × p matrix)
and the partitions' matrices add.

Cox score contributions are the Lin–Wei score residuals; with Efron ties they use the Efron
risk sets (as R's ``coxph``); without tied event times they equal lifelines' residuals.
"""

from __future__ import annotations

from ._namespace import array_namespace
from .cox import over_risk_range, strata_cumsum


def cluster_meat(U, cluster):
    """(Σ_c U_c U_cᵀ, number of clusters) for rows ``U`` (n, p) and cluster ids (n,)."""
    xp = array_namespace(U)
    n, p = U.shape
    if n == 0:
        return xp.zeros((p, p)), 0
    order = xp.argsort(cluster, kind="stable")
    c = cluster[order]
    change = xp.ones(n, dtype=bool)
    change[1:] = c[1:] != c[:-1]
    starts = xp.nonzero(change)[0]
    csum = xp.concatenate([xp.zeros((1, p)), xp.cumsum(U[order], axis=0)], axis=0)
    ends = xp.concatenate([starts[1:], xp.full(1, n, dtype=starts.dtype)])
    Uc = csum[ends] - csum[starts]
    return Uc.T @ Uc, int(starts.shape[0])


def glm_scores(X, y, w, mu):
    """Per-row score contributions w·(y − μ)·x of a logistic or Poisson model (canonical link)."""
    return X * (w * (y - mu))[:, None]


def logistic_mean(X, beta):
    xp = array_namespace(X)
    eta = X @ xp.asarray(beta)
    log1pexp = xp.where(eta > 0, eta, 0.0) + xp.log1p(xp.exp(-xp.abs(eta)))
    return xp.exp(eta - log1pexp)


def poisson_mean(X, offset, beta):
    xp = array_namespace(X)
    return xp.exp(X @ xp.asarray(beta) + offset)


def cox_residual_terms(s0, s1, e0, e1, m, dw, ties: str):
    """Per grid point, from the reduced risk-set sums at the fitted β: ``c`` (Σ_k w̄/D_k),
    ``q`` (Σ_k w̄·x̄_k/D_k), the deaths' mean x̄ ``A`` and the Efron corrections ``e``, ``r``
    for rows that die there (D_k the k-th Efron denominator, x̄_k its covariate mean)."""
    xp = array_namespace(s0)
    G = s0.shape[0]
    has = m > 0
    if ties == "breslow":
        inv = xp.where(has, 1.0 / xp.where(has, s0, 1.0), 0.0)
        c = dw * inv
        q = s1 * (dw * inv * inv)[:, None]
        A = s1 * inv[:, None]
        return c, q, A, xp.zeros(G), xp.zeros_like(s1)
    mi = m.astype(xp.int64)
    jj = xp.repeat(xp.arange(G), mi)
    start = xp.cumsum(mi) - mi
    k = xp.arange(jj.shape[0]) - start[jj]
    f = k / m[jj]
    meanwt = xp.where(has, dw / xp.where(has, m, 1.0), 0.0)[jj]
    inv = 1.0 / (s0[jj] - f * e0[jj])
    inv2 = inv * inv

    def per_grid(v):
        return xp.bincount(jj, weights=v, minlength=G)

    c = per_grid(meanwt * inv)
    e = per_grid(meanwt * f * inv)
    alpha, beta_, gamma = per_grid(meanwt * inv2), per_grid(meanwt * f * inv2), \
        per_grid(meanwt * f * f * inv2)
    q = s1 * alpha[:, None] - e1 * beta_[:, None]
    r = s1 * beta_[:, None] - e1 * gamma[:, None]
    mm = xp.where(has, m, 1.0)
    A = (s1 * per_grid(inv)[:, None] - e1 * per_grid(f * inv)[:, None]) / mm[:, None]
    return c, q, A, e, r


def cox_scores(part, beta, terms, shift: float = 0.0):
    """Per-row weighted score residuals w_i·W_i (n_kept, p) of a prepared Cox partition, in
    its row order (``part.order`` gives the original rows). ``shift``: the risk-set sums behind
    ``terms`` were taken times exp(−shift) (kernels/cox.py), so the risks are too."""
    xp = array_namespace(part.w)
    c, q, A, e, r = terms
    XT = part.XT if part.XT is not None else part.centred().T   # (compiled parts keep none)
    X = XT.T
    risk = xp.exp(xp.asarray(beta) @ XT - shift)
    a, b = part.a, part.b
    if a is None:   # (compiled parts: everyone at risk from the first grid point)
        a = xp.zeros_like(b)
    if part.bounds is None:
        cum_c = xp.concatenate([xp.zeros(1), xp.cumsum(c)])
        cum_q = xp.concatenate([xp.zeros((1, q.shape[1])), xp.cumsum(q, axis=0)], axis=0)
        in_c, in_q = cum_c[b] - cum_c[a], cum_q[b] - cum_q[a]
    else:   # strata: sums over each row's range within its own stratum (kernels/cox.py)
        in_c = over_risk_range(strata_cumsum(c, part.bounds, xp), part)
        in_q = over_risk_range(strata_cumsum(q, part.bounds, xp), part)
    W = -risk[:, None] * (X * in_c[:, None] - in_q)
    d = part.dead
    j = b[d] - 1
    W[d] += (X[d] - A[j]) + risk[d][:, None] * (X[d] * e[j][:, None] - r[j])
    return W * part.w[:, None]


__all__ = ["cluster_meat", "glm_scores", "logistic_mean", "poisson_mean", "cox_residual_terms",
           "cox_scores"]
