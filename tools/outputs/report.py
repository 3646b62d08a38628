"""`report.html`: one self-contained page per run that answers "did the loop help, and can I train on this?".

Built from the run's exported `records.jsonl` (each record carries its outcome and chosen iteration) and, when
present, `progress.sqlite` (failed prompts). Nothing is called. The figures also go to `report.json`, the same
numbers for scripts and tests.

Sections: the run at a glance; did the loop help (per iteration: the reviewers' mean score with a 95% interval,
the evaluator's mean score, the share of prompts whose chosen answer it is, and the final answer's win rate
over the first from the recorded verdicts); can I trust the labels (margins, ties, length bias, position
consistency, jury splits, debate agreement, degenerate answers); the rows themselves, filterable and searchable.

The page needs nothing from the network: charts are inline SVG written by `svg_charts`, style and the
table's small script are inline, and every text from a prompt or a model is escaped. A run of any size gives a
usable file: the figures cover every record, and the table holds at most `TABLE_ROWS` prompts (an even sample
of the run, said so on the page).
"""

from __future__ import annotations

import html
import json
import math
import sqlite3
import statistics
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.errors import InputError
from tools.outputs.svg_charts import Frame, Series, category_chart, histogram

TABLE_ROWS = 1000
TEXT_SHOWN = 4000  # characters of one answer shown in the table's details (the records keep them whole)
SMALL_MARGIN = 1.0  # a margin at most this is "small": where a judge's length bias matters most
BLUE, ORANGE = "#3d6fd9", "#c2622d"  # the charts' two colours, as the page's accents
Z95 = 1.959964


def mean_interval(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high) of a 95% normal interval of the mean; None where there are no values."""
    if not values:
        return None, None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = Z95 * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


@dataclass
class RunFigures:
    """Every figure of the report, gathered in one pass over the records."""

    prompts: int = 0
    failed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    dpo_rows: int = 0
    kto_rows: int = 0
    models: dict[str, str] = field(default_factory=dict)
    roles: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    review_scores: dict[int, list[float]] = field(default_factory=dict)
    evaluator_scores: dict[int, list[float]] = field(default_factory=dict)
    chosen_iterations: Counter[int] = field(default_factory=Counter)
    final_vs_first: Counter[str] = field(default_factory=Counter)
    margins: list[float] = field(default_factory=list)
    length_pairs: list[tuple[int, int, float | None]] = field(default_factory=list)  # chosen, rejected, margin
    order_pairs: list[tuple[str | None, str | None]] = field(default_factory=list)
    jury_splits: Counter[str] = field(default_factory=Counter)
    debate_agreement: list[bool] = field(default_factory=list)
    degenerate_answers: int = 0
    answers: int = 0
    cost_usd: float | None = 0.0
    cached_calls: int = 0
    rate_limited: int = 0
    span_s: float | None = None  # from the prompts' arrival to the last one finished (the run store's times)

    def add(self, record: dict[str, Any]) -> None:
        """Count one exported record."""
        self.prompts += 1
        outcome = record.get("outcome", "unknown")
        self.outcomes[outcome] += 1
        answers = record.get("answers", [])
        verdict = record.get("verdict") or {}
        models = record.get("models", {})
        self.models.setdefault("generator", models.get("generator", ""))
        self.models.setdefault("reviewers", ", ".join(models.get("reviewers", [])))
        self.models.setdefault("evaluator", models.get("evaluator", ""))
        usage = record.get("usage") or {}
        cost = usage.get("cost_usd", 0.0)
        self.cost_usd = None if self.cost_usd is None or cost is None else self.cost_usd + cost
        self.cached_calls += usage.get("cached_calls", 0)
        self.rate_limited += usage.get("rate_limited", 0)
        exchanges = [answer["exchange"] for answer in answers]
        exchanges += [review["exchange"] for answer in answers for review in answer.get("reviews", [])]
        exchanges += verdict.get("exchanges", [])
        for exchange in exchanges:
            totals = self.roles.setdefault((exchange.get("role", "?"), exchange.get("model", "?")),
                                           {"calls": 0, "input_tokens": 0, "output_tokens": 0, "seconds": 0.0})
            totals["calls"] += 1 + (exchange.get("followup_text") is not None)
            totals["input_tokens"] += exchange.get("input_tokens", 0)
            totals["output_tokens"] += exchange.get("output_tokens", 0)
            totals["seconds"] += exchange.get("latency_s", 0.0)
        scores = verdict.get("scores") or []
        aligned = len(scores) == len(answers)
        for index, answer in enumerate(answers):
            iteration = answer.get("iteration", index + 1)
            self.answers += 1
            self.degenerate_answers += bool(answer.get("degenerate"))
            for review in answer.get("reviews", []):
                if review.get("score") is not None:
                    self.review_scores.setdefault(iteration, []).append(float(review["score"]))
            if aligned and scores[index] is not None:
                self.evaluator_scores.setdefault(iteration, []).append(float(scores[index]))
        if record.get("chosen_iteration") is not None:
            self.chosen_iterations[int(record["chosen_iteration"])] += 1
        if aligned and len(answers) >= 2 and scores[0] is not None and scores[-1] is not None:
            final, first = scores[-1], scores[0]
            self.final_vs_first["win" if final > first else "loss" if final < first else "tie"] += 1
        for row in record.get("dpo_rows", []):
            self.dpo_rows += 1
            margin = (row["score_chosen"] - row["score_rejected"]
                      if row.get("score_chosen") is not None and row.get("score_rejected") is not None else None)
            if margin is not None:
                self.margins.append(margin)
            self.length_pairs.append((len(row["chosen"]), len(row["rejected"]), margin))
        self.kto_rows += record.get("kto_rows", 0)
        if verdict.get("swapped") and len(verdict.get("order_winners") or []) == 2:
            first_order, second_order = verdict["order_winners"]
            self.order_pairs.append((first_order, second_order))
        votes = verdict.get("juror_votes") or []
        if votes:
            self.jury_splits[" / ".join(f"{count} {vote}" for vote, count in Counter(map(str, votes)).most_common())] \
                += 1
        referee_scores = verdict.get("referee_scores") or []
        bests = []
        for entry in referee_scores:
            entry_scores = entry.get("scores") or []
            if entry_scores and all(score is not None for score in entry_scores):
                top = max(entry_scores)
                bests.append(tuple(index for index, score in enumerate(entry_scores) if score == top))
        if len(bests) >= 2:
            self.debate_agreement.append(len(set(bests)) == 1)

    def loop(self) -> list[dict[str, Any]]:
        """Per iteration: reviewers' mean (95% interval), evaluator's mean, and the share of prompts choosing it."""
        iterations = sorted(set(self.review_scores) | set(self.evaluator_scores) | set(self.chosen_iterations))
        chosen_total = sum(self.chosen_iterations.values())
        rows = []
        for iteration in iterations:
            mean, low, high = mean_interval(self.review_scores.get(iteration, []))
            evaluator_mean, _, _ = mean_interval(self.evaluator_scores.get(iteration, []))
            rows.append({"iteration": iteration, "reviewers_mean": mean, "reviewers_low": low, "reviewers_high": high,
                         "reviews": len(self.review_scores.get(iteration, [])), "evaluator_mean": evaluator_mean,
                         "chosen_share": self.chosen_iterations[iteration] / chosen_total if chosen_total else None})
        return rows

    def trust(self) -> dict[str, Any]:
        """The figures that say how far the labels can be trusted."""
        pairs = self.length_pairs
        longer = [chosen > rejected for chosen, rejected, _ in pairs]
        ratios = [chosen / rejected for chosen, rejected, _ in pairs if rejected > 0]
        small = [chosen > rejected for chosen, rejected, margin in pairs
                 if margin is not None and margin <= SMALL_MARGIN]
        both = [(first, second) for first, second in self.order_pairs if first is not None and second is not None]
        firsts = [winner == label for first, second in both for winner, label in ((first, "A"), (second, "B"))
                  if winner in ("A", "B")]
        return {
            "margin_mean": statistics.fmean(self.margins) if self.margins else None,
            "tie_rate": (self.outcomes["tied_top"] + self.outcomes["ok_tied_top_later"]) / self.prompts
            if self.prompts else None,
            "no_verdict_rate": self.outcomes["no_verdict"] / self.prompts if self.prompts else None,
            "chosen_longer_share": sum(longer) / len(longer) if longer else None,
            "median_length_ratio": statistics.median(ratios) if ratios else None,
            "chosen_longer_share_small_margin": sum(small) / len(small) if small else None,
            "small_margin_rows": len(small),
            "position_consistency": sum(first == second for first, second in both) / len(both) if both else None,
            "p_first": sum(firsts) / len(firsts) if firsts else None,
            "jury_splits": dict(self.jury_splits.most_common()),
            "debate_agreement": sum(self.debate_agreement) / len(self.debate_agreement)
            if self.debate_agreement else None,
            "degenerate_answers": self.degenerate_answers,
            "answers": self.answers,
        }

    def headline(self) -> str:
        """The loop's finding in one sentence, in numbers."""
        loop = self.loop()
        parts = []
        total = sum(self.final_vs_first.values())
        if total and loop:
            last, versus = loop[-1]["iteration"], self.final_vs_first
            parts.append(f"r{last} beats r1 in {versus['win'] / total:.0%} of prompts "
                         f"(ties {versus['tie'] / total:.0%}, losses {versus['loss'] / total:.0%})")
        means = [(row["iteration"], row["reviewers_mean"]) for row in loop if row["reviewers_mean"] is not None]
        if len(means) >= 2:
            parts.append(f"reviewers' mean {means[0][1]:.1f} -> {means[-1][1]:.1f}")
        return "; ".join(parts) + "." if parts else "Too few scored answers to say."

    def as_json(self) -> dict[str, Any]:
        """Every figure, as `report.json` holds them."""
        total = sum(self.final_vs_first.values())
        return {
            "prompts": self.prompts, "failed": self.failed, "outcomes": dict(self.outcomes),
            "dpo_rows": self.dpo_rows, "kto_rows": self.kto_rows, "models": self.models,
            "roles": [{"role": role, "model": model, **totals} for (role, model), totals in sorted(self.roles.items())],
            "cost_usd": self.cost_usd, "cached_calls": self.cached_calls, "rate_limited": self.rate_limited,
            "span_s": self.span_s,
            "loop": self.loop(),
            "final_vs_first": {"wins": self.final_vs_first["win"], "ties": self.final_vs_first["tie"],
                               "losses": self.final_vs_first["loss"],
                               "win_rate": self.final_vs_first["win"] / total if total else None},
            "headline": self.headline(), "trust": self.trust(),
        }


def _grouped_by_prompt(path: Path) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The rows of a dpo.jsonl or kto.jsonl file, a prompt's rows together (the export writes them so)."""
    group: list[dict[str, Any]] = []
    for row in read_records(path) if path.is_file() else iter(()):
        if group and row["prompt_id"] != group[0]["prompt_id"]:
            yield group[0]["prompt_id"], group
            group = []
        group.append(row)
    if group:
        yield group[0]["prompt_id"], group


def records_with_rows(output_dir: Path) -> Iterator[dict[str, Any]]:
    """Each exported record with its DPO rows (texts and scores) and its KTO row count, as the run wrote them."""
    dpo_groups = _grouped_by_prompt(output_dir / "dpo.jsonl")
    kto_groups = _grouped_by_prompt(output_dir / "kto.jsonl")
    next_dpo, next_kto = next(dpo_groups, None), next(kto_groups, None)
    for record in read_records(output_dir / "records.jsonl"):
        dpo: list[dict[str, Any]] = []
        kto = 0
        if next_dpo is not None and next_dpo[0] == record["prompt_id"]:
            dpo, next_dpo = next_dpo[1], next(dpo_groups, None)
        if next_kto is not None and next_kto[0] == record["prompt_id"]:
            kto, next_kto = len(next_kto[1]), next(kto_groups, None)
        yield {**record,
               "dpo_rows": [{"chosen": row["chosen"][0]["content"], "rejected": row["rejected"][0]["content"],
                             "score_chosen": row["score_chosen"], "score_rejected": row["score_rejected"],
                             "chosen_iteration": row["chosen_iteration"]} for row in dpo],
               "kto_rows": kto}


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The exported records, one at a time."""
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def run_store_figures(progress: Path) -> tuple[int, float | None]:
    """(prompts failed, seconds from the prompts' arrival to the last one finished) from the run store.

    Without a run store: (0, None). The time spans every run of the folder, pauses between them included.
    """
    if not progress.is_file():
        return 0, None
    with sqlite3.connect(f"file:{progress}?mode=ro", uri=True) as db:
        failed = int(db.execute("SELECT COUNT(*) FROM prompts WHERE status = 'failed'").fetchone()[0])
        first, last = db.execute("SELECT MIN(updated), MAX(updated) FROM prompts").fetchone()
    return failed, (last - first) if first is not None and last is not None else None


def write_run_report(output_dir: Path) -> Path:
    """Write `report.html` and `report.json` for the run in `output_dir` (its exported files); returns the page."""
    records = output_dir / "records.jsonl"
    if not records.is_file():
        raise InputError(records, None, "not found: the report reads a run's exported records (run generate first)")
    figures = RunFigures()
    sample: list[dict[str, Any]] = []
    with records.open("rb") as lines:
        total = sum(1 for line in lines if line.strip())
    step = max(1, math.ceil(total / TABLE_ROWS))
    for position, record in enumerate(records_with_rows(output_dir)):
        figures.add(record)
        if position % step == 0:
            sample.append(record)
    figures.failed, figures.span_s = run_store_figures(output_dir / "progress.sqlite")
    data = figures.as_json()
    (output_dir / "report.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    page = render_page(data, figures, sample, total, title=f"Run report: {output_dir.name}")
    target = output_dir / "report.html"
    partial = target.with_name(target.name + ".partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(target)
    return target


# --- the page ------------------------------------------------------------------------------------------------------

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;padding:0 24px 48px;
color:#1d2330}
h1{font-size:26px;margin:24px 0 4px}h2{font-size:20px;margin:32px 0 8px;border-bottom:1px solid #d8dce4;
padding-bottom:4px}
.lead{color:#4a5468;margin:0 0 16px}.finding{font-size:17px;background:#eef4ff;border-left:4px solid #3d6fd9;
padding:8px 12px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d8dce4;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f4f6fa}td.n{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:16px}.charts figure{margin:0;width:560px}
figcaption{color:#4a5468;font-size:13px}svg{max-width:100%;height:auto}
#rows td{max-width:320px;overflow-wrap:anywhere}details pre{white-space:pre-wrap;background:#f7f8fb;padding:6px;
max-height:320px;overflow:auto}
.controls{display:flex;gap:12px;align-items:center;margin:8px 0}.muted{color:#6a7386}
"""

SCRIPT = """
(function(){
  var rows=[].slice.call(document.querySelectorAll('#rows tbody tr.row'));
  var outcome=document.getElementById('outcome'), search=document.getElementById('search');
  var shown=document.getElementById('shown'), more=document.getElementById('more'), limit=50;
  function apply(){
    var want=outcome.value, text=search.value.toLowerCase(), count=0, visible=0;
    rows.forEach(function(row){
      var match=(!want||row.dataset.outcome===want)&&(!text||row.dataset.text.indexOf(text)>=0);
      if(match){count++;}
      var show=match&&visible<limit; if(show){visible++;}
      row.style.display=show?'':'none';
      var detail=row.nextElementSibling; detail.style.display=show?'':'none';
    });
    shown.textContent=visible+' of '+count+' matching prompts shown';
    more.style.display=count>visible?'':'none';
  }
  outcome.addEventListener('change',function(){limit=50;apply();});
  search.addEventListener('input',function(){limit=50;apply();});
  more.addEventListener('click',function(){limit+=50;apply();});
  apply();
})();
"""


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _table(columns: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{cell}</td>' if index >= numeric_from else f"<td>{cell}</td>"
                         for index, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _charts(data: dict[str, Any], figures: RunFigures) -> dict[str, str]:
    """One idea per chart, axes labelled with units."""
    charts: dict[str, str] = {}
    loop = [row for row in data["loop"] if row["reviewers_mean"] is not None or row["evaluator_mean"] is not None]
    if loop:
        labels = [f"r{row['iteration']}" for row in loop]
        lines = []
        if any(row["reviewers_mean"] is not None for row in loop):
            lines.append(Series("reviewers' mean (95% interval)", [row["reviewers_mean"] for row in loop], BLUE,
                                lows=[row["reviewers_low"] for row in loop],
                                highs=[row["reviewers_high"] for row in loop]))
        if any(row["evaluator_mean"] is not None for row in loop):
            lines.append(Series("evaluator's mean", [row["evaluator_mean"] for row in loop], ORANGE, dashed=True,
                                square_marks=True))
        charts["scores"] = category_chart(
            labels, Frame("Scores per iteration", "iteration of the feedback loop", "score (points out of 10)"),
            series=lines)
        charts["chosen"] = category_chart(
            labels, Frame("Which iteration the evaluator chose", "iteration of the feedback loop",
                          "prompts whose chosen answer it is (%)"),
            bars=[100 * (row["chosen_share"] or 0) for row in loop], bar_color=BLUE)
    if figures.margins:
        charts["margins"] = histogram(
            figures.margins, min(20, max(5, len(set(figures.margins)))),
            Frame("Margin between chosen and rejected", "chosen score minus rejected score (points)", "DPO rows"),
            color=BLUE)
    ratios = [chosen / rejected for chosen, rejected, _ in figures.length_pairs if rejected > 0]
    if ratios:
        charts["lengths"] = histogram(
            [math.log2(ratio) if ratio > 0 else -8 for ratio in ratios], 20,
            Frame("Is chosen simply the longer answer?",
                  "log2 of chosen length / rejected length (characters; right: chosen longer)", "DPO rows"),
            color=ORANGE, rule_at=0.0)
    return charts


def _figure(charts: dict[str, str], name: str, caption: str) -> str:
    if name not in charts:
        return ""
    return f"<figure>{charts[name]}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _row_html(record: dict[str, Any]) -> str:
    escape = html.escape
    prompt_text = " ".join(str(message.get("content", "")) for message in record.get("prompt", [])
                           if message.get("role") == "user")
    rows = record.get("dpo_rows", [])
    first = rows[0] if rows else None
    verdict = record.get("verdict") or {}
    chosen = first["chosen"] if first else ""
    rejected = first["rejected"] if first else ""
    scores = f"{_fmt(first['score_chosen'])} / {_fmt(first['score_rejected'])}" if first else "-"
    searchable = escape(" ".join([prompt_text, *(answer.get("text", "") for answer in record.get("answers", []))])
                        .lower(), quote=True)
    cells = [escape(prompt_text[:300]), escape(chosen[:300]), escape(rejected[:300]), escape(scores),
             escape(record.get("outcome", "")), escape(str(record.get("chosen_iteration") or "-"))]
    row = (f'<tr class="row" data-outcome="{escape(record.get("outcome", ""), quote=True)}" data-text="{searchable}">'
           + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    parts = [f"<h4>Prompt</h4><pre>{escape(prompt_text[:TEXT_SHOWN])}</pre>"]
    for answer in record.get("answers", []):
        reviews = "".join(
            f"<p><b>Review {review.get('seat', 0) + 1}</b>: score {escape(_fmt(review.get('score'), 1))}</p>"
            f"<pre>{escape(str(review.get('feedback') or '')[:TEXT_SHOWN])}</pre>"
            for review in answer.get("reviews", []))
        parts.append(f"<h4>Answer r{answer.get('iteration')}{' (degenerate)' if answer.get('degenerate') else ''}"
                     f"</h4><pre>{escape(answer.get('text', '')[:TEXT_SHOWN])}</pre>{reviews}")
    verdict_scores = ", ".join(_fmt(score, 1) for score in verdict.get("scores") or [])
    reasons = "".join(f"<pre>{escape(str(exchange.get('text', ''))[:TEXT_SHOWN])}</pre>"
                      for exchange in verdict.get("exchanges", []))
    parts.append(f"<h4>Verdict ({escape(str(verdict.get('method', '')))}): winner "
                 f"{escape(str(verdict.get('winner')))}, scores {escape(verdict_scores)}</h4>{reasons}")
    detail = f'<tr class="detail"><td colspan="6"><details><summary>the whole loop</summary>{"".join(parts)}' \
             "</details></td></tr>"
    return row + detail


MARGIN_CAPTION = "Score margin of every DPO row: a row with a small margin is a weak label."
LENGTH_CAPTION = "Length of chosen against rejected: a pile to the right of the line is a length bias."


def render_page(data: dict[str, Any], figures: RunFigures, sample: list[dict[str, Any]], total: int,
                *, title: str) -> str:
    """The whole page as one HTML string."""
    escape = html.escape
    charts = _charts(data, figures)
    trust = data["trust"]
    outcomes = sorted(data["outcomes"].items(), key=lambda pair: -pair[1])
    roles = [[escape(entry["role"]), escape(entry["model"]), str(entry["calls"]), str(entry["input_tokens"]),
              str(entry["output_tokens"]), f"{entry['seconds']:.1f}"] for entry in data["roles"]]
    glance = _table(["figure", "value"], [
        ["prompts done", str(data["prompts"])], ["prompts failed", str(data["failed"])],
        ["DPO rows", str(data["dpo_rows"])], ["KTO rows", str(data["kto_rows"])],
        ["cost (USD, where prices are known)", _fmt(data["cost_usd"], 4)],
        ["calls from the call cache", str(data["cached_calls"])], ["answers 429 waited out", str(data["rate_limited"])],
        ["time, from the prompts' arrival to the last one done (s; every run of this folder)", _fmt(data["span_s"], 1)],
        *[[f"model: {escape(role)}", escape(spec)] for role, spec in data["models"].items()],
    ])
    loop_rows = [[f"r{row['iteration']}", _fmt(row["reviewers_mean"]),
                  f"{_fmt(row['reviewers_low'])} to {_fmt(row['reviewers_high'])}", str(row["reviews"]),
                  _fmt(row["evaluator_mean"]), _share(row["chosen_share"])] for row in data["loop"]]
    versus = data["final_vs_first"]
    trust_rows = [
        ["mean margin, chosen - rejected (points)", _fmt(trust["margin_mean"])],
        ["prompts whose top answers tied", _share(trust["tie_rate"])],
        ["prompts without a verdict", _share(trust["no_verdict_rate"])],
        ["rows whose chosen answer is longer", _share(trust["chosen_longer_share"])],
        ["median length ratio, chosen / rejected", _fmt(trust["median_length_ratio"])],
        [f"chosen longer, among rows with a margin of {SMALL_MARGIN:g} point or less "
         f"({trust['small_margin_rows']} rows)", _share(trust["chosen_longer_share_small_margin"])],
        ["position consistency (both orders agree; with --swap)", _share(trust["position_consistency"])],
        ["P(first answer shown wins) (with --swap)", _share(trust["p_first"])],
        ["debate referees agreeing on the best answer", _share(trust["debate_agreement"])],
        ["degenerate answers (repeat themselves; never chosen)",
         f"{trust['degenerate_answers']} of {trust['answers']}"],
        ["agreement with people", "no prompt reviewed by a person yet"],
    ]
    splits = _table(["jury votes", "prompts"], [[escape(split), str(count)]
                                               for split, count in trust["jury_splits"].items()]) \
        if trust["jury_splits"] else ""
    options = "".join(f'<option value="{escape(outcome, quote=True)}">{escape(outcome)} ({count})</option>'
                      for outcome, count in outcomes)
    sampled = (f"The table holds an even sample of {len(sample)} of the run's {total} prompts; every figure above "
               "covers them all." if len(sample) < total else f"All {total} prompts.")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{escape(title)}</h1>
<p class="lead">Made by fellowship from this folder's records.jsonl: nothing here was called again.</p>
<section id="glance"><h2>1. The run at a glance</h2>
{glance}
{_table(["outcome", "prompts"], [[escape(name), str(count)] for name, count in outcomes])}
{_table(["role", "model", "calls", "input tokens", "output tokens", "call seconds"], roles, numeric_from=2)}
</section>
<section id="loop"><h2>2. Did the loop help?</h2>
<p class="finding">{escape(data["headline"])}</p>
{_table(["iteration", "reviewers' mean", "95% interval", "reviews", "evaluator's mean", "chosen"], loop_rows)}
<p>Final answer against the first, by the evaluator's scores: {versus["wins"]} wins, {versus["ties"]} ties,
{versus["losses"]} losses (win rate {_share(versus["win_rate"])}).</p>
<div class="charts">{_figure(charts, "scores", "Reviewers' mean score per iteration with its 95% interval, and the "
                                    "evaluator's mean score of the same answers.")}
{_figure(charts, "chosen", "Share of prompts whose chosen answer is each iteration.")}</div>
</section>
<section id="trust"><h2>3. Can I trust the labels?</h2>
{_table(["figure", "value"], trust_rows)}
{splits}
<div class="charts">{_figure(charts, "margins", MARGIN_CAPTION)}{_figure(charts, "lengths", LENGTH_CAPTION)}</div>
</section>
<section id="rows-section"><h2>4. The rows themselves</h2>
<p class="muted">{escape(sampled)}</p>
<div class="controls"><label>outcome <select id="outcome"><option value="">all</option>{options}</select></label>
<label>search <input id="search" type="search" placeholder="text in a prompt or an answer"></label>
<span id="shown" class="muted"></span></div>
<table id="rows"><thead><tr><th>prompt</th><th>chosen</th><th>rejected</th><th>scores</th><th>outcome</th>
<th>iteration chosen</th></tr></thead><tbody>
{"".join(_row_html(record) for record in sample)}
</tbody></table>
<button id="more" type="button">show 50 more</button>
</section>
<script>{SCRIPT}</script>
</body></html>
"""
