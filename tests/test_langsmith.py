"""Traces in LangSmith: what the LangSmith client sends for an evaluation, caught by a capture server of ours.

The command runs in its own process with the standard LangSmith variables pointing at 127.0.0.1, real-looking
keys set; the capture server keeps every request body, so the test sees exactly what LangSmith would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.dev.langsmith_capture import LangSmithCapture
from tools.dev.stub_server import StubServer

KEYS = {
    "OPENAI_API_KEY": "sk-proj-Zq8mW2nX4vB6cD1eF3gH5jK7lP9rS0tU",
    "COMPAT_API_KEY": "sk-compat-Yw7nV3mQ1xR5tZ9bC2dE4fG6hJ8k",
    "TOGETHER_API_KEY": "tgp_v1_Kx2Lm4Nn6Pp8Qq0Rr1Ss3Tt5Uu7Vv9Ww",
    "LANGSMITH_API_KEY": "lsv2_pt_0123456789abcdef0123456789abcdef_a1b2c3d4e5",
}


@pytest.fixture
def capture() -> Iterator[LangSmithCapture]:
    server = LangSmithCapture().start_in_thread()
    yield server
    server.stop()


def ours(tags: list[str]) -> list[str]:
    """The tags the project sets; LangGraph adds its own step tags (`seq:step:3`)."""
    return [tag for tag in tags if not tag.startswith(("seq:step", "graph:step"))]


def test_debate_runs_arrive_named_grouped_and_without_keys(
    tmp_path: Path, capture: LangSmithCapture, stub: StubServer
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": item_id, "prompt": f"Question {item_id}?",
                                         "responses": [f"yes {item_id}", "no"]}) + "\n" for item_id in (42, "b7")))
    environment = {**os.environ, **KEYS, "LANGSMITH_TRACING": "true", "LANGSMITH_ENDPOINT": capture.endpoint,
                   "LANGSMITH_PROJECT": "fellowship-tests"}
    completed = subprocess.run(
        [sys.executable, "-m", "tools.cli", "evaluate", "--method", "debate", "--input", str(pairs), "--output",
         str(tmp_path / "v.jsonl"), "--model", f"compat:stub@{stub.base_url}"],
        capture_output=True, text=True, timeout=300, env=environment, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    runs = list(capture.capture.runs.values())
    roots = {run["name"]: run for run in runs if not run.get("parent_run_id")}
    assert set(roots) == {"debate:42", "debate:b7"}

    def metadata(run: dict) -> dict:
        return (run.get("extra") or {}).get("metadata") or {}

    calls = [run for run in runs if run.get("run_type") == "llm"]
    assert len(calls) == 2 * (6 + 3)  # per item: three referees x two rounds, then three final scores
    critic_round_2 = [run for run in calls if run["name"] == "debate/critic/round-2"]
    assert len(critic_round_2) == 2
    for run in critic_round_2:
        meta = metadata(run)
        assert (meta["role"], meta["round"]) == ("Critic", 2) and meta["item_id"] in (42, "b7")
        assert sorted(ours(run["tags"])) == ["critic", "debate", "turn"]
    # Each item's runs form one conversation: one thread id per item, on every run of that item's tree.
    for root_name, root in roots.items():
        tree = [run for run in runs if run.get("trace_id") == root["trace_id"]]
        assert {metadata(run).get("thread_id") for run in tree} == {root_name}
    # Tags stay few and stable across items: nothing item-specific in them.
    all_tags = {tag for run in runs for tag in ours(run.get("tags") or [])}
    assert not any("42" in tag or "b7" in tag for tag in all_tags)
    assert all_tags == {"debate", "general_public", "psychologist", "critic", "turn", "final"}
    sent = b"".join(capture.capture.bodies).decode("utf-8", "replace")
    assert "debate/critic/round-2" in sent and "Question 42?" in sent  # the bodies were read, not empty
    for name, value in KEYS.items():
        assert value not in sent, f"{name} was sent to LangSmith"


def test_each_persons_decision_arrives_as_feedback_on_the_paused_prompts_root_run(
    tmp_path: Path, capture: LangSmithCapture, stub: StubServer
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {index}?"}) + "\n" for index in range(3)))
    output = tmp_path / "run"
    spec = f"compat:stub@{stub.base_url}"
    environment = {**os.environ, **KEYS, "LANGSMITH_TRACING": "true", "LANGSMITH_ENDPOINT": capture.endpoint,
                   "LANGSMITH_PROJECT": "fellowship-tests"}
    command = [sys.executable, "-m", "tools.cli", "generate", "--prompts", str(prompts), "--output", str(output),
               "--generator", spec, "--reviewer", spec, "--judge", spec, "--iterations", "2", "--review", "all"]
    paused = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, check=False)
    assert paused.returncode == 4, paused.stderr
    roots = {run["name"]: run["id"] for run in capture.capture.runs.values()
             if not run.get("parent_run_id") and str(run.get("name", "")).startswith("pipeline:")}
    assert len(roots) == 3
    exported = tmp_path / "waiting.jsonl"
    assert subprocess.run([sys.executable, "-m", "tools.cli", "review", str(output), "--export", str(exported)],
                          capture_output=True, timeout=60, check=False).returncode == 0
    waiting = [json.loads(line)["prompt_id"] for line in exported.read_text().splitlines()]
    decisions = tmp_path / "decisions.jsonl"
    decisions.write_text(
        json.dumps({"prompt_id": waiting[0], "best": "B", "reviewer": "ana", "note": "clearer"}) + "\n"
        + json.dumps({"prompt_id": waiting[1], "none": True, "reviewer": "ana"}) + "\n")
    assert subprocess.run([sys.executable, "-m", "tools.cli", "review", str(output), "--import", str(decisions)],
                          capture_output=True, timeout=60, check=False).returncode == 0
    applied = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, check=False)
    assert applied.returncode == 4, applied.stderr  # one prompt still waits
    sent = {entry["run_id"]: entry for entry in capture.capture.feedback}
    assert set(sent) == {roots[f"pipeline:{waiting[0]}"], roots[f"pipeline:{waiting[1]}"]}
    first, second = sent[roots[f"pipeline:{waiting[0]}"]], sent[roots[f"pipeline:{waiting[1]}"]]
    assert (first["key"], first["value"], first["comment"]) == ("human_preference", "B", "clearer")
    assert first["feedback_source"]["metadata"]["reviewer"] == "ana"
    assert (second["key"], second["value"]) == ("human_preference", "none")
    bodies = b"".join(capture.capture.bodies).decode("utf-8", "replace")
    for name, value in KEYS.items():
        assert value not in bodies, f"{name} was sent to LangSmith"
