"""The demo: synthetic registers with a planted truth, and the study that recovers it.

``hpcstudy synth`` plants a hazard ratio of statin initiation on a first myocardial infarction
(the manifest's ``truth``). A run records and prints that truth only where both halves are the
demo's: data whose manifest holds a truth, and a study that estimates that very effect (a
first statin dispensing, ATC C10AA, against a comparator, and a first MI, ICD-10 I21, as the
outcome). Any other study on the same data gets no truth: it would be no truth of its own.
"""

from __future__ import annotations

import math

from .plan.nodes import FirstEventIndex, Plan

EXPOSURE = ("lmdb", "C10AA")     # statins
OUTCOME = ("lpr", "DI21")        # acute myocardial infarction


def _only(stream, source: str, prefix: str) -> bool:
    return (stream is not None and stream.register == source and stream.codes is not None
            and all(p.startswith(prefix) for p in stream.codes.prefixes))


def is_demo(plan: Plan, manifest: dict) -> bool:
    """The data holds a planted truth and the study estimates the effect it was planted on."""
    if not manifest.get("truth") or not plan.has_comparator:
        return False
    exposure = plan.groups[0].index
    return (isinstance(exposure, FirstEventIndex) and _only(exposure.stream, *EXPOSURE)
            and not plan.outcome.death and _only(plan.outcome.stream, *OUTCOME))


def planted_truth(plan: Plan, manifest: dict) -> dict | None:
    """results.json's ``planted_truth`` section for the demo, else None."""
    if not is_demo(plan, manifest):
        return None
    truth = manifest["truth"]
    return {"mi_log_hr": truth["mi"]["log_hr"], "mi_per_year_of_age": truth["mi"]["per_year"]}


def report_line(res: dict) -> str | None:
    """The run report's line with the planted truth (the demo with a Cox model only)."""
    truth = res.get("planted_truth")
    if not truth or "cox" not in res.get("models", {}):
        return None
    hr = math.exp(truth["mi_log_hr"]["statin"])
    return f"  planted truth in the synthetic data: HR statin -> MI {hr:.3f}"
