"""State entries shared by the graphs.

Values are plain JSON-able data, so any checkpointer can store them and LangGraph Studio can draw a form for them
(`typing_extensions.TypedDict`: pydantic refuses `typing.TypedDict` on Python 3.11).
"""

from __future__ import annotations

from typing import Any, NotRequired

from typing_extensions import TypedDict


class ItemState(TypedDict):
    """The item under evaluation, as `EvalItem.model_dump()` gives it."""

    id: str | int
    """The item's id, with the JSON type it was given."""
    prompt: Any
    """The prompt: a string, or a list of {role, content} messages ending with the user turn."""
    responses: list[str]
    """The candidate answers, A first."""


class EvaluationInput(TypedDict):
    """What an evaluation graph is invoked with."""

    item: ItemState


class EvaluationOutput(TypedDict):
    """What an evaluation graph returns: the item's verdict (a `Verdict` as JSON)."""

    verdict: dict[str, Any]


class JudgementEntry(TypedDict):
    """One judge call's result: an answer order (direct, combined) or one candidate (independent)."""

    exchanges: list[dict[str, Any]]
    """The raw exchanges of the call (an `Exchange` as JSON each)."""
    reversed: NotRequired[bool]
    """Direct and combined: whether the answers were shown in reversed order."""
    scores: NotRequired[list[float | None]]
    """Combined: the scores as presented (None where unparsed)."""
    winner: NotRequired[str | None]
    """Direct and combined: the winner as presented."""
    index: NotRequired[int]
    """Independent: which candidate was scored."""
    score: NotRequired[float | None]
    """Independent: its score."""
    criteria_scores: NotRequired[list[dict[str, float | None]] | None]
    """Combined with criteria: each answer's scores by criterion, as presented."""


class Ballot(TypedDict):
    """One juror's judgement of one answer order."""

    seat: int
    model: str
    reversed: bool
    scores: list[float | None]
    winner: str | None
    exchanges: list[dict[str, Any]]
    criteria_scores: NotRequired[list[dict[str, float | None]] | None]


class RefereeScore(TypedDict):
    """One debate referee's final scores."""

    seat: int
    role: str
    model: str
    scores: list[float | None]
    criteria_scores: NotRequired[list[dict[str, float | None]] | None]


class Answer(TypedDict):
    """One answer of the feedback loop."""

    iteration: int
    text: str
    exchange: dict[str, Any]


class Review(TypedDict):
    """One reviewer's review of one answer."""

    iteration: int
    seat: int
    model: str
    score: float | None
    feedback: str
    exchange: dict[str, Any]
    criteria_scores: NotRequired[dict[str, float | None]]
    """With criteria: the review's scores by criterion (`score` is their weighted mean)."""
