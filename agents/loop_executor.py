"""The default executor of the event loops that run jobs: short CPU-only steps stay on the loop's thread.

After every chat completion, langchain-openai turns the parsed response into LangChain messages through
`run_in_executor` (`BaseChatOpenAI._create_chat_result`, tens of microseconds of pure Python). Handing that
to a thread and back costs far more than the step itself in a busy process: the worker thread has to win the
GIL from the loop, and the result comes back through the loop's self-pipe. Measured with `make bench`'s
20 ms load (1,000 prompts, 64 calls in flight), it was about 1 ms of CPU per call, a sixth of the process's.

`StepsOnLoopExecutor` runs the steps it knows to be short and CPU-only (`INLINE_STEPS`) on the calling
thread and hands everything else (DNS lookups, `asyncio.to_thread`, a sync-only model's whole call) to
threads as usual. It recognises a step through LangChain's `run_in_executor` wrapper; should a LangChain
release wrap its calls differently, the step simply goes back to a thread (`tests/test_loop_executor.py`
checks that the ChatOpenAI step is still recognised).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

ResultT = TypeVar("ResultT")

# Qualified names of functions that are short and never block: run where they are submitted.
INLINE_STEPS = frozenset({"BaseChatOpenAI._create_chat_result"})


def submitted_step(fn: Callable[..., Any]) -> str | None:
    """The qualified name of the function that LangChain's `run_in_executor` submitted as `fn`, else None.

    LangChain submits `partial(context.run, wrapper)`, where `wrapper` is a closure over `func`.
    """
    if not isinstance(fn, functools.partial) or not fn.args:
        return None
    wrapper = fn.args[0]
    code = getattr(wrapper, "__code__", None)
    closure = getattr(wrapper, "__closure__", None)
    if code is None or closure is None or "func" not in code.co_freevars:
        return None
    try:
        func = closure[code.co_freevars.index("func")].cell_contents
    except ValueError:  # an empty cell
        return None
    return getattr(getattr(func, "__func__", func), "__qualname__", None)


class StepsOnLoopExecutor(concurrent.futures.ThreadPoolExecutor):
    """A thread pool that runs the short CPU-only steps of `INLINE_STEPS` on the submitting thread instead."""

    inline_runs = 0
    """How many steps ran on the submitting thread (over every instance): tests read it."""

    def submit(self, fn: Callable[..., ResultT], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[ResultT]:
        """Run `fn` now if it is a known short step, else on a pool thread."""
        if submitted_step(fn) not in INLINE_STEPS:
            return super().submit(fn, *args, **kwargs)
        done: concurrent.futures.Future[ResultT] = concurrent.futures.Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as error:  # the awaiting caller gets it, as it would from a thread
            done.set_exception(error)
        StepsOnLoopExecutor.inline_runs += 1
        return done


def use_steps_on_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Make `StepsOnLoopExecutor` the loop's default executor (before anything has used the default one)."""
    loop.set_default_executor(StepsOnLoopExecutor(thread_name_prefix="fellowship-executor"))


def run_with_steps_on_loop(work: Coroutine[Any, Any, ResultT]) -> ResultT:
    """`asyncio.run(work)` on a new loop whose default executor is `StepsOnLoopExecutor`."""
    with asyncio.Runner() as runner:
        use_steps_on_loop(runner.get_loop())
        return runner.run(work)
