"""One model call, the ask-again-once rule for replies that lack the required answer line, and call slots.

Call slots are a run's `--concurrency`: at most that many model calls in flight at once, whatever the jobs
(prompts, items) and their parallel branches. A job runner opens a `call_scope` around each job; every call
made inside it (in any of the graph's tasks) takes a slot first.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import openai
from langchain_core.callbacks.manager import AsyncCallbackManager
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables.config import ensure_config

import prompts
from agents.cache import CACHED_MARK
from agents.rate_limits import CallMeter, call_meter, gave_up_waiting
from agents.records import AnswerOrder, Exchange, ScoreReading
from tools.errors import EndpointError
from tools.rules.expected_scores import TOP_LOGPROBS, expected_scores
from tools.rules.secrets import mask_secrets

ParsedT = TypeVar("ParsedT")
logger = logging.getLogger(__name__)
# Models that answered a request for probabilities without them: each is named once per process.
_models_without_logprobs: set[str] = set()
# Models that refused a request for probabilities (reasoning models answer HTTP 400): not asked again.
_models_refusing_logprobs: set[str] = set()


@dataclass
class Reply:
    """One model reply: its text, token counts and latency, and whether the call cache served it."""

    text: str
    input_tokens: int
    output_tokens: int
    latency_s: float
    cached: bool = False
    rate_limited: int = 0  # 429s the call met and waited out (agents/rate_limits.py)
    rate_waited_s: float = 0.0  # seconds it waited for its endpoint's pace, holds and ceiling
    logprobs: Any = None  # the choice's `logprobs` in OpenAI's shape, when they were asked for and given
    batched: bool = False  # answered by a provider's batch API (`--batch`: agents/batches.py)

    def usage_fields(self) -> dict[str, Any]:
        """What an Exchange records of this reply besides its text: tokens, latency, cache, rate limiting, batch."""
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens, "latency_s": self.latency_s,
                "cached": self.cached, "rate_limited": self.rate_limited, "rate_waited_s": self.rate_waited_s,
                "batched": self.batched}


class CallSlots:
    """At most `limit` model calls in flight; a free slot goes to the waiting call whose job has made the fewest calls.

    Fewest calls first is highest-level-first list scheduling: a job's calls form a chain, and the job with the
    most of its chain still to run goes first. Jobs then advance together, so the last ones admitted do not
    leave slots idle at the end of a run (a wave of jobs finishing together and the next starting together);
    ties go in arrival order.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.in_use = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrival = itertools.count()
        # Told when the calls in flight come down to a lowered limit (the Ray pool: its actors' share is free).
        self.on_within_limit: Callable[[], None] | None = None

    def within_limit(self) -> bool:
        """Whether the calls in flight are at most the limit (after `resize` lowered it, once enough have ended)."""
        return self.in_use <= self.limit

    async def acquire(self, calls_made: int) -> None:
        """Wait for a slot; `calls_made` is how many calls the caller's job has made so far."""
        if self.in_use < self.limit and not self._waiting:
            self.in_use += 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (calls_made, next(self._arrival), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # the slot was handed over just as the caller was cancelled: pass it on
            raise

    def resize(self, limit: int) -> None:
        """Change the limit: a higher one hands its new slots to waiting calls at once.

        A lower one retires slots as their calls end.
        """
        self.limit = max(1, limit)
        while self._waiting and self.in_use < self.limit:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():
                self.in_use += 1
                granted.set_result(None)

    def release(self) -> None:
        """Give a slot back: to the best waiting call (cancelled waiters are skipped), else to the pool.

        After `limit` was lowered, slots above it are retired as their calls end instead of being handed on.
        """
        while self._waiting and self.in_use <= self.limit:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():
                granted.set_result(None)  # the slot passes over directly: `in_use` stays the same
                return
        self.in_use -= 1
        if self.in_use == self.limit and self.on_within_limit is not None:
            self.on_within_limit()


@dataclass
class _JobCalls:
    """The call slots a job's calls take, how many calls it has made (its place in the queue), and slots it holds."""

    slots: CallSlots
    made: int = 0
    held: int = 0


_job_calls: ContextVar[_JobCalls | None] = ContextVar("fellowship_job_calls", default=None)


@contextlib.contextmanager
def call_scope(slots: CallSlots | None) -> Iterator[None]:
    """Run one job's calls through `slots` (None: no limit). Tasks started inside inherit the scope."""
    job = _JobCalls(slots) if slots is not None else None
    token = _job_calls.set(job)
    try:
        yield
    finally:
        _job_calls.reset(token)
        if job is not None:
            for _ in range(job.held):
                job.slots.release()


@contextlib.asynccontextmanager
async def _call_slot() -> AsyncIterator[None]:
    """Hold one of the current job's call slots for the duration of a call (nothing outside a `call_scope`).

    A call that failed for good keeps its slot until its job ends: by then the run's circuit breaker has
    counted the failure, so a broken key or endpoint does not get one more call per freed slot meanwhile.
    """
    job = _job_calls.get()
    if job is None:
        yield
        return
    await job.slots.acquire(job.made)
    job.made += 1
    try:
        yield
    except EndpointError:
        job.held += 1
        raise
    except BaseException:
        job.slots.release()
        raise
    job.slots.release()


def response_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI `response_format` that constrains a reply to a JSON schema."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


_FATAL_STATUS = {401: "the API key was refused", 403: "access denied", 404: "model or endpoint not found"}


def fatal_call_reason(error: BaseException) -> str | None:
    """Why a call failed for good, when no retry can help; None for errors worth retrying.

    Failing for good: a bad key, no access, an unknown model, an endpoint still down after the client's own
    retries. Errors local to one prompt (a 500 that outlived its retries, a bad reply) are not.
    """
    if isinstance(error, openai.APIStatusError) and (
            final := gave_up_waiting(error.status_code, error.response.headers, error.body)) is not None:
        url = error.request.url if error.request is not None else None
        where = f" from {url.scheme}://{url.netloc.decode()}" if url is not None else ""
        return f"HTTP 429 {final}{where}"
    if isinstance(error, openai.APIStatusError) and error.status_code in _FATAL_STATUS:
        url = error.request.url if error.request is not None else None
        where = f" from {url.scheme}://{url.netloc.decode()}" if url is not None else ""
        body = error.body if isinstance(error.body, dict) else {}
        detail = body.get("error", body).get("message") if isinstance(body.get("error", body), dict) else None
        said = f": {mask_secrets(str(detail))[:160]}" if detail else ""
        return f"HTTP {error.status_code} {_FATAL_STATUS[error.status_code]}{where}{said}"
    if isinstance(error, openai.APIConnectionError) and (
        not isinstance(error, openai.APITimeoutError) or connection_failed_behind(error)
    ):
        request = getattr(error, "request", None)
        where = f"{request.url.scheme}://{request.url.netloc.decode()}" if request is not None else "the endpoint"
        return f"cannot connect to {where} (after the client's retries)"
    return None


def connection_failed_behind(error: BaseException) -> bool:
    """Whether an error was caused by a connection that could not be made (refused, unknown host...).

    aiohttp's transport reports a refused connection as a connect timeout; the operating system's error
    underneath says what it was. A real timeout is no such error.
    """
    cause = error.__cause__
    while cause is not None:
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
            return True
        cause = cause.__cause__
    return False


def stable_tags(run_name: str) -> list[str]:
    """Few tags that stay the same from item to item (method or role, and phase).

    Item-specific text belongs in run names and metadata. `debate/critic/round-2` -> debate, critic, turn;
    `jury/seat-2/reversed` -> jury, ballot; `reviewer-1/iteration-2` -> reviewer, review; a follow-up adds
    `followup`.
    """
    parts = run_name.split("/")
    head = parts[0].split("-")[0]
    if head == "debate" and len(parts) > 2:
        tags = ["debate", parts[1], "final" if parts[2] == "final" else "turn"]
    elif head == "judge" and len(parts) > 1:
        tags = ["judge", parts[1]]
    else:
        tags = [head, {"jury": "ballot", "generator": "answer", "reviewer": "review"}.get(head, "call")]
    return [*tags, "followup"] if parts[-1] == "followup" else tags


def message_text(message: BaseMessage) -> str:
    """The text of a chat message, whether its content is a string or a list of parts."""
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)


def call_is_observed(model: BaseChatModel) -> bool:
    """Whether anything but the caller sees a call to `model` made here and now, as LangChain would decide it.

    A callback handler in the calling graph's config (the `--trace` recorder, Studio's message stream), one set on
    the model, a tracer turned on by the environment (LANGSMITH_TRACING) or a tracing context, or a cache (the
    model's own or LangChain's global one) all see it; so does a rate limiter. Without any of them, a call needs
    only the model's own request (`_agenerate`).
    """
    cache_in_use = model.cache is not False and (model.cache is not None or get_llm_cache() is not None)
    if cache_in_use or model.rate_limiter is not None:
        return True
    inherited = ensure_config().get("callbacks")
    return bool(AsyncCallbackManager.configure(inherited, model.callbacks, model.verbose).handlers)


async def complete(
    model: BaseChatModel,
    messages: Sequence[BaseMessage],
    *,
    json_schema: tuple[str, dict[str, Any]] | None = None,
    max_tokens: int | None = None,
    top_logprobs: int | None = None,
    run_name: str,
    model_spec: str,
    metadata: dict[str, Any] | None = None,
) -> Reply:
    """Call the model once; the run name and metadata make the call readable in traces.

    With `top_logprobs`, the reply's token probabilities are asked for and kept (`Reply.logprobs`). A failure no
    retry can fix is raised as EndpointError naming `model_spec`, so a run can stop at once instead of failing
    every prompt the same way.
    """
    bound: dict[str, Any] = {}
    if top_logprobs is not None:
        bound["logprobs"] = True
        bound["top_logprobs"] = top_logprobs
    if json_schema is not None:
        bound["response_format"] = response_format(*json_schema)
        # A structured reply repeats its keys and quotes by design: repetition penalties (set for local models'
        # free text) would bend it, so structured calls send none.
        bound["extra_body"] = {}
    if max_tokens is not None:
        bound["max_tokens"] = max_tokens
    item = (metadata or {}).get("item_id")
    meter = CallMeter(item=str(item) if item is not None else None, run=run_name)
    meter_token = call_meter.set(meter)  # the HTTP layer counts this call's 429s and waits in it (or batches it)
    async with _call_slot():
        started = time.perf_counter()  # the call's latency, not its wait for a slot
        try:
            if call_is_observed(model):
                runnable: Any = model.bind(**bound) if bound else model
                message = await runnable.ainvoke(
                    list(messages),
                    config={"run_name": run_name, "metadata": metadata or {}, "tags": stable_tags(run_name)},
                )
                logprobs = (getattr(message, "response_metadata", None) or {}).get("logprobs")
            else:
                # Nobody listens (no tracer, callback handler or LangChain cache): the model's own request and
                # reply, without LangChain's per-call run bookkeeping (a twentieth of the CPU per call).
                generation = (await model._agenerate(list(messages), **bound)).generations[0]
                message = generation.message
                logprobs = (generation.generation_info or {}).get("logprobs")
        except openai.LengthFinishReasonError as error:
            # In JSON-schema mode the client refuses a reply cut off by max_tokens. The cut-off text is still
            # the model's answer: keep it, so the parser records it as unparsed and the follow-up can ask again.
            return truncated_reply(error, time.perf_counter() - started)
        except openai.APIError as error:
            reason = fatal_call_reason(error)
            if reason is None:
                raise
            raise EndpointError(model_spec, reason) from error
        finally:
            call_meter.reset(meter_token)
        latency = time.perf_counter() - started
    usage = getattr(message, "usage_metadata", None) or {}
    return Reply(
        text=message_text(message),
        input_tokens=int(usage.get("input_tokens", 0)),
        output_tokens=int(usage.get("output_tokens", 0)),
        latency_s=latency,
        cached=bool((getattr(message, "response_metadata", None) or {}).get(CACHED_MARK)),
        rate_limited=meter.rate_limited,
        rate_waited_s=meter.waited_s,
        logprobs=logprobs if top_logprobs is not None else None,
        batched=meter.batched,
    )


@dataclass(frozen=True)
class ExpectedScoring:
    """Which scores of a call to read as probability-weighted means (`--scoring expected`), and on what scale.

    `keys` are the answer labels a reply scores, or `overall` (tools/rules/expected_scores.py); `parse` reads the
    written scores back by key, so each reading keeps the number written beside its expected value.
    """

    keys: tuple[str, ...]
    scale: int
    parse: Callable[[str], dict[str, float | None]]

    def readings(self, reply: Reply, model_spec: str) -> list[ScoreReading]:
        """Each key's score as written and as weighted; a model that gave no probabilities is named once."""
        written = self.parse(reply.text)
        has_scores = any(score is not None for score in written.values())
        if reply.logprobs is None and has_scores and not reply.cached and model_spec not in _models_without_logprobs:
            _models_without_logprobs.add(model_spec)
            logger.warning("note: %s returned no token probabilities; its scores are the numbers it wrote "
                           "(as with --scoring parsed)", model_spec)
        weighted = expected_scores(reply.text, reply.logprobs, self.keys, self.scale) if reply.logprobs else {}
        return [
            ScoreReading(key=key, parsed=written.get(key), expected=weighted[key].expected if key in weighted else None,
                         valid_mass=weighted[key].valid_mass if key in weighted else None)
            for key in self.keys
        ]


def truncated_reply(error: openai.LengthFinishReasonError, latency_s: float) -> Reply:
    """The reply the client refused because max_tokens cut it off, kept as an unparsed answer."""
    completion = error.completion
    text = completion.choices[0].message.content or "" if completion.choices else ""
    usage = completion.usage
    logprobs = completion.choices[0].logprobs if completion.choices else None
    return Reply(
        text=text,
        input_tokens=usage.prompt_tokens if usage else 0,
        output_tokens=usage.completion_tokens if usage else 0,
        latency_s=latency_s,
        logprobs=logprobs if logprobs is None or isinstance(logprobs, dict) else logprobs.model_dump(),
    )


async def _complete_scored(
    model: BaseChatModel,
    messages: Sequence[BaseMessage],
    *,
    expected: ExpectedScoring | None,
    json_schema: tuple[str, dict[str, Any]] | None,
    run_name: str,
    model_spec: str,
    metadata: dict[str, Any] | None,
) -> Reply:
    """One call of a scoring role: with probabilities when `expected` asks for them and the model takes the request.

    A model that refuses them (HTTP 400 naming logprobs, as reasoning models answer) is named once and asked
    again without: its scores are the numbers it writes.
    """
    wants = expected is not None and model_spec not in _models_refusing_logprobs
    try:
        return await complete(model, messages, json_schema=json_schema, top_logprobs=TOP_LOGPROBS if wants else None,
                              run_name=run_name, model_spec=model_spec, metadata=metadata)
    except openai.BadRequestError as error:
        if not wants or "logprob" not in str(error).lower():
            raise
    if model_spec not in _models_refusing_logprobs:
        _models_refusing_logprobs.add(model_spec)
        _models_without_logprobs.add(model_spec)
        logger.warning("note: %s refused a request for token probabilities; its scores are the numbers it writes "
                       "(as with --scoring parsed)", model_spec)
    return await complete(model, messages, json_schema=json_schema, run_name=run_name, model_spec=model_spec,
                          metadata=metadata)


async def complete_with_followup(
    model: BaseChatModel,
    messages: Sequence[BaseMessage],
    *,
    parse: Callable[[str], ParsedT],
    is_complete: Callable[[ParsedT], bool],
    required_format: str,
    model_spec: str,
    role: str,
    run_name: str,
    order: AnswerOrder | None = None,
    json_schema: tuple[str, dict[str, Any]] | None = None,
    metadata: dict[str, Any] | None = None,
    expected: ExpectedScoring | None = None,
) -> tuple[ParsedT, Exchange]:
    """Ask; if the reply lacks the answer, ask once more in the same conversation for just the answer.

    The exchange keeps both raw texts, so a failure stays visible and can be re-parsed later. With `expected`,
    the calls ask for token probabilities and the exchange records each score's expected value
    (`Exchange.score_readings`; `Exchange.score` gives the value to use), read from the reply that gave the answer.
    """
    first = await _complete_scored(
        model, messages, expected=expected, json_schema=json_schema, run_name=run_name, model_spec=model_spec,
        metadata=metadata,
    )
    parsed = parse(first.text)
    exchange = Exchange(
        model=model_spec,
        role=role,
        run=run_name,
        order=order,
        text=first.text,
        **first.usage_fields(),
    )
    if is_complete(parsed):
        if expected is not None:
            exchange.score_readings = expected.readings(first, model_spec)
        return parsed, exchange
    followup_messages = [
        *messages,
        AIMessage(content=first.text),
        HumanMessage(content=prompts.render("followup", required_format=required_format)),
    ]
    second = await _complete_scored(
        model, followup_messages, expected=expected, json_schema=json_schema, run_name=f"{run_name}/followup",
        model_spec=model_spec, metadata=metadata,
    )
    parsed = parse(second.text)
    if expected is not None:
        exchange.score_readings = expected.readings(second, model_spec)
    exchange.followup_text = second.text
    exchange.cached = exchange.cached and second.cached
    exchange.parse_ok = is_complete(parsed)
    exchange.input_tokens += second.input_tokens
    exchange.output_tokens += second.output_tokens
    exchange.latency_s += second.latency_s
    exchange.rate_limited += second.rate_limited
    exchange.rate_waited_s += second.rate_waited_s
    exchange.batched = exchange.batched or second.batched
    return parsed, exchange
