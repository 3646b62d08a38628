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
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import require_module
from tests.test_generation import generate_args, write_prompts
from tools.dev.stub_server import StubServer, StubSettings

require_module("ray")

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
    records = [json.loads(line) for line in without_port((output / "records.jsonl").read_text()).splitlines()]
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


# What a Ray process's command line holds: its daemons, the Python helpers it starts, and its renamed workers.
RAY_PROCESS_MARKS = ("ray::", "/ray/core/src/ray/", "/site-packages/ray/")


def ray_processes(below: int | None = None) -> list[str]:
    """Running Ray processes (zombies, already dead, left out): all of them, or those below the process `below`."""
    listing = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,stat=,args="], capture_output=True, text=True,
                             check=True).stdout
    rows = [line.split(None, 3) for line in listing.splitlines()]
    wanted = None
    if below is not None:
        wanted, grew = {below}, True
        while grew:
            grew = False
            for pid, ppid, _, _ in rows:
                if int(ppid) in wanted and int(pid) not in wanted:
                    wanted.add(int(pid))
                    grew = True
    return [f"{pid} {args}" for pid, _, stat, args in rows
            if not stat.startswith("Z") and any(mark in args for mark in RAY_PROCESS_MARKS)
            and (wanted is None or (int(pid) in wanted and int(pid) != below))]


def wait_until_no_ray_process(seconds: float = 20) -> list[str]:
    deadline = time.monotonic() + seconds
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    return ray_processes()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def checkpoint_threads(output: Path) -> set[str]:
    with sqlite3.connect(output / "checkpoints.sqlite") as db:
        return {row[0] for row in db.execute("SELECT DISTINCT thread_id FROM checkpoints")}


def reference_run(tmp_path: Path, prompts: Path) -> Path:
    """The same prompts on `--workers 1` against a stub that answers at once (replies depend only on the request)."""
    server = StubServer(StubSettings()).start_in_thread()
    try:
        output = tmp_path / "single"
        completed = subprocess.run(fellowship(*generate_args(prompts, output, server.base_url, "-c", "4")),
                                   capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
        assert completed.returncode == 0, completed.stderr
        return output
    finally:
        server.stop()


def without_port(text: str) -> str:
    """The text with the stub's port left out: runs against two stubs name their models by two URLs."""
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)


def datasets_equal(output: Path, reference: Path) -> None:
    for name in ("dpo.jsonl", "kto.jsonl"):
        assert sorted(without_port((output / name).read_text()).splitlines()) == sorted(
            without_port((reference / name).read_text()).splitlines())


def prompts_per_process(said: str, unit: str = "prompts") -> tuple[int, int]:
    """(on Ray workers, in the driver) from the note the command ends with."""
    found = re.search(rf"finished (\d+) {unit} and this process (\d+)", said)
    assert found, said
    return int(found.group(1)), int(found.group(2))


def test_two_workers_write_what_one_process_writes(tmp_path: Path) -> None:
    server = StubServer(StubSettings(latency_s=0.2)).start_in_thread()
    try:
        output, command = long_run(tmp_path, server)
        pooled = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
        assert pooled.returncode == 0, pooled.stderr
        assert "done: 60  failed: 0" in pooled.stdout
        assert server.stats.completions == 60 * 6  # nothing called twice
    finally:
        server.stop()
    # The Ray worker did its share: the comparison below is between two processes' work and one's.
    on_ray, here = prompts_per_process(pooled.stderr)
    assert on_ray > 0 and here > 0 and on_ray + here == 60, pooled.stderr
    single = reference_run(tmp_path, tmp_path / "prompts.jsonl")
    datasets_equal(output, single)
    assert records_without_timing(output) == records_without_timing(single)
    assert not checkpoint_threads(output)  # every prompt was committed, so no checkpoint is kept
    assert not ray_processes()  # the workers and the local instance are gone


def test_prompts_paused_on_ray_workers_resume_with_a_decision_in_any_process(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tools.cli import app
    from tools.outputs.review_store import ReviewStore

    server = StubServer(StubSettings(latency_s=0.2)).start_in_thread()
    try:
        output, command = long_run(tmp_path, server)
        command += ["--review", "all"]
        pooled = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
        assert pooled.returncode == 4, pooled.stderr  # every prompt waits for a person
        on_ray, here = prompts_per_process(pooled.stderr)
        assert on_ray > 0 and on_ray + here == 60, pooled.stderr
        # The workers' paused threads came back to the run directory's file: any process can resume them.
        with ReviewStore.of(output) as store:
            waiting = [entry.prompt_id for entry in store.prompts()]
        assert len(waiting) == 60 and checkpoint_threads(output) == set(waiting)
        assert not worker_checkpoint_threads(output)
        decisions = tmp_path / "decisions.jsonl"
        decisions.write_text("".join(json.dumps({"prompt_id": prompt_id, "best": "C"}) + "\n" for prompt_id in waiting))
        assert CliRunner().invoke(app, ["review", str(output), "--import", str(decisions)]).exit_code == 0
        requests = server.stats.requests
        applied = subprocess.run([*command[:command.index("--workers")], "--review", "all"], capture_output=True,
                                 text=True, timeout=RUN_TIMEOUT_S, check=False)
        assert applied.returncode == 0, applied.stderr
        assert server.stats.requests == requests  # resumed from the paused threads, no call
    finally:
        server.stop()
    records = [json.loads(line) for line in (output / "records.jsonl").read_text().splitlines()]
    assert len(records) == 60 and all(record["human"]["best"] == "C" for record in records)
    assert not checkpoint_threads(output)
    assert not ray_processes()


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
    tmp_path.mkdir(parents=True, exist_ok=True)
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


# The process of the local instance each case kills (its command line holds the mark), and what the driver must
# say: the actor is replaced; the raylet's or the GCS server's death loses the instance, and the driver finishes
# alone; the dashboard agent's takes the raylet down with it, or nothing happens (both were seen).
# A frozen worker (SIGSTOP: alive to the kernel and to Ray, answering nothing, as behind a network partition)
# stops answering pings and is replaced after 15 s.
KILLS = {
    "worker actor": ("ray::PoolWorker", signal.SIGKILL, ("1 worker processes died and were replaced",)),
    "frozen worker actor": ("ray::PoolWorker", signal.SIGSTOP, ("1 worker processes died and were replaced",)),
    "raylet": ("/raylet/raylet ", signal.SIGKILL, ("the local Ray instance died (raylet exited)",)),
    "GCS server": ("/gcs/gcs_server ", signal.SIGKILL, ("the local Ray instance died (GCS server exited)",)),
    "dashboard agent": ("ray::DashboardAgent", signal.SIGKILL, ("the local Ray instance died (raylet exited)", "")),
}


@pytest.mark.parametrize("victim", list(KILLS))
def test_a_killed_ray_process_never_hangs_the_run_and_no_prompt_is_paid_twice(tmp_path: Path, victim: str) -> None:
    mark, kill_signal, notes = KILLS[victim]
    server = StubServer(StubSettings(latency_s=0.2)).start_in_thread()
    try:
        output, command = long_run(tmp_path, server)
        driver, said, reader = start_driver(command)
        joined = wait_for_line(said, "Ray worker joined")
        # The driver did not wait for Ray: it made calls before its worker joined.
        assert server.stats.completions > 0 and joined.startswith("note: 1 Ray worker joined after ")
        time.sleep(1.0)  # the worker holds prompts of its own by now (it has the most room)
        victims = [line for line in ray_processes(below=driver.pid) if mark in line]
        assert len(victims) == 1, ray_processes(below=driver.pid)
        os.kill(int(victims[0].split()[0]), kill_signal)
        assert driver.stdout is not None
        # Ends by itself: a hang fails here (the run alone takes about 20 s).
        driver.wait(timeout=RUN_TIMEOUT_S)
        stdout = driver.stdout.read()
        reader.join(5)
        stderr = "".join(said)
        assert driver.returncode == 0, stderr
        assert "done: 60  failed: 0" in stdout
        assert any(note in stderr for note in notes), stderr
        assert "[state-dump]" not in stdout + stderr  # Ray's own dump of a dead raylet's log stays out of the output
        assert not wait_until_no_ray_process(), "Ray processes left behind"
        # 60 prompts of 6 calls, plus at most the calls in flight on the worker when it was stopped (-c 4).
        assert server.stats.completions <= 60 * 6 + 4
        # The driver's and the worker's shares of --concurrency. When the instance is lost the driver takes the
        # worker's share back at once, while the provider (the stub) may still be answering the calls that the
        # killed worker had in flight (2, its share): they count at the provider until answered.
        assert server.stats.max_in_flight <= (4 if victim.endswith("worker actor") else 4 + 2)
    finally:
        server.stop()
    datasets_equal(output, reference_run(tmp_path, tmp_path / "prompts.jsonl"))
    assert len((output / "records.jsonl").read_text().splitlines()) == 60


def test_evaluate_on_two_workers_gives_the_verdicts_of_one_process(tmp_path: Path, stub: StubServer) -> None:
    pairs = tmp_path / "pairs.jsonl"
    count = 160
    pairs.write_text("".join(
        json.dumps({"id": f"q{index}", "prompt": f"Question {index}?", "responses": [f"yes {index}", f"no {index}"]})
        + "\n" for index in range(count)
    ))

    def evaluate(output: Path, url: str, *extra: str) -> tuple[list[dict], str]:
        completed = subprocess.run(
            fellowship("evaluate", "--input", str(pairs), "--output", str(output), "--method", "jury",
                       "--model", f"compat:stub@{url}", "--model", f"compat:stub@{url}",
                       "--concurrency", "4", *extra),
            capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
        )
        assert completed.returncode == 0, completed.stderr
        verdicts = [json.loads(line) for line in without_port(output.read_text()).splitlines()]
        for verdict in verdicts:
            verdict.pop("latency_s")
            for exchange in verdict["exchanges"]:
                exchange.pop("latency_s")
        return verdicts, completed.stderr

    single, _ = evaluate(tmp_path / "single.jsonl", stub.base_url)
    # Slow enough (about 15 s alone) that the worker joins with items left to judge.
    slow = StubServer(StubSettings(latency_s=0.2)).start_in_thread()
    try:
        pooled, said = evaluate(tmp_path / "pooled.jsonl", slow.base_url, "--workers", "2", *AT_ONCE)
        assert slow.stats.completions == 2 * count  # two jurors per item: nothing called twice
    finally:
        slow.stop()
    on_ray, here = prompts_per_process(said, "items")
    assert on_ray > 0 and on_ray + here == count, said  # the worker judged items, and they came back
    assert pooled == single
    assert [verdict["id"] for verdict in pooled] == [f"q{index}" for index in range(count)]


def test_two_workers_together_stay_under_a_providers_rate_limit(tmp_path: Path) -> None:
    # Each process paces its calls to its share of the call slots of the limit the stub announces (100 requests a
    # second): the driver all of it until the worker joins, then half each.
    server = StubServer(StubSettings(requests_per_s=100)).start_in_thread()
    try:
        prompts = write_prompts(tmp_path / "prompts.jsonl", 300)
        completed = subprocess.run(
            fellowship(*generate_args(prompts, tmp_path / "out", server.base_url, "-c", "32", "--workers", "2",
                                      *AT_ONCE)),
            capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
        assert completed.returncode == 0, completed.stderr
        assert "done: 300  failed: 0" in completed.stdout
        assert prompts_per_process(completed.stderr)[0] > 0, completed.stderr  # the worker took its share
        assert server.stats.faults["rate_limited"] < 0.05 * server.stats.requests
        assert server.stats.completions == 300 * 6
    finally:
        server.stop()


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


def ray_start_head(port: int) -> None:
    """A cluster as a user starts it by hand, on loopback only (Ray's single-machine mode): `ray start --head`."""
    started = subprocess.run([RAY_COMMAND, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                              "--num-cpus", "2", "--include-dashboard", "false"],
                             capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=RAY_CLUSTER_ENVIRONMENT,
                             check=False)
    assert started.returncode == 0, started.stderr


def ray_stop() -> None:
    subprocess.run([RAY_COMMAND, "stop", "--force"], capture_output=True, timeout=RUN_TIMEOUT_S,
                   env=RAY_CLUSTER_ENVIRONMENT, check=False)


RAY_COMMAND = str(Path(sys.executable).with_name("ray"))
RAY_CLUSTER_ENVIRONMENT = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def test_joining_a_ray_start_cluster_gives_what_a_local_instance_gives_and_losing_it_stops_the_run(
    tmp_path: Path,
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    ray_start_head(port)
    server = StubServer(StubSettings(latency_s=0.2)).start_in_thread()
    try:
        # With a `ray start` cluster on the machine, no address still means an instance of our own, whose
        # worker (a child of this command, not of the cluster) does prompts.
        output, command = long_run(tmp_path / "local", server)
        local = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
        assert local.returncode == 0, local.stderr
        assert "note: 1 Ray worker joined after " in local.stderr
        assert prompts_per_process(local.stderr)[0] > 0, local.stderr

        # With the address, both workers are the cluster's and the driver runs none. The cluster is stopped
        # (`ray stop --force`: every process of it killed) while they hold prompts: the run stops by itself with one
        # line and status 1, keeping what it finished.
        output, command = long_run(tmp_path / "joined", server)
        calls_before = server.stats.completions
        joined_environment = {**os.environ, "RAY_ADDRESS": address}
        driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=joined_environment)
        wait_for_done(output, 10, driver)
        ray_stop()
        _, stderr = driver.communicate(timeout=RUN_TIMEOUT_S)
        assert driver.returncode == 1, stderr
        lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, stderr
        line = lines[0]
        assert line.startswith(f"error: stopped: lost the Ray cluster at {address}: "), stderr
        assert "finished prompts are kept: run the same command to resume" in line
        assert not wait_until_no_ray_process(), "Ray processes left behind"

        # The same command, once the cluster is back, finishes the run and pays only for what was cut off.
        ray_start_head(port)
        resumed = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
                                 env=joined_environment)
        assert resumed.returncode == 0, resumed.stderr
        assert prompts_per_process(resumed.stderr) == (60 - done_before_resume(resumed.stdout), 0)
        # The prompts the cluster's workers held resume from their last committed step; a reply that arrived in
        # the killed worker's last event-loop round was not committed yet (-c 4: at most 4 calls in flight, and
        # as many replies in the round).
        assert server.stats.completions - calls_before <= 60 * 6 + 2 * 4
    finally:
        ray_stop()
        server.stop()
    datasets_equal(output, reference_run(tmp_path, tmp_path / "joined" / "prompts.jsonl"))
    datasets_equal(tmp_path / "local" / "out", output)


def done_before_resume(stdout: str) -> int:
    found = re.search(r"reused from earlier runs: (\d+)", stdout)
    assert found, stdout
    return int(found.group(1))
