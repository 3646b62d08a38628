"""Local traces: one run tree per item, readable by `fellowship trace show`, with no secrets in them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.messages import BaseMessage
from typer.testing import CliRunner

from graphs.context import EvaluationContext
from graphs.evaluation import evaluate_items
from tests.fakes import FakeModelSource, ScriptedChatModel, last_user_text
from tools.cli import app
from tools.inputs.items import EvalItem
from tools.rules.secrets import mask_secrets

SECRET = "sk-proj-abcdefghijklmnop1234"


def chatty(messages: list[BaseMessage]) -> str:
    text = last_user_text(messages)
    if "The discussion is over" in text:
        return "### Score Assistant 1: 7/10\n### Score Assistant 2: 3/10"
    role = text.split("[Your role: ")[1].split("]")[0]
    return f"{role} says the first answer is correct; my key is {SECRET}"


async def test_debate_trace_written_and_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    item = EvalItem(id="item/7", prompt="2+2?", responses=["4", "5"])
    source = FakeModelSource({"m": ScriptedChatModel(chatty)})
    await evaluate_items([item], method="debate", context=EvaluationContext(models=["m"]), model_source=source,
                         trace_dir=tmp_path)
    trace_file = tmp_path / "item_7.json"
    raw = trace_file.read_text()
    assert SECRET not in raw
    tree = json.loads(raw)
    assert tree["name"] == "debate:item/7"
    assert tree["metadata"]["item_id"] == "item/7"

    result = CliRunner().invoke(app, ["trace", "show", str(trace_file)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    headers = [line for line in lines if line.startswith("--- ")]
    assert headers[:3] == [
        "--- General Public, round 1 [debate/general_public/round-1]",
        "--- Psychologist, round 1 [debate/psychologist/round-1]",
        "--- Critic, round 1 [debate/critic/round-1]",
    ]
    assert len(headers) == 9  # 3 referees x 2 rounds + 3 final scores
    assert "Psychologist says the first answer is correct; my key is ***" in result.output


def test_trace_show_rejects_non_trace(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    result = CliRunner().invoke(app, ["trace", "show", str(bad)])
    assert result.exit_code == 1
    assert "bad.json: not a trace file" in result.output


def test_mask_secrets_patterns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", "tg-plainvalue-0987")
    assert mask_secrets("key tg-plainvalue-0987 and sk-abcdefghijk123 end") == "key *** and *** end"


def test_trace_show_says_why_a_call_gave_no_reply() -> None:
    from tools.outputs.tracing import conversation_lines

    call = {"run_type": "llm", "name": "reviewer-1/iteration-1", "start_time": "2026-01-01T00:00:00",
            "metadata": {"role": "Reviewer 1", "round": 1}, "tags": ["reviewer-1/iteration-1"], "outputs": None,
            "error": "LengthFinishReasonError('the length limit was reached')Traceback (most recent call last):\n  x",
            "children": []}
    lines = conversation_lines({"name": "pipeline:p1", "children": [call]})
    assert lines[1:] == ["--- Reviewer 1, round 1 [reviewer-1/iteration-1]",
                         "(no reply: LengthFinishReasonError('the length limit was reached'))"]
