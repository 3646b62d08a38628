"""The cross-run call cache: a repeat run makes no call, one more iteration pays only for the new calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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


def test_the_card_is_a_valid_hub_dataset_card(tmp_path: Path, stub: StubServer) -> None:
    from huggingface_hub import DatasetCard

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {index}?"}) + "\n" for index in range(3)))
    spec = f"compat:stub@{stub.base_url}"
    output = tmp_path / "run"
    run(prompts, output, spec, tmp_path / "calls.sqlite")
    card = DatasetCard.load(output / "README.md")
    data = card.data.to_dict()
    assert data["configs"] == [
        {"config_name": "dpo", "data_files": [{"split": "train", "path": "dpo.jsonl"}]},
        {"config_name": "kto", "data_files": [{"split": "train", "path": "kto.jsonl"}]},
    ]
    assert {"dpo", "kto", "trl", "synthetic"} <= set(data["tags"]) and data["license"] == "other"
    assert f"**generator**: `{spec}`" in card.text and "DPO rows (`dpo/`, `dpo.jsonl`)" in card.text
    # The configs name files that exist and load as the card says.
    import datasets

    for config in data["configs"]:
        rows = datasets.load_dataset("json", data_files=str(output / config["data_files"][0]["path"]), split="train")
        assert len(rows) > 0


def test_push_to_hub_publishes_the_card_and_both_configs(
    tmp_path: Path, stub: StubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tools.dev.hub_stub import HubStub

    hub = HubStub().start_in_thread()
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_TOKEN", "hf_realLookingToken0123456789")
        prompts = tmp_path / "p.jsonl"
        prompts.write_text(json.dumps({"prompt": "Question?"}) + "\n")
        spec = f"compat:stub@{stub.base_url}"
        output = run(prompts, tmp_path / "run", spec, tmp_path / "c.sqlite", "--push-to-hub", "me/prefs", "--private")
        assert "published: " in output
        assert hub.state.repos == {"me/prefs": True}
        files = hub.state.files["me/prefs"]
        assert sorted(files) == ["README.md", "dpo.jsonl", "kto.jsonl", "report.html"]
        for name in files:
            assert files[name] == (tmp_path / "run" / name).read_bytes()
        assert all(token == "Bearer hf_realLookingToken0123456789" for token in hub.state.tokens)
    finally:
        hub.stop()


def test_push_without_the_hub_is_one_line_and_loses_nothing(
    tmp_path: Path, stub: StubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("HF_TOKEN", "hf_realLookingToken0123456789")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Question?"}) + "\n")
    spec = f"compat:stub@{stub.base_url}"
    result = runner.invoke(app, ["generate", "--prompts", str(prompts), "--output", str(tmp_path / "run"),
                                 "--generator", spec, "--reviewer", spec, "--judge", spec, "--push-to-hub", "me/p"])
    assert result.exit_code == 1, result.exception
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"error: --push-to-hub me/p: could not publish to http://127.0.0.1:{closed}")
    assert "nothing is lost" in last and "hf_realLookingToken" not in result.output
    assert (tmp_path / "run" / "dpo.jsonl").exists() and (tmp_path / "run" / "README.md").exists()
