"""Reading verdict files for scoring without model calls: parsed winners, scores, or raw judge text.

One JSON object per line. Accepted forms, tried in this order:

- raw text: `{"id", "strategy": "direct"|"combined", "scale", "text", "followup_text"?}`, or for
  independent scoring `{"id", "strategy": "independent", "scale", "texts": [one per answer],
  "followup_texts"?}`; the text is parsed with the project's parsers (the follow-up reply when the first
  has no answer);
- a record of `fellowship generate` (`records.jsonl`: `prompt_id`, `answers`, `verdict`): read as its verdict,
  with the prompt id as its id (so a run's `human.jsonl` scores the run's own evaluator);
- a record written by `fellowship evaluate` / `meta-eval` (it has `method` and `exchanges`): a judge's
  recorded exchanges are parsed again (a score recorded with its probability-weighted value, `--scoring
  expected`, takes that value, except under the paper's rules), other methods keep their recorded winner;
- parsed scores: `{"id", "scores": [a, b]}`;
- a parsed winner: `{"id", "winner": "A"|"B"|"C"|"tie"|null}` (C is a tie, null is unparsed).

Lines written by the published code are read too: `response` (its replies joined) is the raw text,
`response_1`/`response_2` the independent texts, `turns_to_answer` the number of calls, `score_1`/
`score_2` its scores (-1 = unparsed) and `pick` (model_a, model_b, tie) its direct verdict.

`id` is the benchmark's own id; a line without one is the item at the same position (from 0).
`model` (optional) names the evaluator; otherwise the file name does.

With `paper_compat` the paper's rules apply (SPEC.md 2.1): the published code's own scores and picks are
taken as they are; raw text is read with the published code's strict parsers (see `tools.rules.parsing`), an
unparsed score is -1 and compared numerically, an unparsed direct comparison is a tie, and score A is
only ever read from the first reply, while B is the first B line of the whole exchange.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.records import ScoreReading, score_to_use
from tools.errors import InputError
from tools.inputs.items import read_jsonl
from tools.rules.parsing import (
    parse_assistant_scores,
    parse_direct_answer,
    parse_overall_score,
    published_direct_answer,
    published_overall_score,
    published_score_positions,
)
from tools.rules.verdicts import (
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
    # Winner per answer order when the item was judged in both (forward first); empty otherwise. An order
    # the rules could not read is None here, even where the paper's rules fill in a tie for the verdict.
    order_winners: list[str | None] = field(default_factory=list)
    # The rules could not read the verdict. Without --paper-compat the winner is then None; the paper's
    # rules fill in -1 scores or a tie instead, and this flag keeps the failure countable.
    unparsed: bool = False


@dataclass
class VerdictFile:
    """One evaluator's verdicts, keyed by benchmark id (or by position, for lines without an id)."""

    name: str
    path: Path
    by_id: dict[str, ItemVerdict] = field(default_factory=dict)
    by_position: dict[int, ItemVerdict] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    # A run's records.jsonl holds every prompt of the run, its human.jsonl only those people decided: verdicts of
    # other prompts are left out instead of refused.
    run_records: bool = False


def _winner_value(value: Any, path: Path, line: int | None, answers: int = 2) -> str | None:
    """A recorded winner: with two answers C is the paper's tie; with more answers, C, D... are answers."""
    if value is None:
        return None
    text = str(value).strip()
    if answers > 2 and text in candidate_labels(answers):
        return text
    name = _WINNER_NAMES.get(text.lower())
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
    unparsed = any(score is None for score in scores)
    if paper_compat:
        filled = [PAPER_UNPARSED_SCORE if score is None else score for score in scores]
        return ItemVerdict(winner=paper_winner_from_scores(filled), scores=list(filled), unparsed=unparsed)
    winner = winner_from_scores(scores)
    return ItemVerdict(winner=winner, scores=scores, unparsed=winner is None)


def combined_scores(text: str, followup: str | None, *, count: int, scale: int) -> list[float | None]:
    """Scores of a combined-scoring reply, reading the follow-up reply when the first lacks any score."""
    labels = candidate_labels(count)
    first = parse_assistant_scores(text, labels, scale)
    if all(first[label] is not None for label in labels) or not followup:
        return [first[label] for label in labels]
    second = parse_assistant_scores(followup, labels, scale)
    return [second[label] if second[label] is not None else first[label] for label in labels]


def _first_value(found: list[tuple[int, float]]) -> float | None:
    return found[0][1] if found else None


def published_combined_scores(
    text: str, followup: str | None, *, count: int, scale: int, turns: int | None
) -> list[float | None]:
    """Scores as the published code read them (SPEC.md 2.1).

    Strict lines, first match, and score A only ever read from the first reply, while B, C, ... are read from the
    whole exchange after a follow-up.

    Recorded outputs often hold the first reply and the follow-up replies joined in one text, with the
    number of calls (`turns`). Then the first reply's end is not marked; a follow-up reply restates every
    score, so score A came from the first reply exactly when two A lines precede the first B line.
    """
    labels = candidate_labels(count)
    whole = text if not followup else f"{text}\n\n{followup}"
    others = [_first_value(published_score_positions(whole, label, scale)) for label in labels[1:]]
    if followup:
        score_a = _first_value(published_score_positions(text, labels[0], scale))
    elif turns is not None and turns > 1:
        a_lines = published_score_positions(whole, labels[0], scale)
        b_lines = published_score_positions(whole, labels[1], scale)
        before_b = [line for line in a_lines if not b_lines or line[0] < b_lines[0][0]]
        score_a = a_lines[0][1] if len(before_b) >= 2 else None
    else:
        score_a = _first_value(published_score_positions(whole, labels[0], scale))
    return [score_a, *others]


def direct_winner(text: str, followup: str | None) -> str | None:
    """A direct comparison's winner, reading the follow-up reply when the first has none."""
    winner = parse_direct_answer(text)
    if winner is None and followup:
        winner = parse_direct_answer(followup)
    return winner


def independent_score(text: str, followup: str | None, scale: int) -> float | None:
    """An independent score, reading the follow-up reply when the first has none."""
    score = parse_overall_score(text, scale)
    if score is None and followup:
        score = parse_overall_score(followup, scale)
    return score


def _joined(text: str, followup: str | None) -> str:
    return text if not followup else f"{text}\n\n{followup}"


def verdict_from_text(
    *,
    strategy: str,
    scale: int,
    texts: Sequence[str],
    followups: Sequence[str | None],
    count: int,
    paper_compat: bool,
    turns: int | None = None,
) -> ItemVerdict:
    """Parse raw judge output into a verdict (one text, or one per answer for independent scoring).

    By default the project's tolerant parsers read it; with `paper_compat`, the published code's strict
    ones, with its rules for what could not be read (-1 scores, ties).
    """
    if strategy == "direct":
        if paper_compat:
            read = published_direct_answer(_joined(texts[0], followups[0]))
            return ItemVerdict(winner=read or TIE, unparsed=read is None)
        winner = direct_winner(texts[0], followups[0])
        return ItemVerdict(winner=winner, unparsed=winner is None)
    if strategy == "combined":
        if paper_compat:
            scores = published_combined_scores(texts[0], followups[0], count=count, scale=scale, turns=turns)
        else:
            scores = combined_scores(texts[0], followups[0], count=count, scale=scale)
        return _from_scores(scores, paper_compat)
    if paper_compat:
        scores = [published_overall_score(_joined(text, followup), scale)
                  for text, followup in zip(texts, followups, strict=True)]
    else:
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
    turns = row.get("turns")
    return verdict_from_text(strategy=strategy, scale=scale, texts=texts, followups=followups, count=count,
                             paper_compat=paper_compat, turns=turns if isinstance(turns, int) else None)


_PICKS = {"model_a": "A", "model_b": "B"}


def _published_strategy(row: dict[str, Any]) -> str | None:
    """The strategy a published-code line was made with, told by its fields.

    Two texts are independent scoring, `score_1`/`score_2` beside one text combined scoring, a `pick` direct
    comparison.
    """
    if isinstance(row.get("response_1"), str) and isinstance(row.get("response_2"), str):
        return "independent"
    if isinstance(row.get("response"), str):
        if "score_1" in row and "score_2" in row:
            return "combined"
        if "pick" in row:
            return "direct"
    return None


def _published_fields(row: dict[str, Any], default_strategy: str | None) -> dict[str, Any]:
    """Read a line written by the published code under this format's names.

    Its judge wrote `response` (every reply joined), `pick` (model_a, model_b or tie) and
    `turns_to_answer`; its raters `score_1`, `score_2` and, scoring alone, `response_1`, `response_2`.
    """
    row = dict(row)
    strategy = row.get("strategy") or default_strategy or _published_strategy(row)
    if strategy and not row.get("strategy") and ("response" in row or "response_1" in row):
        row["strategy"] = strategy
    if "text" not in row and "texts" not in row:
        if strategy == "independent" and isinstance(row.get("response_1"), str) and "response_2" in row:
            row["texts"] = [row["response_1"], row["response_2"]]
        elif isinstance(row.get("response"), str):
            row["text"] = row["response"]
    if "turns" not in row and "turns_to_answer" in row:
        row["turns"] = row["turns_to_answer"]
    return row


def _recorded_by_published_code(row: dict[str, Any], paper_compat: bool, path: Path, line: int) -> ItemVerdict | None:
    """What the published code concluded itself: its `score_1`/`score_2` (-1 = unparsed) or its `pick`."""
    if "score_1" in row and "score_2" in row:
        scores = _scores_value([row["score_1"], row["score_2"]], path, line)
        unread = any(score == PAPER_UNPARSED_SCORE for score in scores)
        if not paper_compat:
            scores = [None if score == PAPER_UNPARSED_SCORE else score for score in scores]
        verdict = _from_scores(scores, paper_compat)
        verdict.unparsed = verdict.unparsed or unread
        return verdict
    if "pick" in row:
        pick = str(row["pick"]).strip().lower()
        return ItemVerdict(winner=_PICKS.get(pick, TIE), unparsed=pick not in _PICKS and pick != TIE)
    return None


def verdict_from_record(row: dict[str, Any], *, paper_compat: bool, path: Path, line: int | None) -> ItemVerdict:
    """A record of `fellowship evaluate`: a judge's exchanges are parsed again; other methods as recorded."""
    count = len(row.get("scores") or []) or 2
    exchanges = row.get("exchanges") or []
    strategy = row.get("strategy")
    # A verdict scored by criteria keeps its weighted scores: its replies hold one score per answer and criterion,
    # which the one-score parsers below do not read.
    if (row.get("method") != "judge" or strategy not in STRATEGIES or not exchanges or row.get("error")
            or row.get("criteria_scores")):
        winner = _winner_value(row.get("winner"), path, line, count)
        return ItemVerdict(winner=TIE if winner is None and paper_compat else winner,
                           scores=list(row.get("scores") or []), order_winners=list(row.get("order_winners") or []),
                           unparsed=winner is None)
    if paper_compat and any(_is_json_reply(exchange.get("text")) for exchange in exchanges):
        raise InputError(path, line, "--paper-compat: this verdict was made in JSON mode (--output-format json, "
                         "the default for local: models), which the published code's rules cannot read; "
                         "score it without --paper-compat")
    scale = int(row.get("scale") or 10)
    if strategy == "independent":
        independent = verdict_from_text(
            strategy=strategy, scale=scale, texts=[exchange["text"] for exchange in exchanges],
            followups=[exchange.get("followup_text") for exchange in exchanges], count=count,
            paper_compat=paper_compat,
        )
        if paper_compat:
            return independent
        weighted = [_expected_or(exchange, "overall", score) for exchange, score in zip(
            exchanges, independent.scores or [None] * len(exchanges), strict=False)]
        return _from_scores(weighted, paper_compat=False) if weighted != independent.scores else independent
    judged: list[tuple[bool, Sequence[float | None], str | None]] = []
    unread: dict[bool, bool] = {}
    for exchange in exchanges:
        one = verdict_from_text(strategy=strategy, scale=scale, texts=[exchange["text"]],
                                followups=[exchange.get("followup_text")], count=count, paper_compat=paper_compat)
        if not paper_compat and strategy == "combined" and one.scores:
            weighted = [_expected_or(exchange, label, score)
                        for label, score in zip(candidate_labels(count), one.scores, strict=True)]
            if weighted != one.scores:
                one = _from_scores(weighted, paper_compat=False)
        is_reversed = exchange_order(exchange) == "reversed"
        judged.append((is_reversed, one.scores or [None] * count, one.winner))
        unread[is_reversed] = one.unparsed
    if len(judged) == 1:
        return ItemVerdict(winner=judged[0][2], scores=list(judged[0][1]), unparsed=unread[judged[0][0]])
    scores, winner, order_winners = merge_orders(judged)
    # Position consistency counts only orders the rules could read, whatever the paper's rules fill in.
    readable = [None if unread[is_reversed] else order_winner
                for is_reversed, order_winner in zip(sorted(unread), order_winners, strict=True)]
    return ItemVerdict(winner=winner, scores=scores if strategy == "combined" else [], order_winners=readable,
                       unparsed=all(unread.values()))


def _expected_or(exchange: dict[str, Any], key: str, parsed: float | None) -> float | None:
    """The probability-weighted score a call recorded for `key` (`--scoring expected`), else the parsed one.

    The raw text gives the number written; the expected value came from the reply's token probabilities, which
    only the record keeps. The paper's rules never use it.
    """
    readings = [ScoreReading.model_validate(reading) for reading in exchange.get("score_readings") or []]
    return score_to_use(readings, key, parsed)


def exchange_order(exchange: dict[str, Any]) -> str | None:
    """The answer order a recorded exchange saw.

    Its `order` field, or, in files written before the field existed, the order named at the end of its run name
    (then held in `role`).
    """
    if exchange.get("order") in ("forward", "reversed"):
        return str(exchange["order"])
    legacy = str(exchange.get("role", "")).rsplit("/", 1)[-1]
    return legacy if legacy in ("forward", "reversed") else None


def _is_json_reply(text: Any) -> bool:
    """A reply made in the structured-output mode: one JSON object, not the paper's `###` lines."""
    if not isinstance(text, str) or not text.strip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def evaluator_label(
    *, method: str, strategy: str | None, scale: int | None, models: Sequence[str], swapped: bool
) -> str:
    """The one name of an evaluator in reports.

    'judge combined/10 openai:gpt-4o', 'jury combined/plurality a + b', 'debate m + m + m' (one spec per referee),
    '(both orders)' when judged in both.
    """
    how = strategy or ""
    if method == "judge" and scale:
        how = f"{how}/{scale}"
    parts = [method, how, " + ".join(map(str, models))]
    return " ".join(part for part in parts if part) + (" (both orders)" if swapped else "")


def record_evaluator_name(row: dict[str, Any]) -> str:
    """The evaluator's name from an evaluate record (its method, strategy, scale, models and orders)."""
    return evaluator_label(method=str(row["method"]), strategy=row.get("strategy"), scale=row.get("scale"),
                           models=list(row["models"]), swapped=bool(row.get("swapped")))


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
    for position, (line, raw_row) in enumerate(read_jsonl(path)):
        if isinstance(raw_row.get("verdict"), dict) and "prompt_id" in raw_row and "answers" in raw_row:
            # A `generate` record (records.jsonl): its evaluator's verdict, under the prompt's id.
            raw_row = {"exchanges": [], **raw_row["verdict"], "id": raw_row["prompt_id"]}
            result.run_records = True
        row = _published_fields(raw_row, default_strategy)
        recorded = _recorded_by_published_code(row, paper_compat, path, line)
        if paper_compat and recorded is not None:
            # The published code's own scores already carry its parsing and its quirks.
            verdict = recorded
        elif "text" in row or "texts" in row:
            verdict = _from_raw_text(row, (default_strategy, default_scale), paper_compat, path, line)
        elif recorded is not None:
            verdict = recorded
        elif "exchanges" in row and "method" in row:
            verdict = verdict_from_record(row, paper_compat=paper_compat, path=path, line=line)
        elif row.get("scores") is not None:
            verdict = _from_scores(_scores_value(row["scores"], path, line), paper_compat)
        elif "winner" in row:
            winner = _winner_value(row["winner"], path, line)
            verdict = ItemVerdict(winner=TIE if winner is None and paper_compat else winner, unparsed=winner is None)
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
