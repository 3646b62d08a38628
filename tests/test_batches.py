"""`--batch`: every call of the graph by the providers' batch APIs, against the stub's file and batch routes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from typer.testing import CliRunner

from agents.batch_store import BatchStore, OutgoingLine
from agents.batches import BatchCoordinator
from agents.models import BatchSettings
from agents.prices import PriceTable, parse_prices
from tools.cli import app
from tools.dev.stub_server import StubServer, StubSettings, reply_for
from tools.errors import ConfigError

runner = CliRunner()
FAST = ("--batch", "--batch-wait", "0.2")


def write_prompts(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Batch question {index}?"}) + "\n" for index in range(count)))
    return path


def generate_args(prompts: Path, output: Path, spec: str, *extra: str) -> list[str]:
    return ["generate", "--prompts", str(prompts), "--output", str(output), "--generator", spec, "--reviewer", spec,
            "--judge", spec, "--scoring", "parsed", *extra]


def sorted_lines(path: Path) -> list[str]:
    return sorted(path.read_text().splitlines())


def calls_of(output: Path) -> int:
    return sum(json.loads(line)["usage"]["calls"] for line in (output / "records.jsonl").read_text().splitlines())


@pytest.fixture
def batch_stub() -> StubServer:
    server = StubServer(StubSettings(batch_delay_s=0.2)).start_in_thread()
    yield server
    server.stop()


def test_batch_run_gives_the_datasets_of_a_direct_run(tmp_path: Path, batch_stub: StubServer) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 8)
    spec = f"compat:stub@{batch_stub.base_url}"
    direct = runner.invoke(app, generate_args(prompts, tmp_path / "direct", spec))
    assert direct.exit_code == 0, direct.output
    direct_requests = batch_stub.stats.requests
    batched = runner.invoke(app, generate_args(prompts, tmp_path / "batched", spec, *FAST))
    assert batched.exit_code == 0, batched.output
    for name in ("dpo.jsonl", "kto.jsonl"):
        assert sorted_lines(tmp_path / "batched" / name) == sorted_lines(tmp_path / "direct" / name)
    # Not one direct request: every call went by batch, one line each, and each step of the 8 prompts in one batch.
    assert batch_stub.stats.requests == direct_requests
    assert batch_stub.batches.lines_received == calls_of(tmp_path / "batched") == calls_of(tmp_path / "direct")
    assert len(batch_stub.batches.batches) == 6  # 3 answers, 2 review rounds, 1 verdict: one batch each
    records = [json.loads(line) for line in (tmp_path / "batched" / "records.jsonl").read_text().splitlines()]
    assert all(answer["exchange"].get("batched") for record in records for answer in record["answers"])
    assert "calls answered by the providers' batch APIs" in (tmp_path / "batched" / "README.md").read_text()
    assert "batch 00001 sent: 8 requests" in batched.output
    assert (tmp_path / "batched" / "batches" / "00001.jsonl").read_text().count("\n") == 8


def test_sigkill_with_batches_out_then_rerun_sends_no_request_twice(tmp_path: Path) -> None:
    server = StubServer(StubSettings(batch_delay_s=2.5)).start_in_thread()
    try:
        prompts = write_prompts(tmp_path / "prompts.jsonl", 10)
        spec = f"compat:stub@{server.base_url}"
        killed = tmp_path / "killed"
        command = [sys.executable, "-m", "tools.cli", *generate_args(prompts, killed, spec, *FAST)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        live: list[tuple[str, str]] = []
        while time.monotonic() < deadline and not live:
            time.sleep(0.2)
            try:
                with sqlite3.connect(killed / "batches.sqlite", timeout=1) as db:
                    rows = db.execute("SELECT status, provider_id FROM batches").fetchall()
            except sqlite3.Error:
                continue
            # Killed once the first step is done and the second's batch is out at the provider.
            if any(status == "completed" for status, _ in rows):
                live = [(status, provider) for status, provider in rows if status == "in_progress" and provider]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        assert live, "no batch was out when the run was killed"
        out_at_kill = server.batches.lines_received
        # Without --batch the same directory is refused: the calls its batches hold would be paid again.
        direct = runner.invoke(app, generate_args(prompts, killed, spec))
        assert direct.exit_code != 0 and "still out at the provider: run with --batch" in direct.output

        resumed = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
        assert resumed.returncode == 0, resumed.stderr
        assert "re-attached to batch 00002" in resumed.stderr
        # Every call was sent once: the lines the provider received equal the calls of the finished run, and none
        # of the lines out at the kill came again.
        assert server.batches.lines_received == calls_of(killed) > out_at_kill
        assert server.batches.counts()["batch_lines_repeated"] == 0

        reference = tmp_path / "reference"
        assert runner.invoke(app, generate_args(prompts, reference, spec, *FAST)).exit_code == 0
        for name in ("dpo.jsonl", "kto.jsonl"):
            assert sorted_lines(killed / name) == sorted_lines(reference / name)
    finally:
        server.stop()


def test_failed_and_expired_lines_go_again_in_a_later_batch(tmp_path: Path) -> None:
    settings = StubSettings(batch_delay_s=0.1, batch_error_rate=0.15, batch_expire_rate=0.15)
    server = StubServer(settings).start_in_thread()
    try:
        prompts = write_prompts(tmp_path / "prompts.jsonl", 10)
        spec = f"compat:stub@{server.base_url}"
        result = runner.invoke(app, generate_args(prompts, tmp_path / "out", spec, *FAST))
        assert result.exit_code == 0, result.output
        faults = server.batches.line_faults
        assert faults["error"] and faults["expired"], faults
        # Each failed or expired line was sent once more, and every prompt finished.
        assert server.batches.counts()["batch_lines_repeated"] == faults["error"] + faults["expired"]
        assert server.batches.lines_received == calls_of(tmp_path / "out") + faults["error"] + faults["expired"]
        assert "sent again in a later batch" in result.output
        assert json.loads((tmp_path / "out" / "records.jsonl").read_text().splitlines()[0])["answers"]
    finally:
        server.stop()


def test_results_out_of_order_reach_the_call_that_asked(tmp_path: Path, batch_stub: StubServer) -> None:
    base = batch_stub.base_url

    async def ask_all() -> list[tuple[int, object]]:
        coordinator = BatchCoordinator(BatchSettings(directory=tmp_path, wait_s=0.1, poll_s=0.1))
        coordinator.register(base, "stub", provider="compat", spec=f"compat:stub@{base}", api_key="none")
        try:
            bodies = [{"model": "stub", "messages": [{"role": "user", "content": f"Say number {index}"}]}
                      for index in range(30)]
            return await asyncio.gather(*(coordinator.submit(base, body) for body in bodies))
        finally:
            await coordinator.aclose()

    answers = asyncio.run(ask_all())
    for index, (status, payload) in enumerate(answers):
        assert status == 200
        expected = reply_for([{"role": "user", "content": f"Say number {index}"}], None)
        assert payload["choices"][0]["message"]["content"] == expected  # type: ignore[index]
    batch = next(iter(batch_stub.batches.batches.values()))
    output = batch_stub.batches.files[str(batch.output_file_id)].decode().splitlines()
    order = [json.loads(line)["custom_id"] for line in output]
    sent = [line["custom_id"] for line in batch.lines]
    assert sorted(order) == sorted(sent) and order != sent  # the stub answered out of order


def test_a_batch_created_just_before_a_kill_is_found_by_its_metadata(tmp_path: Path, batch_stub: StubServer) -> None:
    base = batch_stub.base_url
    body = {"model": "stub", "messages": [{"role": "user", "content": "Say hello"}]}
    run_dir = tmp_path / "run"

    async def first_run_dies_after_create() -> None:
        # What a run killed between the provider creating the batch and the id being written leaves behind.
        coordinator = BatchCoordinator(BatchSettings(directory=run_dir, wait_s=0.1, poll_s=0.1))
        coordinator.register(base, "stub", provider="compat", spec=f"compat:stub@{base}", api_key="none")
        endpoint = coordinator.endpoints[base]
        ask = asyncio.ensure_future(coordinator.submit(base, body))
        await asyncio.sleep(0)  # the call is queued under its custom_id
        custom_id = next(iter(coordinator._waiting))
        ask.cancel()
        coordinator._queues.clear()
        line = OutgoingLine(custom_id, body, None, None)
        data = line.request_line("/v1/chat/completions").encode()
        coordinator.store.prepare("00001", base_url=base, model="stub", spec="compat:stub", lines=[line], data=data)
        file_id = await coordinator._upload(endpoint, "00001", data)
        await coordinator._create(endpoint, file_id, "00001")
        await coordinator.aclose()

    async def second_run() -> tuple[int, object]:
        coordinator = BatchCoordinator(BatchSettings(directory=run_dir, wait_s=0.1, poll_s=0.1))
        coordinator.register(base, "stub", provider="compat", spec=f"compat:stub@{base}", api_key="none")
        try:
            return await coordinator.submit(base, body)
        finally:
            await coordinator.aclose()

    asyncio.run(first_run_dies_after_create())
    assert BatchStore(run_dir).batch("00001").provider_id is None
    status, _ = asyncio.run(second_run())
    assert status == 200
    assert len(batch_stub.batches.batches) == 1 and batch_stub.batches.lines_received == 1
    assert BatchStore(run_dir).batch("00001").provider_id == "batch_0001"


def test_a_batch_that_fails_validation_stops_the_run_in_one_line(tmp_path: Path) -> None:
    server = StubServer(StubSettings(batch_delay_s=0.1, batch_refuse_model="stub")).start_in_thread()
    try:
        prompts = write_prompts(tmp_path / "prompts.jsonl", 4)
        result = runner.invoke(app, generate_args(prompts, tmp_path / "out", f"compat:stub@{server.base_url}",
                                                  *FAST))
        assert result.exit_code != 0
        stopped = [line for line in result.output.splitlines() if line.startswith("error: stopped")]
        assert len(stopped) == 1 and "failed validation" in stopped[0] and "line 1" in stopped[0], result.output
        assert server.stats.completions == 0
    finally:
        server.stop()


def test_together_dialect_and_no_key_in_the_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = StubServer(StubSettings(batch_delay_s=0.1, batch_dialect="together")).start_in_thread()
    try:
        monkeypatch.setenv("TOGETHER_API_KEY", "tk-very-secret-key")
        monkeypatch.setenv("TOGETHER_API_BASE", server.base_url)
        prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
        spec = "together:meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"
        result = runner.invoke(app, generate_args(prompts, tmp_path / "out", spec, *FAST))
        assert result.exit_code == 0, result.output
        assert server.batches.lines_received == calls_of(tmp_path / "out")
        usage = json.loads((tmp_path / "out" / "records.jsonl").read_text().splitlines()[0])["usage"]
        listed = PriceTable().call_cost(spec, usage["input_tokens"], usage["output_tokens"])
        assert listed and usage["cost_usd"] == pytest.approx(listed / 2)  # Together's batch price: half
        for path in (tmp_path / "out").rglob("*"):
            if path.is_file():
                assert b"tk-very-secret-key" not in path.read_bytes(), path
        assert "tk-very-secret-key" not in result.output
    finally:
        server.stop()


def test_dry_run_prices_batch_calls_at_the_batch_price(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    prompts = write_prompts(tmp_path / "prompts.jsonl", 5)
    args = generate_args(prompts, tmp_path / "out", "openai:gpt-4o", "--dry-run")
    listed = runner.invoke(app, args)
    batched = runner.invoke(app, [*args, "--batch"])
    assert listed.exit_code == 0 and batched.exit_code == 0, batched.output
    list_cost = float(listed.output.split("cost: $")[1].split()[0])
    batch_cost = float(batched.output.split("cost: $")[1].split()[0])
    assert batch_cost == pytest.approx(list_cost / 2, abs=1e-4)
    assert f"(list price: ${list_cost:.4f})" in batched.output
    custom = runner.invoke(app, [*args, "--batch", "--price", "openai:gpt-4o=2.5:10:0.25:1"])
    assert float(custom.output.split("cost: $")[1].split()[0]) == pytest.approx(list_cost / 10, abs=1e-4)
    assert not (tmp_path / "out").exists()


def test_prices_by_batch() -> None:
    table = parse_prices(["compat:x@http://h/v1=1:2", "openai:gpt-4o=2:8:1:3"])
    assert table.per_million("openai:gpt-4o", batch=True) == (1.0, 3.0)
    assert table.per_million("openai:gpt-4o-mini", batch=True) == (0.075, 0.3)
    assert table.per_million("compat:x@http://h/v1", batch=True) == (1.0, 2.0)  # no known discount: list price
    with pytest.raises(ConfigError, match="BATCH_IN:BATCH_OUT"):
        parse_prices(["openai:gpt-4o=1:2:3"])


def test_batch_is_refused_with_local_models_and_ray_workers(tmp_path: Path, batch_stub: StubServer) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 2)
    local = runner.invoke(app, generate_args(prompts, tmp_path / "a", "local:smollm2", "--batch"))
    assert local.exit_code != 0 and "--batch: --generator local:smollm2 runs in this process" in local.output
    spec = f"compat:stub@{batch_stub.base_url}"
    workers = runner.invoke(app, generate_args(prompts, tmp_path / "b", spec, "--batch", "--workers", "2"))
    assert workers.exit_code != 0 and "--batch: a batch run sends its requests from this process" in workers.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "progress.sqlite").exists()


def test_evaluate_by_batch_gives_the_verdicts_of_a_direct_run(tmp_path: Path, batch_stub: StubServer) -> None:
    pairs = Path(__file__).resolve().parents[1] / "tools" / "data" / "demo_pairs.jsonl"
    spec = f"compat:stub@{batch_stub.base_url}"
    for name, extra in (("direct", ()), ("batched", FAST)):
        result = runner.invoke(app, ["evaluate", "--input", str(pairs), "--output", str(tmp_path / f"{name}.jsonl"),
                                     "--model", spec, "--scoring", "parsed", *extra])
        assert result.exit_code == 0, result.output

    def verdicts(name: str) -> list[tuple[object, object, object]]:
        lines = (tmp_path / f"{name}.jsonl").read_text().splitlines()
        return [(record["id"], record["winner"], record["scores"]) for record in map(json.loads, lines)]

    assert verdicts("batched") == verdicts("direct")
    assert (tmp_path / "batched.batches" / "batches.sqlite").is_file()
    assert batch_stub.batches.lines_received == len(verdicts("batched"))


def test_stub_batch_routes_refuse_the_other_dialect() -> None:
    server = StubServer(StubSettings(batch_dialect="together")).start_in_thread()
    try:
        upload = httpx2.post(f"{server.base_url}/files", data={"purpose": "batch"},
                            files={"file": ("a.jsonl", b"{}\n")})
        assert upload.status_code == 400  # Together wants purpose=batch-api, at /files/upload
    finally:
        server.stop()
