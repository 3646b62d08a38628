"""LLM Debate (after ChatEval) as a graph: referees from a role registry speak in turn for some rounds.

One node per referee role, chained in registry order; `close_round` counts rounds and its conditional
edge either starts the next round with the first referee or fans out one `final_score` branch per
referee. `aggregate_scores` averages the referees that gave parsable scores.

    START -> open_debate -> role_1 -> ... -> role_k -> close_round -(route_round)-> role_1 | final_score x k
    final_score -> aggregate_scores -> END

Adding a referee: one more `RefereeRole` in the registry passed to `build_debate_graph`, plus its prompt file.
"""

from __future__ import annotations

import itertools
import operator
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send
from typing_extensions import TypedDict

from agents.models import ModelSource
from agents.records import Turn
from agents.referees import final_scores, speak
from agents.roles import DEFAULT_ROLES, RESERVED_KEYS, RefereeRole
from graphs.binding import resolve_model_source
from graphs.context import EvaluationContext
from graphs.state import EvaluationInput, EvaluationOutput, ItemState, RefereeScore
from graphs.verdicts import verdict_update
from tools.errors import ConfigError
from tools.inputs.items import prompt_text
from tools.inputs.panels import configured_panel
from tools.rules.criteria import mean_by_criterion
from tools.rules.verdicts import mean_scores, winner_from_scores


class DebateState(TypedDict, total=False):
    """What the debate graph holds while its referees discuss one item."""

    item: ItemState
    """The item under debate."""
    started_at: float
    """perf_counter() when the debate opened, for the verdict's latency."""
    round: int
    """The round being spoken (1-based); `close_round` counts it up."""
    transcript: Annotated[list[dict[str, Any]], operator.add]
    """Every contribution so far (a `Turn` as JSON each), in speaking order."""
    exchanges: Annotated[list[dict[str, Any]], operator.add]
    """Every raw model exchange (an `Exchange` as JSON each)."""
    referee_scores: Annotated[list[RefereeScore], operator.add]
    """Each referee's final scores; the parallel final-score branches each append their own."""
    verdict: dict[str, Any]
    """The item's verdict (a `Verdict` as JSON)."""


class FinalScoreTask(TypedDict):
    """A `final_score` branch: one referee scoring the answers after the whole discussion."""

    item: ItemState
    seat: int
    transcript: list[dict[str, Any]]


def referee_model(roles: Sequence[RefereeRole], seat: int, models: Sequence[str]) -> str:
    """A role's own model if it names one; else one model for all, or one model per role in order."""
    role = roles[seat]
    if role.model:
        return role.model
    if len(models) == 1:
        return models[0]
    if len(models) == len(roles):
        return models[seat]
    raise ConfigError(
        f"--model: a debate takes one model for all referees or one per referee ({len(roles)}), got {len(models)}"
    )


async def open_debate(state: DebateState) -> dict[str, Any]:
    """Start at round 1."""
    return {"round": 1, "started_at": time.perf_counter()}


def make_referee_node(
    roles: Sequence[RefereeRole], seat: int, models: ModelSource
) -> Callable[[DebateState, Runtime[EvaluationContext]], Coroutine[Any, Any, dict[str, Any]]]:
    """The node of the referee in `seat`: it speaks once per round, having read everything said before."""
    role = roles[seat]

    async def referee_speaks(state: DebateState, runtime: Runtime[EvaluationContext]) -> dict[str, Any]:
        context = runtime.context
        item = state["item"]
        spec = referee_model(roles, seat, context.models)
        turn, exchange = await speak(
            models.chat_model(spec),
            model_spec=spec,
            role=role,
            question=prompt_text(item["prompt"]),
            answers=item["responses"],
            discussion=[Turn(**raw) for raw in state.get("transcript", [])],
            round_number=state["round"],
            rounds=context.rounds,
            max_tokens=context.turn_max_tokens,
            metadata={"item_id": item["id"], "role": role.name, "round": state["round"]},
            criteria=context.criteria,
        )
        return {"transcript": [turn.model_dump()], "exchanges": [exchange.model_dump()]}

    referee_speaks.__name__ = f"referee_{role.key}"
    return referee_speaks


async def close_round(state: DebateState) -> dict[str, Any]:
    """Count the round as spoken."""
    return {"round": state["round"] + 1}


NEXT_ROUND = "next_round"


def make_round_router(
    roles: Sequence[RefereeRole],
) -> Callable[[DebateState, Runtime[EvaluationContext]], Coroutine[Any, Any, Literal["next_round"] | list[Send]]]:
    """The router after each round.

    Another round (mapped to the first referee's node by the edge's path map, since role keys are data), or the
    final scores of every referee.
    """

    async def route_round(
        state: DebateState, runtime: Runtime[EvaluationContext]
    ) -> Literal["next_round"] | list[Send]:
        """Another round while rounds remain; otherwise every referee gives final scores in parallel."""
        if state["round"] <= runtime.context.rounds:
            return "next_round"
        transcript = state.get("transcript", [])
        return [
            Send("final_score", FinalScoreTask(item=state["item"], seat=seat, transcript=transcript))
            for seat in range(len(roles))
        ]

    return route_round


def make_final_score_node(
    roles: Sequence[RefereeRole], models: ModelSource
) -> Callable[[FinalScoreTask, Runtime[EvaluationContext]], Coroutine[Any, Any, dict[str, Any]]]:
    """The node in which one referee (the task's seat) scores the answers after the discussion."""

    async def final_score(task: FinalScoreTask, runtime: Runtime[EvaluationContext]) -> dict[str, Any]:
        context = runtime.context
        item = task["item"]
        role = roles[task["seat"]]
        spec = referee_model(roles, task["seat"], context.models)
        scores, exchange, by_criterion = await final_scores(
            models.chat_model(spec),
            model_spec=spec,
            role=role,
            question=prompt_text(item["prompt"]),
            answers=item["responses"],
            discussion=[Turn(**raw) for raw in task["transcript"]],
            json_mode=models.json_mode(spec),
            expected=models.expected_scores(spec),
            metadata={"item_id": item["id"], "role": role.name, "round": "final"},
            criteria=context.criteria,
        )
        entry: RefereeScore = {"seat": task["seat"], "role": role.key, "model": spec, "scores": scores}
        if by_criterion is not None:
            entry["criteria_scores"] = by_criterion
        return {"referee_scores": [entry], "exchanges": [exchange.model_dump()]}

    return final_score


async def aggregate_scores(state: DebateState) -> dict[str, Any]:
    """Mean score per answer over the referees whose scores parsed (the paper counted failures as 0)."""
    item = state["item"]
    entries = sorted(state.get("referee_scores", []), key=lambda entry: entry["seat"])
    complete_rows = [entry["scores"] for entry in entries if all(score is not None for score in entry["scores"])]
    scores: list[float | None] = mean_scores(complete_rows) if complete_rows else [None] * len(item["responses"])
    winner = winner_from_scores(scores)
    update = verdict_update(
        item, method="debate", models=[entry["model"] for entry in entries], scores=scores, winner=winner,
        raw_exchanges=state.get("exchanges", []), started_at=state.get("started_at"),
        parsed=len(complete_rows) == len(entries), scale=10,
        transcript=[Turn(**raw) for raw in state.get("transcript", [])],
        criteria_scores=mean_by_criterion([rows for entry in entries
                                           if (rows := entry.get("criteria_scores")) and None not in entry["scores"]]),
    )
    update["verdict"]["referee_scores"] = entries
    return update


def build_debate_graph(
    *, roles: Sequence[RefereeRole] = DEFAULT_ROLES, model_source: ModelSource | None = None
) -> StateGraph[Any, Any, Any, Any]:
    """The debate graph for these referees (in speaking order).

    Rounds come from the run context; `model_source` as for `build_judge_graph`.
    """
    models = resolve_model_source(model_source)
    if not roles:
        raise ValueError("a debate needs at least one referee role")
    keys = [role.key for role in roles]
    if len(set(keys)) != len(keys) or RESERVED_KEYS & set(keys):
        raise ValueError(f"referee role keys must be unique and not one of {sorted(RESERVED_KEYS)}: {keys}")
    builder = StateGraph(
        DebateState, context_schema=EvaluationContext, input_schema=EvaluationInput, output_schema=EvaluationOutput
    )
    builder.add_node("open_debate", open_debate)
    # LangGraph's add_node overloads cannot infer the input type of a node made by a factory (the state here,
    # a Send payload below); the graph's topology and behaviour tests check these two.
    for seat, role in enumerate(roles):
        builder.add_node(role.key, make_referee_node(roles, seat, models))  # type: ignore[arg-type]
    builder.add_node("close_round", close_round)
    builder.add_node(
        "final_score", make_final_score_node(roles, models), input_schema=FinalScoreTask  # type: ignore[arg-type]
    )
    builder.add_node("aggregate_scores", aggregate_scores)
    builder.add_edge(START, "open_debate")
    builder.add_edge("open_debate", keys[0])
    for current, following in itertools.pairwise(keys):
        builder.add_edge(current, following)
    builder.add_edge(keys[-1], "close_round")
    builder.add_conditional_edges(
        "close_round", make_round_router(roles), {NEXT_ROUND: keys[0], "final_score": "final_score"}
    )
    builder.add_edge("final_score", "aggregate_scores")
    builder.add_edge("aggregate_scores", END)
    return builder


# For langgraph.json: the panel of $FELLOWSHIP_CONFIG's `debate_roles`, else the default panel.
graph = build_debate_graph(roles=configured_panel()).compile(name="debate")
