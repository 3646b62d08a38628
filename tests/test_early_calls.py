"""A fresh run's first calls go out before the graphs load, and are used, never paid twice (agents/early_calls.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import prompts as templates
from agents.early_calls import USER_AGENT, first_generator_request
from tools.cli import app
from tools.dev.stub_server import StubServer, StubSettings

runner = CliRunner()
PROMPTS = ["Why is the sky blue?", "Name two prime numbers.", "Say hello politely."]


class RecordingStub(StubServer):
    """The stub, keeping each chat request's body and user agent in the order they came."""

    def __init__(self, settings: StubSettings | None = None) -> None:
        super().__init__(settings or StubSettings())
        self.chats: list[tuple[str, dict[str, Any]]] = []

    async def _respond(self, method: str, path: str, body: bytes,
                       headers: dict[str, str]) -> tuple[int, Any, list[str]]:
        if method == "POST" and path.endswith("/chat/completions"):
            self.chats.append((headers.get("user-agent", ""), json.loads(body)))
        return await super()._respond(method, path, body, headers)


@pytest.fixture
def recording() -> RecordingStub:
    server = RecordingStub().start_in_thread()
    yield server
    server.stop()


def run(tmp_path: Path, output: Path, generator: str, judge: str, *extra: str) -> None:
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in PROMPTS))
    result = runner.invoke(app, ["generate", "--prompts", str(prompt_file), "--output", str(output), "--generator",
                                 generator, "--reviewer", judge, "--judge", judge, "--iterations", "2", *extra])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("provider", ["compat", "openai", "together"])
def test_the_early_request_is_the_one_the_model_client_sends(
    tmp_path: Path, recording: RecordingStub, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", recording.base_url)
    monkeypatch.setenv("TOGETHER_API_KEY", "tk-test")
    monkeypatch.setenv("TOGETHER_API_BASE", recording.base_url)
    model = {"compat": "stub", "openai": "gpt-4o-mini", "together": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"}
    generator = f"{provider}:{model[provider]}" + (f"@{recording.base_url}" if provider == "compat" else "")
    judge = f"compat:stub@{recording.base_url}"
    # A directory that is not a fresh run's: no early call, every request is the model client's own.
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "notes.txt").write_text("mine")
    run(tmp_path, tmp_path / "own", generator, judge, "--max-tokens", "300")
    assert all(agent != USER_AGENT for agent, _ in recording.chats)
    sent = [body for _, body in recording.chats]
    system = templates.render_role("generator_system", None)
    for prompt in PROMPTS:
        built = first_generator_request(provider, model[provider], prompt, system, temperature=0.0, max_tokens=300)
        assert built in sent, f"{provider}: {built}"


def test_a_fresh_run_uses_its_early_calls_and_pays_for_none_twice(tmp_path: Path, recording: RecordingStub) -> None:
    spec = f"compat:stub@{recording.base_url}"
    (tmp_path / "late").mkdir()
    (tmp_path / "late" / "notes.txt").write_text("not a fresh run directory")
    run(tmp_path, tmp_path / "late", spec, spec)
    without = list(recording.chats)
    recording.chats.clear()
    run(tmp_path, tmp_path / "early", spec, spec)
    early = [body for agent, body in recording.chats if agent == USER_AGENT]
    assert len(early) == len(PROMPTS)  # one per prompt: each generator's first call
    # The same requests, each once: the graph's first calls were answered by the early ones, not sent again.
    assert sorted(json.dumps(body, sort_keys=True) for _, body in recording.chats) == \
        sorted(json.dumps(body, sort_keys=True) for _, body in without)
    for name in ("dpo.jsonl", "kto.jsonl"):
        assert (tmp_path / "early" / name).read_text() == (tmp_path / "late" / name).read_text()


@pytest.mark.parametrize("extra", [["--cache", "CACHE"], ["--max-cost-usd", "5"], ["--batch"]])
def test_no_early_call_where_the_run_decides_otherwise_which_calls_go_out(
    tmp_path: Path, recording: RecordingStub, extra: list[str]
) -> None:
    from tools.cli.main import start_early_calls
    from tools.cli.options import GenerateOptions

    spec = f"compat:stub@{recording.base_url}"
    extra = [str(tmp_path / "cache.sqlite") if value == "CACHE" else value for value in extra]
    values: dict[str, Any] = {"prompts": "x.jsonl", "output": tmp_path / "out", "generator": spec, "reviewer": [spec],
                              "judge": [spec], extra[0].removeprefix("--").replace("-", "_"):
                              extra[1] if len(extra) > 1 else True}
    options = GenerateOptions.model_validate(values)
    assert start_early_calls(options, PROMPTS, options.context()) is None
    local = GenerateOptions.model_validate({**values, extra[0].removeprefix("--").replace("-", "_"): None
                                            if len(extra) > 1 else False, "generator": "local:smollm2"})
    assert start_early_calls(local, PROMPTS, local.context()) is None
    assert recording.chats == []


def test_an_early_call_answered_with_an_error_is_retried_by_the_client(tmp_path: Path) -> None:
    # Half the stub's first answers to a request are HTTP 500 (deterministic per request and attempt): an early
    # call's 500 reaches the client as the answer to its first request, and the client's retry goes out for real.
    server = RecordingStub(StubSettings(error_rate=0.5)).start_in_thread()
    try:
        spec = f"compat:stub@{server.base_url}"
        run(tmp_path, tmp_path / "early", spec, spec)
        early = [body for agent, body in server.chats if agent == USER_AGENT]
        assert len(early) == len(PROMPTS) and server.stats.faults["error"]
        retried = [body for body in early if sum(other == body for _, other in server.chats) > 1]
        assert retried, "no early call failed: the test shows nothing"
        records = (tmp_path / "early" / "records.jsonl").read_text().splitlines()
        assert len(records) == len(PROMPTS) and all(json.loads(line)["answers"] for line in records)
    finally:
        server.stop()
