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


# With `--batch`, every prompt (item) under way waits on a batch at each step, and a step of all of them is one
# batch round trip: as many under way as a batch holds requests, each prompt's calls of a step being one to a few.
# Memory grows with it: about 70 KB a prompt under way (a `generate --batch` on the stub peaked at 289 MB with 200
# prompts and 415 MB with 2,000), so 50,000 would take some 3.5 GB; the default of 10,000 about 0.7 GB.
BATCH_JOBS_DEFAULT = 10_000
# By batch, a call waits for its batch rather than for a call slot: the slots only bound the calls a job has out at
# once (a jury with --swap: six), so none of them waits a round trip behind another job's.
BATCH_CALLS_PER_JOB = 8


def batch_jobs_in_flight(batch_size: int | None) -> int:
    """How many jobs a `--batch` run keeps under way: `--batch-size` of them, 10,000 without one."""
    return batch_size or BATCH_JOBS_DEFAULT
