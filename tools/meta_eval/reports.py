"""Markdown reports and PNG charts for meta-evaluation, jury search and win rates.

Charts are drawn with matplotlib's non-interactive Agg backend, so they work on machines without a
display. Every writer returns the paths it wrote.
"""

from __future__ import annotations

import base64
import html
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

# The backend is chosen before pyplot loads, so no display is ever needed.
matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tools.meta_eval.ratings import Ratings
from tools.meta_eval.scores import EvaluatorScore, JuryScore

JURY_CHART_LIMIT = 20


@dataclass(frozen=True)
class WinRate:
    """A against B on the same prompts, as judged; ties counted as non-wins in `win_rate` (as the paper)."""

    a: str
    b: str
    wins: int
    ties: int
    losses: int
    unparsed: int

    @property
    def n(self) -> int:
        """Prompts compared."""
        return self.wins + self.ties + self.losses + self.unparsed

    @property
    def win_rate(self) -> float:
        """Wins / n: ties and unparsed verdicts count as non-wins (the paper's figure)."""
        return self.wins / self.n if self.n else 0.0

    @property
    def win_rate_half_ties(self) -> float:
        """(wins + ties / 2) / n: a tie or an unparsed verdict counts as half a win."""
        return (self.wins + (self.ties + self.unparsed) / 2) / self.n if self.n else 0.0


def fixed(value: float) -> str:
    """Three decimals, without the '-0.000' that a tiny negative float would print."""
    return f"{round(value, 3) + 0.0:.3f}"


def _figure_or_blank(value: float | None) -> str:
    return "-" if value is None else fixed(value)


def _wrapped(label: str) -> str:
    # Long evaluator names (model specs with URLs) would squeeze the bars off the figure.
    return textwrap.fill(label, 42)


def kappa_table_rows(rows: Sequence[EvaluatorScore]) -> list[list[str]]:
    """The kappa table's rows as text."""
    return [
        [
            row.name, str(row.n), fixed(row.kappa), f"[{fixed(row.kappa_low)}, {fixed(row.kappa_high)}]",
            fixed(row.agreement), fixed(row.unparsed_rate), _figure_or_blank(row.position_consistency),
            _figure_or_blank(row.p_longer), _figure_or_blank(row.p_first),
            "-" if row.vs_best is None else f"{row.vs_best:+.3f}",
            "-" if row.vs_best_low is None else f"[{row.vs_best_low:+.3f}, {row.vs_best_high:+.3f}]",
        ]
        for row in rows
    ]


KAPPA_COLUMNS = ["evaluator", "n", "kappa", "95% CI", "agreement", "unparsed", "position consistency",
                 "P(longer)", "P(first)", "vs best", "paired 95% CI"]
JURY_COLUMNS = ["rank", "jury", "size", "n", "kappa", "95% CI", "agreement", "vs best member", "paired 95% CI",
                "beats best member"]
WINRATE_COLUMNS = ["A", "B", "n", "wins", "ties", "losses", "unparsed", "win rate", "(wins + ties/2) / n"]


def jury_table_rows(juries: Sequence[JuryScore]) -> list[list[str]]:
    """The jury table's rows as text; an evaluator alone has no member to be compared with ("-")."""
    rows = []
    for rank, jury in enumerate(juries, start=1):
        versus = ["-", "-", "-"]
        if jury.vs_best_member is not None and jury.vs_best_member_low is not None:
            versus = [f"{jury.vs_best_member:+.3f} ({jury.best_member})",
                      f"[{jury.vs_best_member_low:+.3f}, {jury.vs_best_member_high:+.3f}]",
                      "yes" if jury.beats_best_member else "no"]
        rows.append([str(rank), " + ".join(jury.members), str(len(jury.members)), str(jury.n), fixed(jury.kappa),
                     f"[{fixed(jury.kappa_low)}, {fixed(jury.kappa_high)}]", fixed(jury.agreement), *versus])
    return rows


def indistinguishable_line(juries: Sequence[JuryScore]) -> str:
    """How many juries the data cannot tell from the first (the paired interval of the difference includes 0)."""
    tied = sum(bool(jury.tied_with_first) for jury in juries)
    return (f"{tied} of {len(juries)} juries are indistinguishable from the first (the paired bootstrap 95% interval "
            "of the difference in kappa includes 0)")


def winrate_table_rows(results: Sequence[WinRate]) -> list[list[str]]:
    """The win-rate table's rows as text."""
    return [
        [result.a, result.b, str(result.n), str(result.wins), str(result.ties), str(result.losses),
         str(result.unparsed), fixed(result.win_rate), fixed(result.win_rate_half_ties)]
        for result in results
    ]


RANK_COLUMNS = ["rank", "side", "rating", "95% CI", "wins", "ties", "losses", "battles"]


def rank_table_rows(ratings: Ratings) -> list[list[str]]:
    """The `rank` table's rows as text: Elo-scale ratings, best first."""
    return [
        [str(place), row.side, f"{row.rating:.0f}", f"[{row.low:.0f}, {row.high:.0f}]", str(row.wins), str(row.ties),
         str(row.losses), str(row.battles)]
        for place, row in enumerate(ratings.sides, start=1)
    ]


def rating_chart(ratings: Ratings, path: Path, title: str) -> Path:
    """Each side's rating as a point with its bootstrap interval, best on top."""
    rows = ratings.sides
    figure, axes = plt.subplots(figsize=(8, 1.4 + 0.5 * len(rows)))
    positions = list(range(len(rows)))[::-1]
    axes.errorbar([row.rating for row in rows], positions,
                  xerr=interval_bars([(row.rating, row.low, row.high) for row in rows]), fmt="o", color="#3f6fb5",
                  capsize=4)
    axes.set_yticks(positions, [_wrapped(row.side) for row in rows], fontsize=8)
    axes.set_xlabel(f"Bradley-Terry rating, Elo scale (95% bootstrap interval, {ratings.rounds} rounds)")
    axes.set_title(textwrap.fill(title, 80), fontsize=10)
    axes.margins(y=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def interval_bars(intervals: Sequence[tuple[float, float, float]]) -> list[list[float]]:
    """Error-bar lengths below and above each point.

    On a few items a percentile bootstrap interval can miss its own point estimate; the bar then stops at the point
    rather than going negative.
    """
    return [[max(0.0, point - low) for point, low, _ in intervals],
            [max(0.0, high - point) for point, _, high in intervals]]


def _kappa_bars(
    labels: Sequence[str], intervals: Sequence[tuple[float, float, float]], colours: Sequence[str],
    path: Path, title: str,
) -> Path:
    """Horizontal bars of kappa, first label on top, each with its bootstrap interval."""
    figure, axes = plt.subplots(figsize=(10, 1.4 + 0.6 * len(labels)))
    positions = list(range(len(labels)))[::-1]
    axes.barh(positions, [point for point, _, _ in intervals], xerr=interval_bars(intervals), color=list(colours),
              capsize=3)
    axes.set_yticks(positions, [_wrapped(label) for label in labels], fontsize=8)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_xlabel("Cohen's kappa with human labels (95% bootstrap interval)")
    axes.set_title(textwrap.fill(title, 80), fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def kappa_chart(rows: Sequence[EvaluatorScore], path: Path, title: str) -> Path:
    """Kappa per evaluator with the bootstrap interval; baselines in grey."""
    return _kappa_bars(
        [row.name for row in rows], [(row.kappa, row.kappa_low, row.kappa_high) for row in rows],
        ["#9e9e9e" if row.baseline else "#3f6fb5" for row in rows], path, title,
    )


def jury_chart(juries: Sequence[JuryScore], path: Path, title: str) -> Path:
    """The best juries (at most JURY_CHART_LIMIT), best on top."""
    shown = list(juries[:JURY_CHART_LIMIT])
    return _kappa_bars(
        [" + ".join(jury.members) for jury in shown], [(jury.kappa, jury.kappa_low, jury.kappa_high) for jury in shown],
        ["#5a9e6f"] * len(shown), path, title,
    )


def winrate_chart(results: Sequence[WinRate], path: Path, title: str) -> Path:
    """Stacked bars: wins, ties, losses and unparsed verdicts, as shares of n."""
    figure, axes = plt.subplots(figsize=(8, 1.5 + 0.5 * len(results)))
    positions = list(range(len(results)))[::-1]
    left = [0.0] * len(results)
    for label, colour, counts in (
        ("wins", "#3f8f4f", [result.wins for result in results]),
        ("ties", "#bdbdbd", [result.ties for result in results]),
        ("losses", "#c0504d", [result.losses for result in results]),
        ("unparsed", "#7f7f7f", [result.unparsed for result in results]),
    ):
        shares = [count / result.n if result.n else 0.0 for count, result in zip(counts, results, strict=True)]
        axes.barh(positions, shares, left=left, color=colour, label=label)
        left = [start + share for start, share in zip(left, shares, strict=True)]
    axes.set_yticks(positions, [_wrapped(f"{result.a} vs {result.b}") for result in results], fontsize=8)
    axes.set_xlim(0, 1)
    axes.set_xlabel("share of prompts")
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title(textwrap.fill(title, 80), fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(path: Path, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """A Markdown file: a title, then (heading, body) sections; and the same as a self-contained `report.html`."""
    parts = [f"# {title}", ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body.rstrip(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("\n".join(parts), encoding="utf-8")
    temporary.replace(path)
    page = path.with_suffix(".html")
    temporary = page.with_name(page.name + ".tmp")
    temporary.write_text(report_page(title, sections, path.parent), encoding="utf-8")
    temporary.replace(page)
    return path


_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")


def _body_html(body: str, folder: Path) -> str:
    """A section's Markdown (tables, images of the folder, paragraphs) as HTML; text escaped, images inline."""
    blocks: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            head, rows = table[0], [row for row in table[1:] if not all(set(cell) <= {"-"} for cell in row)]
            blocks.append("<table><thead><tr>" + "".join(f"<th>{html.escape(cell)}</th>" for cell in head)
                          + "</tr></thead><tbody>" + "".join(
                              "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                              for row in rows) + "</tbody></table>")
            table.clear()

    for line in body.splitlines():
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
            table.append([cell.strip().replace("\\|", "|") for cell in cells])
            continue
        flush()
        image = _IMAGE.fullmatch(line.strip())
        if image and (folder / image.group(2)).is_file() and not image.group(2).startswith(("http:", "https:")):
            data = base64.b64encode((folder / image.group(2)).read_bytes()).decode("ascii")
            blocks.append(f'<figure><img alt="{html.escape(image.group(1), quote=True)}" '
                          f'src="data:image/png;base64,{data}"></figure>')
        elif line.strip():
            blocks.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(blocks)


def report_page(title: str, sections: Sequence[tuple[str, str]], folder: Path) -> str:
    """The report as one HTML page with the run report's look (tools/outputs/report.py); nothing from the network."""
    from tools.outputs.report import STYLE

    body = "".join(f"<section><h2>{html.escape(heading)}</h2>{_body_html(text, folder)}</section>"
                   for heading, text in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}img{{max-width:100%}}</style></head><body><h1>{html.escape(title)}</h1>{body}"
            "</body></html>\n")
