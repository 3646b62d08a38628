"""The judge role: the three prompting strategies of LLM-as-a-Judge (SPEC.md 2.1).

Each function makes the calls for one judgement on candidates in the order given; swapping orders and
combining verdicts is the graph's business. Scores come back in the order the candidates were given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage

import prompts
from agents.calls import ExpectedScoring, complete_with_followup
from agents.records import AnswerOrder, Exchange
from tools.rules.contracts import (
    DirectComparison,
    combined_scores,
    followup_example,
    format_hint,
    independent_score,
    json_schema,
)
from tools.rules.criteria import Criterion, criterion_keys, weighted_scores
from tools.rules.expected_scores import OVERALL, criterion_key
from tools.rules.parsing import (
    parse_assistant_scores,
    parse_criterion_scores,
    parse_direct_answer,
    parse_overall_score,
)
from tools.rules.verdicts import candidate_labels, winner_from_scores

STRATEGIES = ("direct", "independent", "combined")
SCALES = (5, 10, 100)
@dataclass
class Judgement:
    """What one judge concluded about candidates presented in one order."""

    scores: list[float | None]
    winner: str | None
    exchanges: list[Exchange] = field(default_factory=list)
    # With criteria: each answer's scores by criterion (its score is their weighted mean); None without.
    criteria_scores: list[dict[str, float | None]] | None = None

    @property
    def parse_ok(self) -> bool:
        """Whether the judge gave a verdict."""
        return self.winner is not None


def criteria_variables(criteria: Sequence[Criterion]) -> dict[str, Any]:
    """The `criteria` a system prompt lists (`_criteria.j2`); nothing without criteria, so defaults stay as they are."""
    return {"criteria": [criterion.model_dump() for criterion in criteria]} if criteria else {}


def _messages(user_text: str, criteria: Sequence[Criterion] = ()) -> list[Any]:
    system = prompts.render("judge_system", **criteria_variables(criteria))
    return [SystemMessage(content=system), HumanMessage(content=user_text)]


def overall_scoring(scale: int) -> ExpectedScoring:
    """Expected-value reading of a reply's one overall score (independent scoring, reviews)."""
    return ExpectedScoring(keys=(OVERALL,), scale=scale, parse=lambda text: {OVERALL: parse_overall_score(text, scale)})


def criteria_scoring(criteria: Sequence[Criterion], scale: int) -> ExpectedScoring:
    """Expected-value reading of a one-answer call's scores by criterion (reviews, independent scoring)."""
    names = [criterion.name for criterion in criteria]
    return ExpectedScoring(keys=tuple(criterion_key(name) for name in names), scale=scale,
                           parse=lambda text: {criterion_key(name): score for name, score in
                                               parse_criterion_scores(text, names, scale).items()})


def one_answer_scores(
    text_scores: dict[str, float | None], exchange: Exchange, criteria: Sequence[Criterion]
) -> tuple[float | None, dict[str, float | None]]:
    """A one-answer call's score by criterion (expected values where read), and their weighted mean."""
    by_criterion = {criterion.name: exchange.score(criterion_key(criterion.name), text_scores[criterion.name])
                    for criterion in criteria}
    [mean], _ = weighted_scores({f"A_{name}": score for name, score in by_criterion.items()}, ["A"], criteria)
    return mean, by_criterion


def labelled_scoring(labels: Sequence[str], scale: int) -> ExpectedScoring:
    """Expected-value reading of one score per answer label (combined scoring, jurors, referees)."""
    return ExpectedScoring(keys=tuple(labels), scale=scale,
                           parse=lambda text: parse_assistant_scores(text, labels, scale))


def criterion_format_lines(names: Sequence[str], scale: int) -> str:
    """The text-mode answer lines of a one-answer call scored by criteria, one `### Score NAME: X/scale` each."""
    return "\n".join(f"### Score {name}: X/{scale}" for name in names)


def combined_format_lines(labels: Sequence[str], scale: int) -> str:
    """The text-mode answer lines of combined scoring, one `### Score Assistant X: X/scale` per label."""
    return "\n".join(f"### Score Assistant {label}: X/{scale}" for label in labels)


async def judge_direct(
    model: BaseChatModel,
    *,
    model_spec: str,
    question: str,
    answers: Sequence[str],
    json_mode: bool,
    role: str = "judge",
    run_name: str = "judge/direct",
    order: AnswerOrder | None = None,
    metadata: dict[str, Any] | None = None,
    template: str | None = None,
) -> Judgement:
    """Direct comparison of exactly two answers: A, B or C (tie); `template`: the user's request, if any."""
    if len(answers) != 2:
        raise ValueError("direct comparison takes exactly two answers")
    contract = DirectComparison
    user_text = prompts.render_role(
        "judge_direct", template, question=question, answer_a=answers[0], answer_b=answers[1],
        json_format=format_hint(contract) if json_mode else None,
    )
    winner, exchange = await complete_with_followup(
        model,
        _messages(user_text),
        parse=parse_direct_answer,
        is_complete=lambda verdict: verdict is not None,
        required_format=followup_example(contract) if json_mode else "### Answer: A",
        model_spec=model_spec,
        role=role,
        run_name=run_name,
        order=order,
        json_schema=("direct_comparison", json_schema(contract)) if json_mode else None,
        metadata=metadata,
    )
    return Judgement(scores=[None, None], winner=winner, exchanges=[exchange])


async def score_alone(
    model: BaseChatModel,
    *,
    model_spec: str,
    question: str,
    answer: str,
    scale: int,
    json_mode: bool,
    role: str = "judge",
    run_name: str = "judge/independent",
    order: AnswerOrder | None = None,
    metadata: dict[str, Any] | None = None,
    expected: bool = False,
    template: str | None = None,
) -> tuple[float | None, Exchange]:
    """Independent scoring: one answer, in its own conversation, scored out of `scale`.

    With `expected`, the score is the probability-weighted mean of the judge's score distribution; `template` is
    the user's request, if any (the answer format is added to it). With criteria: `score_alone_by_criteria`.
    """
    contract = independent_score(scale)
    user_text = prompts.render_role("judge_independent", template, question=question, answer=answer, scale=scale,
                                    json_format=format_hint(contract) if json_mode else None)
    score, exchange = await complete_with_followup(
        model,
        _messages(user_text),
        parse=lambda text: parse_overall_score(text, scale),
        is_complete=lambda score: score is not None,
        required_format=followup_example(contract) if json_mode else f"### Overall Score: X/{scale}",
        model_spec=model_spec,
        role=role,
        run_name=run_name,
        order=order,
        json_schema=("independent_score", json_schema(contract)) if json_mode else None,
        metadata=metadata,
        expected=overall_scoring(scale) if expected else None,
    )
    return exchange.score(OVERALL, score), exchange


async def score_alone_by_criteria(
    model: BaseChatModel, *, model_spec: str, question: str, answer: str, scale: int, json_mode: bool,
    criteria: Sequence[Criterion], role: str = "judge", run_name: str = "judge/independent",
    order: AnswerOrder | None = None, metadata: dict[str, Any] | None = None, expected: bool = False,
    template: str | None = None,
) -> tuple[float | None, Exchange, dict[str, float | None]]:
    """`score_alone` with criteria: one score per criterion in one call; their weighted mean, the call, and them."""
    names = [criterion.name for criterion in criteria]
    contract = independent_score(scale, tuple(names))
    user_text = prompts.render_role("judge_independent", template, question=question, answer=answer, scale=scale,
                                    json_format=format_hint(contract) if json_mode else None, criterion_names=names)
    written, exchange = await complete_with_followup(
        model,
        _messages(user_text, criteria),
        parse=lambda text: parse_criterion_scores(text, names, scale),
        is_complete=lambda parsed: all(value is not None for value in parsed.values()),
        required_format=followup_example(contract) if json_mode else criterion_format_lines(names, scale),
        model_spec=model_spec,
        role=role,
        run_name=run_name,
        order=order,
        json_schema=("independent_score", json_schema(contract)) if json_mode else None,
        metadata=metadata,
        expected=criteria_scoring(criteria, scale) if expected else None,
    )
    score, by_criterion = one_answer_scores(written, exchange, criteria)
    return score, exchange, by_criterion


async def judge_combined(
    model: BaseChatModel,
    *,
    model_spec: str,
    question: str,
    answers: Sequence[str],
    scale: int,
    json_mode: bool,
    role: str = "judge",
    run_name: str = "judge/combined",
    order: AnswerOrder | None = None,
    metadata: dict[str, Any] | None = None,
    expected: bool = False,
    template: str | None = None,
    criteria: Sequence[Criterion] = (),
) -> Judgement:
    """Combined scoring: every answer in one call, each scored out of `scale`; the higher wins.

    With `expected`, each score is the probability-weighted mean of the judge's score distribution; `template` is
    the user's request, if any (the answer format is added to it). With `criteria`, each answer gets one score per
    criterion and its score is their weighted mean (`tools.rules.criteria`).
    """
    labels = candidate_labels(len(answers))
    keys = criterion_keys(labels, criteria) if criteria else labels
    contract = combined_scores(tuple(keys), scale)
    user_text = prompts.render_role(
        "judge_combined",
        template,
        question=question,
        answers=[{"label": label, "text": text} for label, text in zip(labels, answers, strict=True)],
        scale=scale,
        json_format=format_hint(contract) if json_mode else None,
        **({"score_keys": keys} if criteria else {}),
    )
    score_map, exchange = await complete_with_followup(
        model,
        _messages(user_text, criteria),
        parse=lambda text: parse_assistant_scores(text, keys, scale),
        is_complete=lambda parsed: all(value is not None for value in parsed.values()),
        required_format=followup_example(contract) if json_mode else combined_format_lines(keys, scale),
        model_spec=model_spec,
        role=role,
        run_name=run_name,
        order=order,
        json_schema=("combined_scores", json_schema(contract)) if json_mode else None,
        metadata=metadata,
        expected=labelled_scoring(keys, scale) if expected else None,
    )
    if not criteria:
        scores = [exchange.score(label, score_map[label]) for label in labels]
        return Judgement(scores=scores, winner=winner_from_scores(scores), exchanges=[exchange])
    weighted, by_criterion = weighted_scores({key: exchange.score(key, score_map[key]) for key in keys}, labels,
                                             criteria)
    return Judgement(scores=weighted, winner=winner_from_scores(weighted), exchanges=[exchange],
                     criteria_scores=by_criterion)
