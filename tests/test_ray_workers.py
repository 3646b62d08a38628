"""`generate --workers N` on a local Ray instance (2 CPUs, loopback only), against the stub server.

Each test runs the real command in a subprocess (the driver), which starts Ray (`--ray-start at-once`), places
a worker and stops it: outputs equal a single-process run's, a SIGKILLed driver resumes without paying twice
(the worker's prompts in flight too, from its own checkpoint file), and a killed worker is replaced without
losing or failing a prompt. With the default `--ray-start when-busy`, a run that a local instance would not
speed up starts none.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.test_generation import generate_args, write_prompts
from tools.dev.stub_server import StubServer, StubSettings

pytest.importorskip("ray")

RUN_TIMEOUT_S = 120
AT_ONCE = ("--ray-start", "at-once")


def fellowship(*args: str) -> list[str]:
    return [sys.executable, "-m", "tools.cli", *args]


def done_count(output: Path) -> int:
    try:
        with sqlite3.connect(output / "progress.sqlite", timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM prompts WHERE status = 'done'").fetchone()[0]
    except sqlite3.Error:
        return 0


def wait_for_done(output: Path, at_least: int, process: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        done = done_count(output)
        if done >= at_least:
            return done
        time.sleep(0.05)
    raise AssertionError(f"the run reached {done_count(output)} done prompts, exit {process.poll()}")


def records_without_timing(output: Path) -> list[dict]:
    records = [json.loads(line) for line in (output / "records.jsonl").read_text().splitlines()]
    for record in records:
        record["verdict"].pop("latency_s", None)
        for exchange in [answer["exchange"] for answer in record["answers"]] + [
            review["exchange"] for answer in record["answers"] for review in answer["reviews"]
        ] + record["verdict"]["exchanges"]:
            exchange.pop("latency_s", None)
    return records


def pool_worker_pids() -> set[int]:
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return {int(line.split()[0]) for line in listing.splitlines() if "ray::PoolWorker" in line}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def checkpoint_threads(output: Path) -> set[str]:
    with sqlite3.connect(output / "checkpoints.sqlite") as db:
        return {row[0] for row in db.execute("SELECT DISTINCT thread_id FROM checkpoints")}


def test_two_workers_write_what_one_process_writes(tmp_path: Path, stub: StubServer) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 24)
    single, pooled = tmp_path / "single", tmp_path / "pooled"
    first = subprocess.run(fellowship(*generate_args(prompts, single, stub.base_url, "-c", "8")),
                           capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    assert first.returncode == 0, first.stderr
    calls_single = stub.stats.completions
    second = subprocess.run(fellowship(*generate_args(prompts, pooled, stub.base_url, "-c", "8", "--workers", "2",
                                                      *AT_ONCE)),
                            capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    assert second.returncode == 0, second.stderr
    assert "done: 24  failed: 0" in second.stdout
    assert stub.stats.completions == 2 * calls_single  # the same calls, none twice
    for name in ("dpo.jsonl", "kto.jsonl"):
        assert sorted((pooled / name).read_text().splitlines()) == sorted((single / name).read_text().splitlines())
    assert records_without_timing(pooled) == records_without_timing(single)
    assert not checkpoint_threads(pooled)  # every prompt was committed, so no checkpoint is kept
    assert not pool_worker_pids()  # the workers and the local instance are gone


def worker_checkpoint_threads(output: Path) -> set[str]:
    threads: set[str] = set()
    for path in output.glob("checkpoints-worker-*.sqlite"):
        with contextlib.suppress(sqlite3.Error), sqlite3.connect(path, timeout=1) as db:
            threads |= {row[0] for row in db.execute("SELECT DISTINCT thread_id FROM checkpoints")}
    return threads


def start_driver(command: list[str]) -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    """The command in a subprocess, and its stderr lines as a thread collects them (and the thread)."""
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert driver.stderr is not None
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(iter(driver.stderr.readline, "")), daemon=True)
    reader.start()
    return driver, said, reader


def long_run(tmp_path: Path, server: StubServer) -> tuple[Path, list[str]]:
    """The output folder and command of a run of 60 prompts on two workers, 4 calls at a time.

    Against a 200 ms stub it lasts about 18 s, so its worker joins (after the local instance's start-up, 4-8 s)
    with prompts still to run.
    """
    prompts = write_prompts(tmp_path / "prompts.jsonl", 60)
    output = tmp_path / "out"
    return output, fellowship(*generate_args(prompts, output, server.base_url, "-c", "4", "--workers", "2", *AT_ONCE))


def wait_for_line(said: list[str], text: str) -> str:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not any(text in line for line in said) and time.monotonic() < deadline:
        time.sleep(0.05)
    return next(line for line in said if text in line)


def test_a_sigkilled_driver_resumes_its_and_its_workers_prompts_and_pays_only_for_what_was_in_flight(
    tmp_path: Path,
) -> None:
    # The driver is killed while the worker has prompts of its own under way.
    server = StubServer(StubSettings(latency_s=0.2)).start_in_thread()
    try:
        output, command = long_run(tmp_path, server)
        driver, said, _ = start_driver(command)
        wait_for_line(said, "Ray worker joined")
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not worker_checkpoint_threads(output) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a step or two further
        cut_off_on_the_worker = worker_checkpoint_threads(output)
        assert cut_off_on_the_worker, "".join(said)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(10)
        with sqlite3.connect(output / "progress.sqlite") as db:
            kept = dict(db.execute("SELECT prompt_id, record FROM prompts WHERE status = 'done'").fetchall())
        # The workers die with the driver's local instance: nobody goes on calling (and paying) unseen.
        deadline = time.monotonic() + 30
        while pool_worker_pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not pool_worker_pids()
        calls_before_resume = server.stats.completions

        resumed = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
        assert resumed.returncode == 0, resumed.stderr
        assert f"reused from earlier runs: {len(kept)}" in resumed.stdout
        with sqlite3.connect(output / "progress.sqlite") as db:
            after = dict(db.execute("SELECT prompt_id, record FROM prompts WHERE status = 'done'").fetchall())
        assert len(after) == 60
        assert all(after[prompt_id] == record for prompt_id, record in kept.items())  # finished work untouched
        # Only unfinished prompts were run again: 6 calls each at most (fewer for those resumed mid-prompt).
        assert server.stats.completions - calls_before_resume <= 6 * (60 - len(kept))
        # And the whole bill: 60 prompts, plus at most the 4 calls in flight at the kill (-c 4): the prompts cut
        # off on the worker resumed from their last step too, not from the start.
        assert server.stats.completions <= 6 * 60 + 4
        # The worker files were taken back into the run's checkpoint file, which keeps nothing once all is done.
        assert not list(output.glob("checkpoints-worker-*"))
        assert not checkpoint_threads(output)
    finally:
        server.stop()


def test_a_run_that_a_local_instance_would_not_speed_up_starts_none(tmp_path: Path, stub: StubServer) -> None:
    # 12 prompts against a fast stub end within the watch's first window: Ray is never imported, nor started.
    prompts = write_prompts(tmp_path / "prompts.jsonl", 12)
    output = tmp_path / "out"
    completed = subprocess.run(fellowship(*generate_args(prompts, output, stub.base_url, "-c", "6", "--workers", "2")),
                               capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    assert completed.returncode == 0, completed.stderr
    assert "done: 12  failed: 0" in completed.stdout
    assert "note: no local Ray instance was started: " in completed.stderr
    assert "Ray worker joined" not in completed.stderr
    assert stub.stats.completions == 12 * 6


def test_the_driver_works_until_its_ray_workers_join_then_a_killed_one_is_replaced(tmp_path: Path) -> None:
    # The worker is killed with prompts of its own still to run.
    server = StubServer(StubSettings(latency_s=0.2)).start_in_thread()
    try:
        output, command = long_run(tmp_path, server)
        driver, said, reader = start_driver(command)
        joined = wait_for_line(said, "Ray worker joined")
        # The driver did not wait for Ray: it made calls before its worker joined.
        assert server.stats.completions > 0 and joined.startswith("note: 1 Ray worker joined after ")
        time.sleep(1.0)  # the new worker takes the next prompts at once (it has the most room)
        [victim] = pool_worker_pids()
        os.kill(victim, signal.SIGKILL)
        # stderr belongs to the reader thread alone (communicate() would read it too, and take lines from it).
        assert driver.stdout is not None
        driver.wait(timeout=RUN_TIMEOUT_S)  # its stdout is a few summary lines: no pipe fills up meanwhile
        stdout = driver.stdout.read()
        reader.join(5)
        assert driver.returncode == 0, "".join(said)
        assert "done: 60  failed: 0" in stdout
        assert any("1 worker processes died and were replaced" in line for line in said), "".join(said)
        assert len((output / "records.jsonl").read_text().splitlines()) == 60
        assert server.stats.max_in_flight <= 4  # the driver's and the worker's shares of --concurrency
    finally:
        server.stop()


def test_evaluate_on_two_workers_gives_the_verdicts_of_one_process(tmp_path: Path, stub: StubServer) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(
        json.dumps({"id": f"q{index}", "prompt": f"Question {index}?", "responses": [f"yes {index}", f"no {index}"]})
        + "\n" for index in range(12)
    ))

    def evaluate(output: Path, *extra: str) -> list[dict]:
        completed = subprocess.run(
            fellowship("evaluate", "--input", str(pairs), "--output", str(output), "--method", "jury",
                       "--model", f"compat:stub@{stub.base_url}", "--model", f"compat:stub@{stub.base_url}",
                       "--concurrency", "6", *extra),
            capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
        )
        assert completed.returncode == 0, completed.stderr
        verdicts = [json.loads(line) for line in output.read_text().splitlines()]
        for verdict in verdicts:
            verdict.pop("latency_s")
            for exchange in verdict["exchanges"]:
                exchange.pop("latency_s")
        return verdicts

    single = evaluate(tmp_path / "single.jsonl")
    pooled = evaluate(tmp_path / "pooled.jsonl", "--workers", "2", *AT_ONCE)
    assert pooled == single
    assert [verdict["id"] for verdict in pooled] == [f"q{index}" for index in range(12)]
    assert stub.stats.completions == 2 * 2 * 12  # two jurors per item, each run: nothing called twice


def test_an_unreachable_ray_cluster_stops_the_command_before_anything_is_written(
    tmp_path: Path, stub: StubServer
) -> None:
    from typer.testing import CliRunner

    from tools.cli import app

    port = free_port()  # nobody listens on it
    prompts = write_prompts(tmp_path / "prompts.jsonl", 2)
    output = tmp_path / "out"
    result = CliRunner().invoke(app, generate_args(prompts, output, stub.base_url,
                                                   "--ray-address", f"127.0.0.1:{port}"))
    assert result.exit_code == 1
    assert f"--ray-address 127.0.0.1:{port}: cannot reach the Ray cluster" in result.output
    assert not output.exists()
    assert stub.stats.requests == 0


def test_joining_a_ray_start_cluster_gives_what_a_local_instance_gives(tmp_path: Path, stub: StubServer) -> None:
    port = free_port()
    # The cluster a user starts by hand, on loopback only (Ray's single-machine mode): `ray start --head`.
    environment = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    ray_command = str(Path(sys.executable).with_name("ray"))
    started = subprocess.run([ray_command, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                              "--num-cpus", "2", "--include-dashboard", "false"],
                             capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=environment, check=False)
    assert started.returncode == 0, started.stderr
    try:
        prompts = write_prompts(tmp_path / "prompts.jsonl", 12)
        runs = {}
        for name, extra_environment in (("local", {}), ("joined", {"RAY_ADDRESS": f"127.0.0.1:{port}"})):
            output = tmp_path / name
            completed = subprocess.run(
                fellowship(*generate_args(prompts, output, stub.base_url, "-c", "6", "--workers", "2", *AT_ONCE)),
                capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
                env={**os.environ, **extra_environment},
            )
            # With a `ray start` cluster on the machine, no address still means an instance of our own.
            assert completed.returncode == 0, completed.stderr
            runs[name] = sorted((output / "dpo.jsonl").read_text().splitlines())
        assert runs["joined"] == runs["local"]
        assert stub.stats.completions == 2 * 12 * 6
    finally:
        subprocess.run([ray_command, "stop", "--force"], capture_output=True, timeout=RUN_TIMEOUT_S, env=environment,
                       check=False)
