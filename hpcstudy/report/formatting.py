"""Numbers as a paper prints them: the one place the report, its Markdown and its CSV tables
take their formatting from.

    >>> count(12345), sig3(0.853172), sig3(12.345), p_value(0.00004), p_value(0.04321)
    ('12,345', '0.853', '12.3', '< 0.001', '0.0432')
"""

from __future__ import annotations

import math

SUPPRESSED = "suppressed"
MISSING = "–"          # a value the outputs do not hold (not a suppressed cell)


def _finite(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def count(v) -> str:
    """A count of persons or events, with thousands separators."""
    return f"{int(v):,}" if _finite(v) else MISSING


def sig3(v) -> str:
    """Three significant digits (0.853, 1.23, 12.3, 123); whole numbers from 1000 on."""
    if not _finite(v):
        return MISSING
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 999.5:
        return f"{v:,.0f}"
    decimals = max(0, 2 - math.floor(math.log10(a)))
    s = f"{v:.{decimals}f}"
    if abs(float(s.replace(",", ""))) >= 10 ** (3 - decimals) and decimals > 0:
        # 9.996 rounds up to 10.00: one decimal fewer keeps three significant digits
        s = f"{v:.{decimals - 1}f}"
    return s


def measure(v) -> str:
    """A mean, median or quartile of a measurement: three significant digits, but from 1000
    to 9999 one decimal and no separator — a mean calendar year is 2018.6, not "2,019"."""
    if _finite(v) and 999.5 <= abs(v) < 9999.95:
        return f"{v:.1f}"
    return sig3(v)


def p_value(v) -> str:
    """p as a paper prints it: < 0.001, else three significant digits."""
    if not _finite(v):
        return MISSING
    return "< 0.001" if v < 0.001 else sig3(v)


def whole(v) -> str:
    """A derived amount shown to the unit (person-years)."""
    return f"{v:,.0f}" if _finite(v) else MISSING


def percent(v) -> str:
    """A proportion (0–1) as a percentage with one decimal."""
    return f"{100 * v:.1f}" if _finite(v) else MISSING


def one_decimal(v) -> str:
    return f"{v:.1f}" if _finite(v) else MISSING


def interval(est: str, lo: str, hi: str) -> str:
    """'0.853 (0.721–1.01)'."""
    return f"{est} ({lo}–{hi})"
