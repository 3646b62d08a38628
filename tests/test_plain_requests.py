"""Plain-JSON chat requests skip the openai client's body rewrite, and send exactly what the stock client sends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from openai import AsyncOpenAI
from openai._utils._transform import PropertyInfo
from openai.resources.chat.completions import AsyncCompletions
from typing_extensions import TypedDict

from agents.models import ModelRegistry, ModelSettings
from agents.plain_requests import (
    PlainBodyCompletions,
    body_passes_unchanged,
    declares_rewrites,
    is_plain_json,
    send_plain_bodies,
)
from tools.dev.stub_server import StubServer


class RecordingStub(StubServer):
    """The stub server, keeping every request it was sent (path, headers and the parsed body)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, dict[str, str], Any]] = []

    async def _respond(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
        self.requests.append((path, headers, json.loads(body or b"null")))
        return await super()._respond(method, path, body, headers)


@pytest.fixture
def recording_stub() -> Iterator[RecordingStub]:
    server = RecordingStub().start_in_thread()
    yield server
    server.stop()


MESSAGES = [
    {"role": "system", "content": "You are a careful reviewer."},
    {"role": "user", "content": "Is water wet?"},
    {"role": "assistant", "content": "Yes."},
    {"role": "user", "content": [{"type": "text", "text": "Say more."}]},
]
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "score", "strict": True, "schema": {
    "type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}}}
PAYLOADS = {
    "plain": {"model": "stub", "messages": MESSAGES},
    "sampling and limits": {"model": "stub", "messages": MESSAGES, "temperature": 0.0, "max_tokens": 7, "n": 1,
                            "stop": ["\n\n"], "seed": 3, "top_p": 0.9},
    "response format": {"model": "stub", "messages": MESSAGES, "response_format": JSON_SCHEMA},
    "request options": {"model": "stub", "messages": MESSAGES, "extra_body": {"repeat_penalty": 1.15},
                        "extra_headers": {"X-Run": "r1"}, "extra_query": {"tier": "a"}, "timeout": 5.0},
    "streamed": {"model": "stub", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
    # Not plain JSON (a tuple of messages): the stock rewrite turns it into a list, as it always did.
    "iterable messages": {"model": "stub", "messages": tuple(MESSAGES)},
}
# Headers that differ between any two requests, whoever sends them.
PER_REQUEST_HEADERS = {"x-stainless-retry-count"}


async def _send(completions: AsyncCompletions, payload: dict[str, Any]) -> Any:
    """Send one request as langchain-openai does (`with_raw_response.create`); the parsed reply, or the chunks."""
    raw = await completions.with_raw_response.create(**payload)
    reply = raw.parse()
    if payload.get("stream"):
        return [chunk.model_dump(exclude={"id", "created"}) async for chunk in reply]
    return reply.model_dump(exclude={"id", "created"})


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_a_request_is_sent_exactly_as_the_stock_client_sends_it(recording_stub: RecordingStub, name: str) -> None:
    payload = PAYLOADS[name]

    async def both() -> tuple[Any, Any]:
        client = AsyncOpenAI(base_url=recording_stub.base_url, api_key="sk-test", max_retries=0)
        stock = await _send(client.chat.completions, dict(payload))
        plain = await _send(PlainBodyCompletions(client), dict(payload))
        await client.close()
        return stock, plain

    stock_reply, plain_reply = asyncio.run(both())
    (stock_path, stock_headers, stock_body), (plain_path, plain_headers, plain_body) = recording_stub.requests
    assert plain_path == stock_path
    assert plain_body == stock_body
    assert isinstance(plain_body["messages"], list)
    assert {k: v for k, v in plain_headers.items() if k not in PER_REQUEST_HEADERS} == \
        {k: v for k, v in stock_headers.items() if k not in PER_REQUEST_HEADERS}
    assert plain_reply == stock_reply


def test_a_plain_body_is_sent_as_given_and_anything_else_through_the_rewrite(recording_stub: RecordingStub) -> None:
    # The rewrite rebuilds the body in the order of its parameter list (model first); a body sent as given
    # keeps the caller's order. That tells which way each request went.
    async def send_three() -> None:
        client = AsyncOpenAI(base_url=recording_stub.base_url, api_key="sk-test", max_retries=0)
        plain = PlainBodyCompletions(client)
        await plain.create(messages=MESSAGES, model="stub")
        await plain.create(messages=tuple(MESSAGES), model="stub")  # not plain JSON: rewritten
        await client.chat.completions.create(messages=MESSAGES, model="stub")
        await client.close()

    asyncio.run(send_three())
    as_given, rewritten, stock = (list(body) for _path, _headers, body in recording_stub.requests)
    assert as_given == ["messages", "model"]
    assert rewritten == stock == ["model", "messages"]


class Card(TypedDict):
    """A parameter type with a renamed key, as some openai endpoints have."""

    card_id: Annotated[str, PropertyInfo(alias="cardID")]


class Payment(TypedDict):
    """The renamed key deep inside: a list of a union."""

    amount: int
    cards: list[Card | str]


class Dated(TypedDict):
    """A parameter type with a formatted value."""

    when: Annotated[str, PropertyInfo(format="iso8601")]


class Plain(TypedDict):
    """Nothing renamed or formatted."""

    amount: int
    tags: list[str]


def test_the_chat_completion_types_declare_no_rewrite_and_one_that_does_is_found() -> None:
    assert body_passes_unchanged()

    assert declares_rewrites(Payment)
    assert declares_rewrites(dict[str, Dated])
    assert not declares_rewrites(Plain)


def test_plain_json_is_only_dicts_lists_strings_numbers_booleans_and_none() -> None:
    assert is_plain_json({"a": [1, 2.5, "x", True, None, {"b": []}]})
    assert not is_plain_json({"a": (1, 2)})
    assert not is_plain_json({1: "key not a string"})
    assert not is_plain_json({"a": object()})


def test_the_registry_models_send_plain_bodies_and_answer(recording_stub: RecordingStub) -> None:
    registry = ModelRegistry(ModelSettings(max_retries=0), closed_in_loop=False)
    model = registry.chat_model(f"compat:stub@{recording_stub.base_url}")
    assert type(model.async_client) is PlainBodyCompletions  # type: ignore[attr-defined]
    # Installing twice changes nothing.
    assert send_plain_bodies(model).async_client is model.async_client  # type: ignore[attr-defined]
    reply = asyncio.run(model.ainvoke("Benchmark question 1?"))
    (_path, _headers, body), = recording_stub.requests
    assert body["messages"] == [{"role": "user", "content": "Benchmark question 1?"}]
    assert isinstance(reply.content, str) and reply.content
    registry.close()
