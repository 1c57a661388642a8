"""The report's figures asked for as soon as their analysis has finished, not when the page is
laid out.

A run's page is laid out from the files the writers wrote, after every analysis, disclosure and
the writers; the figure process (:mod:`.drawing`) used to draw only then, and its last figures
were the end of the run, on one core. An analysis that finishes early (the curves, a model
whose fit converged first) already fixes what its figures will show: the rows of its exported
table are its disclosed section written as CSV and read back, as the page reads them. So the
figure is asked for then, keyed by exactly the call the page will make
(:meth:`.drawing.FigureProcess.early`); the page takes the drawn figure when it makes the same
call, and asks again when it does not (nothing is ever shown that the page did not ask for,
and the page is the same bytes either way). Only figures of sections that disclosure treats on
their own are asked early: the curves (``km_plot``) and each model's forest plot.

    early = Early(figures, plan)         # before the analyses
    analyse(..., finished=early)         # early(node, section) as each one finishes
"""

from __future__ import annotations

import threading

from ..plan.nodes import CurvesPlan, ModelPlan, Plan


class Early:
    """Called with each analysis node and the raw sections it filled, as it finishes (from the
    analyses' threads): asks the figure process for the figures the page will draw from them.
    Never raises: a section it cannot treat is left to the page (drawn later, the same
    figure)."""

    def __init__(self, figures, plan: Plan):
        self.figures, self.plan = figures, plan
        self._groups: dict | None = None
        self._lock = threading.Lock()

    def groups(self) -> dict[str, str]:
        """Group code -> label, as the page reads them from plan.txt."""
        with self._lock:
            if self._groups is None:
                from ..plan import render
                from .build import GROUP

                # plan.txt holds the rendered plan less its first line (writers.write_run)
                rendered = render(self.plan).split("\n", 1)
                self._groups = dict(GROUP.findall(rendered[1] if len(rendered) > 1 else ""))
            return self._groups

    def __call__(self, node, res: dict) -> None:
        try:
            if isinstance(node, CurvesPlan) and "curves" in res:
                rows = self._rows({"curves": res["curves"]}, lambda r: r["curves"])
                groups = self.groups()
                for what in ("survival", "cumulative_incidence"):
                    self.figures.early("km_plot", rows, groups, what)
            elif isinstance(node, ModelPlan):
                for name, m in res.get("models", {}).items():
                    shown = self._exported({"models": {name: m}})["models"][name]
                    if isinstance(shown, dict) and "terms" in shown:
                        self.figures.early("forest_plot", self._as_read(shown["terms"]))
        except Exception:   # noqa: BLE001 - the page draws it, and says any error, as before
            return

    def _exported(self, sections: dict) -> dict:
        from ..outputs.publish import exported

        plan = self.plan
        return exported({"study": plan.name, "attrition": {}, "cohort": [], **sections},
                        plan.min_cell, plan.round_to)

    def _rows(self, sections: dict, pick) -> list[dict]:
        return self._as_read(pick(self._exported(sections)))

    @staticmethod
    def _as_read(rows: list[dict]) -> list[dict]:
        """``rows`` as the page reads them: written as the writers write a table, parsed as
        the page parses it."""
        from ..outputs.writers import csv_text
        from .build import read_csv

        return read_csv(csv_text(rows))
