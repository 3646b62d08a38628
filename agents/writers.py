"""The generation roles of the LLM Feedback Loop (SPEC.md section 3): generator and reviewer.

The generator keeps one conversation across iterations (its answers and the feedback it received);
the reviewer sees only the request and the current answer, in a fresh conversation each time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage, convert_to_messages

import prompts
from agents.calls import complete, complete_with_followup
from agents.judge import (
    criteria_scoring,
    criteria_variables,
    criterion_format_lines,
    one_answer_scores,
    overall_scoring,
)
from agents.records import Exchange
from tools.rules.contracts import followup_example, format_hint, json_schema, review_contract
from tools.rules.criteria import Criterion
from tools.rules.expected_scores import OVERALL
from tools.rules.parsing import parse_criterion_scores, parse_feedback, parse_overall_score


def opening_messages(prompt: str | list[dict[str, str]], system_prompt: str | None = None) -> list[BaseMessage]:
    """The generator's conversation before its first answer; a message-list prompt is kept as given.

    `system_prompt`: the user's template for the generator's system prompt (`generator_system`), if any; a prompt
    that brings its own system message keeps it.
    """
    system = [SystemMessage(content=prompts.render_role("generator_system", system_prompt))]
    if isinstance(prompt, str):
        return [*system, HumanMessage(content=prompt)]
    given = convert_to_messages(prompt)
    return given if given[0].type == "system" else [*system, *given]


def revision_request(feedbacks: Sequence[dict[str, str]]) -> HumanMessage:
    """The generator's next turn: every reviewer's feedback, labelled when there are several."""
    return HumanMessage(content=prompts.render("generator_revise", feedbacks=list(feedbacks)))


async def write_answer(
    model: BaseChatModel,
    *,
    model_spec: str,
    conversation: Sequence[BaseMessage],
    iteration: int,
    metadata: dict[str, Any] | None = None,
) -> Exchange:
    """The generator's answer to the conversation so far (the request, or the latest feedback)."""
    run_name = f"generator/iteration-{iteration}"
    reply = await complete(model, conversation, run_name=run_name, model_spec=model_spec, metadata=metadata)
    return Exchange(
        model=model_spec,
        role="generator",
        run=run_name,
        text=reply.text.strip(),
        **reply.usage_fields(),
    )


async def review_answer(
    model: BaseChatModel,
    *,
    model_spec: str,
    question: str,
    answer: str,
    json_mode: bool,
    run_name: str,
    metadata: dict[str, Any] | None = None,
    expected: bool = False,
    template: str | None = None,
    criteria: Sequence[Criterion] = (),
) -> tuple[float | None, str, Exchange, dict[str, float | None] | None]:
    """The reviewer's score out of 10 (None if unparsable after one follow-up) and its feedback text.

    With `expected`, the score is the probability-weighted mean of the reviewer's score distribution; `template` is
    the user's review request, if any (the answer format is added to it). With `criteria`, one score per criterion,
    the score their weighted mean, and (fourth) the scores by criterion; without, the fourth is None.
    """
    names = [criterion.name for criterion in criteria]
    contract = review_contract(tuple(names))
    messages = [
        SystemMessage(content=prompts.render("reviewer_system", **criteria_variables(criteria))),
        HumanMessage(content=prompts.render_role("reviewer", template, question=question, answer=answer,
                                                 json_format=format_hint(contract) if json_mode else None,
                                                 **({"criterion_names": names} if criteria else {}))),
    ]
    if criteria:
        written, exchange = await complete_with_followup(
            model, messages,
            parse=lambda text: parse_criterion_scores(text, names, 10),
            is_complete=lambda parsed: all(value is not None for value in parsed.values()),
            required_format=followup_example(contract) if json_mode else criterion_format_lines(names, 10),
            model_spec=model_spec, role="reviewer", run_name=run_name,
            json_schema=("review", json_schema(contract)) if json_mode else None, metadata=metadata,
            expected=criteria_scoring(criteria, 10) if expected else None,
        )
        score, by_criterion = one_answer_scores(written, exchange, criteria)
        return score, parse_feedback(exchange.text), exchange, by_criterion
    overall, exchange = await complete_with_followup(
        model,
        messages,
        parse=lambda text: parse_overall_score(text, 10),
        is_complete=lambda value: value is not None,
        required_format=followup_example(contract) if json_mode else "### Overall Score: X/10",
        model_spec=model_spec,
        role="reviewer",
        run_name=run_name,
        json_schema=("review", json_schema(contract)) if json_mode else None,
        metadata=metadata,
        expected=overall_scoring(10) if expected else None,
    )
    # The follow-up only asks for the score line, so the feedback comes from the first reply.
    return exchange.score(OVERALL, overall), parse_feedback(exchange.text), exchange, None
