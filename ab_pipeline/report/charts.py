"""Static PNG charts for the decision brief, drawn with matplotlib's Agg backend.

Mail clients run no JavaScript and block remote images, so every chart is a PNG made here and
shipped with the brief: as a CID attachment in the email, as a data: URI in the archived HTML.
matplotlib is imported inside the functions only: importing this module (and the brief, and the
DAG file) must stay cheap. Figures are built with `matplotlib.figure.Figure` and an explicit Agg
canvas, never pyplot, so no global backend or figure registry is touched (tasks may share a
process).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# The brief's palette (the same colours as the HTML badges).
INK, MUTED, GRID = "#1f2328", "#57606a", "#d0d7de"
POINT, ZERO, THRESHOLD, INTERIM = "#0969da", "#57606a", "#1a7f37", "#9a6700"
# Charts are drawn for a phone: WIDTH_IN inches shown at CSS_PX_PER_IN CSS pixels per inch (400
# CSS px, the image's `width`), with pixels at PIXEL_RATIO for sharp text on dense screens. The
# smallest text, FONT_PT points, is then FONT_PT * 100 / 72 = 13.9 CSS px at full width, and
# still about 12 px on a 400 px phone (scroll bar and the brief's margins leave ~353 px).
WIDTH_IN, CSS_PX_PER_IN, PIXEL_RATIO = 4.0, 100, 2
FONT_PT = 10
DPI = CSS_PX_PER_IN * PIXEL_RATIO


@dataclass(frozen=True)
class Chart:
    """One rendered image: `cid` names it in the email, `alt` says it for screen readers."""

    name: str
    png: bytes
    alt: str
    width: int  # CSS pixels (the PNG has PIXEL_RATIO times as many)
    height: int
    min_font_px: float = FONT_PT * CSS_PX_PER_IN / 72  # the smallest text at `width`

    @property
    def cid(self) -> str:
        return f"{self.name}@ab-pipeline"


@dataclass(frozen=True)
class IntervalRow:
    label: str
    estimate: float
    low: float
    high: float


Tick = Callable[[float, int], str]


def plain_tick(value: float, digits: int) -> str:
    return f"{value:+,.{digits}f}"


@dataclass(frozen=True)
class Panel:
    """One metric's comparisons against zero and its reference lines (threshold, budget).

    `tick(value, digits)` labels an axis tick; `scale` is what the label multiplies values by
    (100 for percentage points), so the ticks get as many decimals as their spacing needs.
    """

    title: str
    rows: Sequence[IntervalRow]
    lines: Sequence[tuple[float, str]] = field(default_factory=tuple)
    formatter: Callable[[float], str] = str
    tick: Tick = plain_tick
    scale: float = 1.0


@dataclass(frozen=True)
class TrajectoryPoint:
    run_date: str
    estimate: float
    low: float | None
    high: float | None
    interim: bool


def safe_label(text: str) -> str:
    """Labels are drawn as plain text: '$' would otherwise start matplotlib's math mode."""
    return text.replace("$", r"\$")


def forest_chart(name: str, panels: Sequence[Panel], alt: str) -> Chart:
    """Each comparison's interval as a bar with its point estimate, one panel per metric."""
    from matplotlib.figure import Figure

    heights = [0.75 + 0.42 * max(len(p.rows), 1) for p in panels]
    fig = Figure(figsize=(WIDTH_IN, sum(heights) + 0.2), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        _forest_panel(ax, panel)
    return _finish(fig, name, alt)


def _forest_panel(ax: Axes, panel: Panel) -> None:
    ys = list(range(len(panel.rows)))[::-1]
    for y, row in zip(ys, panel.rows, strict=True):
        ax.hlines(y, row.low, row.high, color=POINT, linewidth=3)
        ax.plot([row.estimate], [y], "o", color=POINT, markersize=8, zorder=3)
    ax.axvline(0.0, color=ZERO, linewidth=1.2)
    ax.set_yticks(ys, [safe_label(r.label) for r in panel.rows])
    ax.set_ylim(-0.6, len(panel.rows) - 0.4)
    _pad_x(
        ax, [v for r in panel.rows for v in (r.low, r.high)] + [0.0, *(v for v, _ in panel.lines)]
    )
    low, high = ax.get_xlim()
    for value, label in panel.lines:
        ax.axvline(value, color=THRESHOLD, linewidth=1.2, linestyle="--")
        # Labels of lines in the right half go to their left, so they stay inside the image.
        right_half = value > (low + high) / 2
        ax.annotate(
            safe_label(label),
            (value, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(-3 if right_half else 3, -2),
            textcoords="offset points",
            fontsize=FONT_PT,
            color=THRESHOLD,
            va="top",
            ha="right" if right_half else "left",
        )
    _label_ticks(ax.xaxis, panel.tick, panel.scale)
    ax.set_title(safe_label(panel.title), loc="left", fontsize=FONT_PT + 1, color=INK)
    _style(ax)


def trajectory_chart(
    name: str,
    points: Sequence[TrajectoryPoint],
    lines: Sequence[tuple[float, str]],
    tick: Tick,
    alt: str,
    scale: float = 1.0,
) -> Chart:
    """The estimate at each readout with its interval; interim looks drawn hollow and labelled."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, 2.8), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    xs = list(range(len(points)))
    ax.plot(xs, [p.estimate for p in points], color=POINT, linewidth=1.5, zorder=2)
    for x, p in zip(xs, points, strict=True):
        if p.low is not None and p.high is not None:
            ax.vlines(x, p.low, p.high, color=INTERIM if p.interim else POINT, linewidth=2.5)
        face = "white" if p.interim else POINT
        edge = INTERIM if p.interim else POINT
        ax.plot([x], [p.estimate], "o", mfc=face, mec=edge, mew=2, markersize=7, zorder=3)
    ax.axhline(0.0, color=ZERO, linewidth=1.2)
    for value, label in lines:
        ax.axhline(value, color=THRESHOLD, linewidth=1.2, linestyle="--")
        # At the left edge on a white box: the label stays readable over the markers.
        ax.annotate(
            safe_label(label),
            (0.0, value),
            xycoords=("axes fraction", "data"),
            xytext=(2, 3),
            textcoords="offset points",
            fontsize=FONT_PT,
            color=THRESHOLD,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1},
            zorder=4,
        )
    ax.set_xticks(
        xs, [p.run_date[5:] + ("\ninterim" if p.interim else "") for p in points], fontsize=FONT_PT
    )
    ax.set_xlim(-0.5, max(len(points) - 0.5, 0.5))
    _label_ticks(ax.yaxis, tick, scale)
    _style(ax)
    return _finish(fig, name, alt)


def tick_digits(ticks: Sequence[float], scale: float) -> int:
    """The fewest decimals that show every tick exactly: 1.25 pp needs 2, 1.5 pp needs 1."""
    for digits in range(5):
        if all(
            abs(round(t * scale, digits) - t * scale) < 1e-6 * max(1.0, abs(t * scale))
            for t in ticks
        ):
            return digits
    return 4


def _label_ticks(axis: Any, tick: Tick, scale: float) -> None:
    """Few enough ticks for a phone-width chart, each labelled with the decimals it needs."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    low, high = axis.get_view_interval()
    locator = MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10])
    ticks = [float(t) for t in locator.tick_values(low, high) if low <= t <= high]
    digits = tick_digits(ticks, scale)
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_ticks(ticks, [safe_label(tick(t, digits)) for t in ticks])


def _pad_x(ax: Axes, values: Sequence[float]) -> None:
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or 0.01
    ax.set_xlim(low - pad, high + pad)


def _style(ax: Axes) -> None:
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.spines["bottom"].set_color(GRID)
    ax.tick_params(colors=MUTED, labelsize=FONT_PT)
    ax.grid(axis="x", color=GRID, linewidth=0.6)


def _finish(fig: Figure, name: str, alt: str) -> Chart:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # No timestamp/software metadata: the same results give byte-identical images.
    fig.savefig(buffer, format="png", facecolor="white", metadata={"Software": None})
    width, height = (round(v / PIXEL_RATIO) for v in fig.canvas.get_width_height())
    return Chart(name=name, png=buffer.getvalue(), alt=alt, width=width, height=height)
