"""Role prompts as data: the user's own templates for the generator, the reviewer and each judge strategy, checked
before any call, the answer format always the project's, and the default requests unchanged byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

from langchain_core.messages import HumanMessage
from typer.testing import CliRunner

import prompts
from agents.judge import judge_combined, judge_direct, score_alone
from agents.writers import opening_messages, review_answer
from tests.fakes import ScriptedChatModel
from tools.cli import app
from tools.dev.stub_server import StubServer
from tools.rules.contracts import DirectComparison, Review, combined_scores, format_hint, independent_score

DEFAULTS = json.loads((Path(__file__).parent / "data" / "prompts" / "default_renders.json").read_text())
ANSWERS = ["Answer A text.", "Answer B text.", "Answer C text."]
runner = CliRunner()


def sent_text(model: ScriptedChatModel) -> str:
    return str([message for message in model.calls[0]["messages"] if isinstance(message, HumanMessage)][-1].content)


async def test_without_templates_of_ones_own_every_request_is_what_it_was_byte_for_byte() -> None:
    """The golden texts were rendered from the templates before the answer format moved to `ROLE_format.j2`."""
    for json_mode in (False, True):
        suffix = "json" if json_mode else "text"
        combined = ScriptedChatModel(["### Score Assistant A: 5/10\n### Score Assistant B: 6/10\n"
                                      "### Score Assistant C: 7/10"])
        await judge_combined(combined, model_spec="m", question="Why?", answers=ANSWERS, scale=10, json_mode=json_mode)
        assert sent_text(combined) == DEFAULTS[f"judge_combined.{suffix}"]
        direct = ScriptedChatModel(["### Answer: A"])
        await judge_direct(direct, model_spec="m", question="Why?", answers=["Yes.", "No."], json_mode=json_mode)
        assert sent_text(direct) == DEFAULTS[f"judge_direct.{suffix}"]
        alone = ScriptedChatModel(["### Overall Score: 6/10"])
        await score_alone(alone, model_spec="m", question="Why?", answer="Yes.", scale=10, json_mode=json_mode)
        assert sent_text(alone) == DEFAULTS[f"judge_independent.{suffix}"]
        reviewer = ScriptedChatModel(["### Evaluation\nok\n### Overall Score: 6/10\n### Feedback\nmore"])
        await review_answer(reviewer, model_spec="m", question="Why?", answer="Yes.", json_mode=json_mode,
                            run_name="reviewer-1/iteration-1")
        assert sent_text(reviewer) == DEFAULTS[f"reviewer.{suffix}"]
    assert opening_messages("Why?")[0].content == DEFAULTS["generator_system"]


async def test_a_template_of_ones_own_replaces_the_request_and_keeps_the_projects_answer_format() -> None:
    template = "Rate these replies to {{ question }}:\n{% for a in answers %}{{ a.label }}) {{ a.text }}\n{% endfor %}"
    judge = ScriptedChatModel(['{"evaluation_evidence": "ok", "score_assistant_A": 3, "score_assistant_B": 9, '
                               '"score_assistant_C": 5}'])
    judgement = await judge_combined(judge, model_spec="m", question="Why?", answers=ANSWERS, scale=10,
                                     json_mode=True, template=template)
    assert sent_text(judge) == ("Rate these replies to Why?:\nA) Answer A text.\nB) Answer B text.\nC) Answer C text.\n"
                                + format_hint(combined_scores(("A", "B", "C"), 10)))
    assert judgement.winner == "B"  # the reply is parsed as always
    custom_system = opening_messages("Why?", "You are Acme's assistant.")
    assert custom_system[0].content == "You are Acme's assistant."


def test_every_roles_format_part_matches_its_contract() -> None:
    hints = {"judge_direct": format_hint(DirectComparison), "judge_independent": format_hint(independent_score(5)),
             "judge_combined": format_hint(combined_scores(("A", "B"), 5)), "reviewer": format_hint(Review)}
    variables = {"question": "q", "answer": "a", "answer_a": "a", "answer_b": "b", "scale": 5,
                 "answers": [{"label": "A", "text": "a"}, {"label": "B", "text": "b"}]}
    for role, hint in hints.items():
        text = prompts.render_role(role, "Custom body for {{ question }}.", json_format=hint, **variables)
        assert text == f"Custom body for q.\n{hint}"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_template_with_an_unknown_variable_or_a_syntax_error_is_refused_before_any_call(
    tmp_path: Path, stub: StubServer,
) -> None:
    write(tmp_path / "judge.j2", "Question:\n{{ question }}\nAnswers: {{ answer_list }}\n")
    write(tmp_path / "reviewer.j2", "Review {{ answer }}\n{% if answer %}\nno end\n")
    prompts_file = write(tmp_path / "prompts.jsonl", json.dumps({"prompt": "Why?"}) + "\n")
    spec = f"compat:stub@{stub.base_url}"
    base = ["generate", "--prompts", str(prompts_file), "--output", str(tmp_path / "out"), "--generator", spec,
            "--reviewer", spec, "--judge", spec]
    unknown = write(tmp_path / "unknown.yaml", "judge_prompt_file: judge.j2\n")
    result = runner.invoke(app, [*base, "--config", str(unknown)])
    assert result.exit_code == 1
    assert result.output.strip() == (f"error: {tmp_path / 'judge.j2'}:3: unknown variable 'answer_list' (the "
                                     "judge_combined prompt may use: question, answers, scale)")
    broken = write(tmp_path / "broken.yaml", "reviewer_prompt_file: reviewer.j2\n")
    result = runner.invoke(app, [*base, "--config", str(broken)])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {tmp_path / 'reviewer.j2'}:3: template syntax error: ")
    missing = write(tmp_path / "missing.yaml", "judge_prompt_file: {direct: nowhere.j2}\n")
    result = runner.invoke(app, [*base, "--config", str(missing)])
    assert result.exit_code == 1 and "judge_direct prompt file" in result.output
    assert stub.stats.requests == 0 and not (tmp_path / "out").exists()


def test_a_run_uses_its_templates_lists_them_in_the_card_and_refuses_other_ones_on_resume(
    tmp_path: Path, stub: StubServer,
) -> None:
    write(tmp_path / "judge.j2", "Score each answer to {{ question }} out of {{ scale }}.\n"
                                 "{% for answer in answers %}[{{ answer.label }}] {{ answer.text }}\n{% endfor %}")
    config = write(tmp_path / "run.yaml", "judge_prompt_file: judge.j2\ngenerator_system: Answer in one sentence.\n")
    prompts_file = write(tmp_path / "prompts.jsonl", json.dumps({"prompt": "Why is the sky blue?"}) + "\n")
    spec = f"compat:stub@{stub.base_url}"
    base = ["generate", "--prompts", str(prompts_file), "--output", str(tmp_path / "out"), "--generator", spec,
            "--reviewer", spec, "--judge", spec, "--iterations", "2"]
    result = runner.invoke(app, [*base, "--config", str(config)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "records.jsonl").read_text().splitlines()[0])
    judge_text = record["verdict"]["exchanges"][0]["text"]
    assert record["verdict"]["winner"] is not None and judge_text  # the stub answered the custom request
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Prompts of the run's own" in card and "Score each answer to {{ question }}" in card
    assert "Answer in one sentence." in card
    write(tmp_path / "judge.j2", "Rate each answer to {{ question }} out of {{ scale }}.\n"
                                 "{% for answer in answers %}[{{ answer.label }}] {{ answer.text }}\n{% endfor %}")
    changed = runner.invoke(app, [*base, "--config", str(config)])
    assert changed.exit_code == 1
    assert "holds a run with other settings (prompts)" in changed.output


def test_prompts_show_prints_what_a_role_will_be_sent(tmp_path: Path) -> None:
    default = runner.invoke(app, ["prompts", "show", "judge"])
    assert default.exit_code == 0, default.output
    assert "# judge (combined strategy): the default prompt, with a sample item" in default.output
    assert "[The Start of Assistant A's Answer]" in default.output and '"score_assistant_C"' in default.output
    write(tmp_path / "judge.j2", "House-style check of {{ answer_a }} against {{ answer_b }}.")
    config = write(tmp_path / "run.yaml", "strategy: direct\niterations: 2\njudge_prompt_file: judge.j2\n"
                                          "output_format: text\n")
    custom = runner.invoke(app, ["prompts", "show", "judge", "--config", str(config)])
    assert custom.exit_code == 0, custom.output
    assert "House-style check of Trim the stems" in custom.output
    assert "### Answer: A" in custom.output  # the project's answer format, after the user's text
