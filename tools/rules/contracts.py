"""The output contract of every judge call kind, defined once.

One pydantic model per kind of call (direct comparison, independent score, combined scores for N labels,
a referee's final scores, a review), reasoning or evidence first and the scores after it, so a model
writes its reasons before it commits to numbers. From each model come:

- `json_schema(model)`: the JSON schema that structured output (llama.cpp's grammar, OpenAI's `json_schema`
  response format) constrains a reply to;
- `format_hint(model)`: the sentence in the prompt that asks for that object;
- `followup_example(model)`: the object shown when the judge is asked again for just its answer;
- the field names the JSON-mode parsers read (`tools.rules.parsing`), and the stub server writes.

The paper's `###` text lines are the other answer format; their parsers stay in `tools.rules.parsing`.
A renamed field or a new label is one edit here; `tests/test_contracts.py` ties the templates, the
schemas and the parsers together so a mismatch fails at once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

# Free-text fields get a length cap so a small model cannot ramble past max_tokens and leave the scores unwritten.
REASON_MAX_CHARS = 600
FEEDBACK_MAX_CHARS = 1200

EXPLANATION = "explanation"
ANSWER = "answer"
EVALUATION = "evaluation"
OVERALL_SCORE = "overall_score"
FEEDBACK = "feedback"
EVIDENCE = "evaluation_evidence"
REASONING = "reasoning"
SCORE_PREFIX = "score_assistant_"
CRITERION_PREFIX = "score_"  # a one-answer call's score on a criterion: `score_harmlessness`
DIRECT_CHOICES = ("A", "B", "C")  # C is a tie


class CallOutput(BaseModel):
    """Base of the output models: the reply holds exactly these fields."""

    model_config = ConfigDict(extra="forbid")


def score_field(label: str) -> str:
    """The JSON field that holds the score of the answer labelled `label` (`score_assistant_A`)."""
    return f"{SCORE_PREFIX}{label}"


def criterion_field(name: str) -> str:
    """The JSON field of a one-answer call's score on criterion `name` (`score_harmlessness`)."""
    return f"{CRITERION_PREFIX}{name}"


def _reason(description: str) -> Any:
    return (str, Field(max_length=REASON_MAX_CHARS, description=description))


def _score(scale: int, description: str) -> Any:
    # Grammar-constrained decoding does not enforce the bounds; the parsers reject out-of-range scores.
    return (float, Field(ge=0, le=scale, description=description))


DirectComparison: type[CallOutput] = create_model(
    "DirectComparison",
    __base__=CallOutput,
    **{
        EXPLANATION: _reason("your brief comparison"),
        ANSWER: (Literal["A", "B", "C"], Field(description='"A" if Assistant A is better, "B" if Assistant B is '
                                                           'better, "C" for a tie')),
    },
)


@cache
def independent_score(scale: int, criteria: tuple[str, ...] = ()) -> type[CallOutput]:
    """Independent scoring: one answer, one score out of `scale` (with `criteria`: one per criterion)."""
    scores = ({criterion_field(name): _score(scale, f"a number from 0 to {scale}") for name in criteria} if criteria
              else {OVERALL_SCORE: _score(scale, f"a number from 0 to {scale}")})
    return create_model(
        f"IndependentScore{scale}" + "".join(f"_{name}" for name in criteria),
        __base__=CallOutput,
        **{EVALUATION: _reason("your brief evaluation"), **scores},
    )


@cache
def combined_scores(labels: tuple[str, ...], scale: int, reason: str = EVIDENCE) -> type[CallOutput]:
    """Combined scoring of N answers.

    The reasons first (`evaluation_evidence` for a judge, `reasoning` for a debate referee), then one score per
    label.
    """
    described = {EVIDENCE: "a brief justification", REASONING: "one or two sentences"}[reason]
    fields = {score_field(label): _score(scale, f"a number from 0 to {scale}") for label in labels}
    return create_model(
        f"CombinedScores{len(labels)}x{scale}", __base__=CallOutput, **{reason: _reason(described), **fields}
    )


@cache
def review_contract(criteria: tuple[str, ...] = ()) -> type[CallOutput]:
    """A review: strengths and weaknesses, a score out of 10 (with `criteria`: one per criterion), then feedback."""
    scores = ({criterion_field(name): _score(10, "a number from 0 to 10, one decimal allowed") for name in criteria}
              if criteria else {OVERALL_SCORE: _score(10, "a number from 0 to 10, one decimal allowed")})
    return create_model(
        "Review" + "".join(f"_{name}" for name in criteria),
        __base__=CallOutput,
        **{
            EVALUATION: _reason("strengths and weaknesses"),
            **scores,
            FEEDBACK: (str, Field(max_length=FEEDBACK_MAX_CHARS, description="concrete suggestions for improving the "
                                                                              "answer")),
        },
    )


Review: type[CallOutput] = review_contract()


def json_schema(model: type[CallOutput]) -> dict[str, Any]:
    """The schema for structured output: every field required, nothing else allowed, fields in order."""
    schema = model.model_json_schema()
    properties = {name: {key: value for key, value in spec.items() if key not in ("title", "description")}
                  for name, spec in schema["properties"].items()}
    for spec in properties.values():
        # OpenAI's strict mode and llama.cpp's grammars take maxLength, minimum and maximum, and no exclusive bounds.
        spec.pop("exclusiveMinimum", None)
        spec.pop("exclusiveMaximum", None)
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def format_hint(model: type[CallOutput]) -> str:
    """The prompt's request for the JSON object: each field by name, with what it should hold."""
    parts = [f'"{name}" ({field.description})' for name, field in model.model_fields.items()]
    listed = ", ".join(parts[:-1]) + f" and {parts[-1]}" if len(parts) > 1 else parts[0]
    return f"Reply with a JSON object: {listed}."


def followup_example(model: type[CallOutput]) -> str:
    """The object shown when a judge is asked again for just its answer: reasons elided, scores as X."""
    example: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if field.annotation is float:
            example[name] = "X"
        elif name == ANSWER:
            example[name] = DIRECT_CHOICES[0]
        else:
            example[name] = "..."
    return json.dumps(example).replace('"X"', "X")


def labels_of(model: type[CallOutput]) -> list[str]:
    """The answer labels a combined-scores model scores, in order."""
    return [name.removeprefix(SCORE_PREFIX) for name in model.model_fields if name.startswith(SCORE_PREFIX)]


def example_reply(model: type[CallOutput], values: Sequence[Any]) -> str:
    """A reply that keeps the contract, with these values in field order (for tests and the stub server)."""
    return json.dumps(dict(zip(model.model_fields, values, strict=True)))
