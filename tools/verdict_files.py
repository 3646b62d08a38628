"""Reading verdict files for scoring without model calls: parsed winners, scores, or raw judge text.

One JSON object per line. Accepted forms, tried in this order:

- raw text: `{"id", "strategy": "direct"|"combined", "scale", "text", "followup_text"?}`, or for
  independent scoring `{"id", "strategy": "independent", "scale", "texts": [one per answer],
  "followup_texts"?}`; the text is parsed with the project's parsers (the follow-up reply when the first
  has no answer);
- a record written by `fellowship evaluate` / `meta-eval` (it has `method` and `exchanges`): a judge's
  recorded exchanges are parsed again, other methods keep their recorded winner;
- parsed scores: `{"id", "scores": [a, b]}`;
- a parsed winner: `{"id", "winner": "A"|"B"|"C"|"tie"|null}` (C is a tie, null is unparsed).

`id` is the benchmark's own id; a line without one is the item at the same position (from 0).
`model` (optional) names the evaluator; otherwise the file name does.

With `paper_compat` the paper's rules apply (SPEC.md 2.1): an unparsed score is -1 and compared
numerically, an unparsed direct comparison is a tie, and after a follow-up only the scores after the
first (B, C, ...) are read from the follow-up reply: score A keeps what the first reply gave.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.errors import InputError
from tools.items import read_jsonl
from tools.parsing import parse_assistant_scores, parse_direct_answer, parse_overall_score
from tools.verdicts import (
    PAPER_UNPARSED_SCORE,
    TIE,
    candidate_labels,
    merge_orders,
    paper_winner_from_scores,
    winner_from_scores,
)

STRATEGIES = ("direct", "independent", "combined")
_WINNER_NAMES = {"a": "A", "b": "B", "c": TIE, "tie": TIE}


@dataclass
class ItemVerdict:
    """What one evaluator said about one item, in original answer order."""

    winner: str | None
    scores: list[float | None] = field(default_factory=list)
    # Winner per answer order when the item was judged in both (forward first); empty otherwise.
    order_winners: list[str | None] = field(default_factory=list)


@dataclass
class VerdictFile:
    """One evaluator's verdicts, keyed by benchmark id (or by position, for lines without an id)."""

    name: str
    path: Path
    by_id: dict[str, ItemVerdict] = field(default_factory=dict)
    by_position: dict[int, ItemVerdict] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)


def _winner_value(value: Any, path: Path, line: int | None) -> str | None:
    if value is None:
        return None
    name = _WINNER_NAMES.get(str(value).strip().lower())
    if name is None:
        raise InputError(path, line, f"winner {value!r} is not A, B, C, tie or null")
    return name


def _scores_value(value: Any, path: Path, line: int) -> list[float | None]:
    if not isinstance(value, list) or len(value) < 2:
        raise InputError(path, line, "'scores' must be a list of two or more numbers (null for unparsed)")
    scores: list[float | None] = []
    for score in value:
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
            raise InputError(path, line, f"score {score!r} is not a number or null")
        scores.append(None if score is None else float(score))
    return scores


def _from_scores(scores: list[float | None], paper_compat: bool) -> ItemVerdict:
    if paper_compat:
        filled = [PAPER_UNPARSED_SCORE if score is None else score for score in scores]
        return ItemVerdict(winner=paper_winner_from_scores(filled), scores=list(filled))
    return ItemVerdict(winner=winner_from_scores(scores), scores=scores)


def combined_scores(
    text: str, followup: str | None, *, count: int, scale: int, paper_compat: bool
) -> list[float | None]:
    """Scores of a combined-scoring reply, reading the follow-up reply when the first lacks any score."""
    labels = candidate_labels(count)
    first = parse_assistant_scores(text, labels, scale)
    if paper_compat and followup:
        # A recorded follow-up means the published code failed to parse the first reply; it then read
        # scores B, C, ... from the follow-up reply and never re-read score A.
        second = parse_assistant_scores(followup, labels, scale)
        return [first[labels[0]]] + [second[label] for label in labels[1:]]
    if all(first[label] is not None for label in labels) or not followup:
        return [first[label] for label in labels]
    second = parse_assistant_scores(followup, labels, scale)
    return [second[label] if second[label] is not None else first[label] for label in labels]


def direct_winner(text: str, followup: str | None) -> str | None:
    winner = parse_direct_answer(text)
    if winner is None and followup:
        winner = parse_direct_answer(followup)
    return winner


def independent_score(text: str, followup: str | None, scale: int) -> float | None:
    score = parse_overall_score(text, scale)
    if score is None and followup:
        score = parse_overall_score(followup, scale)
    return score


def verdict_from_text(
    *,
    strategy: str,
    scale: int,
    texts: Sequence[str],
    followups: Sequence[str | None],
    count: int,
    paper_compat: bool,
) -> ItemVerdict:
    """Parse raw judge output into a verdict (one text, or one per answer for independent scoring)."""
    if strategy == "direct":
        winner = direct_winner(texts[0], followups[0])
        if winner is None and paper_compat:
            winner = TIE
        return ItemVerdict(winner=winner)
    if strategy == "combined":
        scores = combined_scores(texts[0], followups[0], count=count, scale=scale, paper_compat=paper_compat)
        return _from_scores(scores, paper_compat)
    scores = [independent_score(text, followup, scale) for text, followup in zip(texts, followups, strict=True)]
    return _from_scores(scores, paper_compat)


def _strategy_and_scale(
    row: dict[str, Any], defaults: tuple[str | None, int], path: Path, line: int
) -> tuple[str, int]:
    strategy = row.get("strategy") or defaults[0]
    if strategy not in STRATEGIES:
        raise InputError(path, line, f"raw text needs 'strategy' ({', '.join(STRATEGIES)}), got {strategy!r}; "
                         "or pass --strategy")
    scale = row.get("scale") or defaults[1]
    if not isinstance(scale, int) or scale <= 0:
        raise InputError(path, line, f"'scale' must be a positive whole number, got {scale!r}")
    return strategy, scale


def _from_raw_text(row: dict[str, Any], defaults: tuple[str | None, int], paper_compat: bool,
                   path: Path, line: int) -> ItemVerdict:
    strategy, scale = _strategy_and_scale(row, defaults, path, line)
    if strategy == "independent":
        texts = row.get("texts")
        if not isinstance(texts, list) or len(texts) < 2 or not all(isinstance(text, str) for text in texts):
            raise InputError(path, line, "independent scoring needs 'texts': one judge reply per answer")
        followups = row.get("followup_texts") or [None] * len(texts)
        if not isinstance(followups, list) or len(followups) != len(texts):
            raise InputError(path, line, "'followup_texts' must have one entry (or null) per text")
    else:
        if not isinstance(row.get("text"), str):
            raise InputError(path, line, f"{strategy} scoring needs 'text': the judge's reply")
        texts, followups = [row["text"]], [row.get("followup_text")]
    # Meta-evaluation compares two answers; independent scoring has one text per answer.
    count = len(texts) if strategy == "independent" else 2
    return verdict_from_text(strategy=strategy, scale=scale, texts=texts, followups=followups, count=count,
                             paper_compat=paper_compat)


def verdict_from_record(row: dict[str, Any], *, paper_compat: bool, path: Path, line: int | None) -> ItemVerdict:
    """A record of `fellowship evaluate`: a judge's exchanges are parsed again; other methods as recorded."""
    count = len(row.get("scores") or []) or 2
    exchanges = row.get("exchanges") or []
    strategy = row.get("strategy")
    if row.get("method") != "judge" or strategy not in STRATEGIES or not exchanges or row.get("error"):
        winner = _winner_value(row.get("winner"), path, line)
        if winner is None and paper_compat:
            winner = TIE
        return ItemVerdict(winner=winner, scores=list(row.get("scores") or []),
                           order_winners=list(row.get("order_winners") or []))
    scale = int(row.get("scale") or 10)
    if strategy == "independent":
        return verdict_from_text(
            strategy=strategy, scale=scale, texts=[exchange["text"] for exchange in exchanges],
            followups=[exchange.get("followup_text") for exchange in exchanges], count=count,
            paper_compat=paper_compat,
        )
    judged: list[tuple[bool, Sequence[float | None], str | None]] = []
    for exchange in exchanges:
        one = verdict_from_text(strategy=strategy, scale=scale, texts=[exchange["text"]],
                                followups=[exchange.get("followup_text")], count=count, paper_compat=paper_compat)
        judged.append(("reversed" in str(exchange.get("role", "")), one.scores or [None] * count, one.winner))
    if len(judged) == 1:
        return ItemVerdict(winner=judged[0][2], scores=list(judged[0][1]))
    scores, winner, order_winners = merge_orders(judged)
    return ItemVerdict(winner=winner, scores=scores if strategy == "combined" else [], order_winners=order_winners)


def record_evaluator_name(row: dict[str, Any]) -> str:
    """'judge combined/10 openai:gpt-4o', 'jury combined/plurality a + b', ... from an evaluate record."""
    how = row.get("strategy") or ""
    if row.get("method") == "judge" and row.get("scale"):
        how = f"{how}/{row['scale']}"
    parts = [str(row["method"]), how, " + ".join(map(str, row["models"]))]
    return " ".join(part for part in parts if part) + (" (both orders)" if row.get("swapped") else "")


def read_verdict_file(
    path: Path,
    *,
    paper_compat: bool = False,
    default_strategy: str | None = None,
    default_scale: int = 10,
) -> VerdictFile:
    """Every line of a verdict file as an ItemVerdict; a bad line raises an InputError naming it."""
    if not path.is_file():
        raise InputError(path, None, "verdict file not found")
    result = VerdictFile(name=path.stem, path=path)
    for position, (line, row) in enumerate(read_jsonl(path)):
        if "text" in row or "texts" in row:
            verdict = _from_raw_text(row, (default_strategy, default_scale), paper_compat, path, line)
        elif "exchanges" in row and "method" in row:
            verdict = verdict_from_record(row, paper_compat=paper_compat, path=path, line=line)
        elif row.get("scores") is not None:
            verdict = _from_scores(_scores_value(row["scores"], path, line), paper_compat)
        elif "winner" in row:
            winner = _winner_value(row["winner"], path, line)
            verdict = ItemVerdict(winner=TIE if winner is None and paper_compat else winner)
        else:
            raise InputError(path, line, "a verdict line needs 'text', 'texts', 'scores' or 'winner'")
        if isinstance(row.get("model"), str) and row["model"]:
            result.name = row["model"]
        elif isinstance(row.get("models"), list) and row["models"] and "method" in row:
            result.name = record_evaluator_name(row)
        if row.get("id") is None:
            result.by_position[position] = verdict
            continue
        item_id = str(row["id"])
        if item_id in result.by_id:
            raise InputError(path, line, f"id {item_id!r} appears twice (first on line {result.lines[item_id]})")
        result.by_id[item_id] = verdict
        result.lines[item_id] = line
    if not result.by_id and not result.by_position:
        raise InputError(path, None, "holds no verdicts")
    return result
