"""Debate referees (after ChatEval): what one referee says. The roles themselves are data (`agents.roles`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage

import prompts
from agents.calls import complete, complete_with_followup
from agents.judge import combined_format_lines, criteria_variables, labelled_scoring
from agents.records import Exchange, Turn
from agents.roles import RefereeRole
from tools.rules.contracts import REASONING, combined_scores, followup_example, format_hint, json_schema
from tools.rules.criteria import Criterion, criterion_keys, weighted_scores
from tools.rules.parsing import parse_assistant_scores


def debate_labels(count: int) -> list[str]:
    """Referees discuss 'Assistant 1', 'Assistant 2', ... as ChatEval did."""
    return [str(index + 1) for index in range(count)]


def _answer_blocks(answers: Sequence[str]) -> list[dict[str, str]]:
    return [{"label": label, "text": text} for label, text in zip(debate_labels(len(answers)), answers, strict=True)]


def _messages(user_text: str, answer_count: int, criteria: Sequence[Criterion] = ()) -> list[Any]:
    return [
        SystemMessage(content=prompts.render("debate_system", answer_count=answer_count,
                                             **criteria_variables(criteria))),
        HumanMessage(content=user_text),
    ]


async def speak(
    model: BaseChatModel,
    *,
    model_spec: str,
    role: RefereeRole,
    question: str,
    answers: Sequence[str],
    discussion: Sequence[Turn],
    round_number: int,
    rounds: int,
    max_tokens: int | None = None,
    metadata: dict[str, Any] | None = None,
    criteria: Sequence[Criterion] = (),
) -> tuple[Turn, Exchange]:
    """The referee's contribution in one round, having seen everything said before it (by `criteria`, if any)."""
    user_text = prompts.render(
        "debate_turn",
        question=question,
        answers=_answer_blocks(answers),
        discussion=[turn.model_dump() for turn in discussion],
        role_name=role.name,
        role_description=role.description,
        round=round_number,
        rounds=rounds,
    )
    run_name = f"debate/{role.key}/round-{round_number}"
    reply = await complete(
        model, _messages(user_text, len(answers), criteria), max_tokens=max_tokens, run_name=run_name,
        model_spec=model_spec, metadata=metadata,
    )
    turn = Turn(role=role.key, speaker=role.name, round=round_number, text=reply.text.strip())
    exchange = Exchange(
        model=model_spec,
        role=role.key,
        run=run_name,
        text=reply.text,
        **reply.usage_fields(),
    )
    return turn, exchange


async def final_scores(
    model: BaseChatModel,
    *,
    model_spec: str,
    role: RefereeRole,
    question: str,
    answers: Sequence[str],
    discussion: Sequence[Turn],
    json_mode: bool,
    metadata: dict[str, Any] | None = None,
    expected: bool = False,
    criteria: Sequence[Criterion] = (),
) -> tuple[list[float | None], Exchange, list[dict[str, float | None]] | None]:
    """The referee's closing scores out of 10 for every answer (probability-weighted with `expected`).

    With `criteria`: one score per answer and criterion, each answer's score their weighted mean, and (third) its
    scores by criterion; without, the third is None.
    """
    labels = debate_labels(len(answers))
    keys = criterion_keys(labels, criteria) if criteria else labels
    contract = combined_scores(tuple(keys), 10, REASONING)
    user_text = prompts.render(
        "debate_final",
        question=question,
        answers=_answer_blocks(answers),
        discussion=[turn.model_dump() for turn in discussion],
        role_name=role.name,
        role_description=role.description,
        json_format=format_hint(contract) if json_mode else None,
        **({"score_keys": keys} if criteria else {}),
    )
    score_map, exchange = await complete_with_followup(
        model,
        _messages(user_text, len(answers), criteria),
        parse=lambda text: parse_assistant_scores(text, keys, 10),
        is_complete=lambda parsed: all(value is not None for value in parsed.values()),
        required_format=followup_example(contract) if json_mode else combined_format_lines(keys, 10),
        model_spec=model_spec,
        role=role.key,
        run_name=f"debate/{role.key}/final",
        json_schema=("referee_scores", json_schema(contract)) if json_mode else None,
        metadata=metadata,
        expected=labelled_scoring(keys, 10) if expected else None,
    )
    if not criteria:
        return [exchange.score(label, score_map[label]) for label in labels], exchange, None
    weighted, by_criterion = weighted_scores({key: exchange.score(key, score_map[key]) for key in keys}, labels,
                                             criteria)
    return weighted, exchange, by_criterion
