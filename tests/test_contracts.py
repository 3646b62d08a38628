"""The judges' output contract holds templates, schemas and parsers together: a renamed field fails here.

For every call kind, the JSON-mode prompt names each field of the contract, the schema requires exactly those
fields, and a reply written to the contract parses back to the values it holds.
"""

from __future__ import annotations

import json

import pytest

import prompts
from tools.rules.contracts import (
    DirectComparison,
    Review,
    combined_scores,
    example_reply,
    followup_example,
    format_hint,
    independent_score,
    json_schema,
    labels_of,
)
from tools.rules.parsing import parse_assistant_scores, parse_direct_answer, parse_feedback, parse_overall_score

ANSWERS = [{"label": label, "text": f"answer {label}"} for label in ("A", "B", "C")]


def rendered_and_schema(kind: str) -> tuple[str, dict]:
    """The JSON-mode prompt of one call kind and the schema its reply must follow."""
    if kind == "direct":
        contract = DirectComparison
        text = prompts.render_role("judge_direct", question="Q?", answer_a="a", answer_b="b",
                              json_format=format_hint(contract))
    elif kind == "independent":
        contract = independent_score(100)
        text = prompts.render_role("judge_independent", question="Q?", answer="a", scale=100,
                              json_format=format_hint(contract))
    elif kind == "combined":
        contract = combined_scores(("A", "B", "C"), 5)
        text = prompts.render_role("judge_combined", question="Q?", answers=ANSWERS, scale=5,
                              json_format=format_hint(contract))
    elif kind == "referee":
        contract = combined_scores(("1", "2"), 10, "reasoning")
        text = prompts.render("debate_final", question="Q?", answers=ANSWERS[:2], discussion=[], role_name="Critic",
                              role_description="d", json_format=format_hint(contract))
    else:
        contract = Review
        text = prompts.render_role("reviewer", question="Q?", answer="a", json_format=format_hint(contract))
    return text, json_schema(contract)


@pytest.mark.parametrize("kind", ["direct", "independent", "combined", "referee", "review"])
def test_prompt_names_every_field_of_the_schema_in_order(kind: str) -> None:
    text, schema = rendered_and_schema(kind)
    fields = list(schema["properties"])
    assert schema["required"] == fields and schema["additionalProperties"] is False
    positions = [text.index(f'"{field}"') for field in fields]
    assert positions == sorted(positions), "reasons first, then the scores, in the order the schema asks"
    assert "###" not in text.split("[The End of")[-1]  # JSON mode asks for no text lines


def test_replies_written_to_the_contract_parse_back() -> None:
    assert parse_direct_answer(example_reply(DirectComparison, ["because", "B"])) == "B"
    assert parse_direct_answer(example_reply(DirectComparison, ["even", "C"])) == "tie"
    assert parse_overall_score(example_reply(independent_score(100), ["fine", 87.5]), 100) == 87.5
    contract = combined_scores(("A", "B", "C"), 5)
    reply = example_reply(contract, ["compared", 4, 2.5, 5])
    assert parse_assistant_scores(reply, labels_of(contract), 5) == {"A": 4.0, "B": 2.5, "C": 5.0}
    review = example_reply(Review, ["good", 7.5, "Add an example."])
    assert (parse_overall_score(review, 10), parse_feedback(review)) == (7.5, "Add an example.")


def test_out_of_range_scores_in_a_contract_reply_are_unparsed() -> None:
    contract = combined_scores(("A", "B"), 10)
    assert parse_assistant_scores(example_reply(contract, ["x", 11, 3]), ["A", "B"], 10) == {"A": None, "B": 3.0}


def test_schema_bounds_and_followup_example_follow_the_scale() -> None:
    schema = json_schema(combined_scores(("A", "B"), 100))
    assert schema["properties"]["score_assistant_B"] == {"maximum": 100, "minimum": 0, "type": "number"}
    assert schema["properties"]["evaluation_evidence"] == {"maxLength": 600, "type": "string"}
    example = followup_example(combined_scores(("A", "B"), 10))
    assert example == '{"evaluation_evidence": "...", "score_assistant_A": X, "score_assistant_B": X}'
    assert json.loads(followup_example(DirectComparison)) == {"explanation": "...", "answer": "A"}


@pytest.mark.parametrize("count", [1, 2, 4])
@pytest.mark.parametrize("json_mode", [True, False])
def test_with_criteria_the_fields_the_request_and_the_parser_agree(count: int, json_mode: bool) -> None:
    from tools.rules.criteria import Criterion, criterion_keys

    criteria = [Criterion(name=f"aspect_{index}", description=f"aspect {index}") for index in range(count)]
    keys = criterion_keys(["A", "B", "C"], criteria)
    contract = combined_scores(tuple(keys), 10)
    text = prompts.render_role("judge_combined", question="Q?", answers=ANSWERS, scale=10, score_keys=keys,
                               json_format=format_hint(contract) if json_mode else None)
    values = [float(index % 11) for index in range(len(keys))]
    if json_mode:
        assert [name for name in json_schema(contract)["properties"] if name.startswith("score_")] == [
            f"score_assistant_{key}" for key in keys]
        assert all(f'"score_assistant_{key}"' in text for key in keys)
        reply = example_reply(contract, ["because", *values])
    else:
        lines = [line for line in text.splitlines() if line.startswith("### Score Assistant")]
        assert lines == [f"### Score Assistant {key}: X/10" for key in keys]
        reply = "### Evaluation Evidence: ok\n" + "\n".join(
            line.replace("X/10", f"{value:g}/10") for line, value in zip(lines, values, strict=True))
    assert parse_assistant_scores(reply, keys, 10) == dict(zip(keys, values, strict=True))
    assert len(keys) == 3 * count
