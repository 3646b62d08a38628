"""How many jobs a run keeps under way for its call slots, and each worker's share of the slots.

Plain arithmetic, kept apart from `agents.calls` (which loads the openai and LangChain clients) so that the
command line and the Ray pool can size a run without loading them.
"""

from __future__ import annotations

# Jobs started per call slot: a job between two calls (parsing, checkpointing, waiting for a sibling branch)
# leaves its slot to another job's call, and at the end of a run the last jobs' chains overlap the others'
# instead of running alone. Three per slot keeps the slots busy in `make bench`; more would only hold more
# half-done jobs (each resumes from its checkpoint after a kill, so none is paid twice).
JOBS_PER_CALL_SLOT = 3


def jobs_in_flight(calls_in_flight: int) -> int:
    """How many jobs (prompts, items) a run keeps started for `calls_in_flight` call slots."""
    return JOBS_PER_CALL_SLOT * max(1, calls_in_flight)


def calls_per_worker(calls_in_flight: int, workers: int) -> int:
    """Each of `workers` processes' share of the run's call slots (at least one each)."""
    return max(1, calls_in_flight // max(1, workers))
