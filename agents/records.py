"""Pydantic records of what model calls said: kept apart from graph state, serialised into outputs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

AnswerOrder = Literal["forward", "reversed"]


class ScoreReading(BaseModel):
    """How one score of a call was read with `--scoring expected` (tools/rules/expected_scores.py).

    `key` is the answer label (`A`, `B`...) or `overall`; `parsed` the number the reply wrote; `expected` the
    probability-weighted mean that replaced it, None when the reply had no probabilities at its place (the parsed
    score stands); `valid_mass` the probability that fell on valid scores there.
    """

    key: str
    parsed: float | None
    expected: float | None = None
    valid_mass: float | None = None


class Exchange(BaseModel):
    """One model call as recorded: who, what it said, and the follow-up if its first reply had no answer.

    `role` is the role key alone (`judge`, `juror`, `critic`, `generator`, `reviewer`...); `run` is the call's
    run name in traces (`jury/seat-2/reversed`, `debate/critic/round-2`); `order` is the answer order a judge
    or juror saw (`forward` as given, `reversed`), None for calls that compare nothing.
    """

    model: str
    role: str
    text: str
    run: str | None = None
    order: AnswerOrder | None = None
    cached: bool = False
    followup_text: str | None = None
    parse_ok: bool = True
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    # Rate limiting (agents/rate_limits.py): the 429s the call met and waited out, and the seconds it waited
    # (pacing, holds, the endpoint's ceiling). Left out of the JSON while zero: most calls meet no limit.
    rate_limited: int = 0
    rate_waited_s: float = 0.0
    # With `--scoring expected`: each score as written and as weighted by its probabilities. Left out while empty.
    score_readings: list[ScoreReading] = Field(default_factory=list)
    # With `--batch`: the call went by a provider's batch API (priced at its batch rate). Left out while false.
    batched: bool = False

    @model_serializer(mode="wrap")
    def _without_empty_optional_fields(self, serialize: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = serialize(self)
        for name in ("rate_limited", "rate_waited_s", "score_readings", "batched"):
            if not data.get(name):
                data.pop(name, None)
        return data

    def score(self, key: str, parsed: float | None) -> float | None:
        """The score to use for `key`: its expected value when one was read, else the parsed one."""
        return score_to_use(self.score_readings, key, parsed)


def score_to_use(readings: list[ScoreReading], key: str, parsed: float | None) -> float | None:
    """The one rule for a scored call's score: the expected value read for `key`, else the parsed number.

    A score the reply did not give (parsed None) stays missing whatever was read.
    """
    for reading in readings:
        if reading.key == key and reading.expected is not None and parsed is not None:
            return reading.expected
    return parsed


class Turn(BaseModel):
    """One contribution to a debate: who spoke, in which round (1-based), and what they said."""

    role: str
    speaker: str
    round: int
    text: str


class Usage(BaseModel):
    """Tokens and calls spent, summed over exchanges; `cached_calls` of the calls came from the call cache."""

    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    cached_calls: int = 0
    rate_limited: int = 0
    rate_waited_s: float = 0.0
    batched_calls: int = 0  # calls answered by a provider's batch API (`--batch`); left out of the JSON while 0

    @model_serializer(mode="wrap")
    def _without_zero_batched_calls(self, serialize: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = serialize(self)
        if not data.get("batched_calls"):
            data.pop("batched_calls", None)
        return data

    @classmethod
    def total(cls, exchanges: list[Exchange]) -> Usage:
        """The usage of these exchanges; a follow-up counts as a second call."""
        return cls(
            input_tokens=sum(exchange.input_tokens for exchange in exchanges),
            output_tokens=sum(exchange.output_tokens for exchange in exchanges),
            calls=sum(1 + (exchange.followup_text is not None) for exchange in exchanges),
            cached_calls=sum((1 + (exchange.followup_text is not None)) * exchange.cached for exchange in exchanges),
            rate_limited=sum(exchange.rate_limited for exchange in exchanges),
            rate_waited_s=sum(exchange.rate_waited_s for exchange in exchanges),
            batched_calls=sum((1 + (exchange.followup_text is not None)) * exchange.batched for exchange in exchanges),
        )


class Verdict(BaseModel):
    """The evaluation record of one item, written as one JSON line by `fellowship evaluate`.

    `id` keeps the JSON type of the input's id (a number stays a number).
    """

    id: str | int
    method: str
    strategy: str | None = None
    scale: int | None = None
    models: list[str]
    scores: list[float | None]
    winner: str | None
    parse_ok: bool
    swapped: bool = False
    order_winners: list[str | None] = Field(default_factory=list)
    juror_votes: list[str | None] = Field(default_factory=list)
    exchanges: list[Exchange] = Field(default_factory=list)
    transcript: list[Turn] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    latency_s: float = 0.0
    error: str | None = None
    # With criteria: each answer's scores by criterion (in answer order); `scores` holds their weighted means.
    # Left out of the JSON without criteria, so such verdicts read as before.
    criteria_scores: list[dict[str, float | None]] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _without_empty_criteria(self, serialize: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = serialize(self)
        if not data.get("criteria_scores"):
            data.pop("criteria_scores", None)
        return data
