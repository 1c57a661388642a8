"""The study language: ``load_study(path)`` reads and checks a YAML study.

    from hpcstudy.study import load_study
    study = load_study("examples/statins_mi.yaml")
    study.warnings        # harmless oddities `hpcstudy check` prints (file:line: field: …)
    study.to_dict()       # back to YAML-shaped data; parsing it gives an equal Study

keys.py is the table of every key allowed where; parse.py checks a study against it.
"""

from __future__ import annotations

from pathlib import Path

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
    Variant,
    Window,
)
from .parse import StudyErrors, apply_variant, find_variant, parse
from .yamlio import load, loads


def _checked(doc, name: str, base_dir, variant: str | None) -> Study:
    problems = []
    if variant is not None:
        doc, problems = apply_variant(doc, find_variant(doc, variant, name), name)
    study, more = parse(doc, name, base_dir, check_variants=variant is None)
    if problems or more:
        raise StudyErrors(problems + more)
    return study


def load_study(path: str | Path, variant: str | None = None) -> Study:
    """Read and check a study (and each of its variants); with ``variant``, that variant."""
    return _checked(load(path), str(path), Path(path).parent, variant)


def study_from_text(text: str, name: str = "<study>", base_dir: str | Path = ".",
                    variant: str | None = None) -> Study:
    return _checked(loads(text, name), name, base_dir, variant)


__all__ = ["Study", "Codelist", "Events", "Window", "Population", "IndexRule", "Comparator",
           "Criterion", "Covariate", "Outcome", "ModelSpec", "Lexis", "Measure", "Analyses",
           "Variant", "load_study", "study_from_text", "StudyErrors", "Problem", "parse"]
