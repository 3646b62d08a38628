"""One model call, and the ask-again-once rule for replies that lack the required answer line."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

import prompts
from agents.records import Exchange

ParsedT = TypeVar("ParsedT")


@dataclass
class Reply:
    text: str
    input_tokens: int
    output_tokens: int
    latency_s: float


def response_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI `response_format` that constrains a reply to a JSON schema."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def message_text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)


async def complete(
    model: BaseChatModel,
    messages: Sequence[BaseMessage],
    *,
    json_schema: tuple[str, dict[str, Any]] | None = None,
    max_tokens: int | None = None,
    run_name: str,
    metadata: dict[str, Any] | None = None,
) -> Reply:
    """Call the model once; the run name and metadata make the call readable in traces."""
    bound: dict[str, Any] = {}
    if json_schema is not None:
        bound["response_format"] = response_format(*json_schema)
    if max_tokens is not None:
        bound["max_tokens"] = max_tokens
    runnable: Any = model.bind(**bound) if bound else model
    started = time.perf_counter()
    try:
        message = await runnable.ainvoke(
            list(messages), config={"run_name": run_name, "metadata": metadata or {}, "tags": [run_name]}
        )
    except openai.LengthFinishReasonError as error:
        # In JSON-schema mode the client refuses a reply cut off by max_tokens. The cut-off text is still
        # the model's answer: keep it, so the parser records it as unparsed and the follow-up can ask again.
        return truncated_reply(error, time.perf_counter() - started)
    latency = time.perf_counter() - started
    usage = getattr(message, "usage_metadata", None) or {}
    return Reply(
        text=message_text(message),
        input_tokens=int(usage.get("input_tokens", 0)),
        output_tokens=int(usage.get("output_tokens", 0)),
        latency_s=latency,
    )


def truncated_reply(error: openai.LengthFinishReasonError, latency_s: float) -> Reply:
    completion = error.completion
    text = completion.choices[0].message.content or "" if completion.choices else ""
    usage = completion.usage
    return Reply(
        text=text,
        input_tokens=usage.prompt_tokens if usage else 0,
        output_tokens=usage.completion_tokens if usage else 0,
        latency_s=latency_s,
    )


async def complete_with_followup(
    model: BaseChatModel,
    messages: Sequence[BaseMessage],
    *,
    parse: Callable[[str], ParsedT],
    is_complete: Callable[[ParsedT], bool],
    required_format: str,
    model_spec: str,
    role: str,
    json_schema: tuple[str, dict[str, Any]] | None = None,
    metadata: dict[str, Any] | None = None,
) -> tuple[ParsedT, Exchange]:
    """Ask; if the reply lacks the answer, ask once more in the same conversation for just the answer.

    The exchange keeps both raw texts, so a failure stays visible and can be re-parsed later.
    """
    first = await complete(model, messages, json_schema=json_schema, run_name=role, metadata=metadata)
    parsed = parse(first.text)
    exchange = Exchange(
        model=model_spec,
        role=role,
        text=first.text,
        input_tokens=first.input_tokens,
        output_tokens=first.output_tokens,
        latency_s=first.latency_s,
    )
    if is_complete(parsed):
        return parsed, exchange
    followup_messages = [
        *messages,
        AIMessage(content=first.text),
        HumanMessage(content=prompts.render("followup", required_format=required_format)),
    ]
    second = await complete(
        model, followup_messages, json_schema=json_schema, run_name=f"{role}/followup", metadata=metadata
    )
    parsed = parse(second.text)
    exchange.followup_text = second.text
    exchange.parse_ok = is_complete(parsed)
    exchange.input_tokens += second.input_tokens
    exchange.output_tokens += second.output_tokens
    exchange.latency_s += second.latency_s
    return parsed, exchange
