"""Running the pipeline over many prompts: concurrent, checkpointed, resumable, never paying twice.

Progress lives in the output directory: `progress.sqlite` (one row per prompt: done with its record,
failed with its reason, or pending) and `checkpoints.sqlite` (LangGraph's checkpoints, one thread per
prompt id, written synchronously after every step). Killed at any moment and started again, a run
skips finished prompts without a single call and resumes unfinished ones from their last completed
step. Failed prompts are retried only with `retry_failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.models import ModelSource
from agents.prices import BUILT_IN_PRICES, PriceTable
from agents.records import Exchange, Usage
from agents.referees import DEFAULT_ROLES, RefereeRole
from graphs.breaker import DEFAULT_TRIP_AFTER, CircuitBreaker, run_pooled
from graphs.checkpoints import InlineSqliteSaver
from graphs.context import GenerationContext
from graphs.pipeline import build_pipeline_graph
from tools.inputs.items import Prompt
from tools.inputs.prompt_sets import as_messages, prompt_id_for
from tools.outputs.run_store import PromptSourceId, RunStore
from tools.outputs.tracing import RunTreeRecorder, trace_filename
from tools.rules.secrets import mask_secrets


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
        "models": {
            "generator": context.generator,
            "reviewers": list(context.reviewers),
            "evaluator": f"{context.evaluator}:{'+'.join(context.models)}",
        },
    }
    exchanges = record_exchanges(record)
    record["usage"] = {**Usage.total(exchanges).model_dump(), "cost_usd": prices.total_cost(exchanges)}
    return record


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
) -> GenerationResult:
    """Run every prompt that is not finished yet, at most `concurrency` at a time.

    The directory is bound to its settings and its prompt source: other settings are refused, and other
    prompts only with `extend`. A run whose first calls all fail the same way for good stops at once
    (RunStopped), keeping what it finished. With a `budget`, no prompt starts once the money spent in the
    directory plus a reserve for the prompts in flight would pass it (`budget_stopped` in the result).
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
        skipped_done = sum(1 for pid in prompt_ids if status[pid] == "done")
        skipped_failed = sum(1 for pid in prompt_ids if status[pid] == "failed") if not retry_failed else 0
        gate = asyncio.Semaphore(max(1, concurrency))
        outcomes: list[PromptOutcome] = []
        breaker = CircuitBreaker(min(DEFAULT_TRIP_AFTER, len(pending)))
        if budget is not None:
            budget.spent = store.spent_usd()

        saver = InlineSqliteSaver.open(output_dir / "checkpoints.sqlite")
        try:
            graph = build_pipeline_graph(roles=roles, model_source=model_source).compile(
                checkpointer=saver, name="pipeline"
            )
            # A run killed between committing a record and deleting its checkpoints left them behind.
            finished = set(store.prompt_ids()) - {pid for pid, _ in pending}
            for thread_id in saver.thread_ids() & finished:
                if store.status_of([thread_id]).get(thread_id) == "done":
                    await saver.adelete_thread(thread_id)

            async def run_one(prompt_id: str, prompt: Prompt) -> None:
                async with gate:
                    if breaker.tripped or (budget is not None and not budget.admit()):
                        return
                    try:
                        outcome = await _run_prompt(graph, store, prompt_id, prompt, context, breaker, trace_dir,
                                                    prices)
                    finally:
                        if budget is not None:
                            budget.release()
                if budget is not None:
                    budget.spent += outcome.cost_usd or 0.0
                outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)

            await run_pooled(pending, lambda job: run_one(*job), workers=concurrency, breaker=breaker)
            saver.compact()
        finally:
            saver.close()

        every_id = store.prompt_ids()
        if breaker.tripped:
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
        )
    finally:
        store.close()


async def _run_prompt(
    graph: Any,
    store: RunStore,
    prompt_id: str,
    prompt: Prompt,
    context: GenerationContext,
    breaker: CircuitBreaker,
    trace_dir: Path | None,
    prices: PriceTable = BUILT_IN_PRICES,
) -> PromptOutcome:
    config: dict[str, Any] = {
        "configurable": {"thread_id": prompt_id},
        "run_name": f"pipeline:{prompt_id}",
        "metadata": {"item_id": prompt_id, "method": "pipeline"},
        "tags": ["pipeline"],
    }
    recorder = RunTreeRecorder() if trace_dir is not None else None
    if recorder is not None:
        config["callbacks"] = [recorder]
    try:
        snapshot = await graph.aget_state(config)
        if snapshot.next:
            graph_input: Any = None  # resume from the last completed step
        elif snapshot.values.get("verdict") is not None:
            graph_input = "finished"  # killed after the graph ended but before the record was saved
        else:
            graph_input = {"prompt_id": prompt_id, "prompt": prompt}
        if graph_input == "finished":
            values = snapshot.values
        else:
            values = await graph.ainvoke(graph_input, config=config, context=context, durability="sync")
        record = make_record(prompt_id, prompt, values, context, prices)
        store.mark_done(prompt_id, record)
        # The record is committed: the prompt's checkpoints can never be needed again, and they are most of
        # the directory's size (every step of every prompt). A deletion that fails must not turn a finished
        # prompt into a failed one: the next run's start removes what is left.
        with contextlib.suppress(sqlite3.Error):
            await graph.checkpointer.adelete_thread(prompt_id)
        breaker.record_success()
        usage = record["usage"]
        return PromptOutcome(
            prompt_id, ok=True, calls_made=graph_input != "finished", input_tokens=usage["input_tokens"],
            output_tokens=usage["output_tokens"], cost_usd=usage["cost_usd"],
        )
    except Exception as error:  # the prompt is recorded as failed with its reason; the run goes on
        reason = mask_secrets(f"{type(error).__name__}: {error}".splitlines()[0])[:500]
        store.mark_failed(prompt_id, reason)
        breaker.record_failure(error)
        return PromptOutcome(prompt_id, ok=False, calls_made=True, error=reason)
    finally:
        if recorder is not None and trace_dir is not None and recorder.roots:
            recorder.write(trace_dir / trace_filename(prompt_id))
