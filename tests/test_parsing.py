"""Every parser variant of SPEC.md 2.1, and the failures that must stay failures."""

from __future__ import annotations

import pytest

from tools.rules.parsing import parse_assistant_scores, parse_direct_answer, parse_feedback, parse_overall_score


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Both are fine.\n### Answer: A", "A"),
        ("### Answer: B", "B"),
        ("### Answer: C", "tie"),
        ("**Answer:** [[B]]", "B"),
        ("answer:   a", "A"),
        ("### Answer: Tie", "tie"),
        ("First thought... ### Answer: A\nOn reflection\n### Answer: B", "B"),
        ('{"explanation": "x", "answer": "C"}', "tie"),
        ('```json\n{"explanation": "x", "answer": "B"}\n```', "B"),
    ],
)
def test_direct_answer_variants(text: str, expected: str) -> None:
    assert parse_direct_answer(text) == expected


@pytest.mark.parametrize("text", ["I prefer the first one.", "### Answer: D", '{"answer": "maybe"}', ""])
def test_direct_answer_missing_is_none(text: str) -> None:
    assert parse_direct_answer(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("### Overall Score: 8/10", 8.0),
        ("### Overall Score: **8/10**", 8.0),
        ("Overall score: 8 / 10", 8.0),
        ("### overall score:8.5/10", 8.5),
        ("**Overall Score:** 7", 7.0),
        ('{"evaluation": "ok", "overall_score": 6.5}', 6.5),
    ],
)
def test_overall_score_variants(text: str, expected: float) -> None:
    assert parse_overall_score(text, 10) == expected


@pytest.mark.parametrize("text", ["Score: great", "### Overall Score: 11/10", '{"overall_score": 100}', "nothing"])
def test_overall_score_missing_or_out_of_range(text: str) -> None:
    assert parse_overall_score(text, 10) is None


def test_overall_score_respects_scale() -> None:
    assert parse_overall_score("### Overall Score: 85/100", 100) == 85.0
    assert parse_overall_score("### Overall Score: 6/5", 5) is None


def test_assistant_scores_text_and_variants() -> None:
    text = "### Evaluation Evidence: fine\n### Score Assistant A: **8/10**\n### score assistant b : 6.5 / 10"
    assert parse_assistant_scores(text, ["A", "B"], 10) == {"A": 8.0, "B": 6.5}


def test_assistant_scores_more_candidates_and_last_line_wins() -> None:
    text = (
        "Draft: Score Assistant A: 3/10\n"
        "### Score Assistant A: 7/10\n### Score Assistant B: 9/10\n### Score Assistant C: 2/10"
    )
    assert parse_assistant_scores(text, ["A", "B", "C"], 10) == {"A": 7.0, "B": 9.0, "C": 2.0}


def test_assistant_scores_numeric_labels_do_not_bleed() -> None:
    text = "### Score Assistant 1: 4/10\n### Score Assistant 12: 9/10"
    assert parse_assistant_scores(text, ["1", "2"], 10) == {"1": 4.0, "2": None}


def test_assistant_scores_missing_label_is_none() -> None:
    assert parse_assistant_scores("### Score Assistant A: 5/10", ["A", "B"], 10) == {"A": 5.0, "B": None}


def test_assistant_scores_json() -> None:
    text = '{"evaluation_evidence": "x", "score_assistant_A": 9, "score_assistant_B": 100}'
    assert parse_assistant_scores(text, ["A", "B"], 10) == {"A": 9.0, "B": None}


def test_feedback_section_and_fallback() -> None:
    review = "### Evaluation\nok\n### Overall Score: 6/10\n### Feedback\nAdd an example."
    assert parse_feedback(review) == "Add an example."
    assert parse_feedback("Just make it shorter.") == "Just make it shorter."
    assert parse_feedback('{"feedback": "Cite a source.", "overall_score": 5}') == "Cite a source."
