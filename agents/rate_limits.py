"""Calm under a provider's rate limit: one controller per endpoint paces and caps the HTTP requests sent to it.

Every request a run's chat clients send passes through the controller of its endpoint (its scheme, host and
port, and its API key: two keys are two limits). The controller:

- **paces** requests (and their estimated tokens) to the limit the provider announces in its headers
  (`x-ratelimit-limit|remaining|reset-requests|tokens`, as OpenAI and Together send them), by keeping a copy of
  the provider's bucket: its level, from `remaining`, and its refill rate, `(limit - remaining) / reset`. Until
  an endpoint's first answer, at most `FIRST_WAVE` requests go to it, so that the limit is known before a burst;
  an endpoint that sends no such header (a local llama.cpp or vLLM) is not paced;
- **holds** every request to the endpoint after a 429 until the time the provider names (`retry-after-ms`,
  `retry-after`, `x-ratelimit-reset-requests|tokens`), then sends the request again itself: a 429 is waited out,
  not counted against `--max-retries` as a 5xx is, as long as the endpoint answered some call within
  `PATIENCE_S`. A 429 that says the quota is used up (`insufficient_quota`) is returned at once: no wait fixes it,
  and the circuit breaker stops the run;
- **adapts** how many requests are in flight (AIMD, as inspect_ai does): at most the process's share of
  `--concurrency`; lowered by half once per rate-limit *episode* (every 429 of requests sent before the episode
  began belongs to it: one storm is one episode), and raised by one after each `ceiling` calls answered without
  a 429.

Each process has its own controllers: with Ray workers, each paces to its share of the provider's rate (its
share of the call slots; see `EndpointControllers.share`), so that together they stay under the limit.

What a call waited and how many 429s it met go to its record through `CallMeter` (see `agents/calls.py`).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Until an endpoint has answered once, how many requests may be under way to it (the limit is not known yet).
FIRST_WAVE = 4
# How long 429s are waited out while nothing to the endpoint succeeds, before the call fails like any other.
PATIENCE_S = 300.0
# What a 429 without any timing header is waited out for.
DEFAULT_HOLD_S = 1.0
# The share of the provider's announced rate the pacer uses: the rest absorbs clock and counting differences.
RATE_MARGIN = 0.95
DECREASE_FACTOR = 0.5
QUOTA_CODES = ("insufficient_quota",)
# Set on a 429 handed back to the client once waiting stopped (see `gave_up_waiting`).
GAVE_UP_HEADER = "x-fellowship-gave-up-after-s"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str | None) -> float | None:
    """Seconds in an `x-ratelimit-reset-*` value (`1s`, `6m0s`, `120ms`, `0.5s`, `1h2m3.5s`, or a bare number)."""
    if text is None:
        return None
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(number) * scale[unit] for number, unit in parts)


def _number(headers: Mapping[str, str], name: str) -> float | None:
    try:
        value = headers.get(name)
        return float(value) if value is not None else None
    except ValueError:
        return None


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """How long a 429 asks the caller to wait: `retry-after-ms`, else `retry-after` (seconds), else the resets."""
    milliseconds = _number(headers, "retry-after-ms")
    if milliseconds is not None:
        return milliseconds / 1000
    seconds = _number(headers, "retry-after")
    if seconds is not None:
        return seconds
    resets = [parse_duration(headers.get(f"x-ratelimit-reset-{kind}")) for kind in ("requests", "tokens")]
    known = [reset for reset in resets if reset is not None]
    return max(known) if known else None


@dataclass
class Bucket:
    """A copy of one of the provider's buckets (requests or tokens): how much is left, and how fast it refills."""

    capacity: float
    level: float
    rate: float  # per second; 0 while unknown
    at: float

    def refill(self, now: float, share: float) -> None:
        """Bring the level up to `now` at this process's share of the rate."""
        if now > self.at:
            self.level = min(self.capacity * share, self.level + self.rate * share * RATE_MARGIN * (now - self.at))
            self.at = now

    def wait_s(self, cost: float, now: float, share: float) -> float:
        """How long until `cost` can be taken (0: now)."""
        self.refill(now, share)
        missing = min(cost, self.capacity * share) - self.level
        if missing <= 0:
            return 0.0
        rate = self.rate * share * RATE_MARGIN
        return missing / rate if rate > 0 else DEFAULT_HOLD_S

    def sync(self, limit: float, remaining: float, reset_s: float | None, now: float, share: float) -> None:
        """Learn from a response's headers: the capacity, the rate, and (never upwards) the level."""
        self.capacity = max(limit, 1.0)
        if reset_s and reset_s > 0 and limit > remaining:
            self.rate = (limit - remaining) / reset_s
        self.refill(now, share)
        # Never upwards: every request sent was taken from the level already, counted by the provider or not.
        self.level = min(self.level, remaining * share)


@dataclass
class EndpointStats:
    """What an endpoint's limits cost a process: 429s met, episodes, seconds calls waited."""

    rate_limited: int = 0
    episodes: int = 0
    waited_s: float = 0.0


@dataclass
class CallMeter:
    """One model call's share of rate limiting: the 429s it met and the seconds it waited (pacing and holds)."""

    rate_limited: int = 0
    waited_s: float = 0.0
    # With `--batch` (agents/batches.py): the call went by batch, and what its line is mapped to in the run directory.
    batched: bool = False
    item: str | None = None
    run: str | None = None


call_meter: contextvars.ContextVar[CallMeter | None] = contextvars.ContextVar("fellowship_call_meter", default=None)


def request_cost_tokens(body: bytes) -> float:
    """The tokens a provider counts against its limit when it receives a request: the prompt and max_tokens."""
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        payload = {}
    limit = payload.get("max_completion_tokens") or payload.get("max_tokens") or 0 if isinstance(payload, dict) \
        else 0
    return len(body) / 4 + (limit if isinstance(limit, int | float) else 0)


class EndpointController:
    """The pacing, holds and adaptive ceiling of one endpoint in this process (see the module docstring)."""

    def __init__(self, name: str, cap: int, *, share: Callable[[], float] = lambda: 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.cap = max(1, cap)
        self.ceiling = float(self.cap)
        self.share = share
        self.clock = clock
        self.in_flight = 0
        self.answered = 0  # responses of any status
        self.hold_until = 0.0
        self.episode_began: float | None = None  # when the current episode began (requests sent before belong to it)
        self.clean_calls = 0  # calls answered without a 429 since the ceiling last changed
        self.paced = False  # whether the endpoint announced its limits
        self.requests: Bucket | None = None
        self.tokens: Bucket | None = None
        self.last_success_at: float | None = None
        self.stats = EndpointStats()
        self.first_seen = clock()
        self._waiting: deque[asyncio.Future[None]] = deque()

    def limit_now(self) -> int:
        """How many requests may be in flight now."""
        if self.answered == 0:
            return min(self.cap, FIRST_WAVE)
        return max(1, min(self.cap, int(self.ceiling)))

    def delay_s(self, cost_tokens: float, now: float) -> float:
        """How long a request must wait before it may be sent (a hold, or the pace of the buckets)."""
        share = self.share()
        wait = max(0.0, self.hold_until - now)
        if self.requests is not None:
            wait = max(wait, self.requests.wait_s(1, now, share))
        if self.tokens is not None:
            wait = max(wait, self.tokens.wait_s(cost_tokens, now, share))
        return wait

    async def acquire(self, cost_tokens: float, meter: CallMeter | None) -> float:
        """Wait for a slot, the end of any hold and the pace; take them; returns the time of sending."""
        while True:
            now = self.clock()
            delay = self.delay_s(cost_tokens, now)
            if delay > 0:
                await asyncio.sleep(delay)
                self._waited(self.clock() - now, meter)
                continue
            if self.in_flight < self.limit_now():
                break
            started = self.clock()
            first_wave = self.answered == 0
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            finally:
                if not first_wave:  # waiting for the endpoint's first answer is not a rate limit's doing
                    self._waited(self.clock() - started, meter)
        self.in_flight += 1
        share = self.share()
        if self.requests is not None:
            self.requests.refill(now, share)
            self.requests.level -= 1
        if self.tokens is not None:
            self.tokens.refill(now, share)
            self.tokens.level -= cost_tokens
        return now

    def _waited(self, seconds: float, meter: CallMeter | None) -> None:
        self.stats.waited_s += seconds
        if meter is not None:
            meter.waited_s += seconds

    def release(self) -> None:
        """A request has its answer: its slot goes to the next waiting request (as many as the limit allows)."""
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        free = self.limit_now() - self.in_flight
        while free > 0 and self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def on_answer(self, status: int, headers: Mapping[str, str], sent_at: float) -> None:
        """Learn from an answer: the announced limits, and a 429's hold and episode."""
        now = self.clock()
        self.answered += 1
        self._learn_limits(headers, now)
        if status == 429:
            self.stats.rate_limited += 1
            hold = retry_after_s(headers)
            self.hold_until = max(self.hold_until, now + (hold if hold is not None else DEFAULT_HOLD_S))
            if self.requests is not None:
                self.requests.level = min(self.requests.level, 0.0)
            if self.episode_began is None or sent_at >= self.episode_began:
                # A request sent after the episode began was refused too: the ceiling is still too high.
                self.episode_began = now
                self.stats.episodes += 1
                self.ceiling = max(1.0, math.floor(self.ceiling * DECREASE_FACTOR))
                self.clean_calls = 0
        else:
            if status < 400:
                self.last_success_at = now
            if self.episode_began is not None and sent_at >= self.episode_began:
                self.episode_began = None  # a request sent since the storm went through: it is over
            self.clean_calls += 1
            if self.clean_calls >= self.ceiling and self.ceiling < self.cap:
                self.clean_calls = 0
                self.ceiling += 1
        self._wake()

    def _learn_limits(self, headers: Mapping[str, str], now: float) -> None:
        share = self.share()
        for kind in ("requests", "tokens"):
            limit = _number(headers, f"x-ratelimit-limit-{kind}")
            remaining = _number(headers, f"x-ratelimit-remaining-{kind}")
            if limit is None or remaining is None:
                continue
            self.paced = True
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            bucket = self.requests if kind == "requests" else self.tokens
            if bucket is None:
                # The other requests of the first wave may not be counted in `remaining` yet: count them as spent.
                bucket = Bucket(capacity=limit, level=remaining * share - (self.in_flight - 1), rate=0.0, at=now)
                if kind == "requests":
                    self.requests = bucket
                else:
                    self.tokens = bucket
            bucket.sync(limit, remaining, reset, now, share)

    def patience_left(self) -> bool:
        """Whether a 429 is still worth waiting out: the endpoint answered a call within `PATIENCE_S`.

        Before its first success, the time counts from the controller's first request.
        """
        reference = self.last_success_at if self.last_success_at is not None else self.first_seen
        return self.clock() - reference < PATIENCE_S

    def status(self) -> str | None:
        """`HOST: 12 in flight, ceiling 16/64` while the ceiling is below the cap (None otherwise)."""
        if int(self.ceiling) >= self.cap:
            return None
        return f"{self.name}: {self.in_flight} in flight, ceiling {int(self.ceiling)}/{self.cap}"


def endpoint_key(url: Any, authorization: str | None) -> tuple[str, str]:
    """(the endpoint's name, its key): scheme, host and port, and a digest of the API key (two keys, two limits)."""
    name = f"{url.host}:{url.port}" if url.port else str(url.host)
    digest = hashlib.sha256((authorization or "").encode()).hexdigest()[:12]
    return name, f"{url.scheme}://{name}#{digest}"


@dataclass
class EndpointControllers:
    """The controllers of one process, one per endpoint; `cap` is the process's share of `--concurrency`.

    `share` is the process's share of each provider's rate (1 alone; with Ray workers, its share of the call
    slots), settable while the run goes on (a worker joining or leaving changes it).
    """

    cap: int
    share: float = 1.0
    controllers: dict[str, EndpointController] = field(default_factory=dict)

    def for_request(self, url: Any, authorization: str | None) -> EndpointController:
        """The controller of a request's endpoint, made on first use."""
        name, key = endpoint_key(url, authorization)
        controller = self.controllers.get(key)
        if controller is None:
            controller = EndpointController(name, self.cap, share=lambda: self.share)
            self.controllers[key] = controller
        return controller

    def status(self) -> list[str]:
        """The endpoints whose ceiling is below the cap, as `HOST: N in flight, ceiling C/CAP`."""
        return [line for controller in self.controllers.values() if (line := controller.status()) is not None]

    def totals(self) -> EndpointStats:
        """The 429s, episodes and waits of every endpoint together."""
        total = EndpointStats()
        for controller in self.controllers.values():
            total.rate_limited += controller.stats.rate_limited
            total.episodes += controller.stats.episodes
            total.waited_s += controller.stats.waited_s
        return total


async def send_paced(controllers: EndpointControllers, request: Any,
                     send: Callable[[], Awaitable[Any]]) -> Any:
    """Send an HTTP request through its endpoint's controller, waiting out 429s (see the module docstring)."""
    controller = controllers.for_request(request.url, request.headers.get("authorization"))
    meter = call_meter.get()
    cost = request_cost_tokens(request.content) if controller.tokens is not None else 0.0
    while True:
        sent_at = await controller.acquire(cost, meter)
        try:
            response = await send()
        except BaseException:
            controller.release()
            raise
        controller.on_answer(response.status_code, response.headers, sent_at)
        controller.release()
        if response.status_code != 429:
            return response
        if meter is not None:
            meter.rate_limited += 1
        await response.aread()
        if _quota_used_up(response):
            return response  # no wait fixes it: the call fails for good, and the circuit breaker stops the run
        if not controller.patience_left():
            # The client retries it within --max-retries, then fails the call for good (`gave_up_waiting`).
            response.headers[GAVE_UP_HEADER] = f"{PATIENCE_S:g}"
            return response
        await response.aclose()


def gave_up_waiting(status: int, headers: Mapping[str, str], body: Any) -> str | None:
    """Why a 429 is final, when it is: the quota is used up, or the endpoint answered no call for `PATIENCE_S`."""
    if status != 429:
        return None
    if _says_quota_is_used_up(body):
        return "the API key's quota is used up"
    if headers.get(GAVE_UP_HEADER):
        return f"rate limited, and no call to it was answered for {headers[GAVE_UP_HEADER]} s"
    return None


def _says_quota_is_used_up(body: Any) -> bool:
    """Whether an error body is OpenAI's answer to a key without quota (`insufficient_quota`)."""
    error = body.get("error", body) if isinstance(body, dict) else None
    return isinstance(error, dict) and (error.get("code") in QUOTA_CODES or error.get("type") in QUOTA_CODES)


def _quota_used_up(response: Any) -> bool:
    try:
        return _says_quota_is_used_up(response.json())
    except ValueError:
        return False


def paced_client_class(base: type) -> type:
    """A subclass of an httpx2 AsyncClient class whose `send` goes through `EndpointControllers` (its `controllers`)."""
    return _PACED_CLASSES.setdefault(base, type(f"Paced{base.__name__}", (base,), {"send": _paced_send}))


_PACED_CLASSES: dict[type, type] = {}


async def _paced_send(self: Any, request: Any, **options: Any) -> Any:
    parent = super(type(self), self).send  # the base client's own send
    return await send_paced(self.controllers, request, lambda: parent(request, **options))
