"""Late entry: a lag (``follow_up.start_day``) and a calendar end (``follow_up.end_date``).

Follow-up starts on ``index + start_day``; a person whose outcome comes before that day leaves
the cohort (their outcome is not a new one), and so does one whose follow-up ends before it
(death, emigration, the calendar end). Each engine applies the rule with its own code: pandas
here for the reference engine, the array namespace for the partition engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpcstudy_kernels import array_namespace

if TYPE_CHECKING:   # the reference engine's frames: the partition engine never loads pandas
    import pandas as pd


def step_names(plan) -> list[str]:
    """The attrition steps late entry adds, in order (none without a lag or an end date)."""
    n = plan.follow_up_start
    if n:
        return [f"no {plan.outcome.name} before day {n}", f"still followed on day {n}"]
    if plan.follow_up_end is not None:
        # no date in a step's name: the export gate holds dates back as per-person detail
        return ["index on or before follow_up.end_date"]
    return []


def frame_entry(out: pd.DataFrame, outcome: pd.Series, raw_exit: pd.Series, plan,
                attrition: list) -> pd.DataFrame:
    """Reference engine: the rows of ``out`` still followed on their start day; the steps are
    appended to ``attrition``. ``outcome`` and ``raw_exit`` are days, unclipped."""
    names = step_names(plan)
    if not names:
        return out
    import pandas as pd

    start = out["index_date"].astype("int64") + plan.follow_up_start
    keep = pd.Series(True, index=out.index)
    if plan.follow_up_start:
        keep &= ~(outcome < start)
        attrition.append((names[0], int(keep.sum())))
    keep &= ~(raw_exit < start)
    attrition.append((names[-1], int(keep.sum())))
    return out[keep]


def array_entry(index, outcome, ends: list, plan) -> tuple:
    """Partition engine: (keep mask, [(step, mask after it)]) for persons with ``index`` days
    and the unclipped end days ``ends`` (``outcome`` among them)."""
    xp = array_namespace(index)
    names = step_names(plan)
    keep = xp.ones(index.shape[0], dtype=bool)
    if not names:
        return keep, []
    start = index.astype(xp.int64) + plan.follow_up_start
    steps = []
    if plan.follow_up_start:
        keep = keep & ~(outcome < start)
        steps.append((names[0], keep))
    first = ends[0]
    for e in ends[1:]:
        first = xp.minimum(first, e)
    keep = keep & ~(first < start)
    steps.append((names[-1], keep))
    return keep, steps
