"""The smaller real-model tier: SmolLM2 served by xllamacpp over the OpenAI protocol, end to end.

These tests assert what must hold whatever the tiny model says: complete records, raw texts kept,
verdicts consistent with the parsed scores, and the process surviving to report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents.models import ModelRegistry, ModelSettings
from graphs.context import EvaluationContext
from graphs.evaluation import evaluate_items
from tools.inputs.items import EvalItem
from tools.rules.verdicts import winner_from_scores

pytestmark = pytest.mark.embedded

ITEM = EvalItem(
    id="capital",
    prompt="What is the capital of France?",
    responses=["The capital of France is Paris.", "The capital of France is Berlin."],
)


async def evaluate_once(method: str, models: list[str], **context_options: object) -> dict:
    registry = ModelRegistry(ModelSettings(max_tokens=160))
    try:
        context = EvaluationContext(models=models, **context_options)  # type: ignore[arg-type]
        [verdict] = await evaluate_items(
            [ITEM], method=method, context=context, model_source=registry  # type: ignore[arg-type]
        )
    finally:
        await registry.aclose()
    return verdict


def assert_complete(verdict: dict) -> None:
    assert verdict["error"] is None
    assert verdict["exchanges"] and all(exchange["text"] for exchange in verdict["exchanges"])
    assert verdict["usage"]["input_tokens"] > 0 and verdict["usage"]["output_tokens"] > 0
    assert len(verdict["scores"]) == 2
    if verdict["parse_ok"]:
        assert verdict["winner"] in {"A", "B", "tie"}


async def test_embedded_judge() -> None:
    verdict = await evaluate_once("judge", ["local:smollm2"])
    assert_complete(verdict)
    assert verdict["winner"] == winner_from_scores(verdict["scores"])


async def test_embedded_judge_scores_are_probability_weighted_by_default() -> None:
    # `--scoring auto` is `expected` for local models: the server's top_logprobs turn a written integer into the
    # mean of the judge's distribution, which a 135M model is never sure enough to leave whole.
    verdict = await evaluate_once("judge", ["local:smollm2"])
    readings = [reading for exchange in verdict["exchanges"] for reading in exchange.get("score_readings", [])]
    assert [reading["key"] for reading in readings] == ["A", "B"]
    weighted = [reading for reading in readings if reading["expected"] is not None]
    assert weighted, readings
    assert any(reading["expected"] != int(reading["expected"]) for reading in weighted)
    assert all(reading["parsed"] == int(reading["parsed"]) and 0 < reading["valid_mass"] <= 1 for reading in weighted)
    assert verdict["scores"] == [reading["expected"] if reading["expected"] is not None else reading["parsed"]
                                 for reading in readings]


async def test_embedded_jury_same_spec_twice() -> None:
    verdict = await evaluate_once("jury", ["local:smollm2", "local:smollm2"])
    assert_complete(verdict)
    assert len(verdict["juror_votes"]) == 2
    # The embedded server decodes one request at a time from a clean slate, so two seats of the same model
    # read the same prompt and say the same thing: the same vote, and a jury verdict equal to that vote.
    first, second = verdict["exchanges"]
    assert first["text"] == second["text"]
    assert verdict["juror_votes"][0] == verdict["juror_votes"][1]
    assert verdict["winner"] == verdict["juror_votes"][0]


async def test_embedded_debate() -> None:
    verdict = await evaluate_once("debate", ["local:smollm2"], turn_max_tokens=48)
    assert_complete(verdict)
    assert [(turn["speaker"], turn["round"]) for turn in verdict["transcript"]] == [
        ("General Public", 1), ("Psychologist", 1), ("Critic", 1),
        ("General Public", 2), ("Psychologist", 2), ("Critic", 2),
    ]


def test_embedded_cli_evaluate(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps(ITEM.model_dump()) + "\n")
    output = tmp_path / "verdicts.jsonl"
    completed = subprocess.run(
        [sys.executable, "-m", "tools.cli", "evaluate", "--input", str(pairs), "--output", str(output),
         "--strategy", "direct", "--swap", "--max-tokens", "128"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    [record] = [json.loads(line) for line in output.read_text().splitlines()]
    assert record["id"] == "capital" and record["strategy"] == "direct" and record["swapped"] is True
    assert len(record["exchanges"]) == 2 and len(record["order_winners"]) == 2


def test_embedded_generate_two_prompts_two_iterations(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "Name one planet."}) + "\n" + json.dumps({"prompt": "Say hello in French."}) + "\n"
    )
    output = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, "-m", "tools.cli", "generate", "--prompts", str(prompts), "--output", str(output),
         "--iterations", "2", "--max-tokens", "96"],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    records = [json.loads(line) for line in (output / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        assert [answer["iteration"] for answer in record["answers"]] == [1, 2]
        assert all(answer["text"] for answer in record["answers"])
        assert len(record["answers"][0]["reviews"]) == 1 and record["answers"][1]["reviews"] == []
        assert record["verdict"]["exchanges"], "the judge was called"
    import datasets

    from tools.outputs.export import check_trl_rows

    check_trl_rows(list(datasets.load_from_disk(str(output / "dpo"))), "dpo")
    kto_lines = (output / "kto.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(line)["label"], bool) for line in kto_lines)


def test_embedded_meta_eval_ten_pandalm_items(tmp_path: Path, benchmarks_dir: Path) -> None:
    from sklearn.metrics import cohen_kappa_score

    from tools.inputs.benchmarks import load_benchmark

    output = tmp_path / "report"
    command = [sys.executable, "-m", "tools.cli", "meta-eval", "--benchmark", "pandalm", "--method", "judge",
               "--limit", "10", "--swap", "--max-tokens", "160", "--output", str(output)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert completed.returncode == 0, completed.stderr
    assert "baseline: always A" in completed.stdout
    scores = json.loads((output / "scores.json").read_text())
    judge_row = scores["rows"][0]
    assert judge_row["n"] == 10 and not judge_row["baseline"]
    [cache] = (output / "verdicts").glob("*.jsonl")
    records = [json.loads(line) for line in cache.read_text().splitlines()]
    humans = [item.label for item in load_benchmark("pandalm")[:10]]
    predicted = [record["winner"] or "tie" for record in records]
    assert judge_row["kappa"] == pytest.approx(cohen_kappa_score(humans, predicted, labels=["A", "B", "tie"]))
    assert all(len(record["order_winners"]) == 2 for record in records)
    assert (output / "kappa.png").stat().st_size > 1000

    # Scoring the recorded verdicts again, from their raw texts, gives the live run's figures.
    rescored = subprocess.run(
        [sys.executable, "-m", "tools.cli", "meta-eval", "score", "--benchmark", "pandalm", "--verdicts", str(cache),
         "--output", str(tmp_path / "rescored")], capture_output=True, text=True, timeout=300, check=False,
    )
    assert rescored.returncode == 0, rescored.stderr
    again = json.loads((tmp_path / "rescored" / "scores.json").read_text())["rows"][0]
    assert again["n"] == 10
    assert again["kappa"] == pytest.approx(judge_row["kappa"])
    assert again["position_consistency"] == judge_row["position_consistency"]

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert "reusing 10 of 10 verdicts" in rerun.stderr


def without_timings(value: object) -> object:
    """A record with its latencies left out: everything else must repeat exactly."""
    if isinstance(value, dict):
        return {key: without_timings(item) for key, item in value.items() if key != "latency_s"}
    if isinstance(value, list):
        return [without_timings(item) for item in value]
    return value


def test_embedded_demo_twice_gives_the_same_verdicts_and_rows(tmp_path: Path) -> None:
    # The demo (3 calls in flight), then the same job through `generate` with 8 in flight: the embedded server
    # decodes one request at a time, whole, so the order calls arrive in changes nothing.
    demo_prompts = Path(__file__).resolve().parents[1] / "tools" / "data" / "demo_prompts.jsonl"
    local = "local:smollm2"
    commands = {
        "first": ["demo", "--output", str(tmp_path / "first")],
        "second": ["generate", "--prompts", str(demo_prompts), "--output", str(tmp_path / "second"),
                   "--generator", local, "--reviewer", local, "--judge", local, "--strategy", "combined",
                   "--max-tokens", "256", "--concurrency", "8"],
    }
    runs = []
    for name, command in commands.items():
        completed = subprocess.run([sys.executable, "-m", "tools.cli", *command],
                                   capture_output=True, text=True, timeout=900, check=False)
        assert completed.returncode == 0, completed.stderr
        if name == "first":  # a row, or one line saying why there is none; the report's path last
            assert "one DPO row:" in completed.stdout or "no DPO row: " in completed.stdout, completed.stdout
            last = completed.stdout.strip().splitlines()[-1]
            assert last == f"report: {tmp_path / 'first' / 'report.html'} (open it in a browser)", last
        runs.append(tmp_path / name)
    records = [[without_timings(json.loads(line)) for line in (run / "records.jsonl").read_text().splitlines()]
               for run in runs]
    assert len(records[0]) == 3 and records[0] == records[1]
    for name in ("dpo.jsonl", "kto.jsonl"):
        assert (runs[0] / name).read_text() == (runs[1] / name).read_text()
