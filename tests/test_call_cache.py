"""The cross-run call cache: a repeat run makes no call, one more iteration pays only for the new calls."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tools.cli import app
from tools.dev.stub_server import StubServer

runner = CliRunner()


def run(prompts: Path, output: Path, spec: str, cache: Path, *extra: str) -> str:
    result = runner.invoke(app, ["generate", "--prompts", str(prompts), "--output", str(output), "--generator", spec,
                                 "--reviewer", spec, "--judge", spec, "--cache", str(cache), *extra])
    assert result.exit_code == 0, result.output
    return result.output


def test_same_settings_in_a_new_directory_make_no_call(tmp_path: Path, stub: StubServer) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {index}?"}) + "\n" for index in range(4)))
    spec, cache = f"compat:stub@{stub.base_url}", tmp_path / "calls.sqlite"
    run(prompts, tmp_path / "first", spec, cache)
    assert stub.stats.completions == 4 * 6
    output = run(prompts, tmp_path / "second", spec, cache)
    assert stub.stats.completions == 4 * 6  # every call came from the cache
    assert "from the call cache: 24" in output
    for name in ("dpo.jsonl", "kto.jsonl"):
        assert (tmp_path / "first" / name).read_text() == (tmp_path / "second" / name).read_text()
    card = (tmp_path / "second" / "README.md").read_text()
    assert "calls answered from the call cache (not paid): 24" in card


def test_one_more_iteration_pays_three_calls_per_prompt(tmp_path: Path, stub: StubServer) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {index}?"}) + "\n" for index in range(5)))
    spec, cache = f"compat:stub@{stub.base_url}", tmp_path / "calls.sqlite"
    run(prompts, tmp_path / "three", spec, cache)
    before = stub.stats.completions
    run(prompts, tmp_path / "four", spec, cache, "--iterations", "4")
    # Per prompt: the third review, the fourth answer, and the judge over four answers.
    assert stub.stats.completions - before == 5 * 3


def test_without_the_cache_every_run_pays(tmp_path: Path, stub: StubServer) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Question?"}) + "\n")
    spec = f"compat:stub@{stub.base_url}"
    for name in ("a", "b"):
        result = runner.invoke(app, ["generate", "--prompts", str(prompts), "--output", str(tmp_path / name),
                                     "--generator", spec, "--reviewer", spec, "--judge", spec])
        assert result.exit_code == 0, result.output
    assert stub.stats.completions == 2 * 6
