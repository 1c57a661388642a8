"""Studies compiled to plans: ``compile_study(study, dataset) -> Plan``; ``render(plan)``."""

from .compile import compile_study
from .nodes import Plan
from .render import render

__all__ = ["compile_study", "render", "Plan"]
