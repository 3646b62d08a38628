"""LLMs-as-a-Jury as a graph: one juror per model spec, judging in parallel, then one aggregation.

Every juror uses combined scoring (the paper's choice); with `swap` each juror judges both orders
and its own two verdicts are reconciled before it votes.

    START -> route_jurors -> juror x (seats x orders), in parallel -> aggregate_votes -> END
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Annotated, Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send
from typing_extensions import TypedDict

from agents.judge import judge_combined
from agents.models import ModelSource
from agents.records import AnswerOrder
from graphs.binding import bind_models, resolve_model_source
from graphs.context import EvaluationContext
from graphs.judge import criteria_in_original_order
from graphs.state import Ballot, EvaluationInput, EvaluationOutput, ItemState
from graphs.verdicts import verdict_update
from tools.inputs.items import prompt_text
from tools.rules.criteria import mean_by_criterion
from tools.rules.verdicts import mean_scores, merge_orders, plurality_verdict, winner_from_scores


class JuryState(TypedDict, total=False):
    """What the jury graph holds while it works on one item."""

    item: ItemState
    """The item under judgement."""
    ballots: Annotated[list[Ballot], operator.add]
    """One ballot per seat and answer order; parallel jurors each append their own."""
    verdict: dict[str, Any]
    """The item's verdict (a `Verdict` as JSON)."""


class JurorTask(TypedDict):
    """A `juror` branch: one seat judging the item in one answer order."""

    item: ItemState
    seat: int
    model: str
    reversed: bool


async def route_jurors(state: JuryState, runtime: Runtime[EvaluationContext]) -> list[Send]:
    """One branch per seat and answer order. The same model spec may sit in two seats."""
    orders = [False, True] if runtime.context.swap else [False]
    return [
        Send("juror", JurorTask(item=state["item"], seat=seat, model=spec, reversed=is_reversed))
        for seat, spec in enumerate(runtime.context.models)
        for is_reversed in orders
    ]


async def juror(task: JurorTask, runtime: Runtime[EvaluationContext], models: ModelSource) -> dict[str, Any]:
    """One juror's combined scoring of the item, in the task's answer order."""
    context = runtime.context
    item = task["item"]
    answers = list(reversed(item["responses"])) if task["reversed"] else list(item["responses"])
    order: AnswerOrder = "reversed" if task["reversed"] else "forward"
    judgement = await judge_combined(
        models.chat_model(task["model"]),
        model_spec=task["model"],
        question=prompt_text(item["prompt"]),
        answers=answers,
        scale=context.scale,
        json_mode=models.json_mode(task["model"]),
        expected=models.expected_scores(task["model"]),
        role="juror",
        run_name=f"jury/seat-{task['seat'] + 1}/{order}",
        order=order,
        metadata={"item_id": item["id"], "seat": task["seat"], "order": order},
        template=context.prompt_templates.get("judge_combined"),
        criteria=context.criteria,
    )
    ballot: Ballot = {
        "seat": task["seat"],
        "model": task["model"],
        "reversed": task["reversed"],
        "scores": judgement.scores,
        "winner": judgement.winner,
        "exchanges": [exchange.model_dump() for exchange in judgement.exchanges],
    }
    if judgement.criteria_scores is not None:
        ballot["criteria_scores"] = judgement.criteria_scores
    return {"ballots": [ballot]}


async def aggregate_votes(state: JuryState, runtime: Runtime[EvaluationContext]) -> dict[str, Any]:
    """Each seat's vote from its own scores; then the plurality rule or the mean of scores."""
    context = runtime.context
    item = state["item"]
    ballots = sorted(state.get("ballots", []), key=lambda ballot: (ballot["seat"], ballot["reversed"]))
    seat_scores: list[list[float | None]] = []
    seat_votes: list[str | None] = []
    for seat in range(len(context.models)):
        mine = [ballot for ballot in ballots if ballot["seat"] == seat]
        scores, vote, _ = merge_orders([(ballot["reversed"], ballot["scores"], ballot["winner"]) for ballot in mine])
        seat_scores.append(scores)
        seat_votes.append(vote)
    jury_scores = mean_scores(seat_scores)
    by_plurality = context.jury_rule == "plurality"
    winner = plurality_verdict(seat_votes) if by_plurality else winner_from_scores(jury_scores)
    # With both orders judged, the jury's verdict on each order alone (original labels): position consistency.
    order_winners: list[str | None] = []
    if context.swap:
        for is_reversed in (False, True):
            shown = [ballot for ballot in ballots if ballot["reversed"] == is_reversed]
            merged = [merge_orders([(is_reversed, ballot["scores"], ballot["winner"])]) for ballot in shown]
            votes = [vote for _, vote, _ in merged]
            order_winners.append(
                plurality_verdict(votes) if by_plurality else winner_from_scores(mean_scores([s for s, _, _ in merged]))
            )
    return verdict_update(
        item, method="jury", models=context.models, scores=jury_scores, winner=winner,
        raw_exchanges=[raw for ballot in ballots for raw in ballot["exchanges"]], started_at=None,
        strategy=f"combined/{context.jury_rule}", scale=context.scale, swapped=context.swap,
        juror_votes=seat_votes, order_winners=order_winners,
        criteria_scores=criteria_of_seats(ballots, len(context.models)),
    )


def criteria_of_seats(ballots: Sequence[Ballot], seats: int) -> list[dict[str, float | None]]:
    """The jury's scores by criterion: each seat's (its answer orders averaged), then the mean over seats."""
    rows = [criteria_in_original_order([ballot for ballot in ballots if ballot["seat"] == seat])
            for seat in range(seats)]
    return mean_by_criterion([row for row in rows if row])


def build_jury_graph(*, model_source: ModelSource | None = None) -> StateGraph[Any, Any, Any, Any]:
    """The uncompiled jury graph; `model_source` as for `build_judge_graph`."""
    models = resolve_model_source(model_source)
    builder = StateGraph(
        JuryState, context_schema=EvaluationContext, input_schema=EvaluationInput, output_schema=EvaluationOutput
    )
    builder.add_node("juror", bind_models(juror, models), input_schema=JurorTask)
    builder.add_node("aggregate_votes", aggregate_votes)
    # The branches go out from START: a node of its own would cost a superstep (a checkpoint) per item.
    builder.add_conditional_edges(START, route_jurors, ["juror"])
    builder.add_edge("juror", "aggregate_votes")
    builder.add_edge("aggregate_votes", END)
    return builder


graph = build_jury_graph().compile(name="jury")
