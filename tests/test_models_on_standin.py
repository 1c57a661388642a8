"""The model fits on the device stand-in (and, with ``make test-gpu``, on a GPU).

Every per-partition model computation (design matrices from the partition table's columns,
Newton-step sums of logistic, Poisson and Cox Efron/Breslow fits, strata, counting-process
rows, robust score sums, curves, the propensity score) runs on the partition's device arrays:
only coefficients go out and small sums come back. The stand-in's arrays refuse NumPy and any
implicit trip to the host, so a host-only operation in a model path fails here. Estimates
equal the CPU's to 1e-10.

The stated bound, per partition and per evaluation of the likelihood (one per Newton step, more
only when a step is halved):
  - logistic and Poisson: 1 transfer to the device (β) and 1 to the host (log-likelihood,
    score and information packed in one array of 1 + p + p² values);
  - Cox: 2 to the device (β for pass 1; β and the grid weights c, e for pass 2) and 2 to the
    host (pass 1's risk-set sums packed in one array of 1 + 2G(1 + p) values; pass 2's p × p).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hpcstudy.devices import get_device
from hpcstudy.models import AalenJohansen, CoxPH, KaplanMeier, Logistic, Poisson
from hpcstudy.models import cox as cox_module
from hpcstudy.models import glm as glm_module
from hpcstudy.models.partitions import LocalPartitions, on_device, part_device

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEVICES = ["standin", pytest.param("gpu", marks=pytest.mark.gpu)]


def device_or_skip(name):
    from hpcstudy.devices import DeviceUnavailable

    try:
        return get_device(name)
    except DeviceUnavailable as e:
        pytest.skip(str(e))


class Recording(LocalPartitions):
    """Local partitions that record, for every map and map_reduce on device partitions, each
    partition's transfers to and from its device during that call (the device's counters)."""

    def __init__(self, parts, device="cpu", log=None):
        super().__init__(parts, device)
        self.log = [] if log is None else log

    def _recorded(self, call, fn, *args, **kw):
        devices = [part_device(p) for p in self.parts]
        if any(d is None for d in devices):   # host tables (rates, Lexis): nothing to count
            return call(fn, *args, **kw)
        before = [d.transfers.as_dict() for d in devices]
        out = call(fn, *args, **kw)
        after = [d.transfers.as_dict() for d in devices]
        self.log.append((fn.__name__, [{k: a[k] - b[k] for k in a}
                                       for a, b in zip(after, before, strict=True)]))
        return out

    def map(self, fn, *args):
        out = self._recorded(super().map, fn, *args)
        return Recording(out.parts, self.device, self.log)

    def map_reduce(self, fn, *args, **kw):
        return self._recorded(super().map_reduce, fn, *args, **kw)


def data(seed=5, n=1500, k=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    X[:, 2] = (X[:, 2] > 0).astype(float)
    t = np.floor(rng.exponential(200, n) / np.exp(X @ [0.4, -0.2, 0.3])) + 2
    c = rng.uniform(10, 800, n)
    time, event = np.minimum(t, c), (t <= c).astype(float)
    entry = np.where(rng.random(n) < 0.3, np.floor(time * rng.random(n) * 0.5), 0)
    entry = np.minimum(entry, time - 1)
    strata = rng.integers(0, 3, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ [0.5, -0.5, 0.2])))).astype(float)
    w = rng.uniform(0.5, 2.0, n)
    cluster = rng.integers(0, n // 2, n)
    which = rng.integers(0, k, n)
    return dict(X=X, time=time, event=event, entry=entry, strata=strata, y=y, w=w,
                cluster=cluster, which=which, k=k)


def partitions(d, keys, device, recording=False):
    """``keys`` of ``d`` split into d["k"] partitions, on ``device`` (one Device each)."""
    host = [{key: d[key][d["which"] == i] for key in keys} for i in range(d["k"])]
    if device == "cpu":
        return LocalPartitions(host)
    parts = LocalPartitions(host, device)
    moved = on_device(parts)
    return Recording(moved.parts, device) if recording else moved


def cox_parts(d, device, strata=False, entry=False, weighted=False, recording=False):
    base = {"X": d["X"], "time": d["time"], "event": d["event"],
            "strata": d["strata"].astype(np.int64) if strata else np.zeros(len(d["time"]),
                                                                            np.int64),
            "weights": d["w"] if weighted else np.ones(len(d["time"])),
            "cluster": d["cluster"], "which": d["which"], "k": d["k"]}
    keys = ["X", "time", "event", "strata", "weights", "cluster"]
    if entry:
        base["entry"] = d["entry"]
        keys.append("entry")
    return partitions(base, keys, device, recording)


def glm_parts(d, device, poisson=False, recording=False):
    X = np.concatenate([np.ones((len(d["y"]), 1)), d["X"]], axis=1)
    base = {"X": X, "y": np.floor(d["time"] / 100) if poisson else d["y"], "weights": d["w"],
            "cluster": d["cluster"], "offset": np.log(d["time"] / 365.25), "which": d["which"],
            "k": d["k"]}
    keys = ["X", "y", "weights", "cluster"] + (["offset"] if poisson else [])
    return partitions(base, keys, device, recording)


def same_fit(a, b, rel=1e-10):
    assert a.n_iter_ == b.n_iter_
    assert np.allclose(a.coef_, b.coef_, rtol=rel, atol=1e-13)
    assert np.allclose(a.se_, b.se_, rtol=rel, atol=0)
    assert a.loglik_ == pytest.approx(b.loglik_, rel=rel)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("shape", ["plain", "strata", "entry", "strata+entry", "weighted"])
def test_cox_on_the_device_equals_the_cpu(device, ties, shape):
    device_or_skip(device)
    d = data()
    kw = dict(strata="strata" in shape, entry="entry" in shape, weighted=shape == "weighted")
    names = ["a", "b", "c"]
    # weighted rows or repeated persons: robust errors, a sum of per-person score residuals
    want = CoxPH(ties).fit_partitions(cox_parts(d, "cpu", **kw), names)
    got = CoxPH(ties).fit_partitions(cox_parts(d, device, **kw), names)
    same_fit(got, want)
    assert got.robust_ and want.robust_


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model", ["logistic", "poisson"])
def test_glms_on_the_device_equal_the_cpu(device, model):
    device_or_skip(device)
    d = data()
    cls = Poisson if model == "poisson" else Logistic
    names = ["intercept", "a", "b", "c"]
    want = cls().fit_partitions(glm_parts(d, "cpu", model == "poisson"), names)
    got = cls().fit_partitions(glm_parts(d, device, model == "poisson"), names)
    same_fit(got, want)
    assert got.robust_


@pytest.mark.parametrize("device", DEVICES)
def test_curves_and_one_array_fits_on_the_device_equal_the_cpu(device):
    dev = device_or_skip(device)
    d = data()
    on = {k: dev.to_device(np.asarray(d[k])) for k in ("X", "time", "event", "entry", "y",
                                                        "strata")}
    same_fit(CoxPH().fit(on["X"], on["time"], on["event"], entry=on["entry"],
                         strata=on["strata"]),
             CoxPH().fit(d["X"], d["time"], d["event"], entry=d["entry"], strata=d["strata"]))
    same_fit(Logistic().fit(on["X"], on["y"]), Logistic().fit(d["X"], d["y"]))
    km = KaplanMeier().fit(on["time"], on["event"], entry=on["entry"])
    ref = KaplanMeier().fit(d["time"], d["event"], entry=d["entry"])
    assert np.array_equal(km.timeline_, ref.timeline_)
    assert np.allclose(km.survival_, ref.survival_, rtol=1e-12)
    cause = d["event"] * (1 + (d["strata"] == 2))
    aj = AalenJohansen().fit(dev.to_device(d["time"]), dev.to_device(cause))
    assert np.allclose(aj.cumulative_incidence_,
                       AalenJohansen().fit(d["time"], cause).cumulative_incidence_, rtol=1e-12)


# -- transfers per Newton step per partition -----------------------------------------------------
STEP = {"_pass1": (1, 1), "_pass2": (1, 1), "_logistic": (1, 1), "_poisson": (1, 1)}


def _steps(log, name):
    return [per_part for fn, per_part in log if fn == name]


@pytest.mark.parametrize("shape", ["plain", "strata+entry"])
def test_cox_newton_steps_move_beta_out_and_small_sums_back(shape):
    d = data()
    p, k = 3, d["k"]
    parts = cox_parts(d, "standin", strata="strata" in shape, entry="entry" in shape,
                      recording=True)
    m = CoxPH().fit_partitions(parts, ["a", "b", "c"])
    log = parts.log
    G = m.grid_size_
    pass1, pass2 = _steps(log, "_pass1"), _steps(log, "_pass2")
    # one pass 1 per evaluation (the start, each trial step) and one for the robust errors
    assert len(pass1) >= m.n_iter_ + 1 and len(pass2) >= m.n_iter_ + 1
    for calls, (to_dev, to_host), out_bytes, in_bytes in (
            (pass1, STEP["_pass1"], 8 * p, 8 * (1 + 2 * G * (1 + p))),
            (pass2, STEP["_pass2"], 8 * (p + 2 * G), 8 * p * p)):
        for per_part in calls:
            assert len(per_part) == k
            for t in per_part:
                assert t["to_device_calls"] == to_dev and t["to_host_calls"] == to_host, t
                assert t["to_device_bytes"] == out_bytes and t["to_host_bytes"] == in_bytes, t
    # no call of the fit brings back more than one pass-1 packet (grid-sized, never rows)
    for fn, per_part in log:
        for t in per_part:
            assert t["to_host_bytes"] <= 8 * (1 + 2 * G * (1 + p)), (fn, t)


@pytest.mark.parametrize("model", ["logistic", "poisson"])
def test_glm_newton_steps_move_beta_out_and_one_array_back(model):
    d = data()
    p, k = 4, d["k"]
    parts = glm_parts(d, "standin", model == "poisson", recording=True)
    cls = Poisson if model == "poisson" else Logistic
    m = cls().fit_partitions(parts, ["intercept", "a", "b", "c"])
    steps = _steps(parts.log, f"_{model}")
    assert len(steps) >= m.n_iter_ + 1
    for per_part in steps:
        assert len(per_part) == k
        for t in per_part:
            assert (t["to_device_calls"], t["to_host_calls"]) == STEP[f"_{model}"], t
            assert t["to_device_bytes"] == 8 * p
            assert t["to_host_bytes"] == 8 * (1 + p + p * p)
    setup = sum(t["to_device_calls"] + t["to_host_calls"] for fn, per_part in parts.log
                if fn != f"_{model}" for t in per_part)
    assert setup <= 20 * k   # the gram, the robust meat, the log(y!) table: a fixed few


# -- a host-only operation in a model path fails on the stand-in ---------------------------------
def _careless_logistic(part, beta):
    """A careless Newton step: NumPy on the partition's arrays (right on the CPU)."""
    X, y, w = part["X"], part["y"], part["weights"]
    mu = 1 / (1 + np.exp(-(X @ beta)))
    return glm_module._packed((w * (y * np.log(mu) + (1 - y) * np.log1p(-mu))).sum(),
                              X.T @ (w * (y - mu)), (X * (w * mu * (1 - mu))[:, None]).T @ X)


def _careless_pairs(part):
    """Careless: event times taken to the host with np.unique."""
    t = np.unique(np.asarray(part["time"])[np.asarray(part["event"]) > 0])
    return [np.zeros(t.shape[0], np.int64)], [t]


def test_numpy_in_a_newton_step_fails_on_the_standin(monkeypatch):
    d = data()
    names = ["intercept", "a", "b", "c"]
    right = Logistic().fit_partitions(glm_parts(d, "cpu"), names)
    monkeypatch.setattr(glm_module, "_logistic", _careless_logistic)
    wrong_on_cpu = Logistic().fit_partitions(glm_parts(d, "cpu"), names)
    assert np.allclose(wrong_on_cpu.coef_, right.coef_, rtol=1e-8)   # the CPU cannot tell
    with pytest.raises(TypeError, match="device|ufunc"):
        Logistic().fit_partitions(glm_parts(d, "standin"), names)


def test_host_arrays_in_the_cox_grid_step_fail_on_the_standin(monkeypatch):
    d = data()
    right = CoxPH().fit_partitions(cox_parts(d, "cpu"), ["a", "b", "c"])
    monkeypatch.setattr(cox_module, "_pairs", _careless_pairs)
    assert np.allclose(CoxPH().fit_partitions(cox_parts(d, "cpu"), ["a", "b", "c"]).coef_,
                       right.coef_, rtol=1e-10)
    with pytest.raises(TypeError, match="device|ufunc"):
        CoxPH().fit_partitions(cox_parts(d, "standin"), ["a", "b", "c"])


# -- the study path: every example's models on the stand-in ----------------------------------------
def _models_of(plan) -> set:
    an = plan.study.analyses
    return {k for k in ("cox", "logistic", "poisson") if getattr(an, k) is not None}


@pytest.fixture(scope="module")
def cpu_tables(medium_data):
    """Each example's per-person tables (the cohort step, on the CPU) and its analyses."""
    from hpcstudy.engines import run as R

    out = {}
    for example in EXAMPLES_WITH_MODELS:
        _, plan, ds = R.prepare(EXAMPLES / f"{example}.yaml", medium_data)
        tables, attrition, parts = R.person_table(plan, ds, "dask")
        out[example] = (plan, list(tables), attrition, R.analyse(plan, parts, attrition))
    return out


# sglt2_dpp4_hf needs ~200 000 persons (tests/designs/test_sglt2_truth.py): its propensity
# score model is tested on the stand-in below, its Cox model is the same code as these
EXAMPLES_WITH_MODELS = ["diabetes_incidence", "mi_hospitals", "mi_mortality", "statins_mi"]


@pytest.mark.parametrize("example", EXAMPLES_WITH_MODELS)
def test_every_examples_models_on_the_standin_equal_the_cpu(example, cpu_tables):
    """The analyses of an example with the partitions' model work on the stand-in: the same
    results (estimates to 1e-10, counts exactly), every model of the example fitted there,
    and within the stated transfers per Newton step and partition."""
    from study.test_engines_agree import compare

    from hpcstudy.engines import run as R

    plan, tables, attrition, want = cpu_tables[example]
    parts = Recording(tables, "standin")
    got = R.analyse(plan, parts, attrition)
    compare(want, got, rel=1e-10)
    kinds = _models_of(plan)
    assert kinds <= set(got.get("models", {}))
    names = {fn for fn, _ in parts.log}
    fitted = {"cox": "_pass1", "logistic": "_logistic", "poisson": "_poisson"}
    assert {fitted[k] for k in kinds} <= names      # every model's steps ran on the device
    if plan.study.analyses.curves:
        assert "_counts" in names
    if plan.study.analyses.hospitals is not None:   # the risk model and its predictions
        assert "_expected_part" in names and names & {"_logistic", "_poisson"}
    for fn, per_part in parts.log:
        assert len(per_part) == len(tables)
        for t in per_part:
            if fn in STEP:
                assert (t["to_device_calls"], t["to_host_calls"]) == STEP[fn], (fn, t)
            else:   # set-up of a fit (β and 5 grid arrays for the robust errors at most)
                assert t["to_device_calls"] <= 6 and t["to_host_calls"] <= 8, (fn, t)
    # besides those, each partition's table went to the device once, for every model
    for i, (table, moved) in enumerate(zip(tables, parts._on_device.parts, strict=True)):
        logged = sum(per_part[i]["to_device_calls"] for _, per_part in parts.log)
        assert part_device(moved).transfers.to_device_calls - logged == len(table)


def test_the_propensity_score_fit_and_scores_on_the_standin_equal_the_cpu(cpu_tables):
    """The propensity score's design rows, its logistic fit and each person's score (the
    design step's per-row prediction) on the stand-in, from real per-person tables."""
    from hpcstudy.designs import propensity as P

    plan, tables, _, _ = cpu_tables["statins_mi"]
    spec = [("age", None), ("sex", None), ("diabetes", None)]
    names = ["intercept", "age", "sex", "diabetes"]
    want = Logistic(robust=False).fit_partitions(LocalPartitions(tables).map(P._ps_part, spec),
                                                 names)
    dev = on_device(LocalPartitions(tables, "standin"))
    got = Logistic(robust=False).fit_partitions(dev.map(P._ps_part, spec), names)
    same_fit(got, want)
    scored = dev.map(P.score_part, spec, want.coef_)
    for host, part in zip(tables, scored.parts, strict=True):
        d = part_device(part)
        assert np.allclose(d.to_host(part["ps"]), P.score_part(host, spec, want.coef_)["ps"],
                           rtol=1e-12, atol=0)


def test_a_whole_run_on_the_standin_gives_the_cpu_table_and_estimates(small_data, local_run,
                                                                      tmp_path):
    """`run --device standin` from the YAML: cohort and every model on the stand-in; the
    private per-person table byte for byte and the results to 1e-10 of the CPU run."""
    from study.test_engines_agree import compare

    from hpcstudy.engines.run import run

    out = tmp_path / "out"
    res = run(EXAMPLES / "diabetes_incidence.yaml", small_data, out, device="standin")
    assert res["run"]["device"]["name"] == "standin" and "poisson" in res["models"]
    private = Path("private") / "person_table.parquet"
    assert (out / private).read_bytes() == (local_run / private).read_bytes()
    want = json.loads((local_run / "results.json").read_text())
    got = json.loads((out / "results.json").read_text())
    want["run"].pop("device"), got["run"].pop("device")
    compare(want, got, rel=1e-10)


def test_a_standin_array_pickles_through_the_host_counted_both_ways():
    """As a CuPy array does (dask moving a device partition to another worker): the sender's
    device counts a transfer to the host, the receiving process's stand-in one to it."""
    import pickle

    dev = get_device("standin")
    x = dev.to_device(np.arange(6.0))
    y = pickle.loads(pickle.dumps({"x": x}))["x"]
    assert type(y).__name__ == "StandinArray"
    assert dev.transfers.to_host_calls == 1 and dev.transfers.to_host_bytes == 48
    assert part_device((y,)).transfers.to_device_bytes >= 48
    with pytest.raises(TypeError, match="device"):
        np.asarray(y)


def test_dask_partitions_add_no_transfers_to_a_fit():
    """The same Cox fit over the dask threaded scheduler moves exactly what it moves over local
    partitions (dask never hashes or copies a device partition to name its tasks)."""
    from hpcstudy.models.partitions import DaskPartitions

    d = data()
    totals = []
    for kind in ("local", "dask"):
        local = cox_parts(d, "standin", strata=True)
        parts = local if kind == "local" else DaskPartitions(local.parts, None, "threads",
                                                             "standin")
        before = [part_device(p).transfers.as_dict() for p in local.parts]
        m = CoxPH().fit_partitions(parts, ["a", "b", "c"])
        totals.append([{k: part_device(p).transfers.as_dict()[k] - b[k] for k in b}
                       for p, b in zip(local.parts, before, strict=True)])
        assert m.robust_
    assert totals[0] == totals[1]


VARYING = """
name: varying_on_the_standin
codelists:
  statins: {system: atc, codes: [C10AA*]}
  mi: {system: icd10, codes: [I21*]}
index: {date: 2008-01-01}
population: {age: [40, 90]}
covariates:
  - age
  - sex
  - {name: statin, codelist: statins, time_varying: true}
outcome: {name: mi, codelist: mi}
analyses:
  cox: {adjust: [statin, age, sex]}
  poisson: {adjust: [statin, age, sex]}
"""


def test_time_varying_models_on_the_standin_equal_the_cpu(small_data):
    """A time-varying covariate: follow-up split into (entry, exit] pieces on the host, then
    the counting-process Cox fit and the Poisson fit with the pieces' person-time on the
    stand-in."""
    from study.test_engines_agree import compare

    from hpcstudy.engines import run as R
    from hpcstudy.study import study_from_text

    _, plan, ds = R.prepare(study_from_text(VARYING), small_data)
    tables, attrition, parts = R.person_table(plan, ds, "dask")
    want = R.analyse(plan, parts, attrition)
    rec = Recording(list(tables), "standin")
    got = R.analyse(plan, rec, attrition)
    compare(want, got, rel=1e-10)
    assert {"cox", "poisson"} <= set(got["models"])
    names = {fn for fn, _ in rec.log}
    assert {"_pass1", "_pass2", "_poisson"} <= names
    for fn, per_part in rec.log:
        for t in per_part:
            if fn in STEP:
                assert (t["to_device_calls"], t["to_host_calls"]) == STEP[fn], (fn, t)
