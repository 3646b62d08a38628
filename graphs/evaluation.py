"""Running an evaluation graph over many items, concurrently, with optional local traces.

A run resumes from what an interrupted one wrote (`reusable_verdicts`, `evaluate_into_file`). An
ItemEvaluator runs items in this process; with `RayWorkers` each Ray worker holds one (`EvaluationJob`) and
the verdicts come back to this process, which alone keeps them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agents.call_budget import calls_per_worker, jobs_in_flight
from agents.calls import CallSlots, call_scope
from agents.models import ModelRegistry, ModelSettings, ModelSource
from agents.records import Verdict
from agents.roles import DEFAULT_ROLES, RefereeRole
from graphs.breaker import DEFAULT_TRIP_AFTER, CircuitBreaker, endpoint_failure_key, run_pooled
from graphs.context import EvaluationContext
from graphs.debate import build_debate_graph
from graphs.judge import build_judge_graph
from graphs.jury import build_jury_graph
from graphs.ray_pool import RayWorkerPool, RayWorkers, WorkerLost, rate_share_setter
from tools.inputs.items import EvalItem
from tools.outputs.jsonl import JsonlAppender, read_jsonl_tolerant, write_jsonl_atomic
from tools.outputs.tracing import RunTreeRecorder, trace_filename, write_trace
from tools.rules.secrets import failure_reason

Method = Literal["judge", "jury", "debate"]
METHODS: tuple[Method, ...] = ("judge", "jury", "debate")

logger = logging.getLogger(__name__)


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
    reason = failure_reason(error)
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


@dataclass
class ItemResult:
    """An item's verdict as it was made (here or in a Ray worker), with what the driver needs besides.

    `endpoint_failure` is the (model spec, reason) of an EndpointError, for the circuit breaker; `trace` the
    item's run tree when traces are on.
    """

    verdict: dict[str, Any]
    endpoint_failure: tuple[str, str] | None = None
    trace: dict[str, Any] | None = None


class ItemEvaluator:
    """Runs items through one compiled evaluation graph; a failure becomes a verdict with its reason.

    With `calls_in_flight`, the model calls of all the items it runs at once share that many call slots.
    """

    def __init__(self, graph: Any, *, method: Method, context: EvaluationContext, trace: bool,
                 calls_in_flight: int | None = None) -> None:
        self.graph = graph
        self.method = method
        self.context = context
        self.trace = trace
        self.call_slots = CallSlots(calls_in_flight) if calls_in_flight is not None else None

    async def run(self, key: str, item: EvalItem) -> ItemResult:
        """One item's verdict (`key` names it in traces and in a worker pool)."""
        recorder = RunTreeRecorder() if self.trace else None
        config: dict[str, Any] = {
            "run_name": f"{self.method}:{item.id}",
            # thread_id groups an item's runs as one conversation in LangSmith's thread view.
            "metadata": {"item_id": item.id, "method": self.method, "thread_id": f"{self.method}:{item.id}"},
            "tags": [self.method],
        }
        if recorder is not None:
            config["callbacks"] = [recorder]
        failure = None
        try:
            with call_scope(self.call_slots):
                state = await self.graph.ainvoke({"item": item.model_dump()}, config=config, context=self.context)
            verdict: dict[str, Any] = state["verdict"]
        except Exception as error:  # one item's failure is recorded; the run goes on
            verdict = failed_verdict(item, self.method, self.context, error)
            failure = endpoint_failure_key(error)
        return ItemResult(verdict, failure, recorder.document() if recorder is not None else None)

    async def forget(self, key: str) -> None:
        """Nothing is kept per item."""

    def close(self) -> None:
        """Nothing to close."""


@dataclass(frozen=True)
class EvaluationJob:
    """How a Ray worker builds its ItemEvaluator (picklable: configuration only, no clients)."""

    method: Method
    context: EvaluationContext
    roles: tuple[RefereeRole, ...]
    model_settings: ModelSettings
    trace: bool
    calls_in_flight: int

    def __call__(self, on_driver_machine: bool) -> ItemEvaluator:
        """The worker's evaluator, with a model registry of its own (the same wherever the worker runs)."""
        graph = evaluation_graph(self.method, roles=self.roles, model_source=ModelRegistry(self.model_settings))
        return ItemEvaluator(graph, method=self.method, context=self.context, trace=self.trace,
                             calls_in_flight=self.calls_in_flight)


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
    workers: RayWorkers | None = None,
    jobs_at_once: int | None = None,
) -> list[dict[str, Any]]:
    """Evaluate every item with at most `concurrency` model calls in flight; verdicts come back in input order.

    `jobs_in_flight(concurrency)` items are under way at once (`jobs_at_once` if given: a `--batch` run's),
    their calls sharing the call slots (each Ray worker an equal share), so a jury's seats or both orders of a
    swapped judge count call by call.

    `on_verdict` sees each verdict as it completes (for progress and incremental saving). When the first
    items all fail the same way for good (bad key, unknown model), the run stops with RunStopped; the
    verdicts already given to `on_verdict` are kept. With `workers`, the items also run on Ray worker processes
    (each loading its own models; `model_source` serves this process's share) and this process keeps the
    verdicts.
    """
    # run_pooled's tasks each take one item at a time: their number is how many items are under way.
    items_at_once = jobs_at_once or jobs_in_flight(concurrency)
    breaker = CircuitBreaker(min(DEFAULT_TRIP_AFTER, len(items)))
    verdicts: dict[int, dict[str, Any]] = {}
    pool: RayWorkerPool | None = None
    evaluator = ItemEvaluator(evaluation_graph(method, roles=roles, model_source=model_source), method=method,
                              context=context, trace=trace_dir is not None, calls_in_flight=concurrency)
    if workers is not None and items:
        actor_calls = calls_per_worker(concurrency, workers.count)
        job = EvaluationJob(method=method, context=context, roles=tuple(roles),
                            model_settings=workers.settings_of_a_worker(actor_calls, concurrency),
                            trace=trace_dir is not None, calls_in_flight=actor_calls)
        pool = RayWorkerPool(job, workers=workers.count, address=workers.address, local=evaluator,
                             actor_calls=actor_calls, jobs=len(items), start=workers.start, forgets=False,
                             on_pool_lost=breaker.halt, on_share=rate_share_setter(model_source),
                             stall_s=workers.stall_s, unit="items")
        pool.start()
        items_at_once = pool.max_jobs  # the pool admits each worker's share

    async def evaluate(item: EvalItem) -> ItemResult:
        if pool is None:
            return await evaluator.run(item.key, item)
        try:
            result: ItemResult = await pool.run(item.key, item)
        except WorkerLost as lost:
            return ItemResult(failed_verdict(item, method, context, lost))
        return result

    async def run_one(position: int, item: EvalItem) -> None:
        if breaker.stopped:
            return
        result = await evaluate(item)
        if trace_dir is not None and result.trace is not None:
            write_trace(trace_dir / trace_filename(item.key), result.trace)
        breaker.record(result.endpoint_failure)
        verdicts[position] = result.verdict
        if on_verdict is not None and not breaker.stopped:
            on_verdict(result.verdict)

    try:
        await run_pooled(enumerate(items), lambda job: run_one(*job), workers=items_at_once, breaker=breaker)
    finally:
        if pool is not None:
            pool.shutdown()
            logger.warning("%s", pool.where_jobs_ran())
    if breaker.stopped:
        kept = sum(1 for verdict in verdicts.values() if not verdict.get("error"))
        raise breaker.stop_error(kept, "items")
    return [verdicts[position] for position in range(len(items))]


def same_settings(record: dict[str, Any], *, method: Method, context: EvaluationContext, panel: list[str]) -> bool:
    """Whether a recorded verdict was made with these settings (and, for a debate, this panel)."""
    strategy = context.strategy
    expected: dict[str, Any] = {"method": method, "swapped": context.swap and strategy != "independent"}
    if method == "judge":
        expected |= {"strategy": strategy, "scale": None if strategy == "direct" else context.scale,
                     "models": [context.models[0]]}
    elif method == "jury":
        expected |= {"models": list(context.models)}
    if any(record.get(key) != value for key, value in expected.items()):
        return False
    # Scored by the same criteria, or like it without any.
    recorded = [list(entry) for entry in record.get("criteria_scores") or []]
    if any(names != [criterion.name for criterion in context.criteria] for names in recorded) or (
            bool(recorded) != bool(context.criteria)):
        return False
    if method == "debate":
        return [entry.get("role") for entry in record.get("referee_scores") or []] == panel
    return True


def partial_path_for(output_path: Path) -> Path:
    """Where verdicts are appended as they finish, until the final file is written."""
    return output_path.with_name(output_path.name + ".partial")


def reusable_verdicts(
    items: Sequence[EvalItem], output_path: Path, *, method: Method, context: EvaluationContext,
    roles: Sequence[RefereeRole], reuse_output: bool,
) -> dict[str, dict[str, Any]]:
    """Verdicts of these items already made with these settings and without error, by item key.

    From the partial file an interrupted run left, and with `reuse_output` from the output file itself (a cache).
    """
    earlier = read_jsonl_tolerant(output_path) if reuse_output else []
    wanted = {item.key for item in items}
    panel = [role.key for role in roles]
    return {
        str(record["id"]): record
        for record in earlier + read_jsonl_tolerant(partial_path_for(output_path))
        if str(record.get("id")) in wanted
        if same_settings(record, method=method, context=context, panel=panel) and not record.get("error")
    }


async def evaluate_into_file(
    items: Sequence[EvalItem],
    output_path: Path,
    *,
    method: Method,
    context: EvaluationContext,
    roles: Sequence[RefereeRole],
    model_source: ModelSource | None,
    concurrency: int,
    trace_dir: Path | None,
    done: dict[str, dict[str, Any]],
    reuse_output: bool,
    on_verdict: Callable[[dict[str, Any]], None] | None = None,
    workers: RayWorkers | None = None,
    jobs_at_once: int | None = None,
) -> list[dict[str, Any]]:
    """Evaluate the items not in `done` and write the output file (on Ray workers with `workers`).

    Each verdict is appended to the partial file as it finishes; the output file is then written in input
    order in one rename (keeping, with `reuse_output`, the verdicts of other items).
    """
    pending = [item for item in items if item.key not in done]
    appender = JsonlAppender(partial_path_for(output_path))

    def keep(verdict: dict[str, Any]) -> None:
        appender.append(verdict)
        if on_verdict is not None:
            on_verdict(verdict)

    try:
        fresh = await evaluate_items(pending, method=method, context=context, concurrency=concurrency, roles=roles,
                                     model_source=model_source, trace_dir=trace_dir, on_verdict=keep,
                                     workers=workers, jobs_at_once=jobs_at_once)
    finally:
        appender.close()
    by_key = {**done, **{str(verdict["id"]): verdict for verdict in fresh}}
    verdicts = [by_key[item.key] for item in items]
    wanted = {item.key for item in items}
    earlier = read_jsonl_tolerant(output_path) if reuse_output else []
    # The cache keeps verdicts of items outside this run (an earlier, larger --limit) as well.
    write_jsonl_atomic(output_path, [record for record in earlier if str(record.get("id")) not in wanted] + verdicts)
    partial_path_for(output_path).unlink(missing_ok=True)
    return verdicts
