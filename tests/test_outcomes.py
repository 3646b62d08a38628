"""Honest outcomes: endpoints checked before work, a circuit breaker, exit statuses that tell the truth,
run directories bound to their prompts, countable paper-rule failures, and the small corners around them."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tools.cli import app
from tools.dev.stub_server import StubServer, StubSettings

runner = CliRunner()
SECRET = "sk-proj-realLookingSecretKey0123456789"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": prompt}) + "\n" for prompt in prompts))
    return path


def generate_args(prompts: Path, output: Path, spec: str, *extra: str) -> list[str]:
    return ["generate", "--prompts", str(prompts), "--output", str(output), "--generator", spec,
            "--reviewer", spec, "--judge", spec, *extra]


def write_pairs(path: Path, ids: list[object]) -> Path:
    path.write_text("".join(
        json.dumps({"id": item_id, "prompt": f"Question {index}?", "responses": [f"yes {index}", "no"]}) + "\n"
        for index, item_id in enumerate(ids)
    ))
    return path


# --- preflight: every provider's endpoint is connected to before any work -----------------------------

@pytest.mark.parametrize(("provider", "key_variable", "url_variable"), [
    ("openai:gpt-4o-mini", "OPENAI_API_KEY", "OPENAI_BASE_URL"),
    ("together:meta-llama/Llama-3-8b-chat-hf", "TOGETHER_API_KEY", "TOGETHER_API_BASE"),
])
@pytest.mark.parametrize("where", ["closed port", "unresolvable host"])
def test_unreachable_provider_stops_generate_before_any_work(
    tmp_path: Path, stub: StubServer, monkeypatch: pytest.MonkeyPatch,
    provider: str, key_variable: str, url_variable: str, where: str,
) -> None:
    monkeypatch.setenv(key_variable, SECRET)
    host, port = ("127.0.0.1", free_port()) if where == "closed port" else ("api.example.invalid", 443)
    monkeypatch.setenv(url_variable, f"http{'s' if port == 443 else ''}://{host}:{port}/v1")
    prompts = write_prompts(tmp_path / "prompts.jsonl", ["One?", "Two?"])
    output = tmp_path / "out"
    working = f"compat:stub@{stub.base_url}"
    args = ["generate", "--prompts", str(prompts), "--output", str(output), "--generator", working,
            "--reviewer", working, "--judge", provider]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    reason = "connection refused" if where == "closed port" else "host not found"
    assert result.output.strip() == f"error: --judge {provider}: cannot reach {host}:{port} ({reason})"
    assert stub.stats.requests == 0 and not output.exists()


def test_unreachable_provider_stops_evaluate_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    port = free_port()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    pairs = write_pairs(tmp_path / "pairs.jsonl", ["a"])
    output = tmp_path / "verdicts.jsonl"
    result = runner.invoke(app, ["evaluate", "--input", str(pairs), "--output", str(output), "-m", "openai:gpt-4o"])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: --model openai:gpt-4o: cannot reach 127.0.0.1:{port} (connection refused)"
    assert not list(tmp_path.glob("verdicts.jsonl*"))


# --- circuit breaker: a broken key stops the run after a handful of calls -------------------------------

def test_circuit_breaker_stops_a_run_whose_calls_all_get_401(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPAT_API_KEY", SECRET)
    server = StubServer(StubSettings(fixed_status=401)).start_in_thread()
    try:
        prompts = write_prompts(tmp_path / "prompts.jsonl", [f"Question {index}?" for index in range(40)])
        result = runner.invoke(app, generate_args(prompts, tmp_path / "out", f"compat:stub@{server.base_url}",
                                                  "--concurrency", "4"))
        assert result.exit_code == 1, result.output
        last = result.output.strip().splitlines()[-1]
        assert last.startswith("error: stopped: 3 prompts in a row failed the same way (compat:stub@")
        assert "HTTP 401 the API key was refused" in last and "0 finished prompts are kept" in last
        assert SECRET not in result.output and SECRET[:20] not in result.output  # the echoed key is masked
        assert server.stats.requests <= 4 + 3  # the calls in flight, not one call per prompt
    finally:
        server.stop()


def test_circuit_breaker_keeps_finished_work_and_resume_pays_only_the_rest(tmp_path: Path) -> None:
    healthy = StubServer(StubSettings()).start_in_thread()
    port = healthy.port
    prompts = write_prompts(tmp_path / "prompts.jsonl", [f"Question {index}?" for index in range(10)])
    output = tmp_path / "out"
    spec = f"compat:stub@{healthy.base_url}"
    try:
        assert runner.invoke(app, generate_args(prompts, output, spec, "--limit", "4")).exit_code == 0
    finally:
        healthy.stop()
    revoked = StubServer(StubSettings(fixed_status=403), port=port).start_in_thread()
    try:
        result = runner.invoke(app, generate_args(prompts, output, spec, "--concurrency", "1"))
        assert result.exit_code == 1 and "HTTP 403 access denied" in result.output
        assert "4 finished prompts are kept" in result.output
        assert revoked.stats.requests == 3
    finally:
        revoked.stop()
    with sqlite3.connect(output / "progress.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM prompts WHERE status = 'done'").fetchone()[0] == 4
    healthy = StubServer(StubSettings(), port=port).start_in_thread()
    try:
        resumed = runner.invoke(app, generate_args(prompts, output, spec, "--retry-failed"))
        assert resumed.exit_code == 0, resumed.output
        assert healthy.stats.completions == 6 * 6  # the four finished prompts were not paid again
    finally:
        healthy.stop()


def test_circuit_breaker_in_evaluate_names_the_model(tmp_path: Path) -> None:
    server = StubServer(StubSettings(fixed_status=404)).start_in_thread()
    try:
        pairs = write_pairs(tmp_path / "pairs.jsonl", [f"q{index}" for index in range(12)])
        spec = f"compat:no-such-model@{server.base_url}"
        result = runner.invoke(app, ["evaluate", "--input", str(pairs), "--output", str(tmp_path / "v.jsonl"),
                                     "-m", spec, "--concurrency", "1"])
        assert result.exit_code == 1
        assert f"failed the same way ({spec}: HTTP 404 model or endpoint not found" in result.output
        assert server.stats.requests == 3
    finally:
        server.stop()


# --- exit statuses: 0 done, 2 finished with failures, 130 interrupted -------------------------------------

def test_exit_status_0_and_2(tmp_path: Path, stub: StubServer) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", ["One?"])
    assert runner.invoke(app, generate_args(prompts, tmp_path / "ok", f"compat:stub@{stub.base_url}")).exit_code == 0
    failing = StubServer(StubSettings(error_rate=1.0)).start_in_thread()
    try:
        pairs = write_pairs(tmp_path / "pairs.jsonl", ["a", "b"])
        result = runner.invoke(app, ["evaluate", "--input", str(pairs), "--output", str(tmp_path / "v.jsonl"),
                                     "-m", f"compat:stub@{failing.base_url}", "--max-tokens", "64"])
        assert result.exit_code == 2, result.output
        assert "2 of 2 items failed" in result.output
    finally:
        failing.stop()


def test_ctrl_c_exits_130_with_a_resume_line_and_the_rerun_finishes(tmp_path: Path) -> None:
    server = StubServer(StubSettings(latency_s=0.3)).start_in_thread()
    try:
        prompts = write_prompts(tmp_path / "prompts.jsonl", [f"Question {index}?" for index in range(6)])
        command = [sys.executable, "-m", "tools.cli",
                   *generate_args(prompts, tmp_path / "out", f"compat:stub@{server.base_url}", "-c", "2")]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while server.stats.requests < 3 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 130, stderr
        assert stderr.strip().splitlines()[-1] == (
            "interrupted: finished work is kept; run the same command again to resume"
        )
        resumed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert resumed.returncode == 0, resumed.stderr
        assert len((tmp_path / "out" / "records.jsonl").read_text().splitlines()) == 6
    finally:
        server.stop()


# --- a run directory is bound to its prompts ----------------------------------------------------------------

def test_other_prompts_are_refused_and_extend_adds_them(tmp_path: Path, stub: StubServer) -> None:
    spec = f"compat:stub@{stub.base_url}"
    first = write_prompts(tmp_path / "first.jsonl", ["One?", "Two?"])
    other = write_prompts(tmp_path / "other.jsonl", ["Three?"])
    output = tmp_path / "run"
    assert runner.invoke(app, generate_args(first, output, spec)).exit_code == 0
    records_before = (output / "records.jsonl").read_text()
    requests_before = stub.stats.requests

    refused = runner.invoke(app, generate_args(other, output, spec))
    assert refused.exit_code == 1
    line = refused.output.strip()
    assert line.startswith(f"error: --prompts {other}: this --output {output} was made from {first} (field 'prompt', "
                           "2 prompts, sha256 ")
    assert "the file or set and content differ" in line and "add --extend" in line
    assert (output / "records.jsonl").read_text() == records_before and stub.stats.requests == requests_before

    write_prompts(first, ["One?", "Two, edited?"])
    edited = runner.invoke(app, generate_args(first, output, spec))
    assert edited.exit_code == 1 and "the content differ" in edited.output

    copy = write_prompts(tmp_path / "copy.jsonl", ["One?", "Two?"])
    same = runner.invoke(app, generate_args(copy, output, spec))  # the same prompts under another name
    assert same.exit_code == 0 and stub.stats.requests == requests_before

    extended = runner.invoke(app, generate_args(other, output, spec, "--extend"))
    assert extended.exit_code == 0, extended.output
    records = [json.loads(line) for line in (output / "records.jsonl").read_text().splitlines()]
    assert [record["prompt"][0]["content"] for record in records] == ["One?", "Two?", "Three?"]
    card = (output / "README.md").read_text()
    assert f"`{first.name}`, field `prompt`: 2 prompts, sha256" in card
    assert f"`{other.name}`, field `prompt`: 1 prompts" in card


# --- paper-compatible scoring says what it could not read ---------------------------------------------------

def own_direct_record(item_id: str, forward: str, reversed_text: str) -> dict:
    return {"id": item_id, "method": "judge", "strategy": "direct", "models": ["openai:gpt-4o"], "swapped": True,
            "scores": [None, None], "winner": "A", "parse_ok": True,
            "exchanges": [{"model": "openai:gpt-4o", "role": "judge/direct/forward", "text": forward},
                          {"model": "openai:gpt-4o", "role": "judge/direct/reversed", "text": reversed_text}]}


def test_paper_compat_counts_what_its_strict_rules_cannot_read(tmp_path: Path) -> None:
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": f"q{index}", "prompt": "Q?", "responses": ["a", "bb"],
                                         "label": "A"}) + "\n" for index in range(4)))
    # The tool's own text-mode replies put the letter on the answer line, which the published parser misses.
    verdicts = tmp_path / "direct.jsonl"
    verdicts.write_text("".join(json.dumps(own_direct_record(f"q{index}", "Fine.\n### Answer: A",
                                                             "Fine.\n### Answer: B")) + "\n" for index in range(4)))
    for flags, unparsed, consistency in (([], 0.0, 1.0), (["--paper-compat"], 1.0, None)):
        output = tmp_path / f"report{len(flags)}"
        result = runner.invoke(app, ["meta-eval", "score", "--benchmark", str(bench), "--verdicts", str(verdicts),
                                     "--output", str(output), *flags])
        assert result.exit_code == 0, result.output
        row = json.loads((output / "scores.json").read_text())["rows"][0]
        assert (row["unparsed_rate"], row["position_consistency"]) == (unparsed, consistency)


def test_paper_compat_refuses_json_mode_verdicts(tmp_path: Path) -> None:
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"id": "q0", "prompt": "Q?", "responses": ["a", "b"], "label": "A"}) + "\n")
    record = own_direct_record("q0", json.dumps({"reasoning": "r", "answer": "A"}), json.dumps({"reasoning": "r",
                                                                                               "answer": "B"}))
    verdicts = tmp_path / "json.jsonl"
    verdicts.write_text(json.dumps(record) + "\n")
    result = runner.invoke(app, ["meta-eval", "score", "--benchmark", str(bench), "--verdicts", str(verdicts),
                                 "--paper-compat", "--output", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert result.output.strip().startswith(f"error: {verdicts}:1: --paper-compat: this verdict was made in JSON mode")


def test_published_code_lines_need_no_strategy_flag(tmp_path: Path) -> None:
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": str(index), "prompt": "Q?", "responses": ["a", "b"], "label": label})
                             + "\n" for index, label in enumerate(["A", "B", "A"])))
    verdicts = tmp_path / "published.jsonl"
    verdicts.write_text("".join(json.dumps(row) + "\n" for row in [
        {"id": "0", "response": "### Score Assistant A: 8/10\n### Score Assistant B: 6/10", "score_1": 8, "score_2": 6},
        {"id": "1", "response": "### Score Assistant A: 5/10\n### Score Assistant B: 7/10", "score_1": 5, "score_2": 7},
        {"id": "2", "response": "Hmm.\n### Answer:\nA", "pick": "model_a"},
    ]))
    output = tmp_path / "report"
    result = runner.invoke(app, ["meta-eval", "score", "--benchmark", str(bench), "--verdicts", str(verdicts),
                                 "--output", str(output)])
    assert result.exit_code == 0, result.output
    row = json.loads((output / "scores.json").read_text())["rows"][0]
    assert (row["agreement"], row["unparsed_rate"]) == (1.0, 0.0)


# --- corners --------------------------------------------------------------------------------------------------

def test_trace_on_every_command_and_trace_show_on_a_folder(tmp_path: Path, stub: StubServer) -> None:
    spec = f"compat:stub@{stub.base_url}"
    prompts = write_prompts(tmp_path / "prompts.jsonl", ["One?", "Two?"])
    traces = tmp_path / "generate-traces"
    assert runner.invoke(app, generate_args(prompts, tmp_path / "run", spec, "--trace", str(traces))).exit_code == 0
    assert len(list(traces.glob("*.json"))) == 2
    shown = runner.invoke(app, ["trace", "show", str(traces)])
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("=== ") == 2 and shown.output.count("[generator/iteration-1]") == 2

    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": f"q{index}", "prompt": f"Q{index}?", "responses": ["a", "b"],
                                         "label": "A"}) + "\n" for index in range(3)))
    meta_traces = tmp_path / "meta-traces"
    meta = runner.invoke(app, ["meta-eval", "--benchmark", str(bench), "-m", spec, "--output", str(tmp_path / "m"),
                               "--trace", str(meta_traces)])
    assert meta.exit_code == 0, meta.output
    assert sorted(path.name for path in meta_traces.glob("*.json")) == ["q0.json", "q1.json", "q2.json"]

    answers = write_prompts(tmp_path / "a.jsonl", [])
    answers.write_text("".join(json.dumps({"prompt": p, "output": f"A says {p}"}) + "\n" for p in ("One?", "Two?")))
    winrate_traces = tmp_path / "winrate-traces"
    won = runner.invoke(app, ["winrate", "--a", str(answers), "--b", str(tmp_path / "run"), "--judge", spec,
                              "--output", str(tmp_path / "w"), "--trace", str(winrate_traces)])
    assert won.exit_code == 0, won.output
    assert len(list(winrate_traces.glob("*.json"))) == 2

    empty = tmp_path / "empty"
    empty.mkdir()
    refused = runner.invoke(app, ["trace", "show", str(empty)])
    assert refused.exit_code == 1
    assert refused.output.strip() == f"error: {empty}: no trace files (*.json) in this folder"


def test_graph_output_format_follows_the_extension(tmp_path: Path) -> None:
    png, mermaid = tmp_path / "jury.png", tmp_path / "jury.mmd"
    assert runner.invoke(app, ["graph", "jury", "-o", str(png)]).output.strip() == f"wrote {png}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert runner.invoke(app, ["graph", "jury", "-o", str(mermaid)]).exit_code == 0
    assert "aggregate_votes" in mermaid.read_text() and mermaid.read_text().startswith("---")
    unknown = runner.invoke(app, ["graph", "jury", "-o", str(tmp_path / "jury.svg")])
    assert unknown.exit_code == 1 and "cannot tell the format from '.svg'" in unknown.output


def test_winrate_best_answer_without_a_pick_is_not_reported_missing(tmp_path: Path, stub: StubServer) -> None:
    from tools.inputs.prompt_sets import prompt_id_for

    def records(folder: Path, winners: list[str | None]) -> Path:
        folder.mkdir()
        rows = []
        for index, winner in enumerate(winners):
            messages = [{"role": "user", "content": f"Prompt {index}?"}]
            rows.append({"prompt_id": prompt_id_for(messages), "prompt": messages, "verdict": {"winner": winner},
                         "answers": [{"iteration": 1, "text": f"first {index}"}, {"iteration": 2, "text": "x"}]})
        (folder / "records.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        return folder

    a = records(tmp_path / "a", ["A", "tie", None])
    b = records(tmp_path / "b", ["B", "A", "A"])
    result = runner.invoke(app, ["winrate", "--a", str(a), "--b", str(b), "--answer", "best", "--judge",
                                 f"compat:stub@{stub.base_url}", "--output", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    assert "prompts only in A: 0, only in B: 0; left out, no pick (tie or no verdict): 2 in A, 0 in B" in result.output
    assert json.loads((tmp_path / "w" / "winrate.json").read_text())["n"] == 1


@pytest.mark.parametrize(("first_answer_bonus", "consistency", "p_first"), [(0, 1.0, 0.5), (10, 0.0, 1.0)])
def test_jury_with_both_orders_reports_position_consistency(
    tmp_path: Path, first_answer_bonus: int, consistency: float, p_first: float
) -> None:
    # Jurors that score answers on their text alone agree with themselves across orders (and prefer the first
    # answer shown in half the orders: "a" always beats "b" here); jurors that always score the answer shown first
    # highest never do. The jury must un-reverse the swapped order's votes to see it: the reversed order's winner,
    # in the original labels, is B.
    server = StubServer(StubSettings(first_answer_bonus=first_answer_bonus)).start_in_thread()
    try:
        bench = tmp_path / "bench.jsonl"
        bench.write_text("".join(json.dumps({"id": f"q{index}", "prompt": f"Q{index}?",
                                             "responses": [f"a{index}", "b"], "label": "A"}) + "\n"
                                 for index in range(4)))
        spec = f"compat:stub@{server.base_url}"
        output = tmp_path / "report"
        result = runner.invoke(app, ["meta-eval", "--benchmark", str(bench), "--method", "jury", "-m", spec,
                                     "-m", spec, "--swap", "--output", str(output)])
        assert result.exit_code == 0, result.output
    finally:
        server.stop()
    row = json.loads((output / "scores.json").read_text())["rows"][0]
    assert row["name"].startswith("jury")
    assert row["position_consistency"] == consistency
    assert row["p_first"] == p_first
    [verdict_file] = (output / "verdicts").glob("jury-*.jsonl")
    verdicts = [json.loads(line) for line in verdict_file.read_text().splitlines()]
    if first_answer_bonus:
        # Each juror's two orders disagree, so each votes a tie, and so does the jury.
        assert all(verdict["order_winners"] == ["A", "B"] and verdict["winner"] == "tie" for verdict in verdicts)


def test_ids_keep_their_json_type(tmp_path: Path, stub: StubServer) -> None:
    pairs = write_pairs(tmp_path / "pairs.jsonl", [7, "seven"])
    output = tmp_path / "verdicts.jsonl"
    result = runner.invoke(app, ["evaluate", "--input", str(pairs), "--output", str(output),
                                 "-m", f"compat:stub@{stub.base_url}"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == [7, "seven"]
    # An interrupted run left the first verdict in the partial file: the int id is matched on resume.
    partial = output.with_name(output.name + ".partial")
    partial.write_text(output.read_text().splitlines()[0] + "\n")
    again = runner.invoke(app, ["evaluate", "--input", str(pairs), "--output", str(output),
                                "-m", f"compat:stub@{stub.base_url}"])
    assert again.exit_code == 0 and stub.stats.requests == 3
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == [7, "seven"]


def test_models_are_announced_and_a_fallback_to_the_embedded_model_is_warned(
    tmp_path: Path, stub: StubServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from tools.cli.common import announce_models

    prompts = write_prompts(tmp_path / "prompts.jsonl", ["One?"])
    spec = f"compat:stub@{stub.base_url}"
    result = runner.invoke(app, generate_args(prompts, tmp_path / "out", spec))
    assert result.exit_code == 0, result.output
    assert f"models: generator {spec} (--generator), reviewer {spec} (--reviewer), judge {spec} (--judge)" \
        in result.output
    assert "warning" not in result.output

    announce_models([("generator", spec, "--generator"), ("reviewer", "local:smollm2", None),
                     ("judge", "local:smollm2", None)])
    printed = capsys.readouterr().err.splitlines()
    assert printed[0] == f"models: generator {spec} (--generator), reviewer local:smollm2 (default), judge " \
        "local:smollm2 (default)"
    assert printed[1].startswith("warning: judge, reviewer fall back to the embedded local:smollm2")


def test_langgraph_dev_state_is_ignored_by_git() -> None:
    root = Path(__file__).resolve().parents[1]
    assert ".langgraph_api/" in (root / ".gitignore").read_text().splitlines()
