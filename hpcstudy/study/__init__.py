"""The study language: ``load_study(path)`` reads and checks a YAML study.

    from hpcstudy.study import load_study
    study = load_study("examples/statins_mi.yaml")
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .language import (
    Analyses,
    Codelist,
    Comparator,
    Covariate,
    Criterion,
    Events,
    IndexRule,
    Lexis,
    Measure,
    ModelSpec,
    Outcome,
    Population,
    Problem,
    Study,
    Window,
    parse,
)
from .yamlio import load, loads


class StudyErrors(UserError):
    """Every problem found in a study, one line each (exit code 2)."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


def load_study(path: str | Path, variant: str | None = None) -> Study:
    """Read and check a study; with ``variant``, that variant of it."""
    doc = load(path)
    if variant is not None:
        from .language import apply_variant

        doc = apply_variant(doc, variant, str(path))
    study, problems = parse(doc, str(path), Path(path).parent)
    if problems:
        raise StudyErrors(problems)
    return study


def study_from_text(text: str, name: str = "<study>", base_dir: str | Path = ".") -> Study:
    study, problems = parse(loads(text, name), name, base_dir)
    if problems:
        raise StudyErrors(problems)
    return study


__all__ = ["Study", "Codelist", "Events", "Window", "Population", "IndexRule", "Comparator",
           "Criterion", "Covariate", "Outcome", "ModelSpec", "Lexis", "Measure", "Analyses",
           "load_study", "study_from_text", "StudyErrors", "Problem"]
