"""The circuit breaker of a run: stop at once when calls keep failing the same way for a reason no retry fixes.

A wrong model name, a revoked key or a dead endpoint makes every call fail alike. Without a breaker a
run of 10,000 prompts would fail them one by one (and retry each); with it, the run stops after a few
failures in a row with the same `EndpointError` reason, keeps what it finished, and says why in one line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from tools.errors import EndpointError, RunStopped

DEFAULT_TRIP_AFTER = 3
JobT = TypeVar("JobT")


def endpoint_failure(error: BaseException) -> EndpointError | None:
    """The EndpointError behind an error, if any (graph runners may wrap the one a node raised)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, EndpointError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def endpoint_failure_key(error: BaseException) -> tuple[str, str] | None:
    """The (model spec, reason) of the EndpointError behind an error: what a worker process sends its driver."""
    failure = endpoint_failure(error)
    return (failure.model_spec, failure.reason) if failure is not None else None


class CircuitBreaker:
    """Counts failures in a row that share one EndpointError reason; trips after `trip_after` of them.

    Any success, or a failure of another kind (a 500 that outlived its retries, a bad reply), resets the
    count: the configuration works, and the prompt's own failure is recorded as usual.
    """

    def __init__(self, trip_after: int = DEFAULT_TRIP_AFTER) -> None:
        self.trip_after = max(1, trip_after)
        self._reason: str | None = None
        self._streak = 0
        self.tripped: EndpointError | None = None
        self.halted: str | None = None  # why the run was stopped for a reason of its own (`halt`)
        self._tasks: list[asyncio.Task[object]] = []

    @property
    def stopped(self) -> bool:
        """Whether the run must stop: the breaker tripped, or the run was halted."""
        return self.tripped is not None or self.halted is not None

    def halt(self, reason: str) -> None:
        """Stop the run for a reason other than failing calls (its Ray cluster was lost): cancel the work in flight."""
        if not self.stopped:
            self.halted = reason
            self._cancel_others()

    def record_success(self) -> None:
        """A call succeeded: the configuration works, so the count starts again."""
        self._reason, self._streak = None, 0

    def record_failure(self, error: BaseException) -> None:
        """Count a failure; trip when the same EndpointError reason comes `trip_after` times in a row."""
        failure = endpoint_failure(error)
        if failure is None:
            self.record_success()
            return
        reason = str(failure)
        self._streak = self._streak + 1 if reason == self._reason else 1
        self._reason = reason
        if self._streak >= self.trip_after and self.tripped is None:
            self.tripped = failure
            self._cancel_others()

    def record(self, endpoint_failure_key: tuple[str, str] | None) -> None:
        """Count one finished job from what its worker reported.

        An EndpointError's (spec, reason) counts towards tripping; None, a success or a failure of another kind,
        starts the count again.
        """
        if endpoint_failure_key is None:
            self.record_success()
        else:
            self.record_failure(EndpointError(*endpoint_failure_key))

    def guard(self, tasks: Iterable[asyncio.Task[object]]) -> None:
        """The tasks to cancel when the breaker trips (work in flight is resumed by the next run)."""
        self._tasks = list(tasks)

    def _cancel_others(self) -> None:
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current and not task.done():
                task.cancel()

    def stop_error(self, finished: int, unit: str) -> RunStopped:
        """The one line a stopped run ends with; `unit` is what the run counts (prompts, items)."""
        if self.halted is not None:
            return RunStopped(f"stopped: {self.halted}; {finished} finished {unit} are kept: "
                              "run the same command to resume")
        assert self.tripped is not None
        return RunStopped(
            f"stopped: {self.trip_after} {unit} in a row failed the same way ({self.tripped}); "
            f"{finished} finished {unit} are kept: fix the cause and run the same command to resume"
        )


async def run_pooled(
    jobs: Iterable[JobT], run: Callable[[JobT], Awaitable[None]], *, workers: int, breaker: CircuitBreaker
) -> None:
    """Run `run(job)` for every job on `workers` tasks that take jobs one by one; the breaker may cancel them.

    Only the jobs in flight exist as coroutines at any moment, so memory does not grow with the number of jobs.
    Any error but a cancellation propagates.
    """
    pending = iter(jobs)

    async def worker() -> None:
        for job in pending:  # one shared iterator: each job is taken once
            if breaker.stopped:
                return
            await run(job)

    tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, workers))]
    breaker.guard(tasks)
    try:
        results = await asyncio.gather(*tasks, return_exceptions=True)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        raise
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
