"""`make bench`: the pipeline's speed against the stub server, beside a bare asyncio loop, with figures.

Set-up (issue 4): 200 prompts, N = 3 (generate, review, generate, review, generate, judge: 6 calls per
prompt, one after another), 500 ms per call, at most 32 requests in progress at the stub. Each phase runs
in its own process so CPU seconds and peak memory are its own; the stub runs in a third process.

Printed per phase: wall time, the lower bound max(critical path of one prompt, calls x latency / 32),
their ratio, CPU seconds per LLM call and peak memory; and what one call at a time would take.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CALLS_PER_PROMPT = 6


def _usage() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


async def _bare_loop(base_url: str, prompts: int, concurrency: int) -> int:
    """The same call graph written directly over the openai client: the practical floor for Python."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="stub", max_retries=0)
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


async def _pipeline(base_url: str, prompts: int, concurrency: int) -> int:
    from agents.models import ModelRegistry, ModelSettings
    from graphs.context import GenerationContext
    from graphs.generation import run_generation
    from tools.outputs.run_store import iter_done_records

    spec = f"compat:stub@{base_url}"
    registry = ModelRegistry(ModelSettings(max_retries=0))
    context = GenerationContext(models=[spec], generator=spec, reviewers=[spec], iterations=3)
    with tempfile.TemporaryDirectory() as folder:
        result = await run_generation(
            [f"Benchmark question {index}?" for index in range(prompts)],
            context=context, output_dir=Path(folder), settings={"bench": True}, concurrency=concurrency,
            model_source=registry,
        )
        calls = sum(record["usage"]["calls"] for record in iter_done_records(Path(folder) / "progress.sqlite"))
    await registry.aclose()
    if result.failures:
        raise SystemExit(f"pipeline failures: {result.failures[:3]}")
    return calls


def run_phase(phase: str, base_url: str, prompts: int, concurrency: int) -> dict[str, float]:
    """Run one phase (the bare loop or the pipeline) and measure wall time, CPU and peak memory."""
    # Imports happen once per process, not per call: load them before the clock starts.
    import openai  # noqa: F401

    if phase == "pipeline":
        import langchain_openai  # noqa: F401

        import graphs.generation  # noqa: F401
    cpu_before, _ = _usage()
    started = time.perf_counter()
    work = _pipeline if phase == "pipeline" else _bare_loop
    calls = asyncio.run(work(base_url, prompts, concurrency))
    wall = time.perf_counter() - started
    cpu_after, peak_mb = _usage()
    return {"wall_s": wall, "calls": calls, "cpu_s": cpu_after - cpu_before, "peak_mb": peak_mb}


def main() -> None:
    """`make bench`: both phases against the stub server, printed side by side."""
    parser = argparse.ArgumentParser(description="fellowship pipeline benchmark against the stub server")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--cap", type=int, default=32, help="concurrent requests the stub serves")
    parser.add_argument("--phase", choices=["pipeline", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.base_url, args.prompts, args.cap)))
        return

    stub = subprocess.Popen(
        [sys.executable, "-m", "tools.dev.stub_server", "--latency", str(args.latency),
         "--max-concurrent", str(args.cap), "--lifetime", "900"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert stub.stdout is not None
        base_url = stub.stdout.readline().strip()
        total_calls = args.prompts * CALLS_PER_PROMPT
        critical_path = CALLS_PER_PROMPT * args.latency
        bound = max(critical_path, total_calls * args.latency / args.cap)
        print(f"set-up: {args.prompts} prompts x {CALLS_PER_PROMPT} calls, {args.latency * 1000:.0f} ms per call, "
              f"at most {args.cap} concurrent; lower bound {bound:.2f} s")
        print(f"one call at a time (the published code): {total_calls} x {args.latency} s = "
              f"{total_calls * args.latency:.0f} s")
        print(f"{'phase':<28}{'wall s':>8}{'bound s':>9}{'ratio':>7}{'calls':>7}{'CPU ms/call':>13}{'peak MB':>9}")
        figures = {}
        for phase, label in (("bare", "bare asyncio + openai"), ("pipeline", "fellowship pipeline")):
            completed = subprocess.run(
                [sys.executable, "-m", "tools.dev.bench", "--phase", phase, "--base-url", base_url,
                 "--prompts", str(args.prompts), "--cap", str(args.cap)],
                capture_output=True, text=True, check=True,
            )
            result = json.loads(completed.stdout.strip().splitlines()[-1])
            figures[phase] = result
            cpu_ms = 1000 * result["cpu_s"] / result["calls"]
            print(f"{label:<28}{result['wall_s']:>8.2f}{bound:>9.2f}{result['wall_s'] / bound:>7.3f}"
                  f"{int(result['calls']):>7}{cpu_ms:>13.2f}{result['peak_mb']:>9.0f}")
        cpu_ratio = (figures["pipeline"]["cpu_s"] / figures["pipeline"]["calls"]) / (
            figures["bare"]["cpu_s"] / figures["bare"]["calls"]
        )
        print(f"pipeline CPU per call / bare loop CPU per call: {cpu_ratio:.2f}")
    finally:
        stub.terminate()
        stub.wait(10)


if __name__ == "__main__":
    main()
