"""Every template renders with sample variables, and a missing variable fails loudly."""

from __future__ import annotations

import jinja2
import pytest

import prompts

SAMPLES: dict[str, dict[str, object]] = {
    "judge_direct": {"question": "Q?", "answer_a": "one", "answer_b": "two", "json_format": None},
    "judge_independent": {"question": "Q?", "answer": "one", "scale": 10, "json_format": None},
    "judge_combined": {
        "question": "Q?",
        "answers": [{"label": "A", "text": "one"}, {"label": "B", "text": "two"}],
        "scale": 10,
        "json_format": None,
    },
    "followup": {"required_format": "### Answer: A"},
    "generator_revise": {
        "feedbacks": [{"label": "Reviewer 1", "text": "shorter"}, {"label": "Reviewer 2", "text": "cite"}]
    },
    "reviewer": {"question": "Q?", "answer": "one", "json_format": None},
    "debate_system": {"answer_count": 2},
    "debate_turn": {
        "question": "Q?",
        "answers": [{"label": "1", "text": "one"}, {"label": "2", "text": "two"}],
        "discussion": [{"speaker": "Critic", "round": 1, "text": "hm"}],
        "role_name": "Critic",
        "role_description": "checks wording",
        "round": 2,
        "rounds": 2,
    },
    "debate_final": {
        "question": "Q?",
        "answers": [{"label": "1", "text": "one"}, {"label": "2", "text": "two"}],
        "discussion": [{"speaker": "Critic", "round": 1, "text": "hm"}],
        "role_name": "Critic",
        "role_description": "checks wording",
        "json_format": 'Reply with a JSON object: "reasoning" (...).',
    },
}


def test_every_template_has_sample_variables_or_needs_none() -> None:
    for name in prompts.template_names():
        stem = name.removesuffix(".j2")
        # A role's answer-format part (`ROLE_format.j2`) takes the role's variables.
        text = prompts.render(stem, **SAMPLES.get(stem.removesuffix("_format"), {}))
        assert text.strip(), f"{name} rendered empty"


def test_judge_templates_carry_the_answer_format_and_bias_warning() -> None:
    combined = prompts.render_role("judge_combined", **SAMPLES["judge_combined"])
    assert "### Score Assistant A: X/10" in combined and "### Score Assistant B: X/10" in combined
    direct = prompts.render_role("judge_direct", **SAMPLES["judge_direct"])
    assert "### Answer: A" in direct
    system = prompts.render("judge_system")
    assert "order" in system and "length" in system


def test_missing_variable_raises() -> None:
    with pytest.raises(jinja2.UndefinedError):
        prompts.render("judge_direct", question="Q?", answer_a="one", json_format=None)


def test_revision_request_labels_several_feedbacks_and_forbids_pleasantries() -> None:
    both = prompts.render("generator_revise", **SAMPLES["generator_revise"])
    assert "[Feedback from Reviewer 1]\nshorter" in both and "[Feedback from Reviewer 2]\ncite" in both
    single = prompts.render("generator_revise", feedbacks=[{"label": "the reviewer", "text": "shorter"}])
    assert "[Feedback from" not in single and "shorter" in single
    assert "no thanks for the feedback" in single


def test_reviewer_template_sections() -> None:
    text = prompts.render_role("reviewer", **SAMPLES["reviewer"])
    for section in ("### Evaluation", "### Overall Score: X/10", "### Feedback"):
        assert section in text
