"""Estimate before spending (`--dry-run`) and a budget (`--max-cost-usd`), against the stub server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tools.cli import app
from tools.dev.stub_server import StubServer

runner = CliRunner()


def write_prompts(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Question number {index}?"}) + "\n" for index in range(count)))
    return path


def generate(prompts: Path, output: Path, spec: str, *extra: str) -> list[str]:
    return ["generate", "--prompts", str(prompts), "--output", str(output), "--generator", spec, "--reviewer", spec,
            "--judge", spec, *extra]


def dry_run_calls(output: str) -> tuple[int, int]:
    found = re.search(r"calls: (\d+)(?: to (\d+))?", output)
    assert found, output
    return int(found.group(1)), int(found.group(2) or found.group(1))


@pytest.mark.parametrize("extra", [
    [],
    ["--strategy", "independent"],
    ["--iterations", "2", "--swap", "--reviewer", "{spec}"],
    ["--evaluator", "jury", "--judge", "{spec}"],
    ["--evaluator", "debate", "--rounds", "3"],
    ["--iterations", "1"],
])
def test_dry_run_calls_nothing_and_counts_the_calls_the_run_makes(
    tmp_path: Path, stub: StubServer, extra: list[str]
) -> None:
    spec = f"compat:stub@{stub.base_url}"
    args = generate(write_prompts(tmp_path / "p.jsonl", 4), tmp_path / "run", spec,
                    *[value.format(spec=spec) for value in extra])
    dry = runner.invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert stub.stats.requests == 0 and not (tmp_path / "run").exists()
    low, high = dry_run_calls(dry.output)
    assert low == high
    real = runner.invoke(app, args)
    assert real.exit_code == 0, real.output
    assert stub.stats.completions == high


def test_dry_run_with_a_stop_score_gives_a_range_and_counts_only_prompts_not_done(
    tmp_path: Path, stub: StubServer
) -> None:
    spec = f"compat:stub@{stub.base_url}"
    prompts = write_prompts(tmp_path / "p.jsonl", 5)
    dry = runner.invoke(app, [*generate(prompts, tmp_path / "run", spec, "--stop-score", "9"), "--dry-run"])
    assert dry_run_calls(dry.output) == (5 * 2, 5 * 6)
    assert runner.invoke(app, generate(prompts, tmp_path / "run", spec, "--limit", "2")).exit_code == 0
    again = runner.invoke(app, [*generate(prompts, tmp_path / "run", spec), "--dry-run"])
    assert "prompts to run: 3 (2 already done" in again.output and dry_run_calls(again.output) == (18, 18)


def test_dry_run_time_puts_every_call_through_the_concurrency_slots(tmp_path: Path, stub: StubServer) -> None:
    # --concurrency counts calls: 60 prompts x 6 calls through 8 slots at 3 s each is 135 s, not 8 prompts at a time
    # (8 waves of 6 steps: 144 s); with more slots than calls, one prompt's chain of 6 steps (18 s) is the floor.
    spec = f"compat:stub@{stub.base_url}"
    prompts = write_prompts(tmp_path / "p.jsonl", 60)
    slots = runner.invoke(app, [*generate(prompts, tmp_path / "run", spec, "-c", "8"), "--dry-run"])
    assert "time: about 2.2 min at --concurrency 8" in slots.output, slots.output
    chain = runner.invoke(app, [*generate(prompts, tmp_path / "run", spec, "-c", "1000"), "--dry-run"])
    assert "time: about 0.3 min at --concurrency 1000" in chain.output, chain.output


def test_prices_are_checked_and_shown(tmp_path: Path, stub: StubServer) -> None:
    spec = f"compat:stub@{stub.base_url}"
    prompts = write_prompts(tmp_path / "p.jsonl", 2)
    bad = runner.invoke(app, [*generate(prompts, tmp_path / "run", spec), "--dry-run", "--price", "nonsense"])
    assert bad.exit_code == 1 and "--price 'nonsense': expected SPEC=IN:OUT" in bad.output
    priced = runner.invoke(app, [*generate(prompts, tmp_path / "run", spec), "--dry-run", "--price", f"{spec}=1:2"])
    assert re.search(r"cost: \$0\.\d{4} estimated", priced.output), priced.output


def billed(stub: StubServer, price_in: float, price_out: float) -> float:
    """What the stub's reported usage costs at these USD-per-million prices, worked out apart from the tool."""
    return (stub.stats.prompt_tokens * price_in + stub.stats.completion_tokens * price_out) / 1_000_000


def test_the_cost_a_run_reports_is_the_providers_usage_at_the_given_prices(tmp_path: Path, stub: StubServer) -> None:
    # Input and output priced apart (swapped prices give another figure: the stub's prompts are longer than its
    # replies), dear enough that four decimals show every token.
    spec = f"compat:stub@{stub.base_url}"
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    result = runner.invoke(app, [*generate(prompts, tmp_path / "run", spec), "--price", f"{spec}=300:7000"])
    assert result.exit_code == 0, result.output
    expected = billed(stub, 300, 7000)
    assert billed(stub, 7000, 300) != pytest.approx(expected)
    reported = re.search(r"cost: \$([\d.]+)", result.output)
    assert reported and float(reported.group(1)) == round(expected, 4), result.output
    records = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert sum(record["usage"]["cost_usd"] for record in records) == pytest.approx(expected, rel=1e-12)
    assert sum(record["usage"]["input_tokens"] for record in records) == stub.stats.prompt_tokens
    assert sum(record["usage"]["output_tokens"] for record in records) == stub.stats.completion_tokens


def test_budget_stops_then_a_higher_cap_finishes_without_paying_twice(tmp_path: Path, stub: StubServer) -> None:
    spec = f"compat:stub@{stub.base_url}"
    prompts = write_prompts(tmp_path / "p.jsonl", 12)
    price = ["--price", f"{spec}=1000:3000", "--concurrency", "2"]  # a dear model
    dry = runner.invoke(app, [*generate(prompts, tmp_path / "run", spec), *price, "--dry-run"])
    estimated = float(re.search(r"cost: \$([\d.]+) estimated", dry.output).group(1))  # type: ignore[union-attr]
    # The reserve for a prompt in flight is the estimate per prompt (it assumes every reply is --max-tokens long):
    # a cap of 2.5 of them leaves room for two in flight and a little spending, so the run stops part way. What is
    # checked is the provider's bill (the stub's usage at these prices, worked out here), not the tool's count.
    cap = 2.5 * estimated / 12
    stopped = runner.invoke(app, [*generate(prompts, tmp_path / "run", spec), *price, "--max-cost-usd", f"{cap:.4f}"])
    assert stopped.exit_code == 3, stopped.output
    assert "stopped at the budget: $" in stopped.output and "run again with a higher --max-cost-usd" in stopped.output
    bill = billed(stub, 1000, 3000)
    records = (tmp_path / "run" / "records.jsonl").read_text().splitlines()
    assert 0 < len(records) < 12
    assert bill <= cap  # what the provider would charge, not only what the tool counted
    assert sum(json.loads(line)["usage"]["cost_usd"] for line in records) == pytest.approx(bill, rel=1e-12)
    paid = stub.stats.completions
    assert paid == 6 * len(records)  # no prompt was started and left unfinished
    finished = runner.invoke(app, [*generate(prompts, tmp_path / "run", spec), *price, "--max-cost-usd", "1000"])
    assert finished.exit_code == 0, finished.output
    assert stub.stats.completions == 6 * 12  # the first run's prompts were not paid again


def test_a_budget_needs_every_model_priced(tmp_path: Path, stub: StubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
    spec = f"compat:stub@{stub.base_url}"
    args = ["generate", "--prompts", str(write_prompts(tmp_path / "p.jsonl", 1)), "--output", str(tmp_path / "r"),
            "--generator", spec, "--reviewer", spec, "--judge", "openai:gpt-4.1-nano", "--max-cost-usd", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.output.strip() == ("error: --max-cost-usd: no price for openai:gpt-4.1-nano; add --price "
                                     "openai:gpt-4.1-nano=IN:OUT (USD per million input and output tokens)")
