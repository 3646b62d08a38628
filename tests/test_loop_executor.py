"""The jobs' default executor: langchain-openai's short result step stays on the loop, everything else on threads."""

from __future__ import annotations

import asyncio
import threading

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.runnables.config import run_in_executor

from agents.loop_executor import StepsOnLoopExecutor, run_with_steps_on_loop, submitted_step
from agents.models import ModelRegistry, ModelSettings
from tools.dev.stub_server import StubServer


class BaseChatOpenAI:
    """Stands in for langchain-openai's class by qualified name, to make its result step fail on purpose."""

    def _create_chat_result(self, reply: str) -> tuple[str, int]:
        if reply == "broken":
            raise ValueError("cannot read the reply")
        return reply, threading.get_ident()


def test_chat_openai_results_are_built_on_the_loop_thread(stub: StubServer) -> None:
    """A real ChatOpenAI call against the stub: its result step is recognised and not sent to a thread."""

    async def two_calls() -> list[str]:
        registry = ModelRegistry(ModelSettings(max_retries=0))
        model = registry.chat_model(f"compat:stub@{stub.base_url}")
        replies = [await model.ainvoke([HumanMessage(content=f"Question {index}?")]) for index in range(2)]
        await registry.aclose()
        return [str(reply.content) for reply in replies]

    before = StepsOnLoopExecutor.inline_runs
    replies = run_with_steps_on_loop(two_calls())
    assert len(replies) == 2 and all(replies)
    assert StepsOnLoopExecutor.inline_runs - before == 2  # fails if LangChain stops wrapping the step this way


def test_other_work_still_goes_to_threads_and_a_failing_step_raises_in_its_caller() -> None:
    async def run() -> tuple[int, int, int, str]:
        loop_thread = threading.get_ident()
        blocking = await asyncio.get_running_loop().run_in_executor(None, threading.get_ident)
        other = await run_in_executor(None, threading.get_ident)  # LangChain's wrapper, a step not listed
        reply, step_thread = await run_in_executor(None, BaseChatOpenAI()._create_chat_result, "fine")
        with pytest.raises(ValueError, match="cannot read the reply"):
            await run_in_executor(None, BaseChatOpenAI()._create_chat_result, "broken")
        assert step_thread == loop_thread
        return loop_thread, blocking, other, reply

    loop_thread, blocking, other, reply = run_with_steps_on_loop(run())
    assert reply == "fine"
    assert blocking != loop_thread and other != loop_thread


def test_only_langchain_wrappers_are_recognised() -> None:
    assert submitted_step(print) is None
    assert submitted_step(threading.get_ident) is None
