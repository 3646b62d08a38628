"""Python's cyclic garbage collector, tuned for the processes fellowship owns (the CLI, its Ray workers).

Profiled with `gc.callbacks` over a 400-prompt run at 20 ms per call (2,400 calls): with the interpreter's
defaults the collector took about a fifth of the run's CPU, most of it in full collections that walk every object
the imports made (LangChain's, LangGraph's and the openai client's classes, functions and schemas: 190,000
objects that live as long as the process). Importing them also triggered full collections of a heap that only
grows (0.1-0.2 s of a command's start-up). So:

- `during_start_up`: the first thing the CLI does, a high threshold while the command's modules load, so young
  objects are still collected but the growing heap is not walked again and again;
- `for_the_run`: once the run's modules are loaded, everything alive is frozen (moved where the collector no
  longer looks: modules and classes are never garbage) and the thresholds are set for the run: fewer, larger
  young collections, which find most short-lived objects already freed by reference counting.

Only for a process fellowship owns: `for_the_run` does nothing unless `during_start_up` ran in this process (or
`owned=True`, a Ray worker), so a notebook or a script importing fellowship keeps its own collector settings.
"""

from __future__ import annotations

import gc

# Generation thresholds (young, middle, old) while a command's modules load: about one young collection per
# 100,000 net allocations instead of 700.
START_UP_THRESHOLDS = (100_000, 50, 50)
# For the run: young collections every 10,000 net allocations (memory held by uncollected cycles stays in the
# low megabytes: peak RSS of that run unchanged, 194-195 MB).
RUN_THRESHOLDS = (10_000, 20, 20)

_owned = False
_frozen = False


def during_start_up() -> None:
    """Raise the thresholds while the command's modules load; marks the process as fellowship's."""
    global _owned
    _owned = True
    gc.set_threshold(*START_UP_THRESHOLDS)


def for_the_run(*, owned: bool = False) -> None:
    """Freeze what is alive now and set the run's thresholds, in a process fellowship owns (else nothing).

    Frozen once a process: a second run in the same process would also freeze the cycles the first left
    uncollected, and those would never be freed.
    """
    global _owned, _frozen
    _owned = _owned or owned
    if not _owned:
        return
    if not _frozen:
        gc.freeze()
        _frozen = True
    gc.set_threshold(*RUN_THRESHOLDS)
