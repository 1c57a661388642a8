"""The report's figures, drawn with matplotlib as SVG text to inline in the page.

Every figure is a pure function of the rows it is given: a fixed hash salt for the SVG ids, no
date or creator metadata, text kept as text (``svg.fonttype: none``, so numbers in a figure can
be read back and checked, and no font is embedded or fetched). Values a table suppressed are
gaps, never zeros.
"""

from __future__ import annotations

import io
import math
import warnings

import matplotlib

matplotlib.use("Agg")   # no display: figures are only ever written to SVG

from matplotlib import rc_context  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402

from .drawing import inline  # noqa: E402, F401 - the page's (it needs no matplotlib)

STYLE = {"svg.hashsalt": "hpcstudy-report", "svg.fonttype": "none", "font.size": 9,
         "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"],
         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.alpha": 0.25, "path.simplify": False}
WIDTH = 7.0


def draw(plot, *args, **kw) -> str | None:
    """``plot(*args)``'s SVG, or None when there is nothing to draw or it cannot be drawn: the
    figure's table is shown alone then, and the run never fails for want of a figure."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # matplotlib's notes (an empty legend)
        try:
            return plot(*args, **kw)
        except (ValueError, TypeError, KeyError, ZeroDivisionError, OverflowError):
            return None


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    with rc_context(STYLE):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None,
                                                 "Format": None, "Type": None})
    return buf.getvalue()


def _figure(height: float) -> Figure:
    with rc_context(STYLE):
        fig = Figure(figsize=(WIDTH, height))
        fig.subplots()
    return fig


def _num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# -- survival ------------------------------------------------------------------------------------
def km_plot(rows: list[dict], groups: dict[str, str], column: str) -> str | None:
    """Step curves per group (survival with its 95 % band, or cumulative incidence), each
    stopping at its last published point, with the numbers at risk under the time axis."""
    by: dict = {}
    for r in rows:
        by.setdefault(r.get("group"), []).append(r)
    if not any(_num(r.get(column)) for r in rows):
        return None
    n = len(by)
    fig = _figure(3.4 + 0.22 * n)
    ax = fig.axes[0]
    last = max((r["day"] for r in rows if _num(r.get("day"))), default=1) or 1
    survival = column == "survival"
    for g, rs in by.items():
        rs = [r for r in rs if _num(r.get("day")) and _num(r.get(column))]
        label = groups.get(str(g), f"group {g}")
        x = [0] + [r["day"] for r in rs]
        y = [1.0 if survival else 0.0] + [r[column] for r in rs]
        (line,) = ax.step(x, y, where="post", label=label, linewidth=1.4)
        if survival and all(_num(r.get("lower_95")) and _num(r.get("upper_95")) for r in rs):
            ax.fill_between(x, [1.0] + [r["lower_95"] for r in rs],
                            [1.0] + [r["upper_95"] for r in rs], step="post",
                            color=line.get_color(), alpha=0.18, linewidth=0)
    ax.set_xlim(0, last)
    ax.set_ylabel("Survival" if survival else "Cumulative incidence")
    ax.set_xlabel("Days since index")
    ax.legend(loc="lower left" if survival else "upper left", frameon=False)
    ticks = [t for t in ax.get_xticks() if 0 <= t <= last]
    ax.set_xticks(ticks)
    ax.annotate("Number at risk", xy=(0, 0), xycoords="axes fraction", xytext=(-90, -42),
                textcoords="offset points", ha="left", fontweight="bold")
    for k, (g, rs) in enumerate(by.items()):
        off = -56 - 12 * k
        ax.annotate(groups.get(str(g), f"group {g}"), xy=(0, 0), xycoords="axes fraction",
                    xytext=(-26, off), textcoords="offset points", ha="right")
        for t in ticks:
            nxt = next((r for r in rs if _num(r.get("day")) and r["day"] >= t), None)
            if nxt is None or not _num(nxt.get("at_risk")):
                continue   # the curve has stopped: no number where nothing is published
            ax.annotate(f"{int(nxt['at_risk']):,}", xy=(t, 0),
                        xycoords=("data", "axes fraction"), xytext=(0, off),
                        textcoords="offset points", ha="center")
    fig.subplots_adjust(left=0.19, right=0.97, top=0.97, bottom=0.2 + 0.06 * n)
    return _svg(fig)


# -- models --------------------------------------------------------------------------------------
def forest_plot(rows: list[dict]) -> str | None:
    """Each term's ratio with its 95 % CI on a log scale, a line at 1."""
    ratio = next((k for k in ("HR", "OR", "RR") if any(k in r for r in rows)), None)
    if ratio is None:
        return None
    shown = [r for r in rows if r.get("term") != "intercept" and
             all(_num(r.get(c)) and r[c] > 0 for c in (ratio, "lower_95", "upper_95"))]
    if not shown:
        return None
    fig = _figure(1.1 + 0.32 * len(shown))
    ax = fig.axes[0]
    ys = list(range(len(shown)))[::-1]
    est = [r[ratio] for r in shown]
    lo = [r[ratio] - r["lower_95"] for r in shown]
    hi = [r["upper_95"] - r[ratio] for r in shown]
    ax.errorbar(est, ys, xerr=[lo, hi], fmt="s", color="#1f4e79", ecolor="#1f4e79",
                markersize=5, capsize=2, linewidth=1.2)
    ax.axvline(1, color="#555555", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    lo_x = min(r["lower_95"] for r in shown + [{"lower_95": 1.0}])
    hi_x = max(r["upper_95"] for r in shown + [{"upper_95": 1.0}])
    nice = [v * 10.0 ** k for k in range(-4, 5) for v in (1, 2, 5)]
    ticks = [t for t in nice if lo_x / 1.5 <= t <= hi_x * 1.5]
    ax.set_xlim(lo_x / 1.15, hi_x * 1.15)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(ys)
    ax.set_yticklabels([str(r["term"]) for r in shown])
    ax.set_xlabel(f"{ratio} (95 % CI, log scale)")
    ax.grid(axis="y", visible=False)
    ax.set_ylim(-0.7, len(shown) - 0.3)
    fig.subplots_adjust(left=0.28, right=0.97, top=0.95,
                        bottom=min(0.5, 0.45 / (1.1 + 0.32 * len(shown)) * 2.2))
    return _svg(fig)


# -- balance -------------------------------------------------------------------------------------
def love_plot(rows: list[dict]) -> str | None:
    """Absolute standardised mean differences before and after matching or weighting."""
    if not any(_num(r.get(c)) for r in rows for c in ("smd_before", "smd_after")):
        return None
    labels = [f"{r.get('variable')}: {r['level']}" if r.get("level") not in (None, "")
              else str(r.get("variable")) for r in rows]
    fig = _figure(1.0 + 0.26 * max(1, len(rows)))
    ax = fig.axes[0]
    ys = list(range(len(rows)))[::-1]
    for col, marker, name in (("smd_before", "o", "before"), ("smd_after", "s", "after")):
        pts = [(abs(r[col]), y) for r, y in zip(rows, ys, strict=True) if _num(r.get(col))]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=name,
                       facecolors="none" if name == "before" else None, s=22,
                       edgecolors="#b03a2e" if name == "before" else None)
    ax.axvline(0.1, color="#555555", linewidth=0.8, linestyle="--")
    ax.set_yticks(ys)
    ax.set_yticklabels(labels)
    ax.set_xlabel("Absolute standardised mean difference")
    ax.legend(frameon=False, loc="lower right")
    fig.subplots_adjust(left=0.32, right=0.97, top=0.96, bottom=0.5 / (1 + 0.26 * len(rows)))
    return _svg(fig)


def overlap_plot(rows: list[dict]) -> str | None:
    """Persons per preference-score bin, one line per arm (a suppressed bin is a gap)."""
    bins = list(dict.fromkeys(r.get("bin") for r in rows))
    if not any(_num(r.get("persons")) for r in rows):
        return None
    fig = _figure(3.0)
    ax = fig.axes[0]
    arms = list(dict.fromkeys(r.get("arm") for r in rows))
    for a in arms:
        val = {r.get("bin"): r.get("persons") for r in rows if r.get("arm") == a}
        y = [val[b] if _num(val.get(b)) else math.nan for b in bins]
        ax.step(range(len(bins)), y, where="mid", label=str(a), linewidth=1.4)
        ax.fill_between(range(len(bins)), [0 if v == v else math.nan for v in y], y,
                        step="mid", alpha=0.15)
    step = max(1, len(bins) // 10)
    ax.set_xticks(list(range(0, len(bins), step)))
    ax.set_xticklabels([str(b) for b in bins[::step]])
    ax.set_xlabel("Preference-score bin")
    ax.set_ylabel("Persons")
    ax.legend(frameon=False)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.95, bottom=0.17)
    return _svg(fig)


# -- rates and measures --------------------------------------------------------------------------
def lines_plot(rows: list[dict], x: str, by: str | None, value: str, ylabel: str, xlabel: str,
               scale: float = 1, ordered: bool = True) -> str | None:
    """``value`` over ``x`` (in order of appearance), a line per level of ``by``, with the 95 %
    interval as a band where the rows hold one (``ordered`` false: points with error bars, for
    an ``x`` of categories); suppressed points are gaps."""
    xs = list(dict.fromkeys(r.get(x) for r in rows))
    if not xs or not any(_num(r.get(value)) for r in rows):
        return None
    groups = list(dict.fromkeys(r.get(by) for r in rows)) if by else [None]
    fig = _figure(3.2)
    ax = fig.axes[0]
    pos = {v: i for i, v in enumerate(xs)}

    def series(col, g):
        val = {r.get(x): r.get(col) for r in rows if by is None or r.get(by) == g}
        return [val[v] * scale if _num(val.get(v)) else math.nan for v in xs]

    band = any("lower_95" in r for r in rows)
    for k, g in enumerate(groups):
        y = series(value, g)
        label = None if g is None else f"{by} {g}"
        if ordered:
            (line,) = ax.plot(range(len(xs)), y, marker="o", markersize=3, linewidth=1.2,
                              label=label)
            if band:
                ax.fill_between(range(len(xs)), series("lower_95", g), series("upper_95", g),
                                color=line.get_color(), alpha=0.12, linewidth=0)
        else:   # categories (regions): points with their intervals, nothing joins them
            shift = (k - (len(groups) - 1) / 2) * 0.8 / max(1, len(groups))
            lo, hi = series("lower_95", g) if band else y, series("upper_95", g) if band else y
            ax.errorbar([i + shift for i in range(len(xs))], y,
                        yerr=[[a - b for a, b in zip(y, lo, strict=True)],
                              [b - a for a, b in zip(y, hi, strict=True)]],
                        fmt="o", markersize=4, capsize=2, linewidth=1, label=label)
    step = max(1, len(xs) // 12)
    ax.set_xticks(list(pos.values())[::step])
    ax.set_xticklabels([str(v) for v in xs[::step]])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + (" (%)" if scale == 100 else ""))
    if by and len(groups) <= 12:
        ax.legend(frameon=False, fontsize=7, ncols=2 if len(groups) > 6 else 1)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.95, bottom=0.16)
    return _svg(fig)


def funnel_plot(rows: list[dict]) -> str | None:
    """Observed/expected per hospital against expected events, with the control limits."""
    pts = [r for r in rows if _num(r.get("expected")) and _num(r.get("oe"))]
    if not pts:
        return None
    fig = _figure(3.6)
    ax = fig.axes[0]
    ax.scatter([r["expected"] for r in pts], [r["oe"] for r in pts], s=14, color="#1f4e79",
               zorder=3, label="hospital")
    lim = sorted((r for r in pts), key=lambda r: r["expected"])
    for lo, hi, style, name in (("limit95_low", "limit95_high", "--", "95 % limits"),
                                ("limit998_low", "limit998_high", ":", "99.8 % limits")):
        xs = [r["expected"] for r in lim if _num(r.get(lo)) and _num(r.get(hi))]
        if xs:
            ax.plot(xs, [r[lo] for r in lim if _num(r.get(lo)) and _num(r.get(hi))],
                    style, color="#777777", linewidth=1, label=name)
            ax.plot(xs, [r[hi] for r in lim if _num(r.get(lo)) and _num(r.get(hi))],
                    style, color="#777777", linewidth=1)
    ax.axhline(1, color="#333333", linewidth=0.8)
    ax.set_xlabel("Expected events")
    ax.set_ylabel("Observed / expected")
    ax.legend(frameon=False)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.95, bottom=0.14)
    return _svg(fig)
