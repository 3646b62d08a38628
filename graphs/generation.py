"""Running the pipeline over many prompts: concurrent, checkpointed, resumable, never paying twice.

Progress lives in the output directory: `progress.sqlite` (one row per prompt: done with its record,
failed with its reason, or pending) and `checkpoints.sqlite` (LangGraph's checkpoints, one thread per
prompt id, written after every step and committed with the event-loop round that wrote it). Killed at any
moment and started again, a run skips finished prompts without a single call and resumes unfinished ones
from their last committed step. Failed prompts are retried only with `retry_failed`.

A prompt runs in a PromptRunner, which returns its record without committing it; this process (the driver)
commits it to the run store and only then deletes the prompt's checkpoints. With `RayWorkers` the runners
live in Ray worker processes (`graphs/ray_pool.py`) and only the driver writes the run store, so what is
done has one source of truth however many workers (or machines) run the prompts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from langgraph.types import Command

from agents.call_budget import calls_per_worker, jobs_in_flight
from agents.calls import CallSlots, call_scope
from agents.models import ModelRegistry, ModelSettings, ModelSource
from agents.prices import BUILT_IN_PRICES, PriceTable
from agents.records import Exchange, Usage
from agents.roles import DEFAULT_ROLES, RefereeRole
from graphs.breaker import DEFAULT_TRIP_AFTER, CircuitBreaker, endpoint_failure_key, run_pooled
from graphs.checkpoints import InlineSqliteSaver, worker_file, worker_files
from graphs.context import GenerationContext
from graphs.pipeline import CHECKPOINT_VERSION, build_pipeline_graph
from graphs.ray_pool import RayWorkerPool, RayWorkers, WorkerLost, rate_share_setter
from tools.inputs.items import Prompt
from tools.inputs.prompt_sets import as_messages, prompt_id_for
from tools.outputs.review_store import REVIEW_FILE, ReviewStore
from tools.outputs.run_store import PromptSourceId, RunStore
from tools.outputs.tracing import (
    RunTreeRecorder,
    langsmith_tracing,
    send_human_feedback,
    trace_filename,
    write_trace,
)
from tools.rules.secrets import failure_reason


@dataclass
class PromptOutcome:
    """What happened to one prompt in this run: finished or failed, whether calls were made, and what they cost."""
    prompt_id: str
    ok: bool
    calls_made: bool
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    error: str | None = None
    waiting: bool = False  # paused for a person (`--review`): no record yet


@dataclass
class GenerationResult:
    """What a run did: `done` and `failures` cover every prompt of the directory, earlier runs' too."""

    prompt_ids: list[str]
    done: int
    failures: list[tuple[str, str]]
    skipped_done: int
    skipped_failed: int
    outcomes: list[PromptOutcome] = field(default_factory=list)
    prompt_sources: list[PromptSourceId] = field(default_factory=list)
    budget_stopped: bool = False
    spent_usd: float = 0.0
    workers_replaced: int = 0
    threads_dropped: int = 0
    # When a local Ray instance's workers joined, in seconds from the run's start (None: none joined).
    ray_joined_after_s: float | None = None
    # With Ray: a line saying how many prompts the Ray workers and this process each finished.
    where_prompts_ran: str | None = None
    # Review (`--review`): prompts of the directory that wait for a person's decision, and decisions applied now.
    waiting_for_review: int = 0
    decisions_applied: int = 0
    waiting_calls: int = 0  # the calls already made for the prompts that wait (kept: applying calls nothing)
    feedback_problem: str | None = None  # a line when decisions could not all be sent to LangSmith


@dataclass
class Budget:
    """A spending cap for a run.

    `admit` lets a prompt start only while the money spent plus a reserve for every prompt in flight (this one
    included) stays within `max_usd`; once it refuses, no later prompt starts.
    """

    max_usd: float
    reserve_per_prompt_usd: float
    spent: float = 0.0
    in_flight: int = 0
    stopped: bool = False

    def admit(self) -> bool:
        """Whether one more prompt may start now."""
        if self.stopped or self.spent + (self.in_flight + 1) * self.reserve_per_prompt_usd > self.max_usd:
            self.stopped = True
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        """A prompt admitted earlier has finished (or failed)."""
        self.in_flight -= 1


def record_exchanges(record: dict[str, Any]) -> list[Exchange]:
    """Every model exchange of a record: answers, reviews and the verdict's calls."""
    exchanges = [Exchange(**answer["exchange"]) for answer in record["answers"]]
    exchanges += [Exchange(**review["exchange"]) for answer in record["answers"] for review in answer["reviews"]]
    exchanges += [Exchange(**raw) for raw in (record.get("verdict") or {}).get("exchanges", [])]
    return exchanges


def make_record(
    prompt_id: str, prompt: Prompt, values: dict[str, Any], context: GenerationContext,
    prices: PriceTable = BUILT_IN_PRICES,
) -> dict[str, Any]:
    """The canonical record of one prompt: every answer with its reviews, the verdict, the models."""
    reviews = values.get("reviews", [])
    answers = []
    for answer in sorted(values.get("answers", []), key=lambda entry: entry["iteration"]):
        mine = sorted((r for r in reviews if r["iteration"] == answer["iteration"]), key=lambda r: r["seat"])
        answers.append({**answer, "model": context.generator, "reviews": mine})
    record = {
        "prompt_id": prompt_id,
        "prompt": as_messages(prompt),
        "answers": answers,
        "verdict": values.get("verdict"),
        **({"human": values["human"]} if values.get("human") is not None else {}),
        "models": {
            "generator": context.generator,
            "reviewers": list(context.reviewers),
            "evaluator": f"{context.evaluator}:{'+'.join(context.models)}",
        },
    }
    exchanges = record_exchanges(record)
    record["usage"] = {**Usage.total(exchanges).model_dump(), "cost_usd": prices.total_cost(exchanges)}
    return record


@dataclass
class PromptResult:
    """What running one prompt gave, wherever it ran (this process or a Ray worker): its record, or why it failed.

    It commits nothing: the run's driver records it in the run store, the single source of truth.
    """

    prompt_id: str
    record: dict[str, Any] | None
    calls_made: bool
    error: str | None = None
    endpoint_failure: tuple[str, str] | None = None  # (model spec, reason) of an EndpointError, for the breaker
    trace: dict[str, Any] | None = None
    # A prompt paused for a person (`human_review`): what it asks (a ReviewRequest as JSON); `record` is then the
    # record so far (answers, verdict), for the review page, not a finished one.
    waiting: dict[str, Any] | None = None
    root_run_id: str | None = None  # the pipeline invocation's root run (its id in traces and LangSmith)


class PromptRunner:
    """Runs prompts through one compiled pipeline graph, each resuming from its own checkpoint thread.

    With `calls_in_flight`, the model calls of all the prompts it runs at once share that many call slots.
    """

    def __init__(self, graph: Any, saver: InlineSqliteSaver, context: GenerationContext, prices: PriceTable,
                 *, trace: bool, calls_in_flight: int | None = None) -> None:
        self.graph = graph
        self.saver = saver
        self.context = context
        self.prices = prices
        self.trace = trace
        self.call_slots = CallSlots(calls_in_flight) if calls_in_flight is not None else None

    @classmethod
    def open(
        cls, checkpoint_path: Path, *, context: GenerationContext, roles: Sequence[RefereeRole],
        model_source: ModelSource | None, prices: PriceTable, trace: bool, calls_in_flight: int | None = None,
        meeting_point: Path | None = None,
    ) -> PromptRunner:
        """A runner whose checkpoints go to the SQLite file at `checkpoint_path`, which no other process writes.

        `meeting_point`: the run directory's checkpoint file, from which a prompt's thread moves here when this
        runner is given the prompt (a Ray worker on the driver's machine; see graphs.checkpoints).
        """
        saver = InlineSqliteSaver.open(checkpoint_path, group_commit=True, meeting_point=meeting_point)
        graph = build_pipeline_graph(roles=roles, model_source=model_source).compile(checkpointer=saver,
                                                                                     name="pipeline")
        return cls(graph, saver, context, prices, trace=trace, calls_in_flight=calls_in_flight)

    async def run(self, prompt_id: str, prompt: Prompt, *, decision: dict[str, Any] | None = None,
                  paused: dict[str, Any] | None = None) -> PromptResult:
        """Run one prompt to its record (resuming its checkpoint thread); a failure is returned, not raised.

        A prompt that pauses for a person comes back `waiting`. With `decision` (a HumanDecision as JSON), a paused
        prompt resumes with it (`Command(resume=...)`) and finishes without a model call; if its checkpoint
        thread is gone (a worker on another machine held it), the record it paused with (`paused`: `record` and
        `request`, as the review store keeps them) gets the decision instead.
        """
        root_run_id = uuid.uuid4()
        config: dict[str, Any] = {
            "run_id": root_run_id,
            "configurable": {"thread_id": prompt_id},
            "run_name": f"pipeline:{prompt_id}",
            "metadata": {"item_id": prompt_id, "method": "pipeline"},
            "tags": ["pipeline"],
        }
        recorder = RunTreeRecorder() if self.trace else None
        if recorder is not None:
            config["callbacks"] = [recorder]
        try:
            if decision is not None:
                record = await self._decided_record(prompt_id, prompt, config, decision, paused)
                result = PromptResult(prompt_id, record, calls_made=False)
            else:
                with call_scope(self.call_slots):
                    values, calls_made = await self._invoke(prompt_id, prompt, config)
                interrupts = values.get("__interrupt__") or []
                record = make_record(prompt_id, prompt, values, self.context, self.prices)
                result = PromptResult(prompt_id, record, calls_made,
                                      waiting=interrupts[0].value if interrupts else None)
        except Exception as error:  # the prompt fails with its reason; the run goes on
            result = PromptResult(prompt_id, None, calls_made=True, error=failure_reason(error),
                                  endpoint_failure=endpoint_failure_key(error))
        if recorder is not None and recorder.roots:
            result.trace = recorder.document()
        result.root_run_id = str(root_run_id)
        return result

    async def _invoke(self, prompt_id: str, prompt: Prompt, config: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The prompt's final graph state (resumed from its checkpoint thread), and whether calls were made."""
        snapshot = await self.graph.aget_state(config)
        if snapshot.next:
            return await self.graph.ainvoke(None, config=config, context=self.context, durability="sync"), True
        if snapshot.values.get("verdict") is not None:
            # Killed after the graph ended but before the record was committed: nothing to call again.
            return snapshot.values, False
        values = await self.graph.ainvoke({"prompt_id": prompt_id, "prompt": prompt}, config=config,
                                          context=self.context, durability="sync")
        return values, True

    async def _decided_record(self, prompt_id: str, prompt: Prompt, config: dict[str, Any],
                              decision: dict[str, Any], paused: dict[str, Any] | None) -> dict[str, Any]:
        """A paused prompt's finished record with a person's decision; no model call either way."""
        snapshot = await self.graph.aget_state(config)
        if "human_review" in snapshot.next:
            values = await self.graph.ainvoke(Command(resume=decision), config=config, context=self.context,
                                              durability="sync")
            return make_record(prompt_id, prompt, values, self.context, self.prices)
        if snapshot.values.get("human") is not None:  # resumed before a kill, not committed yet
            return make_record(prompt_id, prompt, snapshot.values, self.context, self.prices)
        if paused is None:
            raise RuntimeError("its paused state is gone and no record of it was kept")
        request = paused["request"]
        return {**paused["record"], "human": {**decision, "sample": request["sample"], "reasons": request["reasons"]}}

    async def forget(self, prompt_id: str) -> None:
        """Delete a committed prompt's checkpoints: they are never needed again, and they are most of the disk.

        A deletion that fails must not turn a finished prompt into a failed one: the next run's start removes
        what is left.
        """
        with contextlib.suppress(sqlite3.Error):
            await self.saver.adelete_thread(prompt_id)

    def close(self) -> None:
        """Close the checkpoint store."""
        self.saver.close()


@dataclass(frozen=True)
class PipelineJob:
    """How a Ray worker builds its PromptRunner (picklable: configuration only, no clients).

    On the driver's machine a worker keeps its checkpoints in a file of its own in the run directory and takes
    a prompt's thread over from the driver's file when given the prompt, so a prompt cut off by a kill resumes
    from its last step whichever worker takes it next; on another machine a worker keeps its file in a
    temporary folder (a prompt cut off there starts again).
    """

    context: GenerationContext
    roles: tuple[RefereeRole, ...]
    prices: PriceTable
    trace: bool
    model_settings: ModelSettings
    checkpoint_path: Path
    calls_in_flight: int

    def __call__(self, on_driver_machine: bool) -> PromptRunner:
        """The worker's runner, with a model registry of its own."""
        if on_driver_machine:
            path, meeting_point = worker_file(self.checkpoint_path, os.getpid()), self.checkpoint_path
        else:
            path = Path(tempfile.mkdtemp(prefix="fellowship-checkpoints-")) / "checkpoints.sqlite"
            meeting_point = None
        return PromptRunner.open(path, context=self.context, roles=self.roles,
                                 model_source=ModelRegistry(self.model_settings), prices=self.prices,
                                 trace=self.trace, calls_in_flight=self.calls_in_flight,
                                 meeting_point=meeting_point)


class PromptExecutor(Protocol):
    """Where prompts run: a PromptRunner in this process, or a pool of Ray workers each holding one."""

    async def run(self, prompt_id: str, prompt: Prompt) -> PromptResult:
        """Run one prompt."""
        ...

    async def forget(self, prompt_id: str) -> None:
        """Drop a committed prompt's checkpoints."""
        ...


class RayPromptExecutor:
    """Runs prompts on a RayWorkerPool; a prompt whose worker keeps dying fails instead of hanging the run."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def run(self, prompt_id: str, prompt: Prompt) -> PromptResult:
        """Run one prompt on the worker with the most room (again on another one if that worker dies)."""
        try:
            result: PromptResult = await self.pool.run(prompt_id, prompt)
        except WorkerLost as lost:
            return PromptResult(prompt_id, None, calls_made=True, error=str(lost))
        return result

    async def forget(self, prompt_id: str) -> None:
        """Drop a committed prompt's checkpoints, on the worker that ran it."""
        await self.pool.forget(prompt_id)


async def run_generation(
    prompts: Sequence[Prompt],
    *,
    context: GenerationContext,
    output_dir: Path,
    settings: dict[str, Any],
    prompt_source: PromptSourceId | None = None,
    extend: bool = False,
    concurrency: int = 8,
    retry_failed: bool = False,
    trace_dir: Path | None = None,
    model_source: ModelSource | None = None,
    roles: Sequence[RefereeRole] = DEFAULT_ROLES,
    prices: PriceTable = BUILT_IN_PRICES,
    budget: Budget | None = None,
    on_outcome: Callable[[PromptOutcome], None] | None = None,
    workers: RayWorkers | None = None,
    jobs_at_once: int | None = None,
) -> GenerationResult:
    """Run every prompt that is not finished yet, with at most `concurrency` model calls in flight.

    `jobs_in_flight(concurrency)` prompts are under way at once (`jobs_at_once` if given: a `--batch` run's),
    their calls sharing the `concurrency` call slots (each Ray worker an equal share), so a prompt's parallel
    branches count call by call.

    The directory is bound to its settings and its prompt source: other settings are refused, and other
    prompts only with `extend`. A run whose first calls all fail the same way for good stops at once
    (RunStopped), keeping what it finished. With a `budget`, no prompt starts once the money spent in the
    directory plus a reserve for the prompts in flight would pass it (`budget_stopped` in the result).

    With `workers`, the prompts also run on Ray worker processes (each loads its own models from
    `workers.model_settings`; `model_source` serves this process's share, see `RayWorkerPool`). This process
    stays the driver: it alone writes the run store, so `concurrency`, the budget and the breaker hold across
    all workers.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    store = RunStore(output_dir / "progress.sqlite")
    try:
        store.bind_settings(settings)
        if prompt_source is not None:
            store.bind_prompt_source(prompt_source, extend=extend)
        prompt_ids = [prompt_id_for(prompt) for prompt in prompts]
        store.add_prompts(list(zip(prompt_ids, prompts, strict=True)))
        status = store.status_of(prompt_ids)
        wanted = {"pending", "failed"} if retry_failed else {"pending"}
        pending = [(pid, prompt) for pid, prompt in zip(prompt_ids, prompts, strict=True) if status[pid] in wanted]
        review = open_review_store(output_dir, context)
        paused = {entry.prompt_id: entry for entry in review.prompts()} if review is not None else {}
        if review is not None:
            # Killed between committing a decided prompt and marking its decision applied.
            review.mark_applied([pid for pid in paused if store.status_of([pid]).get(pid) == "done"])
            paused = {entry.prompt_id: entry for entry in review.prompts()}
        # A paused prompt runs again only with a decision, and then in this process, without a model call.
        decided = [(pid, prompt) for pid, prompt in pending if pid in paused and paused[pid].decision is not None]
        pending = [(pid, prompt) for pid, prompt in pending if pid not in paused]
        skipped_done = sum(1 for pid in prompt_ids if status[pid] == "done")
        skipped_failed = sum(1 for pid in prompt_ids if status[pid] == "failed") if not retry_failed else 0
        # run_pooled's tasks each take one prompt at a time: their number is how many prompts are under way.
        prompts_at_once = jobs_at_once or jobs_in_flight(concurrency)
        outcomes: list[PromptOutcome] = []
        applied: list[str] = []
        feedback_problem: str | None = None
        breaker = CircuitBreaker(min(DEFAULT_TRIP_AFTER, len(pending)))
        if budget is not None:
            # Prompts waiting for review were paid for too, though their records are not done yet.
            budget.spent = store.spent_usd() + (review.waiting_usage()["cost_usd"] if review is not None else 0.0)

        checkpoint_path = output_dir / "checkpoints.sqlite"
        local = PromptRunner.open(checkpoint_path, context=context, roles=roles, model_source=model_source,
                                  prices=prices, trace=trace_dir is not None, calls_in_flight=concurrency)
        # A killed run's Ray workers left files of their own: their prompts resume from here, as the driver's do.
        local.saver.take_over(worker_files(checkpoint_path))
        # Before any worker opens the file: checkpoints of another pipeline shape cannot be resumed.
        threads_dropped = local.saver.bind_graph_version(CHECKPOINT_VERSION)

        def take_over_ended_workers() -> None:
            # A dead worker's prompts are run again elsewhere: from their last step, if its file comes back first.
            with contextlib.suppress(sqlite3.Error):
                local.saver.take_over(worker_files(checkpoint_path, ended_only=True))

        pool: Any = None
        workers_replaced = 0
        ray_joined_after_s: float | None = None
        where_prompts_ran: str | None = None
        finished_run = False
        try:
            # A run killed between committing a record and deleting its checkpoints left them behind.
            finished = set(store.prompt_ids()) - {pid for pid, _ in pending}
            for thread_id in local.saver.thread_ids() & finished:
                if store.status_of([thread_id]).get(thread_id) == "done":
                    await local.forget(thread_id)
            executor: PromptExecutor = local
            if workers is not None and pending:
                actor_calls = calls_per_worker(concurrency, workers.count)
                job = PipelineJob(context=context, roles=tuple(roles), prices=prices, trace=trace_dir is not None,
                                  model_settings=workers.settings_of_a_worker(actor_calls, concurrency),
                                  checkpoint_path=checkpoint_path.resolve(), calls_in_flight=actor_calls)
                pool = RayWorkerPool(job, workers=workers.count, address=workers.address, local=local,
                                     actor_calls=actor_calls, jobs=len(pending), start=workers.start,
                                     on_worker_lost=take_over_ended_workers, on_pool_lost=breaker.halt,
                                     on_share=rate_share_setter(model_source), stall_s=workers.stall_s,
                                     unit="prompts")
                pool.start()
                prompts_at_once = pool.max_jobs  # the pool admits each worker's share
                executor = RayPromptExecutor(pool)

            async def run_one(prompt_id: str, prompt: Prompt) -> None:
                if breaker.stopped or (budget is not None and not budget.admit()):
                    return
                try:
                    result = await executor.run(prompt_id, prompt)
                finally:
                    if budget is not None:
                        budget.release()
                outcome = await _commit(result, store, executor, breaker, trace_dir, review)
                if budget is not None:
                    budget.spent += outcome.cost_usd or 0.0
                outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)

            feedback: list[tuple[str, dict[str, Any]]] = []
            for prompt_id, prompt in decided:
                entry = paused[prompt_id]
                result = await local.run(prompt_id, prompt, decision=entry.decision,
                                         paused={"request": entry.request, "record": entry.record})
                outcome = await _commit(result, store, local, breaker, trace_dir, review)
                if outcome.ok:
                    applied.append(prompt_id)
                    if entry.run_id and result.record is not None:
                        feedback.append((entry.run_id, result.record["human"]))
                outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
            if feedback and langsmith_tracing():
                feedback_problem = await asyncio.to_thread(send_human_feedback, feedback)
            await run_pooled(pending, lambda job: run_one(*job), workers=prompts_at_once, breaker=breaker)
            finished_run = True
        finally:
            if pool is not None:
                workers_replaced = pool.replaced
                ray_joined_after_s = pool.joined_after_s
                where_prompts_ran = pool.where_jobs_ran()
                # A local instance stops in the background while the caller exports (see `finish_leaving`).
                pool.shutdown(wait=False)
                # The workers have closed their files: what they hold (prompts not finished) moves here.
                with contextlib.suppress(sqlite3.Error):
                    local.saver.take_over(worker_files(checkpoint_path))
            if finished_run:
                # Nothing is in flight any more (the workers are gone): give the deleted threads' space back.
                local.saver.compact()
            local.close()

        every_id = store.prompt_ids()
        if breaker.stopped:
            raise breaker.stop_error(store.count("done"), "prompts")
        return GenerationResult(
            prompt_ids=prompt_ids,
            done=store.count("done"),
            failures=store.failures(every_id),
            skipped_done=skipped_done,
            skipped_failed=skipped_failed,
            outcomes=outcomes,
            prompt_sources=store.prompt_sources(),
            budget_stopped=budget is not None and budget.stopped,
            spent_usd=budget.spent if budget is not None else 0.0,
            workers_replaced=workers_replaced,
            ray_joined_after_s=ray_joined_after_s,
            where_prompts_ran=where_prompts_ran,
            threads_dropped=threads_dropped,
            waiting_for_review=review.counts()["undecided"] if review is not None else 0,
            waiting_calls=review.waiting_usage()["calls"] if review is not None else 0,
            feedback_problem=feedback_problem,
            decisions_applied=len(applied),
        )
    finally:
        store.close()
        if review is not None:
            review.close()


def open_review_store(output_dir: Path, context: GenerationContext) -> ReviewStore | None:
    """The run directory's review store, when prompts may pause (`review`, `audit_share`) or once paused."""
    if context.review == "none" and not context.audit_share and not (output_dir / REVIEW_FILE).is_file():
        return None
    return ReviewStore.of(output_dir)


async def _commit(
    result: PromptResult, store: RunStore, executor: PromptExecutor, breaker: CircuitBreaker, trace_dir: Path | None,
    review: ReviewStore | None = None,
) -> PromptOutcome:
    """Record a prompt's result in the run store (and its trace), then drop its checkpoints; tell the breaker.

    A prompt paused for a person goes to the review store instead and keeps its checkpoints (its resume point).
    """
    if trace_dir is not None and result.trace is not None:
        write_trace(trace_dir / trace_filename(result.prompt_id), result.trace)
    if result.waiting is not None and result.record is not None:
        if review is None:  # only a context with review on pauses, and then the store is open
            raise RuntimeError("a prompt paused for review without a review store")
        review.add_waiting(result.prompt_id, store.position(result.prompt_id), result.waiting, result.record,
                           result.root_run_id)
        breaker.record(None)
        usage = result.record["usage"]
        return PromptOutcome(result.prompt_id, ok=True, calls_made=result.calls_made, waiting=True,
                             input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"],
                             cost_usd=usage["cost_usd"])
    if result.record is None:
        store.mark_failed(result.prompt_id, result.error or "failed")
        breaker.record(result.endpoint_failure)
        return PromptOutcome(result.prompt_id, ok=False, calls_made=True, error=result.error)
    store.mark_done(result.prompt_id, result.record)
    if review is not None and "human" in result.record:
        review.mark_applied([result.prompt_id])
    await executor.forget(result.prompt_id)
    breaker.record(None)
    usage = result.record["usage"]
    return PromptOutcome(
        result.prompt_id, ok=True, calls_made=result.calls_made, input_tokens=usage["input_tokens"],
        output_tokens=usage["output_tokens"], cost_usd=usage["cost_usd"],
    )
