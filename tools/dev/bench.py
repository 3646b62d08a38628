"""`make bench`: the pipeline's speed, CPU, memory and disk against the stub server, beside a bare asyncio loop.

Each prompt makes 6 calls one after another (N = 3: generate, review, generate, review, generate, judge).
Three scenarios, each run by three phases in their own processes:

- 500 ms per call, 200 prompts, at most 32 requests in progress: latency-bound, the common case;
- 100 ms per call, 400 prompts, 32 in progress: a fast endpoint;
- 20 ms per call, 3,000 prompts, 64 in progress: CPU-bound (a GPU server or a turbo model), where more
  processes should help.

Phases: a bare asyncio + openai loop (the practical floor for CPU; it admits whole prompts up to the cap, as a
simple script would), the same loop on aiohttp's connection pool (the pool fellowship's runs use: the floor moves
with it), `fellowship` with one process (`--workers 1`), and with two workers (`--workers 2`: this process
and a local Ray instance's worker, start-up and shutdown included), the instance started when it pays for itself
(the default, `--ray-start when-busy`) and at once (`--ray-start at-once`). Printed per phase: wall time, its ratio
to the lower bound max(critical path of one prompt, calls x latency / in-flight cap), CPU ms per call over
every process but the stub's and the memory sampler's (Ray's own included), peak memory of the phase's
process tree, the output directory's size per 1,000 prompts, and when a local Ray instance's worker joined.

Then the fixed cost of a run and the marginal CPU per call, each as a whole command from its process's start (imports,
the first calls, the export and the exit included), `fellowship generate` beside the bare loop (scores as written,
as the bare loop reads them; then with `--scoring expected`, the default for this endpoint): a run of 8 prompts
gives the time to its first request (as the stub saw it), the fixed cost (its wall time minus one prompt's critical
path, and its CPU), and the difference between a
larger run and that one, per call, the marginal CPU (at 500 ms and at 20 ms per call, 32 calls in flight; then at
500 ms with 800 in flight, 20 ms's call rate). Then the marginal CPU at 500 ms against 20 ms for each command, and
the wall time of a process that only imports the libraries a run needs: the floor under its fixed cost. Then the
CPU `generate` and the bare loop spend while all their calls wait (2 s per call), each wait apart: work on a timer
would show in every wait.

Then the rate-limited loads: `fellowship generate` against a stub with a request limit (a token bucket that
answers 429 with OpenAI's headers), with `--no-adaptive` and with the controller (`agents/rate_limits.py`):
wall time, the calls' span (first request to last answer) against the limit's bound, requests, 429s, prompts
failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graphs.ray_pool import RayStart

CALLS_PER_PROMPT = 6
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Scenario:
    """One load: latency per call, prompts, and how many requests the stub serves at once."""

    latency_s: float
    prompts: int
    cap: int

    @property
    def bound_s(self) -> float:
        """The lower bound on wall time: one prompt's critical path, or all calls through the cap."""
        return max(CALLS_PER_PROMPT * self.latency_s, self.prompts * CALLS_PER_PROMPT * self.latency_s / self.cap)


SCENARIOS = (Scenario(0.5, 200, 32), Scenario(0.1, 400, 32), Scenario(0.02, 3000, 64))
PHASES = (("bare", "bare asyncio + openai"), ("bare_aiohttp", "bare, aiohttp pool"),
          ("workers1", "fellowship --workers 1"), ("workers2", "fellowship --workers 2"),
          ("workers2_at_once", "  --ray-start at-once"))
BARE_PHASES = ("bare", "bare_aiohttp")


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / TICKS_PER_SECOND


def process_seconds(pid: int) -> float:
    """CPU seconds one process has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


def process_cpu_ns(pid: int) -> int:
    """Nanoseconds on a CPU of a process's living threads (the scheduler's count: finer than clock ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as schedstat:
            total += int(schedstat.read().split()[0])
    return total


def tree_rss_mb(root: int) -> float:
    """Resident memory of a process and all its descendants (Ray's daemons and workers included), in MB."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * PAGE_BYTES
        except OSError:
            continue
    return total / 1024 / 1024


class PeakMemory:
    """Samples the process tree's memory four times a second; `peak_mb` is the largest sum seen.

    `cpu_s` is the CPU the sampling itself used (walking /proc costs tens of milliseconds a second): the phase's
    CPU figure leaves it out, as it leaves out the stub's.
    """

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self.cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, tree_rss_mb(os.getpid()))
            self.cpu_s = time.thread_time()
            self._stop.wait(0.25)

    def __enter__(self) -> PeakMemory:
        """Start sampling."""
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        """Stop sampling, with one last sample."""
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, tree_rss_mb(os.getpid()))


async def _bare_loop(base_url: str, prompts: int, concurrency: int, aiohttp_pool: bool) -> int:
    """The same call graph written directly over the openai client: the practical floor for Python.

    With `aiohttp_pool`, the client uses aiohttp's connection pool, as fellowship's model registry does.
    """
    from openai import AsyncOpenAI, DefaultAioHttpClient

    client = AsyncOpenAI(base_url=base_url, api_key="stub", max_retries=0,
                         http_client=DefaultAioHttpClient() if aiohttp_pool else None)
    gate = asyncio.Semaphore(concurrency)
    calls = 0

    async def ask(messages: list[dict[str, str]]) -> str:
        nonlocal calls
        response = await client.chat.completions.create(model="stub", messages=messages, temperature=0)  # type: ignore[arg-type]
        calls += 1
        return response.choices[0].message.content or ""

    async def one(index: int) -> None:
        question = f"Benchmark question {index}?"
        async with gate:
            conversation = [{"role": "user", "content": question}]
            answers = []
            for iteration in range(3):
                answer = await ask(conversation)
                answers.append(answer)
                conversation.append({"role": "assistant", "content": answer})
                if iteration < 2:
                    review = (
                        f"[Request]\n{question}\n\n[The Start of the Answer]\n{answer}\n"
                        "[The End of the Answer]\n\nReview this answer."
                    )
                    feedback = await ask([{"role": "user", "content": review}])
                    conversation.append({"role": "user", "content": feedback})
            blocks = "".join(
                f"[The Start of Assistant {label}'s Answer]\n{text}\n[The End of Assistant {label}'s Answer]\n\n"
                for label, text in zip("ABC", answers, strict=True)
            )
            await ask([{"role": "user", "content": f"[Question]\n{question}\n\n{blocks}### Score Assistant A: X/10"}])

    await asyncio.gather(*(one(index) for index in range(prompts)))
    await client.close()
    return calls


async def _pipeline(
    base_url: str, prompts: int, concurrency: int, workers: int, ray_start: RayStart, folder: Path,
) -> tuple[int, float | None]:
    from agents.models import ModelRegistry, ModelSettings
    from graphs.context import GenerationContext
    from graphs.generation import run_generation
    from graphs.ray_pool import RayWorkers, finish_leaving
    from tools.outputs.export import export_records
    from tools.outputs.run_store import iter_done_records
    from tools.rules.pairing import PairingRules

    spec = f"compat:stub@{base_url}"
    # Scores as written: the bare loop reads no token probabilities either (`--scoring expected` is measured apart).
    settings = ModelSettings(max_retries=0, scoring="parsed")
    registry = ModelRegistry(settings)
    context = GenerationContext(models=[spec], generator=spec, reviewers=[spec], iterations=3)
    result = await run_generation(
        [f"Benchmark question {index}?" for index in range(prompts)],
        context=context, output_dir=folder, settings={"bench": True}, concurrency=concurrency,
        model_source=registry,
        workers=RayWorkers(count=workers, address=None, model_settings=settings, start=ray_start) if workers > 1
        else None,
    )
    await registry.aclose()
    if result.failures:
        raise SystemExit(f"pipeline failures: {result.failures[:3]}")
    # The export is part of the job (and of its memory): records stream from the run store to the files.
    summary = export_records(iter_done_records(folder / "progress.sqlite"), folder, PairingRules())
    finish_leaving()  # the command ends when a local Ray instance has stopped, as the CLI's process does at exit
    return summary.usage()["calls"], result.ray_joined_after_s


def run_phase(phase: str, base_url: str, prompts: int, concurrency: int, stub_pid: int) -> dict[str, float]:
    """Run one phase and measure wall time, CPU of every process but the stub, peak memory and disk."""
    # Imports happen once per process, not per call: load them before the clock starts.
    import openai  # noqa: F401

    if phase not in BARE_PHASES:
        from agents import garbage_collection

        garbage_collection.during_start_up()  # this process runs a pipeline as the CLI's does: its collector too
        import langchain_openai
        import langchain_openai.chat_models.base  # noqa: F401
        import pyarrow.json  # noqa: F401

        import graphs.generation  # noqa: F401
        import tools.outputs.export  # noqa: F401
        from tools.cli.common import run_coroutine
    with bench_folder() as folder:
        busy_before, stub_before = busy_seconds(), process_seconds(stub_pid)
        started = time.perf_counter()
        with PeakMemory() as memory:
            if phase in BARE_PHASES:
                calls, joined = asyncio.run(_bare_loop(base_url, prompts, concurrency, phase == "bare_aiohttp")), None
            else:
                workers = 1 if phase == "workers1" else 2
                ray_start: RayStart = "at-once" if phase == "workers2_at_once" else "when-busy"
                calls, joined = run_coroutine(_pipeline(base_url, prompts, concurrency, workers, ray_start, folder))
        wall = time.perf_counter() - started
        cpu = (busy_seconds() - busy_before) - (process_seconds(stub_pid) - stub_before) - memory.cpu_s
        directory = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    return {"wall_s": wall, "calls": calls, "cpu_s": cpu, "peak_mb": memory.peak_mb,
            "dir_mb_per_1k": directory / 1024 / 1024 * 1000 / prompts if phase not in BARE_PHASES else 0.0,
            "ray_joined_s": -1.0 if joined is None else joined}


@dataclass(frozen=True)
class StubProcess:
    """The stub server running in a process of its own."""

    base_url: str
    pid: int


@contextlib.contextmanager
def running_stub(*options: str) -> Iterator[StubProcess]:
    """The stub server started with `options` in a process of its own, stopped when the block ends."""
    stub = subprocess.Popen([sys.executable, "-m", "tools.dev.stub_server", *options], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert stub.stdout is not None
        yield StubProcess(stub.stdout.readline().strip(), stub.pid)
    finally:
        stub.terminate()
        stub.wait(10)


@contextlib.contextmanager
def bench_folder() -> Iterator[Path]:
    """A temporary folder for a load's prompts and outputs, removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="fellowship-bench-", ignore_cleanup_errors=True) as folder:
        yield Path(folder)


def reset_stub_stats(base_url: str) -> None:
    """Zero the stub's counts (`POST /stats/reset`): the next command's are its own."""
    reset = urllib.request.Request(base_url.removesuffix("/v1") + "/stats/reset", data=b"", method="POST")
    urllib.request.urlopen(reset, timeout=10).close()


def write_prompts(path: Path, count: int) -> Path:
    """A prompt file of `count` distinct benchmark questions (one JSON object a line) at `path`."""
    path.write_text("".join(json.dumps({"prompt": f"Benchmark question {index}?"}) + "\n" for index in range(count)))
    return path


def generate_argv(prompts: Path, output: Path, base_url: str, *options: str) -> list[str]:
    """`fellowship generate` with every role on the stub at `base_url`, as a command line."""
    spec = f"compat:stub@{base_url}"
    return [sys.executable, "-m", "tools.cli", "generate", "--prompts", str(prompts), "--output", str(output),
            "--generator", spec, "--reviewer", spec, "--judge", spec, *options]


def bare_command_argv(base_url: str, prompts: int, cap: int) -> list[str]:
    """The bare loop as a whole command (its imports and start-up part of its cost), as a command line."""
    return [sys.executable, "-m", "tools.dev.bench", "--bare-command", "--base-url", base_url, "--prompts",
            str(prompts), "--cap", str(cap)]


def run_scenario(scenario: Scenario) -> dict[str, dict[str, float]]:
    """Every phase of one scenario against a fresh stub; prints its table and returns the figures."""
    figures: dict[str, dict[str, float]] = {}
    with running_stub("--latency", str(scenario.latency_s), "--max-concurrent", str(scenario.cap),
                      "--lifetime", "900") as stub:
        base_url = stub.base_url
        calls = scenario.prompts * CALLS_PER_PROMPT
        print(f"\n{scenario.latency_s * 1000:.0f} ms per call, {scenario.prompts} prompts x {CALLS_PER_PROMPT} calls, "
              f"at most {scenario.cap} in flight: lower bound {scenario.bound_s:.2f} s "
              f"(one call at a time, as the published code: {calls * scenario.latency_s:.0f} s)")
        print(f"{'phase':<26}{'wall s':>8}{'ratio':>7}{'calls':>7}{'CPU ms/call':>13}{'peak MB':>9}"
              f"{'dir MB/1k prompts':>19}{'Ray joined s':>14}")
        for phase, label in PHASES:
            completed = subprocess.run(
                [sys.executable, "-m", "tools.dev.bench", "--phase", phase, "--base-url", base_url,
                 "--prompts", str(scenario.prompts), "--cap", str(scenario.cap), "--stub-pid", str(stub.pid)],
                capture_output=True, text=True, check=False,
            )
            if completed.returncode != 0:
                raise SystemExit(f"{label} failed: {completed.stderr.strip().splitlines()[-1:]}")
            result = json.loads(completed.stdout.strip().splitlines()[-1])
            figures[phase] = result
            directory = f"{result['dir_mb_per_1k']:.1f}" if phase not in BARE_PHASES else "-"
            joined = f"{result['ray_joined_s']:.1f}" if result["ray_joined_s"] >= 0 else "-"
            print(f"{label:<26}{result['wall_s']:>8.2f}{result['wall_s'] / scenario.bound_s:>7.3f}"
                  f"{int(result['calls']):>7}{1000 * result['cpu_s'] / result['calls']:>13.2f}"
                  f"{result['peak_mb']:>9.0f}{directory:>19}{joined:>14}")

    def per_call(phase: str) -> float:
        return figures[phase]["cpu_s"] / figures[phase]["calls"]

    speed_up = figures["workers1"]["wall_s"] / figures["workers2"]["wall_s"]
    print(f"CPU per call / bare loop's: --workers 1 {per_call('workers1') / per_call('bare'):.2f}, "
          f"--workers 2 {per_call('workers2') / per_call('bare'):.2f} "
          f"(/ the aiohttp bare loop's: {per_call('workers1') / per_call('bare_aiohttp'):.2f}, "
          f"{per_call('workers2') / per_call('bare_aiohttp'):.2f}); "
          f"--workers 2 speed-up over --workers 1: {speed_up:.2f}x "
          f"(at once: {figures['workers1']['wall_s'] / figures['workers2_at_once']['wall_s']:.2f}x)")
    return figures


@dataclass(frozen=True)
class FixedCostLoad:
    """A small and a large run at one latency, to split a whole command's cost into fixed and per call."""

    latency_s: float
    large: int
    small: int = 8
    cap: int = 32


# The third load gives 500 ms per call the second's call rate (32 / 20 ms = 800 / 500 ms = 1,600 calls a second):
# if 500 ms costs more CPU per call than 20 ms at 32 in flight but not at the same rate, the difference comes with
# replies arriving far apart (each wakes a quiet process), not with the latency. Work on a timer shows in run_waiting.
FIXED_COST_LOADS = (FixedCostLoad(0.5, 200), FixedCostLoad(0.02, 1000), FixedCostLoad(0.5, 1000, cap=800))
# What every run of the pipeline imports before its graphs can run, and nothing of fellowship's: the floor under a
# run's fixed cost on this machine (`langgraph`, `langchain-openai` and the openai client on aiohttp's pool).
LIBRARY_IMPORTS = ("import langgraph.graph, langgraph.types, langgraph.checkpoint.sqlite, langchain_openai, openai, "
                   "aiohttp")


def whole_command(argv: list[str], base_url: str) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, seconds to its first request) of a command run to its end.

    From its process's start, its children's CPU too; the first request as the stub at `base_url` saw it.
    """
    reset_stub_stats(base_url)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    started_monotonic = time.monotonic()
    completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise SystemExit(f"{argv[2:4]} failed: {completed.stderr.strip().splitlines()[-1:]}")
    first = stub_stats(base_url).get("first_request_at")
    return (wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            (first - started_monotonic) if first is not None else float("nan"))


def run_fixed_cost(load: FixedCostLoad) -> dict[str, float]:
    """Fixed cost and marginal CPU per call of `generate` and of the bare loop, as whole commands.

    Returns the marginal CPU seconds per call by command.
    """
    critical_path_s = CALLS_PER_PROMPT * load.latency_s
    print(f"\nfixed cost and marginal CPU, whole commands: {load.latency_s * 1000:.0f} ms per call, {load.small} and "
          f"{load.large} prompts x {CALLS_PER_PROMPT} calls, at most {load.cap} in flight")
    print(f"{'command':<26}{'first call s':>13}{'fixed wall s':>14}{'fixed CPU s':>13}{'CPU ms/call':>13}"
          f"{'wall/bound':>12}")
    marginal: dict[str, float] = {}
    with running_stub("--latency", str(load.latency_s), "--max-concurrent", str(load.cap), "--lifetime",
                      "900") as stub, bench_folder() as folder:
        base_url = stub.base_url
        commands = ("bare asyncio + openai", "fellowship generate", "  --scoring expected")
        for label in commands:
            runs = {}
            for prompts in (load.small, load.large):
                if label.startswith("bare"):
                    argv = bare_command_argv(base_url, prompts, load.cap)
                else:
                    # Scores as written, as the bare loop reads them; then with token probabilities (the default).
                    scoring = "expected" if "expected" in label else "parsed"
                    argv = generate_argv(write_prompts(folder / f"prompts-{prompts}.jsonl", prompts),
                                         folder / f"out-{prompts}-{scoring}", base_url,
                                         "--concurrency", str(load.cap), "--scoring", scoring)
                runs[prompts] = whole_command(argv, base_url)
            (small_wall, small_cpu, first_call), (large_wall, large_cpu, _) = runs[load.small], runs[load.large]
            fixed_wall = small_wall - critical_path_s
            per_call = (large_cpu - small_cpu) / ((load.large - load.small) * CALLS_PER_PROMPT)
            marginal[label] = per_call
            bound = max(critical_path_s, load.large * CALLS_PER_PROMPT * load.latency_s / load.cap)
            print(f"{label:<26}{first_call:>13.2f}{fixed_wall:>14.2f}{small_cpu:>13.2f}{1000 * per_call:>13.2f}"
                  f"{(large_wall - fixed_wall) / bound:>12.3f}")
    print(f"marginal CPU per call / the bare loop's: "
          f"{marginal['fellowship generate'] / marginal['bare asyncio + openai']:.2f}")
    return marginal


def library_import_seconds(runs: int = 3) -> float:
    """The median wall time of a process that only imports LIBRARY_IMPORTS.

    Its start included; it ends as `fellowship` does, without the interpreter's teardown of the modules.
    """
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"{LIBRARY_IMPORTS}; import os; os._exit(0)"], check=True)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def compare_fixed_cost_loads(marginal: list[dict[str, float]]) -> None:
    """The marginal CPU per call at 500 ms against 20 ms, at 32 in flight and at the same call rate; the import floor.

    `marginal` holds run_fixed_cost's figures for FIXED_COST_LOADS, in their order.
    """
    slow, fast, slow_same_rate = marginal
    print("\nmarginal CPU per call at 500 ms / at 20 ms per call (the same command):")
    for label in ("bare asyncio + openai", "fellowship generate", "  --scoring expected"):
        # The bare loop keeps the openai client's default pool (httpx2), which probes every idle connection on each
        # request: with 800 open, that, not the call rate, sets its figure.
        pool = " (httpx2's pool, 800 connections)" if label.startswith("bare") else ""
        print(f"{label:<26}32 in flight {slow[label] / fast[label]:.2f}, at 20 ms's call rate (800 in flight) "
              f"{slow_same_rate[label] / fast[label]:.2f}{pool}")
    print(f"library imports alone ({LIBRARY_IMPORTS.removeprefix('import ')}): {library_import_seconds():.2f} s "
          "wall, the median of 3 (the floor under a run's fixed cost at 20 ms)")


@dataclass(frozen=True)
class WaitingLoad:
    """Slow calls, so that a run spends seconds with calls in flight and none answered."""

    latency_s: float = 2.0
    prompts: int = 8
    sample_s: float = 0.05


def cpu_while_waiting(argv: list[str], base_url: str, load: WaitingLoad) -> list[tuple[float, float]]:
    """(seconds, CPU ms per second) of each wait of a command: the stretches in which all its calls were waiting.

    The command runs against the stub at `base_url`; every `sample_s` the stub's counts and the process's CPU are
    read. An interval is quiet when calls were in flight at both ends, no request went out and none was answered in
    it, and the run's first answer had come (start-up is over); a wait is a stretch of quiet intervals.
    """
    reset_stub_stats(base_url)
    command = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    waits: list[list[float]] = []  # [seconds, CPU ns] of each wait
    quiet_before = False
    before = (stub_stats(base_url), process_cpu_ns(command.pid), time.perf_counter())
    try:
        while command.poll() is None:
            time.sleep(load.sample_s)
            try:
                now = (stub_stats(base_url), process_cpu_ns(command.pid), time.perf_counter())
            except OSError:  # the command ended between poll() and the read: its /proc entry is gone
                break
            (stats, cpu_ns, at), (earlier, earlier_cpu_ns, earlier_at) = now, before
            quiet = (earlier["completions"] > 0 and earlier["in_flight"] > 0 and stats["in_flight"] > 0
                     and (stats["requests"], stats["completions"]) == (earlier["requests"], earlier["completions"]))
            if quiet:
                if not quiet_before:
                    waits.append([0.0, 0.0])
                waits[-1][0] += at - earlier_at
                waits[-1][1] += max(0, cpu_ns - earlier_cpu_ns)  # a thread that ended takes its count with it
            quiet_before = quiet
            before = now
    finally:
        command.wait(60)
    if command.returncode != 0:
        raise SystemExit(f"{argv[2:4]} failed with status {command.returncode}")
    return [(seconds, cpu_ns / 1e6 / seconds) for seconds, cpu_ns in waits if seconds >= 10 * load.sample_s]


def run_waiting(load: WaitingLoad) -> None:
    """CPU spent while every call of a run waits, by `generate` and by the bare loop: work on a timer shows here.

    Each wait is printed: one-off work that overlaps a wait on purpose (`generate` loads the export's modules once
    the first call is answered) shows in one, work on a timer in all.
    """
    print(f"\nCPU while calls wait: {load.latency_s:g} s per call, {load.prompts} prompts x {CALLS_PER_PROMPT} calls, "
          f"sampled every {load.sample_s * 1000:.0f} ms; waits: stretches with calls in flight, none sent or answered")
    with running_stub("--latency", str(load.latency_s), "--lifetime", "900") as stub, bench_folder() as folder:
        base_url = stub.base_url
        commands = {
            "bare asyncio + openai": bare_command_argv(base_url, load.prompts, load.prompts),
            "fellowship generate": generate_argv(write_prompts(folder / "prompts.jsonl", load.prompts),
                                                 folder / "out", base_url, "--scoring", "parsed"),
        }
        print(f"{'command':<26}{'waits':>6}{'waiting s':>10}  CPU ms per second of each wait")
        for label, argv in commands.items():
            waits = cpu_while_waiting(argv, base_url, load)
            print(f"{label:<26}{len(waits):>6}{sum(seconds for seconds, _ in waits):>10.1f}  "
                  + " ".join(f"{per_second:.2f}" for _, per_second in waits))


@dataclass(frozen=True)
class RateLimitLoad:
    """A provider with a request limit (the stub's token bucket, with OpenAI's headers) and a run asking for more."""

    requests_per_s: float
    prompts: int
    concurrency: int

    @property
    def bound_s(self) -> float:
        """The limit's bound on the calls' span: every call through the limit (a full bucket at the start aside)."""
        return self.prompts * CALLS_PER_PROMPT / self.requests_per_s


RATE_LIMIT_LOADS = (RateLimitLoad(40, 30, 64), RateLimitLoad(100, 300, 64))


def stub_stats(base_url: str) -> dict[str, Any]:
    """The stub's counts (`GET /stats`)."""
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats", timeout=10) as response:
        return dict(json.load(response))


def run_rate_limited(load: RateLimitLoad) -> None:
    """`generate` against a rate-limited stub, with `--no-adaptive` and with the controller: prints both rows."""
    print(f"\nrate limit of {load.requests_per_s:g} requests a second, {load.prompts} prompts x {CALLS_PER_PROMPT} "
          f"calls at --concurrency {load.concurrency}: the limit's bound {load.bound_s:.2f} s")
    print(f"{'phase':<26}{'wall s':>8}{'calls span s':>14}{'span/bound':>12}{'requests':>10}{'429s':>7}"
          f"{'429 share':>11}{'failed':>8}")
    for label, flag in (("--no-adaptive", "--no-adaptive"), ("--adaptive (default)", "--adaptive")):
        with running_stub("--requests-per-s", str(load.requests_per_s), "--lifetime", "600") as stub, \
                bench_folder() as folder:
            base_url = stub.base_url
            argv = generate_argv(write_prompts(folder / "prompts.jsonl", load.prompts), folder / "out", base_url,
                                 "--concurrency", str(load.concurrency), "--max-retries", "20", flag)
            started = time.perf_counter()
            completed = subprocess.run(argv, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - started
            stats = stub_stats(base_url)
            failed = re.search(r"failed: (\d+)", completed.stdout)
            refused = stats["faults"].get("rate_limited", 0)
            print(f"{label:<26}{wall:>8.2f}{stats['span_s']:>14.2f}{stats['span_s'] / load.bound_s:>12.3f}"
                  f"{stats['requests']:>10}{refused:>7}{refused / max(1, stats['requests']):>11.1%}"
                  f"{failed.group(1) if failed else '?':>8}")


def main() -> None:
    """`make bench`: every scenario, every phase, printed side by side; then the rate-limited loads."""
    parser = argparse.ArgumentParser(description="fellowship benchmark against the stub server")
    parser.add_argument("--only", choices=[*map(str, range(len(SCENARIOS))), "fixed", "rate"],
                        help="run one scenario (0, 1 or 2), the fixed cost and marginal CPU of whole commands and "
                        "their CPU while calls wait (fixed), or the rate-limited loads (rate)")
    parser.add_argument("--bare-command", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=[phase for phase, _ in PHASES], help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cap", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stub-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.base_url, args.prompts, args.cap, args.stub_pid)))
        return
    if args.bare_command:  # the bare loop as a whole command: its imports and start-up are part of its cost
        asyncio.run(_bare_loop(args.base_url, args.prompts, args.cap, aiohttp_pool=False))
        return
    print(f"machine: {os.cpu_count()} cores; CPU is every process's but the stub's; peak MB is the process tree's")
    for index, scenario in enumerate(SCENARIOS):
        if args.only is None or args.only == str(index):
            run_scenario(scenario)
    if args.only in (None, "fixed"):
        compare_fixed_cost_loads([run_fixed_cost(fixed_load) for fixed_load in FIXED_COST_LOADS])
        run_waiting(WaitingLoad())
    if args.only in (None, "rate"):
        for load in RATE_LIMIT_LOADS:
            run_rate_limited(load)


if __name__ == "__main__":
    main()
