"""The analyses a plan asks for, on the per-person table's partitions: the raw results.

One function per analysis node (``ANALYSES``), each filling its sections of the results dict
in the plan's order. Both engines hand the same :class:`~hpcstudy.models.partitions.Partitions`
here (one partition, or one per register partition), so both support every analysis
registered here. The results are raw, undisclosed: hpcstudy/outputs/publish.py applies the
disclosure rules before anything is written. The model code itself is engines/analyses.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from ..errors import UserError
from ..models.base import ModelError
from ..outputs.disclosure import TERM_COUNTS
from ..plan.dispatch import Registry
from ..plan.nodes import (
    CurvesPlan,
    HospitalsPlan,
    LexisPlan,
    MeasurePlan,
    ModelPlan,
    Plan,
    RatesPlan,
)
from . import analyses as A

# (node, Context) -> None: fills ctx.res[...]
ANALYSES = Registry("reference, dask")


@dataclass
class Context:
    """What an analysis sees: the plan, the table's partitions, the data (the Danish standard
    population of a measure is counted from it), the results so far and ``keep(name, model)``,
    which hands a fitted model to the caller (the Python API's models)."""

    plan: Plan
    parts: object
    ds: object
    res: dict
    fitted: dict | None
    share: bool                  # a fixed-horizon outcome: proportions, not rates

    def keep(self, name: str, model):
        if self.fitted is not None:
            self.fitted[name] = model
        return model


def analyse(plan: Plan, parts, attrition, fitted: dict | None = None, ds=None,
            design: dict | None = None, finished=None) -> dict:
    """The results dict; ``fitted``, when given, receives the fitted model objects by the
    results' model names (and ``lexis_poisson``): what the Python API hands a notebook.
    ``design``: the comparative design's sections (table1, balance, preference), when the plan
    has one (hpcstudy/designs). ``finished(node, sections)``: called with each analysis that
    runs beside the others and the raw sections it filled, as soon as it has (from its thread;
    the run's early figures, hpcstudy/report/ahead.py)."""
    res: dict = {"study": plan.name,
                 "attrition": {g: [{"step": k, "persons": n} for k, n in st]
                               for g, st in attrition.items()}}
    ctx = Context(plan, parts, ds, res, fitted, A.fixed_horizon(plan))
    ANALYSES.check(plan.analyses)
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="hpcstudy-analysis") as pool:
        # independent analyses at once (models, curves, rates; on this process's CPU): one's
        # partition tasks keep the cores busy while another's Newton step runs on one. Each
        # fills its own results, taken in the plan's order: the same dict, key for key.
        alone = [node for node in plan.analyses if _concurrent(node, parts)]
        running = {id(node): pool.submit(_on_its_own, node, ctx, finished) for node in alone}
        res["cohort"] = [{"group": g.code, "label": g.label, **r} for g in plan.groups
                         for r in A.rates(parts, ("group",), ctx.share)
                         if r["group"] == g.code]
        for r in res["cohort"]:
            r.pop("group", None)
        res.update(design or {})   # table1, balance, preference
        for node in plan.analyses:
            if id(node) not in running:
                ANALYSES(node, ctx)
                continue
            own = running[id(node)].result()   # its error, in the plan's order
            for k, v in own.res.items():
                if isinstance(v, dict) and isinstance(res.get(k), dict):
                    res[k].update(v)   # models: {cox: …} then {poisson: …}
                else:
                    res[k] = v
            if fitted is not None:
                fitted.update(own.fitted)
    return res


def _concurrent(node, parts) -> bool:
    """An analysis that may run beside the others: one that reads only the partitions and
    writes only its own sections, on the dask engine's partitions in this process's memory
    (not on a device or a cluster, whose transfers and tasks are counted and ordered, nor on
    the reference engine's pandas frame)."""
    return isinstance(node, ModelPlan | CurvesPlan | RatesPlan) and \
        getattr(parts, "device", None) == "cpu" and getattr(parts, "client", True) is None \
        and getattr(parts, "frame", None) is None


def _on_its_own(node, ctx: Context, finished=None) -> Context:
    own = replace(ctx, res={}, fitted=None if ctx.fitted is None else {})
    ANALYSES(node, own)
    if finished is not None:
        finished(node, own.res)
    return own


@ANALYSES.register(RatesPlan)
def _rates(node: RatesPlan, ctx: Context) -> None:
    if node.by != ("group",):    # by group alone is the cohort table, always there
        ctx.res["rates"] = A.rates(ctx.parts, node.by, ctx.share)


@ANALYSES.register(ModelPlan)
def _model(node: ModelPlan, ctx: Context) -> None:
    plan = ctx.plan
    try:
        if node.model == "cox":
            m = A.cox(plan, ctx.parts, node.adjust, node.strata, A.model_bands(node))
        else:
            m = A.glm(plan, ctx.parts, node.adjust, node.model == "poisson",
                      A.model_bands(node))
    except ModelError as e:
        raise UserError(f"model cannot be fitted: {e}", where=plan.source,
                        fix="simplify the model or widen the cohort") from e
    ctx.res.setdefault("models", {})[node.model] = model_result(ctx.keep(node.model, m))


@ANALYSES.register(CurvesPlan)
def _curves(node: CurvesPlan, ctx: Context) -> None:
    ctx.res["curves"] = A.curves(ctx.plan, ctx.parts)


@ANALYSES.register(LexisPlan)
def _lexis(node: LexisPlan, ctx: Context) -> None:
    plan, parts = ctx.plan, ctx.parts
    sums = A.lexis_sums(plan, parts)
    rows = A.lexis(plan, parts, sums)
    ctx.res["lexis"] = rows
    if sum(r["events"] for r in rows) > 0 and len(rows) > 1:
        try:
            ctx.res["lexis_model"] = model_result(ctx.keep("lexis_poisson", A.lexis_poisson(
                rows, plan, sums)))
        except ModelError as e:
            ctx.res["lexis_model"] = {"error": str(e)}


@ANALYSES.register(MeasurePlan)
def _measure(node: MeasurePlan, ctx: Context) -> None:
    # hpcstudy.measures computes the plan's measures together (they share the age bands and
    # standard populations): the first measure node fills the section, in the plan's order
    if "measures" not in ctx.res:
        from .reference_measures import measures_of

        ctx.res["measures"] = measures_of(ctx.plan, ctx.parts, ctx.ds)


@ANALYSES.register(HospitalsPlan)
def _hospitals(node: HospitalsPlan, ctx: Context) -> None:
    from .reference_measures import hospitals_of

    ctx.res["hospitals"] = hospitals_of(ctx.plan, ctx.parts, ctx.fitted)


def model_result(m) -> dict:
    """A fitted model as results: totals, estimates and the counts behind each term; the
    private ``_variables`` and ``_patterns`` feed the disclosure rules and never leave."""
    cells = getattr(m, "cells_", None)
    res = {"persons": m.n_obs_, "events": getattr(m, "n_events_", None), "loglik": m.loglik_,
           "newton_steps": m.n_iter_,
           "standard_errors": "robust" if getattr(m, "robust_", False) else "model-based",
           "terms": m.summary}
    if cells is None:
        return res
    res["persons"], res["events"] = cells["persons"], cells["events"]
    by_name = {c["term"]: c for c in cells["terms"]}
    res["terms"] = [{**t, **{k: by_name[t["term"]][k] for k in TERM_COUNTS}}
                    for t in res["terms"]]
    res["_variables"] = {c["term"]: c["variable"] for c in cells["terms"] if c["variable"]}
    res["_patterns"] = cells["patterns"]
    return res
