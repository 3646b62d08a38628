"""Chat-completion requests whose body is already plain JSON skip the openai client's type-driven rewrite.

Before it sends a request, `AsyncCompletions.create` walks the whole body against its parameter types
(`async_maybe_transform`): for every message it tries each of the six message types of the union, looking up
type hints at every level, to rename aliased keys, format dates and files, and turn pydantic models and
iterators into JSON. The request a chat model sends is already plain JSON (dicts, lists, strings, numbers) and
the chat-completion parameter types declare no alias or format anywhere, so the walk returns what it was given,
at about 0.6 ms of CPU per call: a fifth of a whole pipeline call (`make bench`).

`PlainBodyCompletions.create` sends such a body as it is, through the same client method the stock `create`
ends in (`_post`: the same headers, retries, timeouts and response types); anything else (a pydantic model, an
iterator, an omitted value inside the body, or a future client version whose types do declare an alias or a
format) goes through the stock `create`. `tests/test_plain_requests.py` checks that both send the same request
(path, headers and JSON body).
"""

from __future__ import annotations

import functools
import typing
from typing import Any

from langchain_core.language_models import BaseChatModel
from openai import AsyncStream
from openai._base_client import make_request_options
from openai._utils import is_given
from openai._utils._transform import PropertyInfo, get_type_hints
from openai.resources.chat.completions import AsyncCompletions
from openai.types.chat import ChatCompletion, ChatCompletionChunk, chat_completion, completion_create_params
from typing_extensions import is_typeddict

# `create`'s keyword arguments that shape the request rather than its body.
REQUEST_OPTIONS = ("extra_headers", "extra_query", "extra_body", "timeout")
PLAIN_SCALARS = (str, int, float, bool, type(None))


def declares_rewrites(annotation: Any, seen: set[int] | None = None) -> bool:
    """Whether a parameter type, anywhere inside it, renames a key or formats a value (openai's PropertyInfo)."""
    seen = set() if seen is None else seen
    if id(annotation) in seen:  # the types are recursive in places
        return False
    seen.add(id(annotation))
    if typing.get_origin(annotation) is typing.Annotated:
        inner, *metadata = typing.get_args(annotation)
        if any(isinstance(info, PropertyInfo) and (info.alias or info.format) for info in metadata):
            return True
        return declares_rewrites(inner, seen)
    if is_typeddict(annotation):
        hints = get_type_hints(annotation, include_extras=True)
        return any(declares_rewrites(hint, seen) for hint in hints.values())
    return any(declares_rewrites(argument, seen) for argument in typing.get_args(annotation))


@functools.cache
def body_passes_unchanged() -> bool:
    """Whether the client's rewrite leaves every plain-JSON chat-completion body as it is (checked once a process)."""
    return not any(
        declares_rewrites(params)
        for params in (completion_create_params.CompletionCreateParamsNonStreaming,
                       completion_create_params.CompletionCreateParamsStreaming)
    )


def is_plain_json(value: Any) -> bool:
    """Whether a value is made only of dicts with string keys, lists, strings, numbers, booleans and None."""
    if isinstance(value, PLAIN_SCALARS):
        return True
    if isinstance(value, list):
        return all(is_plain_json(entry) for entry in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and is_plain_json(entry) for key, entry in value.items())
    return False


class RawLogprobsChoice(chat_completion.Choice):
    """A chat completion's choice whose `logprobs` stay the JSON they came as.

    The stock model builds an object for every token and every alternative (twenty per token with
    `top_logprobs=20`): for `--scoring expected` that was most of a scored call's CPU (`make bench`), to read a
    few digits' probabilities that the caller reads from the JSON anyway (tools/rules/expected_scores.py).
    """

    logprobs: dict[str, Any] | None = None  # type: ignore[assignment]


class RawLogprobsCompletion(ChatCompletion):
    """A chat completion whose choices keep their `logprobs` as JSON (see `RawLogprobsChoice`)."""

    choices: list[RawLogprobsChoice]  # type: ignore[assignment]


class PlainBodyCompletions(AsyncCompletions):
    """The openai client's chat completions, sending a plain-JSON body without the type-driven rewrite."""

    async def create(self, **params: Any) -> Any:
        """Create a chat completion, as the stock `create` does (with its fallback for anything not plain JSON)."""
        options = {name: params.pop(name) for name in REQUEST_OPTIONS if name in params}
        body = {key: value for key, value in params.items() if is_given(value)}
        if not (body_passes_unchanged() and is_plain_json(body)):
            return await super().create(**params, **options)
        stream = bool(body.get("stream"))
        return await self._post(
            "/chat/completions",
            body=body,
            options=make_request_options(**options, security={"bearer_auth": True}),
            cast_to=RawLogprobsCompletion if body.get("logprobs") else ChatCompletion,
            stream=stream,
            stream_cls=AsyncStream[ChatCompletionChunk],
        )


def send_plain_bodies(model: BaseChatModel) -> BaseChatModel:
    """Give an OpenAI-protocol chat model (ChatOpenAI, ChatTogether) completions that send plain bodies as they are.

    Only the async path changes (the one runs use); a model of another kind is returned untouched.
    """
    completions = getattr(model, "async_client", None)
    if type(completions) is AsyncCompletions:
        model.async_client = PlainBodyCompletions(completions._client)  # type: ignore[attr-defined]
    return model
