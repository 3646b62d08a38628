"""The report's hand-written SVG charts: round ticks that cover the data, marks inside the plot, escaped text."""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ElementTree

import pytest

from tools.outputs.svg_charts import BOTTOM, LEFT, RIGHT, TOP, Frame, Series, category_chart, histogram, round_ticks

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(("low", "high"), [(0, 37.5), (4.23, 7.28), (0, 6), (-8, 3.2), (0.1, 0.13), (2, 2),
                                           (-0.5, 0.5), (0, 1234)])
def test_ticks_are_round_evenly_spaced_and_cover_the_range(low: float, high: float) -> None:
    for whole in (False, True):
        ticks = round_ticks(low, high, whole=whole)
        assert ticks[0] <= low and ticks[-1] >= high and len(ticks) >= 2
        steps = {round(later - earlier, 9) for earlier, later in itertools.pairwise(ticks)}
        assert len(steps) == 1
        step = steps.pop()
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert round(mantissa, 6) in (1, 2, 5)
        if whole:
            assert all(tick == int(tick) for tick in ticks)


def plotted_boxes(svg: str) -> list[tuple[float, float, float, float]]:
    """(left, top, right, bottom) of every bar, point and mark drawn inside the plot (not the legend)."""
    root = ElementTree.fromstring(svg)
    boxes = []
    for rect in root.iter(f"{SVG}rect"):
        x, y, width, height = (float(rect.get(name, "0")) for name in ("x", "y", "width", "height"))
        boxes.append((x, y, x + width, y + height))
    for circle in root.iter(f"{SVG}circle"):
        x, y, radius = (float(circle.get(name, "0")) for name in ("cx", "cy", "r"))
        boxes.append((x - radius, y - radius, x + radius, y + radius))
    return boxes


def test_a_histogram_counts_every_value_once_inside_its_plot() -> None:
    values = [0.5, 1.0, 1.0, 2.5, 3.0, 3.0, 3.0, 6.0]
    svg = histogram(values, 5, Frame("Margins", "points", "rows"), rule_at=0.0)
    root = ElementTree.fromstring(svg)
    bars = list(root.iter(f"{SVG}rect"))
    assert len(bars) == 5
    counts = [int(bar.findtext(f"{SVG}title", "").rsplit(": ", 1)[1]) for bar in bars]
    assert sum(counts) == len(values) and counts[-1] == 1  # the greatest value is in the last bin
    for left, top, right, bottom in plotted_boxes(svg):
        assert left >= LEFT - 0.5 and right <= RIGHT + 0.5 and top >= TOP - 0.5 and bottom <= BOTTOM + 0.5


def test_lines_with_intervals_and_bars_stay_inside_and_text_is_escaped() -> None:
    categories = ["r1", "r2", "<r3>"]
    reviewers = Series("reviewers & co", [5.75, 6.0, None], "#3d6fd9", lows=[4.23, 4.72, None],
                       highs=[7.27, 7.28, None])
    evaluator = Series("evaluator", [6.25, 5.12, 5.88], "#c2622d", dashed=True, square_marks=True)
    lines = category_chart(categories, Frame("Scores <per> iteration", "iteration", "score"),
                           series=[reviewers, evaluator])
    bars = category_chart(categories, Frame("Chosen", "iteration", "%"), bars=[37.5, 25.0, 37.5])
    for svg in (lines, bars):
        root = ElementTree.fromstring(svg)  # well-formed: every text escaped
        assert root.get("viewBox") == "0 0 640 360"
        for left, top, right, bottom in plotted_boxes(svg):
            assert left >= LEFT and right <= RIGHT and top >= TOP and bottom <= BOTTOM
    texts = [element.text for element in ElementTree.fromstring(lines).iter(f"{SVG}text")]
    assert "Scores <per> iteration" in texts and "<r3>" in texts and "reviewers & co" in texts
    assert "&lt;r3&gt;" in lines and "<r3>" not in lines
    # One point per value given, an interval only where both ends are.
    assert len(list(ElementTree.fromstring(lines).iter(f"{SVG}circle"))) == 2
    assert len(list(ElementTree.fromstring(lines).iter(f"{SVG}path"))) == 2
    with pytest.raises(ValueError, match="at least one value"):
        histogram([], 5, Frame("t", "x", "y"))
