"""LLM-as-a-Judge as a graph.

Direct and combined scoring run one `compare` node per answer order (one order, or both with `swap`);
independent scoring fans out one `score_alone` branch per candidate. `decide` turns what came back into
the item's verdict.

    START -> route_judge_tasks -> compare | score_alone (parallel) -> decide -> END

`judge_in_one_step` runs the same branches and decision as one node: the pipeline's `judge`. There a subgraph
for the one or two calls of a judgement cost a graph loop and three checkpoints per prompt, about a sixth of a
run's CPU (`make bench`); a prompt cut off inside it redoes its judge calls on resume.
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Coroutine, Mapping, Sequence
from typing import Annotated, Any, TypeVar

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send
from typing_extensions import TypedDict

from agents.judge import judge_combined, judge_direct, score_alone, score_alone_by_criteria
from agents.models import ModelSource
from agents.records import AnswerOrder
from graphs.binding import bind_models, resolve_model_source
from graphs.context import EvaluationContext
from graphs.state import EvaluationInput, EvaluationOutput, ItemState, JudgementEntry
from graphs.verdicts import verdict_update
from tools.inputs.items import prompt_text
from tools.rules.criteria import mean_by_criterion
from tools.rules.verdicts import merge_orders, winner_from_scores

ResultT = TypeVar("ResultT")


class JudgeState(TypedDict, total=False):
    """What the judge graph holds while it works on one item."""

    item: ItemState
    """The item under judgement."""
    judgements: Annotated[list[JudgementEntry], operator.add]
    """One entry per answer order or per candidate; parallel branches each append their own."""
    verdict: dict[str, Any]
    """The item's verdict (a `Verdict` as JSON)."""


class CompareTask(TypedDict):
    """A `compare` branch: the item, shown in forward or reversed order."""

    item: ItemState
    reversed: bool


class ScoreTask(TypedDict):
    """A `score_alone` branch: one candidate answer of the item, scored on its own."""

    item: ItemState
    index: int


def _trace_metadata(item: ItemState, **extra: Any) -> dict[str, Any]:
    return {"item_id": item["id"], **extra}


def judge_tasks(item: ItemState, context: EvaluationContext) -> list[Send]:
    """The judge calls an item needs: one per answer order (direct/combined) or per candidate (independent)."""
    if context.strategy == "independent":
        return [Send("score_alone", ScoreTask(item=item, index=index)) for index in range(len(item["responses"]))]
    orders = [False, True] if context.swap else [False]
    return [Send("compare", CompareTask(item=item, reversed=is_reversed)) for is_reversed in orders]


async def route_judge_tasks(state: JudgeState, runtime: Runtime[EvaluationContext]) -> list[Send]:
    """One branch per judge call (`judge_tasks`)."""
    return judge_tasks(state["item"], runtime.context)


async def compare(task: CompareTask, runtime: Runtime[EvaluationContext], models: ModelSource) -> dict[str, Any]:
    """Direct or combined judgement of all answers in one call, in the task's answer order."""
    context = runtime.context
    item = task["item"]
    spec = context.models[0]
    answers = list(reversed(item["responses"])) if task["reversed"] else list(item["responses"])
    order: AnswerOrder = "reversed" if task["reversed"] else "forward"
    common: dict[str, Any] = {
        "model_spec": spec,
        "question": prompt_text(item["prompt"]),
        "answers": answers,
        "json_mode": models.json_mode(spec),
        "metadata": _trace_metadata(item, order=order, strategy=context.strategy),
        "template": context.prompt_templates.get(f"judge_{context.strategy}"),
    }
    model = models.chat_model(spec)
    if context.strategy == "direct":
        judgement = await judge_direct(model, run_name=f"judge/direct/{order}", order=order, **common)
    else:
        judgement = await judge_combined(
            model, scale=context.scale, run_name=f"judge/combined/{order}", order=order,
            expected=models.expected_scores(spec), criteria=context.criteria, **common
        )
    entry: JudgementEntry = {
        "reversed": task["reversed"],
        "scores": judgement.scores,
        "winner": judgement.winner,
        "exchanges": [exchange.model_dump() for exchange in judgement.exchanges],
    }
    if judgement.criteria_scores is not None:
        entry["criteria_scores"] = judgement.criteria_scores
    return {"judgements": [entry]}


async def score_alone_node(
    task: ScoreTask, runtime: Runtime[EvaluationContext], models: ModelSource
) -> dict[str, Any]:
    """Independent scoring: one candidate answer, in its own conversation."""
    context = runtime.context
    item = task["item"]
    spec = context.models[0]
    call: dict[str, Any] = {
        "model_spec": spec, "question": prompt_text(item["prompt"]), "answer": item["responses"][task["index"]],
        "scale": context.scale, "json_mode": models.json_mode(spec), "expected": models.expected_scores(spec),
        "run_name": f"judge/independent/candidate-{task['index'] + 1}",
        "metadata": _trace_metadata(item, candidate=task["index"]),
        "template": context.prompt_templates.get("judge_independent"),
    }
    by_criterion: dict[str, float | None] | None = None
    if context.criteria:
        score, exchange, by_criterion = await score_alone_by_criteria(models.chat_model(spec),
                                                                      criteria=context.criteria, **call)
    else:
        score, exchange = await score_alone(models.chat_model(spec), **call)
    entry: JudgementEntry = {"index": task["index"], "score": score, "exchanges": [exchange.model_dump()]}
    if by_criterion is not None:
        entry["criteria_scores"] = [by_criterion]
    return {"judgements": [entry]}


async def decide(state: JudgeState, runtime: Runtime[EvaluationContext]) -> dict[str, Any]:
    """Turn the judge calls' results into the item's verdict (both orders reconciled with `swap`)."""
    context = runtime.context
    item = state["item"]
    judgements = state.get("judgements", [])
    order_winners: list[str | None] = []
    criteria_scores: list[dict[str, float | None]] = []
    if context.strategy == "independent":
        by_index = {entry["index"]: entry["score"] for entry in judgements}
        scores: list[float | None] = [by_index.get(index) for index in range(len(item["responses"]))]
        winner = winner_from_scores(scores)
        if context.criteria:
            scored = {entry["index"]: (entry.get("criteria_scores") or [{}])[0] for entry in judgements}
            criteria_scores = [scored.get(index, {}) for index in range(len(item["responses"]))]
    else:
        scores, winner, order_winners = merge_orders(
            [(entry["reversed"], entry["scores"], entry["winner"]) for entry in judgements]
        )
    return verdict_update(
        item, method="judge", models=[context.models[0]], scores=scores, winner=winner,
        raw_exchanges=[raw for entry in judgements for raw in entry["exchanges"]], started_at=None,
        strategy=context.strategy, scale=None if context.strategy == "direct" else context.scale,
        swapped=context.swap and context.strategy != "independent", order_winners=order_winners,
        criteria_scores=criteria_scores or criteria_in_original_order(judgements),
    )


def criteria_in_original_order(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, float | None]]:
    """Scores by criterion per answer in the item's own order, averaged over the answer orders judged.

    `entries` are judgements or ballots (`reversed`, `criteria_scores`); [] without criteria.
    """
    rows = [list(reversed(entry["criteria_scores"])) if entry.get("reversed") else list(entry["criteria_scores"])
            for entry in entries if entry.get("criteria_scores")]
    return mean_by_criterion(rows)


async def _all_or_none(calls: list[Coroutine[Any, Any, ResultT]]) -> list[ResultT]:
    """Every call's result, run concurrently.

    When one fails, the others are cancelled (as LangGraph cancels a failed step's other branches) and its error
    is raised as it is, not wrapped in a group: the run's error handling reads it.
    """
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


async def judge_in_one_step(
    state: EvaluationInput, runtime: Runtime[EvaluationContext], models: ModelSource
) -> dict[str, Any]:
    """The judge graph's work as one node: its calls (`judge_tasks`, concurrently), then `decide`."""
    branches = {"compare": compare, "score_alone": score_alone_node}
    calls = [branches[task.node](task.arg, runtime, models) for task in judge_tasks(state["item"], runtime.context)]
    # One call needs no task of its own (the default: combined scoring, one answer order).
    updates = [await calls[0]] if len(calls) == 1 else await _all_or_none(calls)
    judgements = [entry for update in updates for entry in update["judgements"]]
    return await decide({"item": state["item"], "judgements": judgements}, runtime)


def build_judge_graph(*, model_source: ModelSource | None = None) -> StateGraph[Any, Any, Any, Any]:
    """The uncompiled judge graph; the caller compiles it (with a checkpointer, if it wants one).

    `model_source` turns model specs into chat models; without one, the process's shared registry does.
    """
    models = resolve_model_source(model_source)
    builder = StateGraph(
        JudgeState, context_schema=EvaluationContext, input_schema=EvaluationInput, output_schema=EvaluationOutput
    )
    builder.add_node("compare", bind_models(compare, models), input_schema=CompareTask)
    builder.add_node("score_alone", bind_models(score_alone_node, models), input_schema=ScoreTask)
    builder.add_node("decide", decide)
    # The branches go out from START: a node of its own would cost a superstep (a checkpoint) per item.
    builder.add_conditional_edges(START, route_judge_tasks, ["compare", "score_alone"])
    builder.add_edge("compare", "decide")
    builder.add_edge("score_alone", "decide")
    builder.add_edge("decide", END)
    return builder


graph = build_judge_graph().compile(name="judge")
