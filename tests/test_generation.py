"""Feedback loop, pipeline, export and the generate command: configurations, TRL format, resume, faults."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import datasets
import pytest
from langchain_core.messages import BaseMessage
from typer.testing import CliRunner

from graphs.context import GenerationContext
from graphs.feedback_loop import build_feedback_loop_graph
from tests.fakes import FakeModelSource, ScriptedChatModel, last_user_text
from tools.cli import app
from tools.dev.stub_server import StubServer, StubSettings
from tools.outputs.export import check_trl_rows, preference_rows
from tools.rules.pairing import PairingRules

runner = CliRunner()


def generator_model() -> ScriptedChatModel:
    def respond(messages: list[BaseMessage]) -> str:
        drafts = sum(1 for message in messages if message.type == "ai")
        return f"draft {drafts + 1}"

    return ScriptedChatModel(respond)


def reviewer_model(score: float, advice: str) -> ScriptedChatModel:
    return ScriptedChatModel(lambda _: f"### Evaluation\nok\n### Overall Score: {score}/10\n### Feedback\n{advice}")


async def run_loop(context: GenerationContext, source: FakeModelSource) -> dict:
    graph = build_feedback_loop_graph(model_source=source).compile()
    return await graph.ainvoke({"prompt_id": "p1", "prompt": "Explain tides."}, context=context)


async def test_loop_three_iterations_keeps_every_answer_and_conversation() -> None:
    generator = generator_model()
    reviewer = reviewer_model(6.5, "Mention the moon.")
    source = FakeModelSource({"gen": generator, "rev": reviewer})
    state = await run_loop(GenerationContext(generator="gen", reviewers=["rev"]), source)
    assert [answer["text"] for answer in state["answers"]] == ["draft 1", "draft 2", "draft 3"]
    assert [(review["iteration"], review["score"]) for review in state["reviews"]] == [(1, 6.5), (2, 6.5)]
    last_call = generator.calls[-1]["messages"]
    assert [message.type for message in last_call] == ["system", "human", "ai", "human", "ai", "human"]
    assert last_call[1].content == "Explain tides."
    assert "Mention the moon." in last_call[3].content and "[Feedback from" not in last_call[3].content
    # The reviewer sees only the request and the current answer, in a fresh conversation.
    review_prompt = last_user_text(reviewer.calls[1]["messages"])
    assert len(reviewer.calls[1]["messages"]) == 2
    assert "Explain tides." in review_prompt and "draft 2" in review_prompt and "draft 1" not in review_prompt


async def test_loop_two_reviewers_both_feedbacks_labelled() -> None:
    generator = generator_model()
    source = FakeModelSource({
        "gen": generator, "r1": reviewer_model(5, "Be shorter."), "r2": reviewer_model(7, "Cite a source."),
    })
    context = GenerationContext(generator="gen", reviewers=["r1", "r2"], iterations=2)
    state = await run_loop(context, source)
    assert len(state["answers"]) == 2
    assert sorted((review["seat"], review["model"]) for review in state["reviews"]) == [(0, "r1"), (1, "r2")]
    revision = generator.calls[1]["messages"][-1].content
    assert "[Feedback from Reviewer 1]\nBe shorter." in revision
    assert "[Feedback from Reviewer 2]\nCite a source." in revision


async def test_loop_early_stop_when_every_reviewer_satisfied() -> None:
    source = FakeModelSource({"gen": generator_model(), "r1": reviewer_model(9.5, "-"), "r2": reviewer_model(8, "-")})
    context = GenerationContext(generator="gen", reviewers=["r1", "r2"], stop_score=8.0)
    state = await run_loop(context, source)
    assert [answer["text"] for answer in state["answers"]] == ["draft 1"]
    one_unsatisfied = {"gen": generator_model(), "r1": reviewer_model(9.5, "-"), "r2": reviewer_model(7, "-")}
    assert len((await run_loop(context, FakeModelSource(one_unsatisfied)))["answers"]) == 3


def record_with(texts: list[str], winner: str | None, scores: list[float | None]) -> dict:
    return {
        "prompt_id": "abc",
        "prompt": [{"role": "user", "content": "Q?"}],
        "answers": [{"iteration": index + 1, "text": text} for index, text in enumerate(texts)],
        "verdict": {"winner": winner, "scores": scores},
        "models": {"generator": "g", "reviewers": ["r"], "evaluator": "judge:j"},
    }


async def test_a_prompt_is_one_graph_loop_checkpointed_once_per_step(tmp_path: Path) -> None:
    """The pipeline runs the loop's nodes and the judge itself: no subgraph namespace, 8 checkpoints for N = 3."""
    from agents.prices import BUILT_IN_PRICES
    from agents.roles import DEFAULT_ROLES
    from graphs.generation import PromptRunner

    judge = ScriptedChatModel(lambda _: "### Score Assistant A: 4/10\n### Score Assistant B: 6/10\n"
                                        "### Score Assistant C: 9/10")
    source = FakeModelSource({"gen": generator_model(), "rev": reviewer_model(6.5, "Mention the moon."),
                              "judge": judge})
    context = GenerationContext(generator="gen", reviewers=["rev"], models=["judge"], iterations=3)
    path = tmp_path / "checkpoints.sqlite"
    prompt_runner = PromptRunner.open(path, context=context, roles=DEFAULT_ROLES, model_source=source,
                                      prices=BUILT_IN_PRICES, trace=False)
    result = await prompt_runner.run("p1", "Explain tides.")
    prompt_runner.saver.flush()
    assert result.record is not None and result.record["verdict"]["winner"] == "C"
    with sqlite3.connect(path) as db:
        namespaces = {row[0] for row in db.execute("SELECT DISTINCT checkpoint_ns FROM checkpoints")}
        checkpoints = db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
    # The input, the start step, then one after each superstep: generate, review, generate, review, generate, judge.
    assert namespaces == {""}
    assert checkpoints == 8
    prompt_runner.close()


def test_preference_rows_dpo_and_kto() -> None:
    dpo, kto, outcome = preference_rows(record_with(["one", "two", "three"], "B", [5, 9, 6]))
    assert outcome == "ok"
    assert [(row["chosen"][0]["content"], row["rejected"][0]["content"]) for row in dpo] == [
        ("two", "one"), ("two", "three"),
    ]
    assert [(row["completion"][0]["content"], row["label"]) for row in kto] == [
        ("two", True), ("one", False), ("three", False),
    ]
    check_trl_rows(dpo, "dpo")
    check_trl_rows(kto, "kto")


def test_preference_rows_ties_and_identical_answers_give_no_rows() -> None:
    skip = PairingRules(top_tie="skip")
    assert preference_rows(record_with(["a", "b", "c"], "tie", [8, 8, 3]), skip)[2] == "tied_top"
    assert preference_rows(record_with(["a", "b", "c"], "tie", [8, 8, 8]))[:3] == ([], [], "tied_top")
    assert preference_rows(record_with(["only"], "A", [7]))[:3] == ([], [], "single_answer")
    assert preference_rows(record_with(["a", "b", "c"], None, [None, None, None]))[2] == "no_verdict"
    assert preference_rows(record_with(["same", "same ", "same"], "A", [9, 4, 4]))[:2] == ([], [])
    dpo, _, _ = preference_rows(record_with(["x", "x", "y"], "A", [9, 9, 4]))  # B is A's twin: no pair with it
    assert [row["rejected"][0]["content"] for row in dpo] == ["y"]


def test_export_without_pairs_still_writes_empty_trl_datasets(tmp_path: Path) -> None:
    from tools.outputs.export import dataset_features, export_records

    export_records([record_with(["one", "two"], "B", [3, 8])], tmp_path)
    assert len(datasets.load_from_disk(str(tmp_path / "dpo"))) == 1
    # A later export where every prompt tied replaces the earlier datasets with empty ones, not stale rows.
    summary = export_records([record_with(["one", "two"], "tie", [8, 8])], tmp_path)
    assert summary.dpo_rows == 0 and summary.kto_rows == 0
    dpo = datasets.load_from_disk(str(tmp_path / "dpo"))
    kto = datasets.load_from_disk(str(tmp_path / "kto"))
    assert len(dpo) == 0 and dpo.features == datasets.Features.from_dict(dataset_features("dpo"))
    assert len(kto) == 0 and kto.features == datasets.Features.from_dict(dataset_features("kto"))


def test_exported_datasets_load_with_datasets_across_blocks_and_with_criteria(tmp_path: Path) -> None:
    """The folders are written with pyarrow alone: `datasets` must read them as its own, row for row."""
    from tools.outputs.export import EXPORT_BLOCK_BYTES, dataset_features, export_records

    padding = "x" * 4000
    records = []
    # 2 DPO and 3 KTO rows a record, each over 8 KB: the JSONL files span several of Arrow's blocks.
    for index in range(2 * EXPORT_BLOCK_BYTES // (8 * 1024 * 2)):
        record = record_with([f"first {index} {padding}", f"second {index} {padding}", f"third {index} {padding}"],
                             "C", [2, 5, 9])
        record["prompt_id"] = f"p{index:04d}"
        record["verdict"]["criteria_scores"] = [{"honesty": 2.0, "clarity": 1.5}, {"honesty": 5.0, "clarity": 6.0},
                                                {"honesty": 9.0, "clarity": 8.5}]
        records.append(record)
    # One row longer than a block (a prompt with a long context) is read whole.
    records[7]["prompt"] = [{"role": "user", "content": "context " * (EXPORT_BLOCK_BYTES // 7)}]
    summary = export_records(records, tmp_path)
    assert summary.dpo_rows == 2 * len(records) and summary.criteria == ["honesty", "clarity"]
    assert (tmp_path / "dpo.jsonl").stat().st_size > 2 * EXPORT_BLOCK_BYTES
    for kind in ("dpo", "kto"):
        loaded = datasets.load_from_disk(str(tmp_path / kind))
        assert loaded.features == datasets.Features.from_dict(dataset_features(kind, ["honesty", "clarity"]))
        assert list(loaded) == [json.loads(line) for line in (tmp_path / f"{kind}.jsonl").read_text().splitlines()]
        # The shard alone carries its features too, as `datasets`' own files do.
        shard = datasets.Dataset.from_file(str(tmp_path / kind / "data-00000-of-00001.arrow"))
        assert shard.features == loaded.features and len(shard) == len(loaded)
    assert not list(tmp_path.glob("*.tmp"))
    # The same records give the same folder, byte for byte (the fingerprint is the rows').
    first = {path.name: path.read_bytes() for path in (tmp_path / "dpo").iterdir()}
    export_records(records, tmp_path)
    assert {path.name: path.read_bytes() for path in (tmp_path / "dpo").iterdir()} == first


def test_trl_check_catches_bad_rows() -> None:
    good = {"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}
    with pytest.raises(ValueError, match="chosen equals rejected"):
        check_trl_rows([{**good, "rejected": good["chosen"]}], "dpo")
    with pytest.raises(ValueError, match="ending with a user turn"):
        check_trl_rows([{**good, "prompt": "Q"}], "dpo")
    with pytest.raises(ValueError, match="label must be a bool"):
        check_trl_rows([{"prompt": good["prompt"], "completion": good["chosen"], "label": 1}], "kto")


def write_prompts(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Question number {index}?"}) + "\n" for index in range(count)))
    return path


def generate_args(prompts: Path, output: Path, url: str, *extra: str) -> list[str]:
    spec = f"compat:stub@{url}"
    return ["generate", "--prompts", str(prompts), "--output", str(output), "--generator", spec,
            "--reviewer", spec, "--judge", spec, *extra]


def test_generate_writes_trl_datasets_and_rerun_makes_no_calls(tmp_path: Path, stub: StubServer) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 6)
    output = tmp_path / "out"
    result = runner.invoke(app, generate_args(prompts, output, stub.base_url))
    assert result.exit_code == 0, result.output
    assert stub.stats.completions == 6 * 6  # 3 answers, 2 reviews, 1 judgement per prompt
    with sqlite3.connect(output / "checkpoints.sqlite") as db:  # every prompt finished: no checkpoint is kept
        assert db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM writes").fetchone()[0] == 0
    dpo = datasets.load_from_disk(str(output / "dpo"))
    kto = datasets.load_from_disk(str(output / "kto"))
    from tools.outputs.export import dataset_features

    # The datasets hold exactly the JSONL files' rows, with the declared columns and types.
    assert dpo.features == datasets.Features.from_dict(dataset_features("dpo"))
    assert kto.features == datasets.Features.from_dict(dataset_features("kto"))
    for dataset, name in ((dpo, "dpo.jsonl"), (kto, "kto.jsonl")):
        assert list(dataset) == [json.loads(line) for line in (output / name).read_text().splitlines()]
    check_trl_rows(list(dpo), "dpo")
    check_trl_rows(list(kto), "kto")
    records = [json.loads(line) for line in (output / "records.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(len(record["answers"]) == 3 for record in records)
    assert all(len(record["answers"][0]["reviews"]) == 1 and record["answers"][0]["reviews"][0]["score"] is not None
               for record in records)
    card = (output / "README.md").read_text()
    assert "DPO rows" in card and "input tokens" in card
    # The card is published with --push-to-hub: the prompt file is named, not the path on this machine.
    assert "- `prompts.jsonl`, field `prompt`: 6 prompts" in card and str(tmp_path) not in card
    # The report's headline, in the card: the same figures as report.json.
    figures = json.loads((output / "report.json").read_text())
    assert f"| the loop | {figures['headline']} |" in card

    first_dpo = (output / "dpo.jsonl").read_text()
    again = runner.invoke(app, generate_args(prompts, output, stub.base_url))
    assert again.exit_code == 0, again.output
    assert stub.stats.completions == 36  # nothing paid twice
    assert (output / "dpo.jsonl").read_text() == first_dpo
    assert "reused from earlier runs: 6" in again.output


def test_generate_bad_input_stops_before_any_call(tmp_path: Path, stub: StubServer) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": ""}) + "\n")
    output = tmp_path / "out"
    result = runner.invoke(app, generate_args(prompts, output, stub.base_url))
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {prompts}:2: 'prompt' is empty"
    assert not output.exists() and stub.stats.requests == 0
    prompts.write_text(json.dumps({"text": "no prompt field"}) + "\n")
    result = runner.invoke(app, generate_args(prompts, output, stub.base_url))
    assert result.output.strip() == f"error: {prompts}:1: missing field 'prompt'"


def test_generate_other_settings_in_same_directory_refused(tmp_path: Path, stub: StubServer) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 1)
    output = tmp_path / "out"
    assert runner.invoke(app, generate_args(prompts, output, stub.base_url)).exit_code == 0
    result = runner.invoke(app, generate_args(prompts, output, stub.base_url, "--iterations", "2"))
    assert result.exit_code == 1 and "holds a run with other settings (iterations)" in result.output


def test_transient_faults_are_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    server = StubServer(StubSettings(error_rate=0.2, rate_limit_rate=0.2, retry_after_s=0.01)).start_in_thread()
    try:
        prompts = write_prompts(tmp_path / "prompts.jsonl", 8)
        result = runner.invoke(app, generate_args(prompts, tmp_path / "out", server.base_url, "--max-retries", "8"))
        assert result.exit_code == 0, result.output
        assert server.stats.faults["error"] > 0 and server.stats.faults["rate_limit"] > 0
        records = (tmp_path / "out" / "records.jsonl").read_text().splitlines()
        assert len(records) == 8
    finally:
        server.stop()


def test_a_call_past_its_timeout_is_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    # A fifth of the requests hang for 5 s; the client gives up on each after 1 s (--timeout) and sends it again.
    server = StubServer(StubSettings(hang_rate=0.2, hang_s=5.0)).start_in_thread()
    try:
        prompts = write_prompts(tmp_path / "prompts.jsonl", 4)
        result = runner.invoke(app, generate_args(prompts, tmp_path / "out", server.base_url, "--timeout", "1",
                                                  "--max-retries", "6"))
        assert result.exit_code == 0, result.output
        hangs = server.stats.faults["hang"]
        assert hangs > 0
        # Every hung request was sent again, and nothing else was: 6 calls per prompt answered, plus the hangs.
        assert server.stats.requests == 4 * 6 + hangs
        assert len((tmp_path / "out" / "records.jsonl").read_text().splitlines()) == 4
    finally:
        server.stop()


def test_failed_prompts_recorded_then_retried_with_flag(tmp_path: Path) -> None:
    failing = StubServer(StubSettings(error_rate=1.0)).start_in_thread()
    port = failing.port
    prompts = write_prompts(tmp_path / "prompts.jsonl", 2)
    output = tmp_path / "out"
    try:
        result = runner.invoke(app, generate_args(prompts, output, failing.base_url, "--max-retries", "0"))
    finally:
        failing.stop()
    assert result.exit_code == 2, result.output  # finished, with failures: scripts can tell
    assert "2 of 2 prompts failed: run the same command with --retry-failed" in result.output
    assert "failed: 2" in result.output and "Error code: 500 - injected server error" in result.output
    db = sqlite3.connect(output / "progress.sqlite")
    assert db.execute("SELECT COUNT(*) FROM prompts WHERE status = 'failed' AND error LIKE '%500%'").fetchone()[0] == 2
    db.close()

    healthy = StubServer(StubSettings(), port=port).start_in_thread()
    try:
        skipped = runner.invoke(app, generate_args(prompts, output, healthy.base_url))
        assert skipped.exit_code == 2 and healthy.stats.requests == 0  # still failed: not retried without the flag
        retried = runner.invoke(app, generate_args(prompts, output, healthy.base_url, "--retry-failed"))
        assert retried.exit_code == 0, retried.output
        assert "done: 2  failed: 0" in retried.output
    finally:
        healthy.stop()


def test_garbage_judge_output_is_followed_up_or_recorded(tmp_path: Path) -> None:
    server = StubServer(StubSettings(garbage_rate=0.5)).start_in_thread()
    try:
        prompts = write_prompts(tmp_path / "prompts.jsonl", 6)
        result = runner.invoke(app, generate_args(prompts, tmp_path / "out", server.base_url))
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
        assert server.stats.faults["garbage"] > 0
        exchanges = [exchange for record in records for exchange in record["verdict"]["exchanges"]]
        assert any(exchange["followup_text"] is not None for exchange in exchanges)
        from tools.rules.verdicts import winner_from_scores

        for record in records:
            verdict = record["verdict"]
            parsed = all(exchange["parse_ok"] for exchange in verdict["exchanges"])
            # A judge that never answered in format is recorded as unparsed, never given a made-up winner;
            # one that did has the winner of its scores.
            expected = winner_from_scores(verdict["scores"]) if parsed else None
            assert (verdict["winner"], verdict["parse_ok"]) == (expected, parsed and expected is not None)
    finally:
        server.stop()


def test_kill_and_resume_gives_rows_of_uninterrupted_run(tmp_path: Path) -> None:
    server = StubServer(StubSettings(latency_s=0.15, max_concurrent=4)).start_in_thread()
    try:
        prompts = write_prompts(tmp_path / "prompts.jsonl", 12)
        reference = tmp_path / "reference"
        assert runner.invoke(app, generate_args(prompts, reference, server.base_url, "-c", "2")).exit_code == 0
        calls_uninterrupted = server.stats.completions

        killed = tmp_path / "killed"
        command = [sys.executable, "-m", "tools.cli", *generate_args(prompts, killed, server.base_url, "-c", "2")]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        done = 0
        while time.monotonic() < deadline and done < 4:
            time.sleep(0.1)
            try:
                with sqlite3.connect(killed / "progress.sqlite", timeout=1) as db:
                    done = db.execute("SELECT COUNT(*) FROM prompts WHERE status = 'done'").fetchone()[0]
            except sqlite3.Error:
                continue
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        assert 4 <= done < 12, f"kill landed at {done} prompts done"
        # Finished prompts left no checkpoint behind; the unfinished ones kept theirs, to resume from. A kill that
        # lands between a prompt's commit and the deletion of its checkpoints leaves that one prompt's (the next
        # start deletes it, checked below): at most the two prompts of the two call slots can be caught so.
        with sqlite3.connect(killed / "progress.sqlite") as db:
            finished = {row[0] for row in db.execute("SELECT prompt_id FROM prompts WHERE status = 'done'")}
        with sqlite3.connect(killed / "checkpoints.sqlite") as db:
            threads = {row[0] for row in db.execute("SELECT DISTINCT thread_id FROM checkpoints")}
        assert threads - finished and len(threads & finished) <= 2
        before_resume = server.stats.completions

        resumed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert resumed.returncode == 0, resumed.stderr
        for name in ("dpo.jsonl", "kto.jsonl"):
            assert (killed / name).read_text() == (reference / name).read_text()
        with sqlite3.connect(killed / "checkpoints.sqlite") as db:
            assert not db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]  # every prompt committed
        # Finished prompts were not paid for again: the whole killed+resumed run cost at most one
        # uninterrupted run plus the calls of the steps in flight at the kill (2 prompts x 1 step).
        assert server.stats.completions - calls_uninterrupted <= calls_uninterrupted + 2
        assert server.stats.completions - before_resume < calls_uninterrupted
    finally:
        server.stop()


def test_checkpoints_of_another_pipeline_shape_are_dropped_not_resumed(tmp_path: Path, stub: StubServer) -> None:
    from graphs.checkpoints import InlineSqliteSaver
    from graphs.pipeline import CHECKPOINT_VERSION
    from tools.inputs.prompt_sets import prompt_id_for

    prompts = write_prompts(tmp_path / "prompts.jsonl", 2)
    output = tmp_path / "out"
    output.mkdir()
    # A run of an older version (no version table) was killed mid-prompt: its thread names steps that no
    # longer exist, and resuming it would skip them silently.
    old = InlineSqliteSaver.open(output / "checkpoints.sqlite")
    thread = prompt_id_for("Question number 0?")
    old.conn.execute("INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, type, checkpoint, metadata) "
                     "VALUES (?, '', 'x', 'msgpack', x'00', x'00')", (thread,))
    old.conn.commit()
    old.close()
    result = runner.invoke(app, generate_args(prompts, output, stub.base_url))
    assert result.exit_code == 0, result.output
    assert "1 unfinished prompts were checkpointed by another version of the pipeline" in result.output
    assert stub.stats.completions == 2 * 6  # both prompts ran whole
    with sqlite3.connect(output / "checkpoints.sqlite") as db:
        assert db.execute("SELECT version FROM graph_version").fetchall() == [(CHECKPOINT_VERSION,)]
    # The same version keeps its threads: a rerun of this version drops nothing.
    same = InlineSqliteSaver.open(output / "checkpoints.sqlite")
    same.conn.execute("INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, type, checkpoint, metadata) "
                      "VALUES ('kept', '', 'x', 'msgpack', x'00', x'00')")
    same.conn.commit()
    assert same.bind_graph_version(CHECKPOINT_VERSION) == 0 and same.thread_ids() == {"kept"}
    same.close()


async def test_group_commit_writes_a_loop_round_in_one_commit_and_close_commits_the_rest(tmp_path: Path) -> None:
    from graphs.checkpoints import InlineSqliteSaver

    path = tmp_path / "checkpoints.sqlite"
    saver = InlineSqliteSaver.open(path, group_commit=True)
    reader = sqlite3.connect(path)
    loop_errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: loop_errors.append(context))

    def committed() -> int:
        return reader.execute("SELECT COUNT(*) FROM writes").fetchone()[0]

    def write(task: str) -> None:
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": "c1"}}
        saver.put_writes(config, [("answers", [task])], task_id=task)  # type: ignore[arg-type]

    write("a")
    write("b")
    assert committed() == 0  # both wait for the round's one commit
    await asyncio.sleep(0)
    assert committed() == 2
    write("c")
    saver.close()  # what a round left pending is committed on close, and the scheduled commit is cancelled
    assert committed() == 3
    await asyncio.sleep(0)
    assert not loop_errors  # a commit left scheduled would have failed here, on the closed connection
    # Without a loop (the sync API from a thread), a write commits at once.
    plain = InlineSqliteSaver.open(path, group_commit=True)
    write_config = {"configurable": {"thread_id": "u", "checkpoint_ns": "", "checkpoint_id": "c1"}}
    await asyncio.to_thread(plain.put_writes, write_config, [("answers", ["d"])], "d")  # type: ignore[arg-type]
    assert committed() == 4
    plain.close()
    reader.close()


def _put_thread(saver: Any, thread_id: str, step: str) -> None:
    from langgraph.checkpoint.base import empty_checkpoint

    checkpoint = {**empty_checkpoint(), "id": step}
    config = saver.put({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}, checkpoint, {}, {})
    saver.put_writes(config, [("answers", [step])], task_id=f"task-{step}")
    saver.flush()


def _rows(path: Path, thread_id: str) -> tuple[int, int]:
    with sqlite3.connect(path) as db:
        return tuple(db.execute(f"SELECT COUNT(*) FROM {table} WHERE thread_id = ?", (thread_id,)).fetchone()[0]
                     for table in ("checkpoints", "writes"))  # type: ignore[return-value]


def test_a_worker_saver_takes_a_thread_over_from_the_meeting_point_on_first_read(tmp_path: Path) -> None:
    from graphs.checkpoints import InlineSqliteSaver, worker_file

    meeting_point = tmp_path / "checkpoints.sqlite"
    driver = InlineSqliteSaver.open(meeting_point)
    _put_thread(driver, "cut-off", "step-1")
    _put_thread(driver, "cut-off", "step-2")
    own = worker_file(meeting_point, 4242)
    assert own.name == "checkpoints-worker-4242.sqlite"
    worker = InlineSqliteSaver.open(own, group_commit=True, meeting_point=meeting_point)
    found = worker.get_tuple({"configurable": {"thread_id": "cut-off", "checkpoint_ns": ""}})
    assert found is not None and found.config["configurable"]["checkpoint_id"] == "step-2"  # the last step
    assert _rows(own, "cut-off") == (2, 2)  # moved, steps and pending writes alike
    assert _rows(meeting_point, "cut-off") == (0, 0)
    # A thread the meeting point does not hold is new: nothing moves, and it is not looked for again.
    assert worker.get_tuple({"configurable": {"thread_id": "new", "checkpoint_ns": ""}}) is None
    _put_thread(driver, "new", "elsewhere")
    assert worker.get_tuple({"configurable": {"thread_id": "new", "checkpoint_ns": ""}}) is None
    worker.close()
    driver.close()


def test_the_driver_takes_back_the_threads_of_ended_workers_and_removes_their_files(tmp_path: Path) -> None:
    from graphs.checkpoints import InlineSqliteSaver, worker_file, worker_files

    meeting_point = tmp_path / "checkpoints.sqlite"
    driver = InlineSqliteSaver.open(meeting_point, group_commit=True)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    ended_file, running_file = worker_file(meeting_point, int(ended.stdout)), worker_file(meeting_point, os.getpid())
    for path, thread_id in ((ended_file, "on-the-dead-worker"), (running_file, "on-a-live-worker")):
        worker = InlineSqliteSaver.open(path, meeting_point=meeting_point)
        _put_thread(worker, thread_id, "step-3")
        worker.close()
    assert worker_files(meeting_point, ended_only=True) == [ended_file]  # a live worker's file is its own
    assert driver.take_over(worker_files(meeting_point, ended_only=True)) == 1
    assert driver.thread_ids() == {"on-the-dead-worker"} and _rows(meeting_point, "on-the-dead-worker") == (1, 1)
    assert not ended_file.exists() and running_file.exists()
    # At a run's start or end every worker file comes back (no worker of the directory runs then).
    assert driver.take_over(worker_files(meeting_point)) == 1
    assert driver.thread_ids() == {"on-the-dead-worker", "on-a-live-worker"}
    assert worker_files(meeting_point) == []
    driver.close()


def test_a_local_instance_starts_only_when_the_driver_is_cpu_bound_with_enough_work_left() -> None:
    from graphs.ray_pool import LocalStartWatch

    def decisions(watch: LocalStartWatch, samples: list[tuple[float, float, int, int, float]]) -> list[bool]:
        return [watch.should_start(*sample) for sample in samples]

    # Every half second: wall time, CPU time, jobs finished, jobs in flight, mean seconds a job took. Busy, 40 jobs
    # in flight taking 4 s each (10 a second), 1,000 jobs: about 100 s left.
    busy_and_long = [(t / 2, 0.95 * t / 2, 5 * t, 40, 4.0) for t in range(6)]
    watch = LocalStartWatch(1000, payback_s=20, window_s=2)
    assert decisions(watch, busy_and_long) == [False] * 4 + [True, True]  # judged once a window has passed
    # Jobs that start together end in waves: between two, none ends, yet the work left is what Little's law says
    # (300 jobs, 96 in flight, 3 s each: under 10 s), not what the last seconds' finishing rate would make it.
    waves = [(t / 2, 0.95 * t / 2, 96 * ((t + 1) // 6), 96, 3.0) for t in range(8)]
    watch = LocalStartWatch(300, payback_s=20, window_s=2)
    assert not any(decisions(watch, waves))
    assert watch.why_not.startswith("the work left (about 6 s)")  # 204 jobs x 3 s / 96
    # Long, but the driver uses a third of a core: the endpoint is the limit.
    watch = LocalStartWatch(1000, payback_s=20, window_s=2)
    assert not any(decisions(watch, [(t / 2, 0.3 * t / 2, 5 * t, 40, 4.0) for t in range(12)]))
    assert "not CPU-bound" in watch.why_not
    # Busy with jobs so long that none finishes: the work left is at least the time spent busy so far.
    watch = LocalStartWatch(10, payback_s=20, window_s=2)
    busy_and_silent = decisions(watch, [(t / 2, 0.95 * t / 2, 0, 10, 0.0) for t in range(50)])
    assert busy_and_silent.index(True) == 40  # at 20 s: busy since 0 s
    # Busy from the start, none finished yet, but 192 jobs in flight for 2 s each, of 3,000: each takes at least
    # that, so at least 2,808 x 2 / 192 = 29 s are left; the instance starts once the first window has passed.
    watch = LocalStartWatch(3000, payback_s=20, window_s=2)
    assert decisions(watch, [(t / 2, 0.95 * t / 2, 0, 192, t / 2) for t in range(6)]) == [False] * 4 + [True, True]
    # The same start with 300 jobs: at most 6 s left, no start.
    watch = LocalStartWatch(300, payback_s=20, window_s=2)
    assert not any(decisions(watch, [(t / 2, 0.95 * t / 2, 0, 192, t / 2) for t in range(6)]))
    # A run that ends within the first window gives its reason too.
    assert LocalStartWatch(10).why_not.startswith("the run ended within the first")


def test_evaluate_resumes_from_partial_output(tmp_path: Path, stub: StubServer) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(
        json.dumps({"id": f"q{index}", "prompt": f"Question {index}?", "responses": [f"yes {index}", "no"]}) + "\n"
        for index in range(3)
    ))
    output = tmp_path / "verdicts.jsonl"
    args = ["evaluate", "--input", str(pairs), "--output", str(output), "--model", f"compat:stub@{stub.base_url}"]
    assert runner.invoke(app, args).exit_code == 0
    assert stub.stats.completions == 3
    first_run = output.read_text().splitlines()
    # Simulate a run killed after its first verdict: only the partial file remains.
    output.unlink()
    (tmp_path / "verdicts.jsonl.partial").write_text(first_run[0] + "\n")
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert stub.stats.completions == 5  # only the two missing items were judged again
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == ["q0", "q1", "q2"]
    assert not (tmp_path / "verdicts.jsonl.partial").exists()


async def test_reply_cut_off_by_max_tokens_in_json_mode_is_unparsed_not_a_failure(stub: StubServer) -> None:
    from agents.models import ModelRegistry, ModelSettings
    from graphs.context import EvaluationContext
    from graphs.evaluation import evaluate_items
    from tools.inputs.items import EvalItem

    # Three "tokens" cut the stub's JSON scores short; the OpenAI client then refuses to parse the reply.
    registry = ModelRegistry(ModelSettings(max_tokens=3, output_format="json"))
    try:
        context = EvaluationContext(models=[f"compat:stub@{stub.base_url}"])
        item = EvalItem(id="cut", prompt="Question?", responses=["one answer", "another answer"])
        [verdict] = await evaluate_items([item], method="judge", context=context, model_source=registry)
    finally:
        await registry.aclose()
    assert verdict["error"] is None
    assert verdict["winner"] is None and verdict["parse_ok"] is False
    [exchange] = verdict["exchanges"]
    assert exchange["text"].startswith("{") and len(exchange["text"].split()) == 3
    assert exchange["followup_text"] is not None and stub.stats.completions == 2
