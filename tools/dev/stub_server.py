"""A stub OpenAI-compatible chat server on 127.0.0.1 for tests and benchmarks.

It answers `POST /v1/chat/completions` after a fixed latency, holds at most `max_concurrent` requests
in progress (the rest wait their turn, like a provider's concurrency cap), and injects faults at set
rates: HTTP 500, HTTP 429 with Retry-After, hangs past the client's timeout, and replies the parsers
cannot read. Replies follow the formats the parsers read (or the JSON schema asked for) and are
deterministic: they depend only on the request's messages. Faults depend on the messages and on how
often the same request has been seen, so a retried request can succeed. A request with `"stream": true`
gets the same reply as server-sent events, a word per chunk (and a usage chunk when
`stream_options.include_usage` asks for it). The file and batch routes of OpenAI's batch API (or Together's
variant) answer each line with the same reply (tools/dev/stub_batches.py). `GET /stats` reports counts.

Run alone: `python -m tools.dev.stub_server --latency 0.5 --max-concurrent 32` prints its base URL and
serves until killed or until `--lifetime` seconds have passed (it always stops by itself).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tools.dev.stub_batches import BatchDialect, RawBody, StubBatches
from tools.rules.contracts import (
    ANSWER,
    EVALUATION,
    EVIDENCE,
    EXPLANATION,
    FEEDBACK,
    OVERALL_SCORE,
    SCORE_PREFIX,
    score_field,
)


@dataclass
class StubSettings:
    """How the stub behaves: latency, a cap on concurrent requests, fault rates, a fixed status."""
    latency_s: float = 0.0
    max_concurrent: int = 64
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    hang_rate: float = 0.0
    garbage_rate: float = 0.0
    hang_s: float = 30.0
    retry_after_s: float = 0.05
    # Answer every chat request with this HTTP status (401, 403, 404...) and an OpenAI-style error body that
    # echoes the start of the API key, as providers do: a broken configuration, not a passing fault.
    fixed_status: int | None = None
    # A judge biased towards the answer shown first: combined scoring adds this to its score (see `reply_for`).
    first_answer_bonus: int = 0
    # A provider's request rate limit: a bucket of this many requests that refills at this many per second.
    # A request that finds it empty is answered 429 with retry-after-ms, retry-after and x-ratelimit-* headers;
    # with `limit_headers`, every answer carries the x-ratelimit-* headers, as OpenAI's do.
    requests_per_s: float | None = None
    limit_headers: bool = True
    # Whether a request with `"logprobs": true` gets token probabilities back (OpenAI's shape; see
    # `token_logprobs`). False: it is answered without them, as by a provider that does not return them.
    logprobs: bool = True
    # Answer a request for logprobs with HTTP 400, as OpenAI's reasoning models do.
    refuse_logprobs: bool = False
    # The batch API (tools/dev/stub_batches.py): OpenAI's routes or Together's variant, how long a batch takes,
    # the share of lines that fail (HTTP 500) or expire, and a model whose batches fail validation.
    batch_dialect: BatchDialect = "openai"
    batch_delay_s: float = 1.0
    batch_error_rate: float = 0.0
    batch_expire_rate: float = 0.0
    batch_refuse_model: str | None = None


@dataclass
class StubStats:
    """What the stub has seen: requests, completions, concurrency and faults."""
    requests: int = 0
    completions: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    # The usage it reported (a word stands for a token): a provider's bill, to check the tool's own accounting.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # When the first request came and the last answer went (time.monotonic): how long the calls took.
    first_request_at: float | None = None
    last_answer_at: float | None = None

    @property
    def span_s(self) -> float:
        """Seconds from the first request to the last answer (0 before any)."""
        if self.first_request_at is None or self.last_answer_at is None:
            return 0.0
        return self.last_answer_at - self.first_request_at

    def as_dict(self) -> dict[str, Any]:
        """The figures as JSON (`GET /stats`)."""
        return {
            "requests": self.requests,
            "completions": self.completions,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "span_s": self.span_s,
            # time.monotonic() of the first request: the system's clock, comparable with another process's.
            "first_request_at": self.first_request_at,
            "faults": dict(self.faults),
        }


class RequestBucket:
    """The stub's rate limit: `rate` requests a second, a burst of as many, as a provider's token bucket."""

    def __init__(self, rate: float, *, headers: bool) -> None:
        self.rate = rate
        self.capacity = rate
        self.level = rate
        self.at = time.monotonic()
        self.headers = headers

    def take(self) -> tuple[bool, list[str]]:
        """Take one request if there is one; (taken, the header lines of the answer)."""
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now
        taken = self.level >= 1
        if taken:
            self.level -= 1
        lines = []
        if self.headers or not taken:
            reset_s = (self.capacity - self.level) / self.rate
            lines = [f"x-ratelimit-limit-requests: {self.capacity:g}",
                     f"x-ratelimit-remaining-requests: {math.floor(self.level)}",
                     f"x-ratelimit-reset-requests: {reset_s:.3f}s"]
        if not taken:
            wait_s = (1 - self.level) / self.rate
            lines += [f"retry-after-ms: {math.ceil(wait_s * 1000)}", f"retry-after: {math.ceil(wait_s)}"]
            if not self.headers:
                lines = lines[3:]
        return taken, lines


def _fraction(*parts: str) -> float:
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _score(text: str, salt: str = "") -> int:
    """A deterministic score from 3 to 9 for a piece of text."""
    return 3 + int(_fraction("score", salt, text) * 7)


def _answers_in(text: str, schema: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(label, text) of the answers a judging request shows.

    From the built-in templates' answer blocks; a request written from a user's own template has none, so the labels
    come from the answer format the project adds to every request (its `### Score Assistant X` lines, or the JSON
    schema's score fields), each scored on the whole request with its label.
    """
    blocks = re.findall(r"\[The Start of Assistant (\w+)'s Answer\]\n(.*?)\n\[The End of", text, re.S)
    if blocks:
        return blocks
    labels = re.findall(r"^### Score Assistant (\w+): X/", text, re.M)
    if not labels and schema:
        fields = schema.get("properties", {})
        labels = [name.removeprefix(SCORE_PREFIX) for name in fields if name.startswith(SCORE_PREFIX)]
    return [(label, f"{label}\n{text}") for label in labels]


def reply_for(messages: list[dict[str, Any]], response_format: dict[str, Any] | None, *,
              first_answer_bonus: int = 0) -> str:
    """What the stub says to a conversation: role detected from the prompt wording.

    `first_answer_bonus` makes the stub a judge with a position bias: the answer shown first in combined scoring
    gets that many more points (at most 10).
    """
    last = str(messages[-1].get("content", "")) if messages else ""
    first_user = next((str(m.get("content", "")) for m in messages if m.get("role") == "user"), "")
    schema = (response_format or {}).get("json_schema", {}).get("schema")
    if "Reply now with only the final answer" in last:
        last = str(messages[-3].get("content", "")) if len(messages) >= 3 else last
    # A one-answer call scored by criteria asks for `### Score NAME: X/` lines or `score_NAME` fields.
    criteria = re.findall(r"^### Score (?!Assistant )(\w+): X/", last, re.M) or [
        name.removeprefix("score_") for name in (schema or {}).get("properties", {})
        if name.startswith("score_") and not name.startswith(SCORE_PREFIX)]
    if "Review this answer" in last:
        answer = re.search(r"\[The Start of the Answer\]\n(.*?)\n\[The End", last, re.S)
        score = _score(answer.group(1) if answer else last, "review")
        if criteria:
            marks = {name: _score(answer.group(1) if answer else last, f"review-{name}") for name in criteria}
            if schema:
                return json.dumps({EVALUATION: "Clear.", **{f"score_{name}": value for name, value in marks.items()},
                                   FEEDBACK: "Add a concrete example."})
            lines = "\n".join(f"### Score {name}: {value}/10" for name, value in marks.items())
            return f"### Evaluation\nClear but brief.\n{lines}\n### Feedback\nAdd a concrete example."
        if schema:
            return json.dumps({EVALUATION: "Clear.", OVERALL_SCORE: score, FEEDBACK: "Add a concrete example."})
        return f"### Evaluation\nClear but brief.\n### Overall Score: {score}/10\n### Feedback\nAdd a concrete example."
    answers = _answers_in(last, schema)
    if answers and ("Score Assistant" in last or SCORE_PREFIX in last or "scores" in last):
        scores = {label: min(10, _score(text) + (first_answer_bonus if position == 0 else 0))
                  for position, (label, text) in enumerate(answers)}
        # Scores by criterion (`A_harmlessness`...), when the answer format asks for them: each its own number.
        asked = re.findall(r"^### Score Assistant (\w+): X/", last, re.M) or [
            name.removeprefix(SCORE_PREFIX) for name in (schema or {}).get("properties", {})
            if name.startswith(SCORE_PREFIX)]
        texts = dict(answers)
        if asked and set(asked) != set(scores) and all(key.split("_", 1)[0] in texts for key in asked):
            scores = {key: min(10, _score(texts[key.split("_", 1)[0]], key)
                               + (first_answer_bonus if key.split("_", 1)[0] == answers[0][0] else 0))
                      for key in asked}
        if schema:
            fields = {score_field(label): value for label, value in scores.items()}
            return json.dumps({EVIDENCE: "Compared.", **fields})
        lines = "\n".join(f"### Score Assistant {label}: {value}/10" for label, value in scores.items())
        return f"### Evaluation Evidence: compared the answers.\n{lines}"
    if (answers and "### Answer" in last) or (schema and ANSWER in schema.get("properties", {})):
        best = max(answers, key=lambda pair: _score(pair[1]))[0] if answers else "A"
        return json.dumps({EXPLANATION: "x", ANSWER: best}) if schema else f"Compared.\n### Answer: {best}"
    if "[The Start of the Assistant's Answer]" in last:
        answer = re.search(r"Assistant's Answer\]\n(.*?)\n\[The End", last, re.S)
        score = _score(answer.group(1) if answer else last)
        if criteria:
            marks = {name: _score(answer.group(1) if answer else last, name) for name in criteria}
            if schema:
                return json.dumps({EVALUATION: "ok", **{f"score_{name}": value for name, value in marks.items()}})
            return "\n".join(f"### Score {name}: {value}/10" for name, value in marks.items())
        return json.dumps({EVALUATION: "ok", OVERALL_SCORE: score}) if schema else f"### Overall Score: {score}/10"
    if "turn to speak" in last:
        return "I find the first answer more helpful."
    iteration = sum(1 for m in messages if m.get("role") == "assistant") + 1
    return f"Answer draft {iteration} to: {first_user[:60]}"


_STUB_TOKENS = re.compile(r"\d|[A-Za-z]+|\s+|.", re.S)


def token_logprobs(text: str, top_logprobs: int) -> dict[str, Any]:
    """The `logprobs` of a reply in OpenAI's shape, with one token per digit as Llama-family tokenizers write.

    A number's first digit is written with probability 0.55 to 0.85 (from a hash of the text and its place); the
    rest goes to the digits one below and one above (9 alone for a 10) and a little to a space, so a score's
    expected value is near the number written but not on it. Every other token is certain.
    """
    content = []
    offset = 0
    tokens = _STUB_TOKENS.findall(text)
    for index, token in enumerate(tokens):
        choices: list[tuple[str, float]] = [(token, 1.0)]
        starts_number = token.isdigit() and (index == 0 or not tokens[index - 1].isdigit())
        if starts_number:
            written = 0.55 + 0.3 * _fraction("written", text, str(offset))
            up_share = _fraction("up", text, str(offset))
            spread = 1.0 - written - 0.02
            digit = int(token)
            is_ten = token == "1" and tokens[index + 1:index + 3] in (["0"], ["0", "/"], ["0", ","], ["0", "}"])
            if is_ten:
                nearby = [("9", spread)]
            elif digit == 0:
                nearby = [("1", spread)]
            elif digit == 9:
                nearby = [("8", spread)]
            else:
                nearby = [(str(digit - 1), spread * (1 - up_share)), (str(digit + 1), spread * up_share)]
            choices = sorted([(token, written), (" ", 0.02), *nearby], key=lambda choice: -choice[1])
        content.append({
            "token": token, "logprob": math.log(dict(choices)[token]), "bytes": list(token.encode("utf-8")),
            "top_logprobs": [{"token": alternative, "logprob": math.log(probability),
                              "bytes": list(alternative.encode("utf-8"))}
                             for alternative, probability in choices[:top_logprobs]],
        })
        offset += len(token)
    return {"content": content, "refusal": None}


def _status_error(status: int, headers: dict[str, str]) -> dict[str, Any]:
    """An OpenAI-style error body; a 401 quotes the key it was sent, as OpenAI's own message does."""
    if status == 401:
        key = headers.get("authorization", "").removeprefix("Bearer ").strip()
        return {"error": {"message": f"Incorrect API key provided: {key}.", "type": "invalid_request_error",
                          "code": "invalid_api_key"}}
    if status == 429:  # a 429 that no wait fixes: OpenAI's answer to a key whose quota is used up
        return {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                          "type": "insufficient_quota", "code": "insufficient_quota"}}
    if status == 404:
        return {"error": {"message": "The model does not exist or you do not have access to it.",
                          "type": "invalid_request_error", "code": "model_not_found"}}
    return {"error": {"message": f"status {status}", "type": "invalid_request_error"}}


JsonResponder = Callable[[str, str, bytes, dict[str, str]], Awaitable[tuple[int, Any, list[str]]]]


@dataclass
class EventStream:
    """A reply sent as server-sent events: a `data:` line per event, then `data: [DONE]` (OpenAI's streaming)."""

    events: list[Any]

    def body(self) -> bytes:
        """The whole event stream as the response body."""
        lines = [f"data: {json.dumps(event)}\n\n" for event in self.events]
        return "".join([*lines, "data: [DONE]\n\n"]).encode("utf-8")


async def serve_json_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, respond: JsonResponder
) -> None:
    """Serve HTTP/1.1 requests on one connection (keep-alive) with `respond(method, path, body, headers)`.

    `respond` gives (status, JSON payload, extra header lines). Enough HTTP for the clients these test servers meet.
    """
    try:
        while True:
            request_line = await reader.readline()
            if not request_line:
                break
            method, path, _ = request_line.decode("latin-1").split(" ", 2)
            headers: dict[str, str] = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
            status, payload, extra = await respond(method, path, body, headers)
            if isinstance(payload, EventStream | RawBody):
                data = payload.body()
                content_type = "text/event-stream" if isinstance(payload, EventStream) else payload.content_type
            else:
                data, content_type = json.dumps(payload).encode("utf-8"), "application/json"
            head = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}", f"Content-Type: {content_type}",
                    f"Content-Length: {len(data)}", *extra]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


class ThreadedJsonServer:
    """A small JSON HTTP server on 127.0.0.1 (a free port unless given).

    It runs in a background thread with its own loop (`start_in_thread`) or in a running loop (`start_async`).
    Subclasses answer requests in `_respond(method, path, body, headers)`.
    """

    def __init__(self, *, port: int = 0) -> None:
        self._requested_port = port
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """The server's root URL."""
        return f"http://127.0.0.1:{self.port}"

    async def start_async(self) -> None:
        """Start listening in the running event loop."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self._requested_port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    def start_in_thread(self) -> Any:
        """Serve in a background thread; returns the server once it listens."""
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self.start_async())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name=type(self).__name__, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        """Stop serving: close the listener and the open connections in the loop, then end the thread."""
        loop, server = self._loop, self._server
        if loop is not None and server is not None:

            async def shutdown() -> None:
                server.close()
                connections = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
                for task in connections:
                    task.cancel()
                await asyncio.gather(*connections, return_exceptions=True)

            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_json_connection(reader, writer, self._respond)

    async def _respond(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, list[str]]:
        raise NotImplementedError


class StubServer(ThreadedJsonServer):
    """The server, runnable in a background thread (tests) or in its own process (benchmarks)."""

    def __init__(self, settings: StubSettings | None = None, *, port: int = 0) -> None:
        super().__init__(port=port)
        self.settings = settings or StubSettings()
        self.stats = StubStats()
        self._seen: Counter[str] = Counter()
        self._gate: asyncio.Semaphore | None = None
        rate = self.settings.requests_per_s
        self._bucket = RequestBucket(rate, headers=self.settings.limit_headers) if rate else None
        settings = self.settings
        self.batches = StubBatches(self._batch_line, dialect=settings.batch_dialect, delay_s=settings.batch_delay_s,
                                   error_rate=settings.batch_error_rate, expire_rate=settings.batch_expire_rate,
                                   refuse_model=settings.batch_refuse_model)

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (`http://127.0.0.1:PORT/v1`)."""
        return f"{self.endpoint}/v1"

    async def start_async(self) -> None:
        """Start listening in the running event loop, with the cap on concurrent requests."""
        self._gate = asyncio.Semaphore(self.settings.max_concurrent)
        await super().start_async()

    async def _respond(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, list[str]]:
        if method == "GET" and path.startswith("/stats"):
            return 200, {**self.stats.as_dict(), **self.batches.counts()}, []
        if method == "POST" and path.startswith("/stats/reset"):  # a benchmark's next command starts counting
            self.stats = StubStats()
            return 200, {}, []
        if method == "GET" and path.rstrip("/").endswith("/models"):
            return 200, {"object": "list", "data": [{"id": "stub", "object": "model"}]}, []
        route = path.split("?", 1)[0].rstrip("/")  # query parameters (a client's extra_query) do not change the route
        if self.batches.handles(route):
            return await self.batches.respond(method, route, body, headers)
        if method != "POST" or not route.endswith("/chat/completions"):
            return 404, {"error": {"message": "not found"}}, []
        request = json.loads(body or b"{}")
        if self.settings.fixed_status is not None:
            self.stats.requests += 1
            self.stats.faults[f"status_{self.settings.fixed_status}"] += 1
            return self.settings.fixed_status, _status_error(self.settings.fixed_status, headers), []
        key = hashlib.sha256(json.dumps(request.get("messages", []), sort_keys=True).encode()).hexdigest()
        self.stats.requests += 1
        if self.stats.first_request_at is None:
            self.stats.first_request_at = time.monotonic()
        try:
            return await self._limited(request, key)
        finally:
            self.stats.last_answer_at = time.monotonic()

    async def _limited(self, request: dict[str, Any], key: str) -> tuple[int, Any, list[str]]:
        """The answer to a chat request: a 429 from the rate limit, or the completion (after the concurrency gate)."""
        limit_lines: list[str] = []
        if self._bucket is not None:
            taken, limit_lines = self._bucket.take()
            if not taken:
                self.stats.faults["rate_limited"] += 1
                return 429, {"error": {"message": "Rate limit reached for requests", "type": "requests",
                                       "code": "rate_limit_exceeded"}}, limit_lines
        attempt = self._seen[key]
        self._seen[key] += 1
        assert self._gate is not None
        async with self._gate:
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            try:
                status, payload, lines = await self._complete(request, key, attempt)
                return status, payload, [*lines, *limit_lines]
            finally:
                self.stats.in_flight -= 1

    async def _complete(self, request: dict[str, Any], key: str, attempt: int) -> tuple[int, Any, list[str]]:
        settings = self.settings
        roll = _fraction("fault", key, str(attempt))
        thresholds = [
            ("error", settings.error_rate),
            ("rate_limit", settings.rate_limit_rate),
            ("hang", settings.hang_rate),
            ("garbage", settings.garbage_rate),
        ]
        fault = None
        edge = 0.0
        for name, rate in thresholds:
            edge += rate
            if roll < edge:
                fault = name
                break
        if fault == "rate_limit":
            self.stats.faults[fault] += 1
            return 429, {"error": {"message": "rate limited", "type": "rate_limit"}}, [
                f"Retry-After: {settings.retry_after_s}"
            ]
        if fault == "hang":
            self.stats.faults[fault] += 1
            await asyncio.sleep(settings.hang_s)
        if settings.latency_s:
            await asyncio.sleep(settings.latency_s)
        if fault == "error":
            self.stats.faults[fault] += 1
            return 500, {"error": {"message": "injected server error", "type": "server_error"}}, []
        if request.get("logprobs") and settings.refuse_logprobs:
            return 400, {"error": {"message": "logprobs is not supported with this model.", "param": "logprobs",
                                   "type": "invalid_request_error", "code": "unsupported_parameter"}}, []
        if fault == "garbage":
            self.stats.faults[fault] += 1
        return self._completion(request, key, attempt, garbage=fault == "garbage")

    async def _batch_line(self, request: dict[str, Any], key: str, attempt: int) -> tuple[int, Any, list[str]]:
        """The answer to one line of a batch: the reply a direct request gets, without latency or direct faults."""
        if request.get("logprobs") and self.settings.refuse_logprobs:
            return 400, {"error": {"message": "logprobs is not supported with this model.", "param": "logprobs",
                                   "type": "invalid_request_error", "code": "unsupported_parameter"}}, []
        return self._completion(request, key, attempt)

    def _completion(self, request: dict[str, Any], key: str, attempt: int, *,
                    garbage: bool = False) -> tuple[int, Any, list[str]]:
        """A chat completion for a request (a reply the parsers cannot read with `garbage`), counted in the stats."""
        settings = self.settings
        messages = request.get("messages", [])
        text = reply_for(messages, request.get("response_format"), first_answer_bonus=settings.first_answer_bonus)
        if garbage:
            text = "I would rather not say."
        self.stats.completions += 1
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        # A word stands for a token: a reply longer than max_tokens is cut off, as real servers do.
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        finish_reason = "stop"
        if isinstance(limit, int) and len(text.split()) > limit:
            text, finish_reason = " ".join(text.split()[:limit]), "length"
        completion_tokens = len(text.split())
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        common = {"id": f"stub-{key[:12]}-{attempt}", "created": int(time.time()),
                  "model": request.get("model", "stub")}
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        if request.get("stream"):
            return 200, EventStream(_stream_events(text, finish_reason, common, usage, request)), []
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": finish_reason}
        if request.get("logprobs") and settings.logprobs:
            choice["logprobs"] = token_logprobs(text, int(request.get("top_logprobs") or 0))
        return 200, {**common, "object": "chat.completion", "choices": [choice], "usage": usage}, []


def _stream_events(
    text: str, finish_reason: str, common: dict[str, Any], usage: dict[str, int], request: dict[str, Any]
) -> list[dict[str, Any]]:
    """The reply as `chat.completion.chunk` events: the role, a word each, the finish reason, usage if asked for."""
    def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        return {**common, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    words = re.findall(r"\S+\s*|\s+", text)
    events = [chunk({"role": "assistant", "content": ""}), *(chunk({"content": word}) for word in words),
              chunk({}, finish_reason)]
    if (request.get("stream_options") or {}).get("include_usage"):
        events.append({**common, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    return events


async def _serve_for(server: StubServer, lifetime_s: float) -> None:
    await server.start_async()
    print(server.base_url, flush=True)
    await asyncio.sleep(lifetime_s)


def main() -> None:
    """`python -m tools.dev.stub_server`: serve until killed or until `--lifetime` has passed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per call")
    parser.add_argument("--max-concurrent", type=int, default=64)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--rate-limit-rate", type=float, default=0.0)
    parser.add_argument("--hang-rate", type=float, default=0.0)
    parser.add_argument("--garbage-rate", type=float, default=0.0)
    parser.add_argument("--status", type=int, default=None, help="answer every chat request with this HTTP status")
    parser.add_argument("--requests-per-s", type=float, default=None, help="a rate limit answered with 429s")
    parser.add_argument("--no-logprobs", action="store_true", help="never return token probabilities")
    parser.add_argument("--batch-dialect", choices=["openai", "together"], default="openai",
                        help="serve OpenAI's batch routes or Together's variant")
    parser.add_argument("--batch-delay", type=float, default=1.0, help="seconds before a batch completes")
    parser.add_argument("--batch-error-rate", type=float, default=0.0, help="share of batch lines answered 500")
    parser.add_argument("--batch-expire-rate", type=float, default=0.0, help="share of batch lines that expire")
    parser.add_argument("--lifetime", type=float, default=900.0, help="stop by itself after this many seconds")
    args = parser.parse_args()
    settings = StubSettings(
        latency_s=args.latency, max_concurrent=args.max_concurrent, error_rate=args.error_rate,
        rate_limit_rate=args.rate_limit_rate, hang_rate=args.hang_rate, garbage_rate=args.garbage_rate,
        fixed_status=args.status, requests_per_s=args.requests_per_s, logprobs=not args.no_logprobs,
        batch_dialect=args.batch_dialect, batch_delay_s=args.batch_delay, batch_error_rate=args.batch_error_rate,
        batch_expire_rate=args.batch_expire_rate,
    )
    asyncio.run(_serve_for(StubServer(settings, port=args.port), args.lifetime))


if __name__ == "__main__":
    main()
