"""`--concurrency` as call slots: at most that many model calls in flight, whatever runs in parallel branches."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.runnables import RunnableLambda
from typer.testing import CliRunner

from agents.calls import CallSlots, call_is_observed, call_scope, complete
from agents.models import ModelRegistry, ModelSettings
from graphs.context import GenerationContext
from graphs.feedback_loop import build_feedback_loop_graph
from tests.fakes import ScriptedChatModel
from tools.cli import app
from tools.dev.stub_server import StubServer, StubSettings
from tools.errors import EndpointError

runner = CliRunner()


async def test_slots_go_to_the_job_with_the_fewest_calls_made_then_in_arrival_order() -> None:
    slots = CallSlots(1)
    await slots.acquire(0)  # the one slot is taken: everyone else waits
    granted: list[str] = []

    async def wait(name: str, calls_made: int) -> None:
        await slots.acquire(calls_made)
        granted.append(name)

    waiters = [asyncio.ensure_future(wait(name, made)) for name, made in
               (("late job", 4), ("new job", 0), ("middle job", 2), ("second new job", 0))]
    await asyncio.sleep(0)
    for _ in waiters:
        slots.release()
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)
    assert granted == ["new job", "second new job", "middle job", "late job"]
    slots.release()
    assert slots.in_use == 0


async def test_a_raised_limit_hands_its_new_slots_to_waiting_calls_at_once() -> None:
    # The Ray instance died: this process takes its workers' slots back while its own calls queue for slots.
    slots = CallSlots(2)
    for _ in range(2):
        await slots.acquire(0)
    waiters = [asyncio.ensure_future(slots.acquire(0)) for _ in range(3)]
    await asyncio.sleep(0)
    slots.resize(4)
    await asyncio.sleep(0)
    assert slots.in_use == 4 and sum(waiter.done() for waiter in waiters) == 2
    slots.release()  # a slot handed on, not retired: the third waiter gets it
    await asyncio.sleep(0)
    assert all(waiter.done() for waiter in waiters) and slots.in_use == 4


async def test_a_lowered_limit_retires_slots_as_their_calls_end() -> None:
    slots = CallSlots(3)
    for _ in range(3):
        await slots.acquire(0)
    waiter = asyncio.ensure_future(slots.acquire(0))
    slots.limit = 1  # a Ray worker joined and took two of this process's slots
    slots.release()
    slots.release()
    await asyncio.sleep(0)
    assert slots.in_use == 1 and not waiter.done()  # two slots retired, none handed on
    slots.release()
    await asyncio.wait_for(waiter, 1)
    assert slots.in_use == 1


async def test_a_lowered_limit_says_when_the_calls_out_are_down_to_it() -> None:
    """The Ray pool gives its actors jobs only then: the run never has more calls out than its limit."""
    slots = CallSlots(4)
    for _ in range(4):
        await slots.acquire(0)
    told: list[int] = []
    slots.on_within_limit = lambda: told.append(slots.in_use)
    slots.resize(2)  # a Ray worker joined and took two of this process's slots
    assert not slots.within_limit()
    slots.release()
    assert not slots.within_limit() and not told
    slots.release()
    assert slots.within_limit() and told == [2]
    slots.release()  # below the limit now: nothing more to say
    assert told == [2]


async def test_a_cancelled_waiter_gives_up_its_place_and_no_slot_is_lost() -> None:
    slots = CallSlots(1)
    await slots.acquire(0)
    cancelled = asyncio.ensure_future(slots.acquire(0))
    patient = asyncio.ensure_future(slots.acquire(1))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    slots.release()  # passes over the cancelled waiter to the patient one
    await asyncio.wait_for(patient, 1)
    assert slots.in_use == 1
    slots.release()
    assert slots.in_use == 0


async def test_calls_in_a_scope_never_exceed_the_slots_and_count_per_job() -> None:
    in_flight = peak = 0

    async def slow_reply(_: object) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return "ok"

    class SlowModel(ScriptedChatModel):
        async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
            await slow_reply(messages)
            return self._generate(messages, stop=stop, **kwargs)

    model = SlowModel(["ok"] * 40)
    slots = CallSlots(3)

    async def job() -> None:
        with call_scope(slots):
            # A job's parallel branches: four calls at once, all counted against the same three slots.
            await asyncio.gather(*(complete(model, [], run_name="judge/direct/forward", model_spec="m")
                                   for _ in range(4)))

    await asyncio.gather(*(job() for _ in range(5)))
    assert peak == 3 and slots.in_use == 0
    # Outside a scope nothing is limited.
    await asyncio.gather(*(complete(model, [], run_name="judge/direct/forward", model_spec="m") for _ in range(6)))
    assert peak == 6


async def test_a_call_that_failed_for_good_keeps_its_slot_until_its_job_ends() -> None:
    # Until the job ends, the run's circuit breaker has not counted the failure: the slot must not let another
    # call go to the same broken endpoint meanwhile.
    server = StubServer(StubSettings(fixed_status=401)).start_in_thread()
    registry = ModelRegistry(ModelSettings(max_retries=0))
    try:
        spec = f"compat:stub@{server.base_url}"
        slots = CallSlots(1)
        with call_scope(slots):
            with pytest.raises(EndpointError):
                await complete(registry.chat_model(spec), [HumanMessage("Hi?")], run_name="generator/iteration-1",
                               model_spec=spec)
            assert slots.in_use == 1
        assert slots.in_use == 0
    finally:
        await registry.aclose()
        server.stop()


@pytest.mark.parametrize("concurrency", [1, 3])
def test_generate_concurrency_bounds_calls_in_flight_across_parallel_branches(tmp_path: Path,
                                                                             concurrency: int) -> None:
    # Two reviewers and a three-seat jury: each prompt has parallel calls. --concurrency counts calls, not
    # prompts, so the stub never sees more than that many requests at once, and sees that many (slots are used).
    stub = StubServer(StubSettings(latency_s=0.05)).start_in_thread()
    try:
        spec = f"compat:stub@{stub.base_url}"
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"Question {index}?"}) + "\n" for index in range(4)))
        result = runner.invoke(app, [
            "generate", "--prompts", str(prompts), "--output", str(tmp_path / "out"), "--generator", spec,
            "--reviewer", spec, "--reviewer", spec, "--evaluator", "jury", "--judge", spec, "--judge", spec,
            "--judge", spec, "--iterations", "2", "--concurrency", str(concurrency),
        ])
        assert result.exit_code == 0, result.output
        assert stub.stats.max_in_flight == concurrency
        assert stub.stats.completions == 4 * (2 + 2 + 3)  # every call made once
    finally:
        stub.stop()


def test_evaluate_concurrency_bounds_calls_in_flight_of_a_jury(tmp_path: Path) -> None:
    stub = StubServer(StubSettings(latency_s=0.05)).start_in_thread()
    try:
        spec = f"compat:stub@{stub.base_url}"
        pairs = tmp_path / "pairs.jsonl"
        pairs.write_text("".join(json.dumps({"id": f"q{index}", "prompt": f"Question {index}?",
                                             "responses": [f"yes {index}", "no"]}) + "\n" for index in range(4)))
        result = runner.invoke(app, ["evaluate", "--input", str(pairs), "--output", str(tmp_path / "v.jsonl"),
                                     "--method", "jury", "-m", spec, "-m", spec, "-m", spec, "--concurrency", "2"])
        assert result.exit_code == 0, result.output
        assert stub.stats.max_in_flight == 2 and stub.stats.completions == 4 * 3
    finally:
        stub.stop()



async def test_a_call_nobody_observes_gives_the_same_reply_and_a_listener_still_sees_every_call(
    stub: StubServer,
) -> None:
    spec = f"compat:stub@{stub.base_url}"
    registry = ModelRegistry(ModelSettings(max_retries=0))
    model = registry.chat_model(spec)
    question = [HumanMessage("Which is larger, 3 or 7?")]
    started: list[str] = []

    class Listener(AsyncCallbackHandler):
        async def on_chat_model_start(self, serialized: dict[str, Any], messages: Any, **kwargs: Any) -> None:
            started.append(kwargs.get("name") or "")

    async def observed_call(_: object) -> Any:
        assert call_is_observed(model)  # the listener below is in this call's config
        return await complete(model, question, run_name="generator/iteration-1", model_spec=spec)

    try:
        assert not call_is_observed(model)  # no handler, tracer, cache or rate limiter
        plain = await complete(model, question, run_name="generator/iteration-1", model_spec=spec)
        observed = await RunnableLambda(observed_call).ainvoke(None, config={"callbacks": [Listener()]})
    finally:
        await registry.aclose()
    assert started == ["generator/iteration-1"]
    assert plain.text and (plain.text, plain.input_tokens, plain.output_tokens) == (
        observed.text, observed.input_tokens, observed.output_tokens)
    assert stub.stats.completions == 2


async def test_a_graph_streamed_in_messages_mode_still_streams_every_call(stub: StubServer) -> None:
    # Studio's chat view streams a run's messages: LangGraph's message handler must make the calls observed.
    spec = f"compat:stub@{stub.base_url}"
    registry = ModelRegistry(ModelSettings(max_retries=0))
    graph = build_feedback_loop_graph(model_source=registry).compile()
    context = GenerationContext(generator=spec, reviewers=[spec], iterations=2)
    chunks: list[tuple[str, str]] = []
    try:
        async for message, metadata in graph.astream({"prompt_id": "p1", "prompt": "Name a prime number."},
                                                     context=context, stream_mode="messages"):
            if isinstance(message, AIMessageChunk):  # a model's output (the nodes' state updates come too)
                chunks.append((metadata["langgraph_node"], message.id))
    finally:
        await registry.aclose()
    calls = [node for node, _ in dict.fromkeys(chunks)]  # a call's chunks share its message id
    assert len(chunks) > len(calls)  # streamed token by token, not a message per call
    assert sorted(calls) == ["generate", "generate", "review"]


async def test_a_refused_connection_fails_for_good_naming_the_endpoint() -> None:
    # aiohttp's transport reports a refused connection as a connect timeout: it must still stop the run.
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    registry = ModelRegistry(ModelSettings(max_retries=0))
    spec = f"compat:stub@http://127.0.0.1:{port}/v1"
    try:
        with pytest.raises(EndpointError, match=rf"cannot connect to http://127.0.0.1:{port}"):
            await complete(registry.chat_model(spec), [HumanMessage("Hi?")], run_name="generator/iteration-1",
                           model_spec=spec)
    finally:
        await registry.aclose()
