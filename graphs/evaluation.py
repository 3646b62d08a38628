"""Running an evaluation graph over many items, concurrently, with optional local traces."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from agents.models import ModelSource
from agents.records import Verdict
from agents.referees import DEFAULT_ROLES, RefereeRole
from graphs.breaker import DEFAULT_TRIP_AFTER, CircuitBreaker, run_guarded
from graphs.context import EvaluationContext
from graphs.debate import build_debate_graph
from graphs.judge import build_judge_graph
from graphs.jury import build_jury_graph
from tools.items import EvalItem
from tools.tracing import RunTreeRecorder, mask_secrets, trace_filename

Method = Literal["judge", "jury", "debate"]
METHODS: tuple[Method, ...] = ("judge", "jury", "debate")


def evaluation_graph(
    method: Method, *, roles: Sequence[RefereeRole] = DEFAULT_ROLES, model_source: ModelSource | None = None
) -> Any:
    """The compiled graph for an evaluation method (typed Any: LangGraph's invoke overloads lose the context type)."""
    if method == "judge":
        return build_judge_graph(model_source=model_source).compile(name="judge")
    if method == "jury":
        return build_jury_graph(model_source=model_source).compile(name="jury")
    return build_debate_graph(roles=roles, model_source=model_source).compile(name="debate")


def failed_verdict(item: EvalItem, method: Method, context: EvaluationContext, error: BaseException) -> dict[str, Any]:
    """The record of an item whose calls failed for good: kept, with the reason, never a made-up verdict."""
    reason = mask_secrets(f"{type(error).__name__}: {error}".splitlines()[0])[:500]
    return Verdict(
        id=item.id,
        method=method,
        strategy=context.strategy if method == "judge" else None,
        models=list(context.models),
        scores=[None] * len(item.responses),
        winner=None,
        parse_ok=False,
        error=reason,
    ).model_dump()


async def evaluate_item(
    graph: Any,
    item: EvalItem,
    *,
    method: Method,
    context: EvaluationContext,
    trace_dir: Path | None = None,
    breaker: CircuitBreaker | None = None,
) -> dict[str, Any]:
    """One item's verdict; a failure becomes a verdict with the reason (and is told to the breaker)."""
    recorder = RunTreeRecorder() if trace_dir is not None else None
    config: dict[str, Any] = {
        "run_name": f"{method}:{item.id}",
        # thread_id groups an item's runs as one conversation in LangSmith's thread view.
        "metadata": {"item_id": item.id, "method": method, "thread_id": f"{method}:{item.id}"},
        "tags": [method],
    }
    if recorder is not None:
        config["callbacks"] = [recorder]
    try:
        result = await graph.ainvoke({"item": item.model_dump()}, config=config, context=context)
        verdict: dict[str, Any] = result["verdict"]
        if breaker is not None:
            breaker.record_success()
    except Exception as error:  # one item's failure is recorded; the run goes on
        verdict = failed_verdict(item, method, context, error)
        if breaker is not None:
            breaker.record_failure(error)
    if recorder is not None and trace_dir is not None:
        recorder.write(trace_dir / trace_filename(item.key))
    return verdict


async def evaluate_items(
    items: Sequence[EvalItem],
    *,
    method: Method,
    context: EvaluationContext,
    concurrency: int = 4,
    roles: Sequence[RefereeRole] = DEFAULT_ROLES,
    model_source: ModelSource | None = None,
    trace_dir: Path | None = None,
    on_verdict: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate every item, at most `concurrency` at a time; verdicts come back in input order.

    `on_verdict` sees each verdict as it completes (for progress and incremental saving). When the first
    items all fail the same way for good (bad key, unknown model), the run stops with RunStopped; the
    verdicts already given to `on_verdict` are kept.
    """
    graph = evaluation_graph(method, roles=roles, model_source=model_source)
    gate = asyncio.Semaphore(max(1, concurrency))
    breaker = CircuitBreaker(min(DEFAULT_TRIP_AFTER, len(items)))
    verdicts: dict[int, dict[str, Any]] = {}

    async def run_one(position: int, item: EvalItem) -> None:
        async with gate:
            if breaker.tripped:
                return
            verdict = await evaluate_item(
                graph, item, method=method, context=context, trace_dir=trace_dir, breaker=breaker
            )
        verdicts[position] = verdict
        if on_verdict is not None and not breaker.tripped:
            on_verdict(verdict)

    await run_guarded([run_one(position, item) for position, item in enumerate(items)], breaker)
    if breaker.tripped:
        kept = sum(1 for verdict in verdicts.values() if not verdict.get("error"))
        raise breaker.stop_error(kept, "items")
    return [verdicts[position] for position in range(len(items))]
