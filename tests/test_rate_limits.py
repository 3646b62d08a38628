"""Calm under a provider's rate limit (`agents/rate_limits.py`): the controller alone on a fake clock, then whole
runs against the stub server with a request limit of its own (a token bucket answering 429 with OpenAI's headers).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agents.rate_limits import EndpointController, parse_duration, retry_after_s
from tests.test_generation import generate_args, write_prompts
from tools.cli import app
from tools.dev.stub_server import StubServer, StubSettings

runner = CliRunner()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def controller(cap: int = 64) -> tuple[EndpointController, Clock]:
    clock = Clock()
    return EndpointController("api.example:443", cap, clock=clock), clock


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("120ms", 0.12), ("0.5s", 0.5), ("1h2m3.5s", 3723.5), ("2", 2.0),
    ("soon", None), ("5x", None), (None, None),
])
def test_reset_durations_read_as_openai_writes_them(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_a_429_names_its_wait_in_milliseconds_first_then_seconds_then_the_resets() -> None:
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "1"}) == 0.25
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"x-ratelimit-reset-requests": "1.5s", "x-ratelimit-reset-tokens": "6m0s"}) == 360.0
    assert retry_after_s({}) is None


def test_one_storm_lowers_the_ceiling_once_and_a_later_refusal_again() -> None:
    endpoint, clock = controller(cap=64)
    endpoint.on_answer(200, {}, sent_at=0.0)  # the first answer: no limit announced
    clock.now = 1.0
    for _ in range(10):  # ten requests sent together, all refused: one storm
        endpoint.on_answer(429, {"retry-after-ms": "100"}, sent_at=0.9)
    assert (endpoint.stats.episodes, endpoint.stats.rate_limited, endpoint.ceiling) == (1, 10, 32)
    clock.now = 2.0
    endpoint.on_answer(429, {"retry-after-ms": "100"}, sent_at=1.5)  # sent after the storm began: still too fast
    assert (endpoint.stats.episodes, endpoint.ceiling) == (2, 16)


def test_a_retry_after_holds_every_call_to_the_endpoint() -> None:
    endpoint, clock = controller()
    for step in range(20):  # 20 calls answered in the second before the 429: a pace of 20 a second from now on
        clock.now = 0.05 * step
        endpoint.on_answer(200, {}, sent_at=clock.now)
    clock.now = 1.0
    endpoint.on_answer(429, {"retry-after-ms": "300"}, sent_at=0.95)
    assert endpoint.delay_s(0, now=1.1) == pytest.approx(0.2)
    assert endpoint.delay_s(0, now=1.3) == 0


def test_announced_limits_pace_calls_before_any_429() -> None:
    endpoint, _ = controller()
    # 10 requests a second, none left: the next may go when one has come back (at 95% of the announced rate).
    endpoint.on_answer(200, {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "0",
                             "x-ratelimit-reset-requests": "1s"}, sent_at=0.0)
    assert endpoint.paced and endpoint.stats.rate_limited == 0
    assert endpoint.delay_s(0, now=0.0) == pytest.approx(1 / (10 * 0.95))
    assert endpoint.delay_s(0, now=0.5) == 0  # refilled meanwhile


def test_an_endpoint_without_limits_is_left_alone() -> None:
    endpoint, clock = controller(cap=8)
    for step in range(100):
        clock.now = step * 0.01
        endpoint.on_answer(200, {}, sent_at=clock.now)
        assert endpoint.delay_s(0, now=clock.now) == 0
    assert (endpoint.ceiling, endpoint.limit_now(), endpoint.paced, endpoint.stats.waited_s) == (8, 8, False, 0)


def rate_limited(records_path: Path) -> int:
    return sum(json.loads(line)["usage"]["rate_limited"] for line in records_path.read_text().splitlines())


def test_a_rate_limited_endpoint_fails_no_prompt_and_is_rarely_refused(tmp_path: Path) -> None:
    # The case: 30 prompts (180 calls) with 64 calls allowed in flight, against 40 requests a second.
    server = StubServer(StubSettings(requests_per_s=40)).start_in_thread()
    try:
        prompts = write_prompts(tmp_path / "prompts.jsonl", 30)
        calm = runner.invoke(app, generate_args(prompts, tmp_path / "calm", server.base_url, "-c", "64"))
        assert calm.exit_code == 0, calm.output
        assert "done: 30  failed: 0" in calm.output
        refused = server.stats.faults["rate_limited"]
        assert refused < 0.05 * server.stats.requests
        assert server.stats.completions == 180
        # What the run says it met is what the provider refused.
        assert rate_limited(tmp_path / "calm" / "records.jsonl") == refused

        before = server.stats.requests, server.stats.faults["rate_limited"]
        storm = runner.invoke(app, generate_args(prompts, tmp_path / "storm", server.base_url, "-c", "64",
                                                 "--no-adaptive", "--max-retries", "2"))
        requests = server.stats.requests - before[0]
        refused = server.stats.faults["rate_limited"] - before[1]
        # Each call for itself: most requests are refused, and prompts fail.
        assert refused > 0.3 * requests and storm.exit_code == 2, storm.output
    finally:
        server.stop()


def test_an_endpoint_without_limits_gets_every_call_at_once_and_no_rate_line(tmp_path: Path, stub: StubServer) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 12)
    result = runner.invoke(app, generate_args(prompts, tmp_path / "out", stub.base_url, "-c", "16"))
    assert result.exit_code == 0, result.output
    assert stub.stats.requests == 12 * 6 and not stub.stats.faults
    assert "rate limits:" not in result.output
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    # The usage says so; the exchanges leave the zeros out (most calls meet no limit).
    assert all(record["usage"]["rate_limited"] == 0 and record["usage"]["rate_waited_s"] == 0 for record in records)
    exchanges = [exchange for record in records
                 for exchange in [answer["exchange"] for answer in record["answers"]] + record["verdict"]["exchanges"]]
    assert exchanges and not any("rate_limited" in exchange or "rate_waited_s" in exchange for exchange in exchanges)


def test_a_key_without_quota_stops_the_run_through_the_circuit_breaker(tmp_path: Path) -> None:
    server = StubServer(StubSettings(fixed_status=429)).start_in_thread()
    try:
        prompts = write_prompts(tmp_path / "prompts.jsonl", 10)
        result = runner.invoke(app, generate_args(prompts, tmp_path / "out", server.base_url, "--max-retries", "0"))
        assert result.exit_code == 1, result.output
        assert re.search(r"error: stopped: 3 prompts in a row failed the same way \(compat:stub@\S+: HTTP 429 the "
                         r"API key's quota is used up", result.output), result.output
        assert server.stats.requests <= 8  # at most the calls in flight (-c 8) when the breaker tripped
    finally:
        server.stop()
