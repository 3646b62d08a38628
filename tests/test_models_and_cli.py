"""Model specs, up-front checks, and the CLI's one-line errors (exit 1, nothing written)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agents.models import ModelRegistry, ModelSettings, check_model_spec, parse_model_spec, preflight_endpoints
from tools.cli import app
from tools.dev.stub_server import StubServer
from tools.errors import ConfigError

runner = CliRunner()


def test_parse_specs() -> None:
    assert parse_model_spec("openai:gpt-4o").model == "gpt-4o"
    assert parse_model_spec("together:google/gemma-2-9b-it").model == "google/gemma-2-9b-it"
    compat = parse_model_spec("compat:llama3@http://127.0.0.1:8000/v1/")
    assert (compat.model, compat.base_url) == ("llama3", "http://127.0.0.1:8000/v1")
    assert parse_model_spec("local:smollm2").provider == "local"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpt-4o", "expected PROVIDER:MODEL"),
        ("anthropic:claude", "unknown provider 'anthropic'"),
        ("compat:llama3", "expected compat:MODEL@http"),
        ("openai:gpt-4o", "OPENAI_API_KEY is not set"),
        ("together:google/gemma-2-9b-it", "TOGETHER_API_KEY is not set"),
        ("local:/nowhere/model.gguf", "no GGUF file"),
    ],
)
def test_check_spec_errors_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_model_spec(spec)


def test_unreachable_compat_endpoint() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    spec = f"compat:m@http://127.0.0.1:{free_port}/v1"
    with pytest.raises(ConfigError, match=f"--judge {spec}: cannot reach 127.0.0.1:{free_port} .connection refused"):
        preflight_endpoints([("--generator", "local:smollm2"), ("--judge", spec)])


def test_json_mode_defaults_to_local_only() -> None:
    registry = ModelRegistry()
    assert registry.json_mode("local:smollm2") is True
    assert registry.json_mode("openai:gpt-4o") is False
    assert ModelRegistry(ModelSettings(output_format="text")).json_mode("local:smollm2") is False


def test_key_never_in_model_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-very-secret-value-123")
    model = ModelRegistry().chat_model("openai:gpt-4o")
    assert "sk-test-very-secret-value-123" not in repr(model)
    assert "sk-test-very-secret-value-123" not in json.dumps(model.to_json(), default=str)


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"id": 1, "prompt": "Q?", "responses": ["a", "b"]})


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([GOOD, "{not json"], "pairs.jsonl:2: not valid JSON"),
        ([GOOD, json.dumps({"prompt": "Q?"})], "pairs.jsonl:2: missing field 'responses'"),
        ([json.dumps({"responses": ["a", "b"]})], "pairs.jsonl:1: missing field 'prompt'"),
        ([json.dumps({"prompt": "  ", "responses": ["a", "b"]})], "pairs.jsonl:1: 'prompt' is empty"),
        ([json.dumps({"prompt": "Q", "responses": ["a"]})], "pairs.jsonl:1: 'responses' must be a list"),
        ([GOOD, GOOD], "pairs.jsonl:2: duplicate id '1'"),
        ([json.dumps([1, 2])], "pairs.jsonl:1: expected a JSON object"),
    ],
)
def test_evaluate_bad_input_one_line_exit_1(tmp_path: Path, lines: list[str], message: str) -> None:
    pairs = write(tmp_path / "pairs.jsonl", lines)
    output = tmp_path / "verdicts.jsonl"
    result = runner.invoke(app, ["evaluate", "--input", str(pairs), "--output", str(output), "-m", "local:smollm2"])
    assert result.exit_code == 1
    lines_out = result.output.strip().splitlines()
    assert len(lines_out) == 1 and message in lines_out[0], result.output
    assert not output.exists() and not list(tmp_path.glob("verdicts.jsonl*"))


def test_evaluate_missing_key_stops_before_work(tmp_path: Path) -> None:
    pairs = write(tmp_path / "pairs.jsonl", [GOOD])
    result = runner.invoke(
        app, ["evaluate", "--input", str(pairs), "--output", str(tmp_path / "v.jsonl"), "--model", "openai:gpt-4o"]
    )
    assert result.exit_code == 1
    assert result.output.strip() == "error: --model openai:gpt-4o: the environment variable OPENAI_API_KEY is not set"


def test_evaluate_missing_input_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", "--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "v")])
    assert result.exit_code == 1
    assert "nope.jsonl: file not found" in result.output


def test_judge_with_two_models_is_refused(tmp_path: Path) -> None:
    pairs = write(tmp_path / "pairs.jsonl", [GOOD])
    args = ["evaluate", "--input", str(pairs), "--output", str(tmp_path / "v"), "-m", "local:smollm2"]
    args += ["-m", "local:smollm2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "use --method jury" in result.output


def test_graph_command_draws_debate_loop() -> None:
    result = runner.invoke(app, ["graph", "debate"])
    assert result.exit_code == 0
    for node in ("general_public", "psychologist", "critic", "close_round"):
        assert node in result.output
    assert "close_round -. &nbsp;next_round&nbsp; .-> general_public" in result.output  # the loop back, labelled


def test_graph_command_ascii_and_png(tmp_path: Path) -> None:
    assert "compare" in runner.invoke(app, ["graph", "judge", "--format", "ascii"]).output
    png = tmp_path / "jury.png"
    result = runner.invoke(app, ["graph", "jury", "--format", "png", "--output", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_commands_run_inside_a_running_event_loop_as_in_jupyter() -> None:
    from tools.cli.common import run_coroutine

    async def answer() -> int:
        await asyncio.sleep(0)
        return 7

    # A Jupyter kernel already runs a loop in its main thread; plain asyncio.run would refuse.
    assert run_coroutine(answer()) == 7


# Libraries a real run needs and the command line's help and dry run do not (each costs a fraction of a second).
RUN_ONLY_LIBRARIES = ("langchain_core", "langgraph", "langsmith", "openai", "datasets", "ray")
LOADED_AFTER = """
import sys
sys.argv = ["fellowship", *sys.argv[1:]]
try:
    from tools.cli.main import app  # the command itself (`main` also ends the process, skipping this print)
    app(prog_name="fellowship")
except SystemExit as end:
    code = end.code
print("exit", code, "loaded", *sorted({name.split(".")[0] for name in sys.modules}), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["generate", "--dry-run"]])
def test_help_and_dry_run_load_no_model_client_graph_or_dataset_library(tmp_path: Path, args: list[str]) -> None:
    if "--dry-run" in args:
        prompts = write(tmp_path / "prompts.jsonl", ['{"prompt": "Why is the sky blue?"}'])
        args = [*args, "--prompts", str(prompts), "--output", str(tmp_path / "run")]
    finished = subprocess.run([sys.executable, "-c", LOADED_AFTER, *args], capture_output=True, text=True,
                              timeout=60, check=False)
    *_, last = finished.stderr.splitlines()
    assert last.startswith("exit 0 loaded "), finished.stderr
    assert set(last.split()[3:]) & set(RUN_ONLY_LIBRARIES) == set()
    assert "tools" in last.split()[3:]  # the listing is the modules' (it would name the libraries too)
    if "--dry-run" in args:
        assert "calls: 6" in finished.stdout
        assert not (tmp_path / "run").exists()


# Libraries only the export, the report or Ray need: a run's first model call must not wait for them to load.
EXPORT_ONLY_LIBRARIES = ("datasets", "pyarrow", "pandas", "numpy", "sklearn", "scipy", "matplotlib", "ray",
                         "huggingface_hub")
# The modules loaded when the command makes its first call to the endpoint at PORT (sys.argv[1]). The endpoint
# check before the run connects to it once; the first model call is the second connection.
LOADED_AT_FIRST_CALL = """
import sys
port = sys.argv.pop(1)
seen = {"connects": 0, "modules": None}
def at_connect(event, args):
    if event == "socket.connect" and seen["modules"] is None:
        address = args[1]
        if isinstance(address, tuple) and len(address) >= 2 and str(address[1]) == port:
            seen["connects"] += 1
            if seen["connects"] == 2:
                seen["modules"] = sorted({name.split(".")[0] for name in sys.modules})
sys.addaudithook(at_connect)
sys.argv = ["fellowship", *sys.argv[1:]]
try:
    from tools.cli.main import app  # the command itself (`main` also ends the process, skipping this print)
    app(prog_name="fellowship")
except SystemExit as end:
    code = end.code
print("exit", code, "loaded at the first call", *(seen["modules"] or ["(no call)"]), file=sys.stderr)
"""


@pytest.mark.parametrize("fresh", [True, False])
def test_a_run_makes_its_first_call_before_loading_what_only_the_export_needs(
    tmp_path: Path, stub: StubServer, fresh: bool
) -> None:
    prompts = write(tmp_path / "prompts.jsonl", ['{"prompt": "Why is the sky blue?"}'])
    spec = f"compat:stub@{stub.base_url}"
    port = stub.base_url.split(":")[-1].split("/")[0]
    if not fresh:  # a directory that is not a fresh run's: its first call is the graph's, not an early one
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "notes.txt").write_text("mine")
    finished = subprocess.run(
        [sys.executable, "-c", LOADED_AT_FIRST_CALL, port, "generate", "--prompts", str(prompts), "--output",
         str(tmp_path / "run"), "--generator", spec, "--reviewer", spec, "--judge", spec],
        capture_output=True, text=True, timeout=120, check=False)
    *_, last = finished.stderr.splitlines()
    assert last.startswith("exit 0 loaded at the first call "), finished.stderr
    loaded = set(last.split()[7:])
    assert "tools" in loaded  # the listing is of the modules at the call
    assert loaded & set(EXPORT_ONLY_LIBRARIES) == set()
    if fresh:  # a fresh run's first call goes out before the graphs and the model client load (early calls)
        assert loaded & set(RUN_ONLY_LIBRARIES) == set()
    else:
        assert {"openai", "langgraph"} <= loaded
    assert (tmp_path / "run" / "dpo.jsonl").exists()  # and the export still ran, after the calls


def test_help_lists_the_main_job_first_in_the_order_a_user_meets_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    # A command's row starts with its name right after the box's edge; its help's next lines are indented.
    listed = [line.split()[1] for line in result.output.splitlines()
              if line.startswith("│ ") and not line.startswith("│  ") and not line.startswith("│ --")]
    assert listed[:9] == ["generate", "demo", "report", "review", "evaluate", "meta-eval", "winrate", "rank",
                          "jury-search"], \
        listed


@pytest.mark.parametrize(("hours", "text"), [(0.5, "30.0 min"), (1.5, "90.0 min"), (1.6, "1.6 hours"),
                                              (48, "48.0 hours"), (625, "26.0 days")])
def test_a_dry_runs_time_is_said_in_minutes_hours_or_days(hours: float, text: str) -> None:
    from tools.cli.main import duration_text

    assert duration_text(hours) == text

