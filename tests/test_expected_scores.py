"""Probability-weighted scores (`--scoring expected`, tools/rules/expected_scores.py): the rule on hand-built
replies, then real calls through the openai client to the stub server, which returns `logprobs` as OpenAI does.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agents import calls
from agents.judge import judge_combined, score_alone
from agents.models import ModelRegistry, ModelSettings, scoring_is_expected
from tools.cli import app
from tools.dev.stub_server import StubServer, StubSettings
from tools.inputs.verdict_files import verdict_from_record
from tools.rules.expected_scores import OVERALL, expected_scores


def reply_logprobs(*tokens: str | tuple[str, dict[str, float]]) -> dict[str, Any]:
    """OpenAI's `logprobs` for a reply: plain tokens are certain; (token, {alternative: probability}) are not."""
    content = []
    for entry in tokens:
        token, alternatives = (entry, {entry: 1.0}) if isinstance(entry, str) else entry
        content.append({"token": token, "logprob": math.log(alternatives[token]), "bytes": list(token.encode()),
                        "top_logprobs": [{"token": alternative, "logprob": math.log(probability)}
                                         for alternative, probability in alternatives.items()]})
    return {"content": content}


def test_text_lines_on_ten_points_weigh_each_score_by_its_valid_tokens() -> None:
    text = "### Score Assistant A: 7/10\n### Score Assistant B: 8/10"
    logprobs = reply_logprobs(
        "### Score Assistant A:", " ", ("7", {"7": 0.5, "8": 0.3, "x": 0.1, "6": 0.1}),
        "/10\n### Score Assistant B:", (" 8", {" 8": 0.6, " 9": 0.2, "9": 0.1, " 1": 0.1}), "/10",
    )
    found = expected_scores(text, logprobs, ["A", "B"], 10)
    # A: "x" is no score: (0.5*7 + 0.3*8 + 0.1*6) / 0.9. B: "9" without the space is another path and is left out;
    # " 1" counts as 1 (a one-token number): (0.6*8 + 0.2*9 + 0.1*1) / 0.9.
    assert found["A"].expected == pytest.approx(6.5 / 0.9)
    assert found["A"].valid_mass == pytest.approx(0.9)
    assert found["B"].expected == pytest.approx(6.7 / 0.9)


def test_json_on_five_points_leaves_out_values_off_the_scale() -> None:
    text = '{"evaluation": "ok", "overall_score": 4}'
    logprobs = reply_logprobs('{"evaluation": "ok", "overall_score": ',
                              ("4", {"4": 0.7, "5": 0.2, "6": 0.05, "3": 0.05}), "}")
    found = expected_scores(text, logprobs, [OVERALL], 5)
    assert found[OVERALL].expected == pytest.approx((0.7 * 4 + 0.2 * 5 + 0.05 * 3) / 0.95)
    assert found[OVERALL].valid_mass == pytest.approx(0.95)


def test_numbers_written_a_digit_a_token_keep_their_other_digits() -> None:
    ten = expected_scores("### Overall Score: 10/10",
                          reply_logprobs("### Overall Score: ", ("1", {"1": 0.6, "9": 0.3, "8": 0.1}), "0", "/10"),
                          [OVERALL], 10)
    assert ten[OVERALL].expected == pytest.approx(0.6 * 10 + 0.3 * 9 + 0.1 * 8)  # "9" is 9, not 90
    hundred = expected_scores("### Overall Score: 85/100",
                              reply_logprobs("### Overall Score: ", ("8", {"8": 0.5, "9": 0.3, "7": 0.2}), "5",
                                             "/100"), [OVERALL], 100)
    assert hundred[OVERALL].expected == pytest.approx(0.5 * 85 + 0.3 * 95 + 0.2 * 75)


def test_tokens_sampled_around_the_text_are_matched_by_the_score_line() -> None:
    # llama.cpp lists what it sampled before its JSON grammar applied: here a code fence the reply does not have.
    text = '{\n  "overall_score": 4\n}'
    fenced = reply_logprobs("```", "json", "\n", "{", "\n ", ' "', "overall_score", '":', " ",
                            ("4", {"4": 0.5, "2": 0.3, "x": 0.2}), "\n", "}", "\n", "```")
    assert expected_scores(text, fenced, [OVERALL], 10)[OVERALL].expected == pytest.approx((2.0 + 0.6) / 0.8)
    elsewhere = reply_logprobs("### Overall Score: ", ("7", {"7": 1.0}), "/10")
    assert expected_scores(text, elsewhere, [OVERALL], 10) == {}
    assert expected_scores(text, None, [OVERALL], 10) == {}


def test_auto_scoring_is_expected_where_the_provider_returns_alternatives() -> None:
    assert scoring_is_expected("auto", "local:smollm2")
    assert scoring_is_expected("auto", "openai:gpt-4o")
    assert not scoring_is_expected("auto", "together:meta-llama/Llama-3-8b-chat-hf")
    assert not scoring_is_expected("parsed", "local:smollm2")
    assert scoring_is_expected("expected", "together:meta-llama/Llama-3-8b-chat-hf")


async def combined_with(server: StubServer, *, expected: bool, cache: Path | None = None) -> Any:
    registry = ModelRegistry(ModelSettings(output_format="text", cache_path=cache))
    spec = f"compat:stub@{server.base_url}"
    try:
        return await judge_combined(registry.chat_model(spec), model_spec=spec, question="Q?",
                                    answers=["first answer", "second answer"], scale=10, json_mode=False,
                                    expected=expected)
    finally:
        await registry.aclose()


async def test_the_stub_judge_gives_expected_scores_beside_the_numbers_it_wrote(stub: StubServer) -> None:
    parsed = await combined_with(stub, expected=False)
    judgement = await combined_with(stub, expected=True)
    [exchange] = judgement.exchanges
    assert [reading.key for reading in exchange.score_readings] == ["A", "B"]
    assert [reading.parsed for reading in exchange.score_readings] == parsed.scores
    for reading, score in zip(exchange.score_readings, judgement.scores, strict=True):
        assert reading.expected == score
        assert score != reading.parsed and abs(score - reading.parsed) < 1
        assert reading.valid_mass == pytest.approx(0.98)
    record = json.loads(exchange.model_dump_json())
    assert record["score_readings"][0]["parsed"] == parsed.scores[0]
    assert "score_readings" not in parsed.exchanges[0].model_dump()  # today's records stay as they were


async def test_a_cached_reply_keeps_its_probabilities(tmp_path: Path, stub: StubServer) -> None:
    first = await combined_with(stub, expected=True, cache=tmp_path / "cache.sqlite")
    again = await combined_with(stub, expected=True, cache=tmp_path / "cache.sqlite")
    assert again.exchanges[0].cached
    assert again.scores == first.scores
    assert stub.stats.completions == 1


@pytest.mark.parametrize("settings", [StubSettings(logprobs=False), StubSettings(refuse_logprobs=True)],
                         ids=["no-logprobs", "refused"])
async def test_without_probabilities_the_written_scores_stand_and_the_model_is_named_once(
    settings: StubSettings, caplog: pytest.LogCaptureFixture
) -> None:
    server = StubServer(settings).start_in_thread()
    calls._models_without_logprobs.clear()
    calls._models_refusing_logprobs.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="agents.calls"):
            first = await combined_with(server, expected=True)
            second = await combined_with(server, expected=True)
    finally:
        server.stop()
    plain = StubServer(StubSettings()).start_in_thread()
    try:
        parsed = await combined_with(plain, expected=False)
    finally:
        plain.stop()
    assert first.scores == second.scores == parsed.scores
    assert all(reading.expected is None for reading in first.exchanges[0].score_readings)
    notes = [record.getMessage() for record in caplog.records if "token probabilities" in record.getMessage()]
    assert len(notes) == 1, notes
    assert notes[0].startswith(f"note: compat:stub@{server.base_url} ")


async def test_independent_scoring_reads_its_one_score(stub: StubServer) -> None:
    registry = ModelRegistry(ModelSettings(output_format="json"))
    spec = f"compat:stub@{stub.base_url}"
    try:
        score, exchange = await score_alone(registry.chat_model(spec), model_spec=spec, question="Q?",
                                            answer="an answer", scale=10, json_mode=True, expected=True)
    finally:
        await registry.aclose()
    [reading] = exchange.score_readings
    assert reading.key == OVERALL and reading.parsed == int(reading.parsed or 0)
    assert score == reading.expected and score != reading.parsed


@pytest.mark.parametrize("strategy", ["combined", "independent"])
def test_a_recorded_verdict_read_again_keeps_its_expected_scores(tmp_path: Path, stub: StubServer,
                                                                 strategy: str) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": 1, "prompt": "Q?", "responses": ["first answer", "second answer"]}) + "\n")
    output = tmp_path / "verdicts.jsonl"
    result = CliRunner().invoke(app, ["evaluate", "--input", str(pairs), "--output", str(output), "--strategy",
                                      strategy, "--model", f"compat:stub@{stub.base_url}"])
    assert result.exit_code == 0, result.output
    record = json.loads(output.read_text())
    assert all(score != int(score) for score in record["scores"])
    again = verdict_from_record(record, paper_compat=False, path=output, line=1)
    assert again.scores == record["scores"] and again.winner == record["winner"]
    published = verdict_from_record(record, paper_compat=True, path=output, line=1)
    assert all(score == int(score) for score in published.scores)
