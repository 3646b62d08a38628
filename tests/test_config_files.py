"""Runs and referees as configuration files: `--config FILE.yaml` on evaluate, generate, meta-eval and graph."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tools.cli import app
from tools.dev.stub_server import StubServer, StubSettings

runner = CliRunner()

# The panel of the issue, exactly as a user writes it.
PANEL_YAML = """\
rounds: 2
debate_roles:            # the panel, in speaking order; replaces the default panel
  - general_public       # a built-in role, by key
  - psychologist
  - critic
  - key: ethicist        # a new role
    name: Ethicist
    description: You are an Ethicist. You weigh whether each answer is honest, fair and safe for the person who asked.
    # or: prompt_file: ethicist.j2   (a path relative to this YAML file)
    # optional: model: openai:gpt-4o
"""


@pytest.fixture
def panel(tmp_path: Path) -> Path:
    path = tmp_path / "panel.yaml"
    path.write_text(PANEL_YAML)
    return path


def write_pairs(path: Path, count: int = 2) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{index}", "prompt": f"Question {index}?",
                                        "responses": [f"yes {index}", "no"]}) + "\n" for index in range(count)))
    return path


def test_evaluate_debate_with_the_yaml_panel_has_the_ethicist_speak_and_score(
    tmp_path: Path, stub: StubServer, panel: Path
) -> None:
    output = tmp_path / "verdicts.jsonl"
    result = runner.invoke(app, ["evaluate", "--method", "debate", "--config", str(panel), "--input",
                                 str(write_pairs(tmp_path / "pairs.jsonl")), "--output", str(output),
                                 "--model", f"compat:stub@{stub.base_url}"])
    assert result.exit_code == 0, result.output
    for record in map(json.loads, output.read_text().splitlines()):
        speakers = [(turn["speaker"], turn["round"]) for turn in record["transcript"]]
        assert speakers == [(name, round_number) for round_number in (1, 2)
                            for name in ("General Public", "Psychologist", "Critic", "Ethicist")]
        assert [entry["role"] for entry in record["referee_scores"]] == [
            "general_public", "psychologist", "critic", "ethicist"]
        ethicist_final = next(exchange for exchange in record["exchanges"]
                              if exchange["run"] == "debate/ethicist/final")
        assert ethicist_final["text"]


def test_a_new_referee_with_its_own_model_uses_it_and_its_scores_count_in_the_mean(
    tmp_path: Path, stub: StubServer
) -> None:
    # The Ethicist's own model is a second server, a judge that always gives the first answer 5 points more: its
    # scores differ from the others', so whether they count in the mean shows.
    own = StubServer(StubSettings(first_answer_bonus=5)).start_in_thread()
    try:
        own_spec = f"compat:ethicist@{own.base_url}"
        config = tmp_path / "panel.yaml"
        config.write_text(PANEL_YAML.replace("    # optional: model: openai:gpt-4o", f"    model: {own_spec}"))
        output = tmp_path / "verdicts.jsonl"
        result = runner.invoke(app, ["evaluate", "--method", "debate", "--config", str(config), "--input",
                                     str(write_pairs(tmp_path / "pairs.jsonl")), "--output", str(output),
                                     "--model", f"compat:stub@{stub.base_url}"])
        assert result.exit_code == 0, result.output
        assert own.stats.completions == 2 * 3  # per item: a turn in each of the 2 rounds and the final scores
    finally:
        own.stop()
    assert stub.stats.completions == 2 * 3 * 3  # the three other referees, on the --model spec
    for record in map(json.loads, output.read_text().splitlines()):
        by_role = {entry["role"]: entry for entry in record["referee_scores"]}
        ethicist = by_role["ethicist"]
        assert ethicist["model"] == own_spec
        assert {exchange["model"] for exchange in record["exchanges"] if "/ethicist/" in exchange["run"]} == {own_spec}
        assert all(isinstance(score, float) for score in ethicist["scores"])  # parsed
        others = [by_role[key]["scores"] for key in ("general_public", "psychologist", "critic")]
        assert ethicist["scores"] not in others
        assert record["scores"] == [sum(column) / 4 for column in zip(*others, ethicist["scores"], strict=True)]


def test_graph_debate_draws_the_configured_panel(panel: Path) -> None:
    result = runner.invoke(app, ["graph", "debate", "--config", str(panel)])
    assert result.exit_code == 0, result.output
    assert "ethicist" in result.output and "critic --> ethicist" in result.output
    assert "ethicist --> close_round" in result.output


def test_generate_with_the_debate_panel_ranks_answers(tmp_path: Path, stub: StubServer, panel: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Explain tides."}) + "\n")
    spec = f"compat:stub@{stub.base_url}"
    output = tmp_path / "run"
    result = runner.invoke(app, ["generate", "--prompts", str(prompts), "--output", str(output), "--generator", spec,
                                 "--reviewer", spec, "--judge", spec, "--evaluator", "debate", "--config", str(panel)])
    assert result.exit_code == 0, result.output
    [record] = [json.loads(line) for line in (output / "records.jsonl").read_text().splitlines()]
    assert record["verdict"]["method"] == "debate"
    assert [entry["role"] for entry in record["verdict"]["referee_scores"]][-1] == "ethicist"
    assert "Ethicist" in {turn["speaker"] for turn in record["verdict"]["transcript"]}


def test_prompt_file_is_relative_to_the_yaml_file_and_command_line_wins(tmp_path: Path, stub: StubServer) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "ethicist.j2").write_text("You are an Ethicist who checks honesty.")
    config = folder / "panel.yaml"
    config.write_text("rounds: 3\nmethod: debate\ndebate_roles:\n  - critic\n"
                      "  - {key: ethicist, name: Ethicist, prompt_file: ethicist.j2}\n")
    output = tmp_path / "v.jsonl"
    result = runner.invoke(app, ["evaluate", "--config", str(config), "--rounds", "1", "--input",
                                 str(write_pairs(tmp_path / "pairs.jsonl", 1)), "--output", str(output),
                                 "--model", f"compat:stub@{stub.base_url}"])
    assert result.exit_code == 0, result.output
    [record] = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(turn["speaker"], turn["round"]) for turn in record["transcript"]] == [("Critic", 1), ("Ethicist", 1)]


@pytest.mark.parametrize(("text", "message"), [
    ("rounds: 2\ncolour: blue\n", "{path}: unknown key 'colour'"),
    ("rounds: two\n", "{path}: key 'rounds': Input should be a valid integer"),
    ("debate_roles:\n  - key: ethicist\n    name: Ethicist\n", "{path}: key 'debate_roles[0]': 'ethicist' is not a "
     "built-in role"),
    ("debate_roles:\n  - {key: ethicist, name: E, description: d, colour: red}\n",
     "{path}: unknown key 'debate_roles[0].colour'"),
    ("debate_roles:\n  - {key: ethicist, name: E, prompt_file: nowhere.j2}\n",
     "{path}: key 'debate_roles[0]'.prompt_file: no file at"),
    ("rounds: [1\n", "{path}:2: not valid YAML"),
    ("- just\n- a list\n", "{path}: expected a mapping of option names to values"),
])
def test_bad_config_files_stop_before_any_work(tmp_path: Path, stub: StubServer, text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    output = tmp_path / "v.jsonl"
    result = runner.invoke(app, ["evaluate", "--method", "debate", "--config", str(config), "--input",
                                 str(write_pairs(tmp_path / "pairs.jsonl", 1)), "--output", str(output),
                                 "--model", f"compat:stub@{stub.base_url}"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + message.format(path=config)), result.output
    assert stub.stats.requests == 0 and not list(tmp_path.glob("v.jsonl*"))


def test_missing_config_file_and_missing_required_option(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["evaluate", "--config", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 1
    assert missing.output.strip() == f"error: --config {tmp_path / 'nope.yaml'}: file not found"
    config = tmp_path / "partial.yaml"
    config.write_text("output-format: json\n")
    required = runner.invoke(app, ["evaluate", "--config", str(config), "--output", str(tmp_path / "v.jsonl")])
    assert required.exit_code == 1
    assert required.output.strip() == "error: --input is required (or 'input:' in the --config file)"


def test_options_and_config_keys_share_one_set_of_names(tmp_path: Path, stub: StubServer) -> None:
    """Every key a config file takes is an option of the command (dashes or underscores), and vice versa."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", 1)
    config = tmp_path / "everything.yaml"
    config.write_text(f"input: {pairs}\noutput: {tmp_path / 'v.jsonl'}\nmodel: compat:stub@{stub.base_url}\n"
                      "method: judge\nstrategy: direct\nscale: 10\nswap: true\njury-rule: mean\nconcurrency: 2\n"
                      "max_tokens: 64\noutput-format: text\n")
    result = runner.invoke(app, ["evaluate", "--config", str(config)])
    assert result.exit_code == 0, result.output
    [record] = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert (record["strategy"], record["swapped"], len(record["exchanges"])) == ("direct", True, 2)


def test_langgraph_json_graphs_take_their_panel_from_fellowship_config(panel: Path) -> None:
    script = ("import json; from graphs.debate import graph as debate; from graphs.pipeline import graph as pipeline;"
              "print(json.dumps([sorted(debate.get_graph().nodes), sorted(pipeline.get_graph(xray=True).nodes)]))")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                               env={**os.environ, "FELLOWSHIP_CONFIG": str(panel)}, check=False)
    assert completed.returncode == 0, completed.stderr
    debate_nodes, pipeline_nodes = json.loads(completed.stdout)
    assert "ethicist" in debate_nodes and "debate:ethicist" in pipeline_nodes
