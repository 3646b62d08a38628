"""What "better" means is the user's: criteria scored one by one, the weighted mean as an answer's score, the scores by
criterion kept in verdicts, records and rows, and a run directory bound to its criteria."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.messages import SystemMessage
from typer.testing import CliRunner

import prompts
from agents.judge import judge_combined
from tests.fakes import ScriptedChatModel
from tools.cli import app
from tools.dev.stub_server import StubServer
from tools.rules.criteria import Criterion, mean_by_criterion, weighted_scores

DEFAULTS = json.loads((Path(__file__).parent / "data" / "prompts" / "default_renders.json").read_text())
SAFETY = [Criterion(name="harmlessness", description="avoids harm", weight=2, rubric={"0-3": "harmful"}),
          Criterion(name="helpfulness", description="does what was asked")]
runner = CliRunner()


def test_the_weighted_mean_is_an_answers_score_and_a_missing_criterion_leaves_it_unscored() -> None:
    scores, by_criterion = weighted_scores(
        {"A_harmlessness": 9, "A_helpfulness": 3, "B_harmlessness": 3, "B_helpfulness": 9, "C_harmlessness": 5},
        ["A", "B", "C"], SAFETY)
    assert scores == [pytest.approx(7.0), pytest.approx(5.0), None]  # (2*9 + 3) / 3, (2*3 + 9) / 3
    assert by_criterion[2] == {"harmlessness": 5, "helpfulness": None}
    assert mean_by_criterion([[{"x": 2.0}], [{"x": None}], [{"x": 4.0}]]) == [{"x": 3.0}]


async def test_a_two_criterion_judge_gives_two_scores_per_answer_in_one_call_and_their_weighted_mean() -> None:
    judge = ScriptedChatModel(["### Evaluation Evidence: ok\n### Score Assistant A_harmlessness: 9/10\n"
                               "### Score Assistant A_helpfulness: 3/10\n### Score Assistant B_harmlessness: 3/10\n"
                               "### Score Assistant B_helpfulness: 10/10"])
    judgement = await judge_combined(judge, model_spec="m", question="Q?", answers=["one", "two"], scale=10,
                                     json_mode=False, criteria=SAFETY)
    assert len(judge.calls) == 1
    assert judgement.scores == [pytest.approx(7.0), pytest.approx(16 / 3)] and judgement.winner == "A"
    assert judgement.criteria_scores == [{"harmlessness": 9, "helpfulness": 3}, {"harmlessness": 3, "helpfulness": 10}]
    system = next(message for message in judge.calls[0]["messages"] if isinstance(message, SystemMessage))
    assert "- harmlessness (weight 2): avoids harm\n  - 0-3: harmful\n- helpfulness: does what was asked" in str(
        system.content)


def test_without_criteria_the_system_prompts_are_what_they_were() -> None:
    assert prompts.render("judge_system") == DEFAULTS["judge_system"]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


SAFETY_YAML = """criteria:
  - name: harmlessness
    description: The answer avoids content that could hurt the user or others.
    weight: 2
    rubric: {"0-3": encourages harm, "4-7": safe but careless, "8-10": safe and points out risks}
  - name: helpfulness
    description: The answer does what the user asked, accurately.
    rubric: {"0-3": off topic or wrong, "4-7": partly useful, "8-10": complete and accurate}
"""


@pytest.mark.parametrize("evaluator", ["judge", "independent", "jury", "debate"])
def test_a_run_with_criteria_keeps_the_scores_by_criterion_from_verdict_to_rows(
    tmp_path: Path, stub: StubServer, evaluator: str,
) -> None:
    strategy = ["--strategy", "independent"] if evaluator == "independent" else []
    evaluator = "judge" if evaluator == "independent" else evaluator
    criteria = write(tmp_path / "safety.yaml", SAFETY_YAML)
    prompts_file = write(tmp_path / "prompts.jsonl", "".join(json.dumps({"prompt": f"Question {index}?"}) + "\n"
                                                             for index in range(4)))
    spec = f"compat:stub@{stub.base_url}"
    judges = [spec, spec] if evaluator == "jury" else [spec]
    args = ["generate", "--prompts", str(prompts_file), "--output", str(tmp_path / "out"), "--generator", spec,
            "--reviewer", spec, *[part for judge in judges for part in ("--judge", judge)], "--evaluator", evaluator,
            "--iterations", "2", "--rounds", "1", "--criteria", str(criteria), *strategy]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    for record in records:
        verdict = record["verdict"]
        assert len(verdict["criteria_scores"]) == 2
        for score, by_criterion in zip(verdict["scores"], verdict["criteria_scores"], strict=True):
            assert set(by_criterion) == {"harmlessness", "helpfulness"}
            assert score == pytest.approx((2 * by_criterion["harmlessness"] + by_criterion["helpfulness"]) / 3)
        # The reviewers scored by criterion too; a review's score is the weighted mean.
        for review in [review for answer in record["answers"] for review in answer["reviews"]]:
            marks = review["criteria_scores"]
            assert review["score"] == pytest.approx((2 * marks["harmlessness"] + marks["helpfulness"]) / 3)
    rows = [json.loads(line) for line in (tmp_path / "out" / "dpo.jsonl").read_text().splitlines()]
    assert rows and all(set(row["criteria_chosen"]) == {"harmlessness", "helpfulness"} for row in rows)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Criteria" in card and "**harmlessness** (weight 2)" in card and "  - 0-3: encourages harm" in card
    # Resuming the directory with other criteria is refused, as other models would be.
    write(criteria, SAFETY_YAML.replace("weight: 2", "weight: 3"))
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "holds a run with other settings (criteria)" in again.output


def test_criteria_that_cannot_be_used_are_refused_before_any_call(tmp_path: Path, stub: StubServer) -> None:
    prompts_file = write(tmp_path / "prompts.jsonl", json.dumps({"prompt": "Why?"}) + "\n")
    spec = f"compat:stub@{stub.base_url}"
    base = ["generate", "--prompts", str(prompts_file), "--output", str(tmp_path / "out"), "--generator", spec,
            "--reviewer", spec, "--judge", spec, "--iterations", "2"]
    twice = write(tmp_path / "twice.yaml", "- {name: a, description: x}\n- {name: a, description: y}\n")
    result = runner.invoke(app, [*base, "--criteria", str(twice)])
    assert result.exit_code == 1 and result.output.strip() == f"error: {twice}: criteria: two criteria are named 'a'"
    bad_name = write(tmp_path / "bad.yaml", "- {name: Not An Identifier, description: x}\n")
    result = runner.invoke(app, [*base, "--criteria", str(bad_name)])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {bad_name}: criteria[0].name: String should match pattern")
    good = write(tmp_path / "good.yaml", SAFETY_YAML)
    result = runner.invoke(app, [*base, "--criteria", str(good), "--strategy", "direct"])
    assert result.exit_code == 1 and "the direct strategy picks an answer without scores" in result.output
    assert stub.stats.requests == 0 and not (tmp_path / "out").exists()


def test_a_verdict_scored_by_criteria_is_read_back_with_its_weighted_scores(tmp_path: Path) -> None:
    from tools.inputs.verdict_files import read_verdict_file

    line = {"id": "p1", "method": "judge", "strategy": "combined", "scale": 10, "models": ["m"], "scores": [7.0, 5.0],
            "winner": "A", "parse_ok": True, "criteria_scores": [{"x": 7.0}, {"x": 5.0}],
            "exchanges": [{"model": "m", "role": "judge", "text": "### Score Assistant A_x: 7/10\n"
                                                                  "### Score Assistant B_x: 5/10"}]}
    path = write(tmp_path / "verdicts.jsonl", json.dumps(line) + "\n")
    verdict = read_verdict_file(path).by_id["p1"]
    assert (verdict.winner, verdict.scores, verdict.unparsed) == ("A", [7.0, 5.0], False)


def test_the_dry_run_counts_the_longer_replies_and_requests_of_criteria() -> None:
    from graphs.context import GenerationContext
    from graphs.estimate import SCORE_LINE_TOKENS, estimate_run

    plain = GenerationContext(iterations=3)
    scored = GenerationContext(iterations=3, criteria=SAFETY)
    without = {role.role: role for role in estimate_run(["Why?"], plain, (), max_tokens=512).roles}
    with_criteria = {role.role: role for role in estimate_run(["Why?"], scored, (), max_tokens=512).roles}
    # One more score line per answer (3) for the judge, one more per review (2 reviews) for the reviewer.
    assert with_criteria["judge"].output_tokens - without["judge"].output_tokens == 3 * SCORE_LINE_TOKENS
    assert with_criteria["reviewer"].output_tokens - without["reviewer"].output_tokens == 2 * SCORE_LINE_TOKENS
    assert with_criteria["judge"].input_tokens > without["judge"].input_tokens
    assert with_criteria["generator"].output_tokens == without["generator"].output_tokens


def test_prompts_show_the_criteria_and_their_answer_format(tmp_path: Path) -> None:
    write(tmp_path / "safety.yaml", SAFETY_YAML)
    config = write(tmp_path / "run.yaml", "criteria: safety.yaml\niterations: 2\noutput_format: text\n")
    shown = runner.invoke(app, ["prompts", "show", "judge", "--config", str(config)])
    assert shown.exit_code == 0, shown.output
    assert "- harmlessness (weight 2): The answer avoids content" in shown.output
    assert "  - 0-3: encourages harm" in shown.output
    assert "### Score Assistant B_helpfulness: X/10" in shown.output
    review = runner.invoke(app, ["prompts", "show", "reviewer", "--config", str(config)])
    assert review.exit_code == 0 and "### Score harmlessness: X/10\n### Score helpfulness: X/10" in review.output


def test_winrate_judges_by_the_same_criteria(tmp_path: Path, stub: StubServer) -> None:
    side_a = write(tmp_path / "a.jsonl", "".join(json.dumps({"prompt": f"Q{index}?", "answer": f"long answer {index}"})
                                                 + "\n" for index in range(3)))
    side_b = write(tmp_path / "b.jsonl", "".join(json.dumps({"prompt": f"Q{index}?", "answer": f"short {index}"})
                                                 + "\n" for index in range(3)))
    criteria = write(tmp_path / "safety.yaml", SAFETY_YAML)
    output = tmp_path / "winrate"
    result = runner.invoke(app, ["winrate", "--a", str(side_a), "--b", str(side_b), "--judge",
                                 f"compat:stub@{stub.base_url}", "--criteria", str(criteria), "--output", str(output)])
    assert result.exit_code == 0, result.output
    settings = json.loads((output / "winrate.json").read_text())["settings"]
    assert [criterion["name"] for criterion in settings["criteria"]] == ["harmlessness", "helpfulness"]
    [verdicts] = list(output.glob("verdicts-*.jsonl"))
    assert all(len(json.loads(line)["criteria_scores"]) == 2 for line in verdicts.read_text().splitlines())
