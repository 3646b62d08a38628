"""Small charts written as SVG text: lines with intervals, bars and histograms, for pages that load nothing.

The run report draws four charts; a plotting library costs a run about a second of CPU at its end (importing and
laying out), so these are written directly: a fixed frame (title, labelled axes with round ticks, a legend), the
marks in data coordinates mapped to it, and every text escaped. The same data give the same bytes.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 640, 360
# The plotting area inside the frame: room on the left for the y ticks and label, below for the x ones.
LEFT, RIGHT, TOP, BOTTOM = 72, 620, 40, 296
INK, GRID, MUTED = "#1d2330", "#e3e6ec", "#4a5468"
FONT = 'font-family="system-ui,-apple-system,Segoe UI,sans-serif"'


@dataclass(frozen=True)
class Frame:
    """What a chart says: its title and its axes' labels (with units)."""

    title: str
    x_label: str
    y_label: str


@dataclass(frozen=True)
class Series:
    """One line over the categories: a value per category (None: no point), optionally an interval around each."""

    label: str
    values: Sequence[float | None]
    color: str
    lows: Sequence[float | None] | None = None
    highs: Sequence[float | None] | None = None
    dashed: bool = False
    square_marks: bool = False


def round_ticks(low: float, high: float, most: int = 6, whole: bool = False) -> list[float]:
    """About `most` round values covering [low, high]: 1, 2 or 5 times a power of ten apart (whole if `whole`)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"ticks need finite bounds, not {low}..{high}")
    if high <= low:
        low, high = low - 0.5, high + 0.5
    raw = (high - low) / max(1, most - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(power * factor for factor in (1, 2, 5, 10) if power * factor >= raw)
    if whole:
        step = max(1.0, step)
    first = math.floor(low / step + 1e-9) * step
    ticks = [round(first, 10)]
    while ticks[-1] < high - step * 1e-9 or len(ticks) < 2:  # up to the first tick at or above `high`
        ticks.append(round(first + len(ticks) * step, 10))
    return ticks


def _number(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-9 else "0"


class _Canvas:
    """The frame of one chart and the mapping from data to its pixels."""

    def __init__(self, frame: Frame, y_ticks: list[float], x_low: float, x_high: float) -> None:
        self.frame, self.y_ticks, self.x_low, self.x_high = frame, y_ticks, x_low, x_high
        self.parts: list[str] = []

    def x(self, value: float) -> float:
        return LEFT + (value - self.x_low) / (self.x_high - self.x_low) * (RIGHT - LEFT)

    def y(self, value: float) -> float:
        low, high = self.y_ticks[0], self.y_ticks[-1]
        return BOTTOM - (value - low) / (high - low) * (BOTTOM - TOP)

    def add(self, element: str) -> None:
        self.parts.append(element)

    def text(self, x: float, y: float, words: str, anchor: str = "middle", size: int = 12, extra: str = "") -> None:
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" fill="{INK}"{extra}>'
                 f"{html.escape(words)}</text>")

    def x_tick(self, x: float, label: str) -> None:
        self.add(f'<line x1="{x:.1f}" y1="{BOTTOM}" x2="{x:.1f}" y2="{BOTTOM + 5}" stroke="{INK}"/>')
        self.text(x, BOTTOM + 19, label)

    def svg(self, legend: Sequence[tuple[str, str, bool]] = ()) -> str:
        """The whole chart: grid and y ticks, the marks added so far, axes, labels, title and legend."""
        grid = []
        for tick in self.y_ticks:
            y = self.y(tick)
            grid.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{RIGHT}" y2="{y:.1f}" stroke="{GRID}"/>')
            grid.append(f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end" font-size="12" fill="{INK}">'
                        f"{_number(tick)}</text>")
        frame = self.frame
        closing = [
            f'<line x1="{LEFT}" y1="{BOTTOM}" x2="{RIGHT}" y2="{BOTTOM}" stroke="{INK}"/>',
            f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{BOTTOM}" stroke="{INK}"/>',
            f'<text x="{(LEFT + RIGHT) / 2:.1f}" y="{BOTTOM + 44}" text-anchor="middle" font-size="13" '
            f'fill="{INK}">{html.escape(frame.x_label)}</text>',
            f'<text x="18" y="{(TOP + BOTTOM) / 2:.1f}" text-anchor="middle" font-size="13" fill="{INK}" '
            f'transform="rotate(-90 18 {(TOP + BOTTOM) / 2:.1f})">{html.escape(frame.y_label)}</text>',
            f'<text x="{(LEFT + RIGHT) / 2:.1f}" y="24" text-anchor="middle" font-size="15" font-weight="600" '
            f'fill="{INK}">{html.escape(frame.title)}</text>',
        ]
        if legend:  # a pale box behind the legend, so a line passing under it does not cross its text
            top = BOTTOM - 16 - 18 * (len(legend) - 1) - 12
            closing.append(f'<rect x="{RIGHT - 256}" y="{top}" width="252" height="{BOTTOM - 4 - top}" fill="#ffffff" '
                           'fill-opacity="0.85" stroke="#d8dce4"/>')
        for row, (label, color, dashed) in enumerate(legend):
            y = BOTTOM - 16 - 18 * (len(legend) - 1 - row)
            dash = ' stroke-dasharray="6 4"' if dashed else ""
            closing.append(f'<line x1="{RIGHT - 250}" y1="{y}" x2="{RIGHT - 222}" y2="{y}" stroke="{color}" '
                           f'stroke-width="2"{dash}/>')
            closing.append(f'<text x="{RIGHT - 216}" y="{y + 4}" font-size="12" fill="{MUTED}">'
                           f"{html.escape(label)}</text>")
        body = "".join([*grid, *self.parts, *closing])
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
                f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" {FONT}><title>{html.escape(frame.title)}</title>'
                f"{body}</svg>")


def category_chart(categories: Sequence[str], frame: Frame, series: Sequence[Series] = (),
                   bars: Sequence[float] | None = None, bar_color: str = "#3d6fd9") -> str:
    """Bars (from zero) or lines with optional intervals, one slot per category."""
    values = [value for line in series for column in (line.values, line.lows or (), line.highs or ())
              for value in column if value is not None]
    if bars is not None:
        values += [*bars, 0.0]
    canvas = _Canvas(frame, round_ticks(min(values, default=0.0), max(values, default=1.0)), 0, len(categories))

    def middle(index: int) -> float:
        return canvas.x(index + 0.5)

    for index, category in enumerate(categories):
        canvas.x_tick(middle(index), category)
    if bars is not None:
        half = 0.35 * (RIGHT - LEFT) / max(1, len(categories))
        for index, height in enumerate(bars):
            top, zero = canvas.y(height), canvas.y(0.0)
            canvas.add(f'<rect x="{middle(index) - half:.1f}" y="{min(top, zero):.1f}" width="{2 * half:.1f}" '
                       f'height="{abs(zero - top):.1f}" fill="{bar_color}"><title>{html.escape(categories[index])}: '
                       f"{height:.3g}</title></rect>")
    for line in series:
        points = [(middle(index), canvas.y(value)) for index, value in enumerate(line.values) if value is not None]
        dash = ' stroke-dasharray="6 4"' if line.dashed else ""
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            canvas.add(f'<polyline points="{path}" fill="none" stroke="{line.color}" stroke-width="2"{dash}/>')
        for index, value in enumerate(line.values):
            if value is None:
                continue
            x = middle(index)
            low = line.lows[index] if line.lows else None
            high = line.highs[index] if line.highs else None
            if low is not None and high is not None:
                top, bottom = canvas.y(high), canvas.y(low)
                canvas.add(f'<path d="M{x:.1f} {top:.1f}V{bottom:.1f}M{x - 5:.1f} {top:.1f}H{x + 5:.1f}'
                           f'M{x - 5:.1f} {bottom:.1f}H{x + 5:.1f}" stroke="{line.color}" stroke-width="1.5"/>')
            y = canvas.y(value)
            mark = (f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8"' if line.square_marks
                    else f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4"')
            canvas.add(f'{mark} fill="{line.color}"><title>{html.escape(line.label)}, {html.escape(categories[index])}'
                       f": {value:.3g}</title>{'</rect>' if line.square_marks else '</circle>'}")
    return canvas.svg([(line.label, line.color, line.dashed) for line in series])


def histogram(values: Sequence[float], bins: int, frame: Frame, color: str = "#3d6fd9",
              rule_at: float | None = None) -> str:
    """Counts of `values` in `bins` equal bins between their least and greatest, and a vertical rule at `rule_at`."""
    if not values:
        raise ValueError("a histogram needs at least one value")
    low, high = min(values), max(values)
    if rule_at is not None:
        low, high = min(low, rule_at), max(high, rule_at)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    width = (high - low) / bins
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int((value - low) / width))] += 1
    x_ticks = [tick for tick in round_ticks(low, high, 7) if low - 1e-9 <= tick <= high + 1e-9]
    canvas = _Canvas(frame, round_ticks(0.0, float(max(counts)), whole=True), low, high)
    for index, count in enumerate(counts):
        left, right = canvas.x(low + index * width), canvas.x(low + (index + 1) * width)
        top = canvas.y(count)
        canvas.add(f'<rect x="{left:.1f}" y="{top:.1f}" width="{max(0.0, right - left - 1):.1f}" '
                   f'height="{BOTTOM - top:.1f}" fill="{color}"><title>{low + index * width:.3g} to '
                   f"{low + (index + 1) * width:.3g}: {count}</title></rect>")
    for tick in x_ticks:
        canvas.x_tick(canvas.x(tick), _number(tick))
    if rule_at is not None:
        x = canvas.x(rule_at)
        canvas.add(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{BOTTOM}" stroke="{INK}" stroke-width="1.5"/>')
    return canvas.svg()
