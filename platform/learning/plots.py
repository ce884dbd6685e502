"""The dashboard's two charts as PNG bytes: the learning curve (validation Dice against approved masks
learned from, one point per model version) and annotation effort per approved case over time, with
the moments a model became active. matplotlib's object API on the Agg canvas: no pyplot, no global
state, safe in a threaded web process; imported only when a chart is drawn."""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime, timedelta

from learning.selectors import Activation, ApprovedCase, CurvePoint

STATE_STYLE = {  # colour, marker, size (points^2) per model version state; colours of app.css
    "active": ("#12733a", "*", 260),
    "candidate": ("#a15c07", "o", 70),
    "retired": ("#667085", "s", 50),
}
ROLLING = 10  # approved cases in the moving mean of the effort chart
WIDTH, HEIGHT, DPI = 7.2, 3.8, 110


def _figure(height: float = HEIGHT, rows: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, height), dpi=DPI, layout="constrained")
    return fig, fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _empty(text: str) -> bytes:
    fig, (ax,) = _figure(height=1.6)
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, color="#667085", wrap=True)
    return _png(fig)


def learning_curve_png(points: Sequence[CurvePoint]) -> bytes:
    """Validation Dice (y) against approved masks in the version's snapshot (x); the active version
    is the large star. No point: an image that says there is no model version yet."""
    if not points:
        return _empty("No validated model version yet: the curve starts with the first adaptation round.")
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, (ax,) = _figure()
    ordered = sorted(points, key=lambda p: p.number)
    ax.plot([p.approved for p in ordered], [p.dice for p in ordered], color="#c9ced6", lw=1, zorder=1)
    for p in ordered:
        colour, marker, size = STATE_STYLE.get(p.state, STATE_STYLE["retired"])
        ax.scatter(p.approved, p.dice, c=colour, marker=marker, s=size, zorder=3, edgecolors="white")
        ax.annotate(
            f"v{p.number}",
            (p.approved, p.dice),
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=9,
            fontweight="bold" if p.state == "active" else "normal",
            color=colour,
        )
    dice = [p.dice for p in points]
    lo, hi = min(dice), max(dice)
    pad = max(0.05, (hi - lo) * 0.15)
    ax.set_ylim(max(0.0, lo - pad), min(1.02, hi + pad))
    xs = [p.approved for p in points]
    ax.set_xlim(min(xs) - 1 if min(xs) > 0 else -0.5, max(xs) + max(1.0, 0.08 * max(xs)))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("approved masks learned from")
    ax.set_ylabel("validation Dice (mean)")
    ax.grid(True, color="#e4e7ec", lw=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    legend = [
        Line2D([], [], color=c, marker=m, ls="", markersize=9 if state == "active" else 6, label=state)
        for state, (c, m, _) in STATE_STYLE.items()
        if any(p.state == state for p in points)
    ]
    ax.legend(handles=legend, loc="lower right", frameon=False, fontsize=9)
    return _png(fig)


def _rolling(values: Sequence[float], n: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= n:
            total -= values[i - n]
        out.append(total / min(i + 1, n))
    return out


# The least time the effort chart spans: one approval (or several within minutes) gets an hour around
# it, not the years matplotlib's date axis falls back to for a range of zero.
MIN_SPAN = timedelta(hours=1)


def time_window(times: Sequence[datetime]) -> tuple[datetime, datetime]:
    """The x range of a time chart: the times with 5 % room either side, at least ``MIN_SPAN`` wide."""
    lo, hi = min(times), max(times)
    pad = max((hi - lo) * 0.05, (MIN_SPAN - (hi - lo)) / 2)
    return lo - pad, hi + pad


def effort_png(cases: Sequence[ApprovedCase], activations: Sequence[Activation]) -> bytes:
    """Annotation seconds (top) and interactions (bottom) per approved case against its approval time,
    each with a moving mean, and a vertical line where a model version became active."""
    if not cases:
        return _empty("No approved case yet: effort per case appears once reviewers approve masks.")
    return _png(effort_figure(cases, activations))


def effort_figure(cases: Sequence[ApprovedCase], activations: Sequence[Activation]):
    """The effort chart as a matplotlib Figure (``effort_png`` draws it); ``cases`` is not empty."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    fig, (top, bottom) = _figure(height=HEIGHT * 1.35, rows=2)
    ordered = sorted(cases, key=lambda c: c.approved_at)
    at = [c.approved_at for c in ordered]
    seconds = [c.seconds / 60 for c in ordered]
    top.scatter(at, seconds, s=14, color="#2450a6", alpha=0.45, lw=0)
    top.plot(at, _rolling(seconds, ROLLING), color="#2450a6", lw=1.8, label=f"mean of last {ROLLING}")
    top.set_ylabel("minutes / case")
    for field, colour in (("clicks", "#b42318"), ("strokes", "#12733a"), ("model_calls", "#a15c07")):
        values = [float(getattr(c, field)) for c in ordered]
        bottom.scatter(at, values, s=10, color=colour, alpha=0.3, lw=0)
        bottom.plot(at, _rolling(values, ROLLING), color=colour, lw=1.6, label=field.replace("_", " "))
    bottom.set_ylabel("count / case")
    bottom.legend(loc="upper right", frameon=False, fontsize=8, ncols=3)
    top.legend(loc="upper right", frameon=False, fontsize=8)
    for a in activations:
        for ax in (top, bottom):
            ax.axvline(a.at, color="#14213d", lw=1, ls="--", alpha=0.7)
        top.annotate(
            f"v{a.number}",
            (a.at, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            fontsize=8,
            color="#14213d",
        )
    locator = AutoDateLocator()
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    bottom.set_xlim(*time_window(at + [a.at for a in activations]))  # shared with the top axes
    for ax in (top, bottom):
        ax.set_ylim(bottom=0)
        ax.grid(True, color="#e4e7ec", lw=0.8)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return fig
