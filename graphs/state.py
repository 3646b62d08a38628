"""State shared by the evaluation graphs. Values are plain JSON-able data so any checkpointer can store them."""

from __future__ import annotations

from typing import Any, TypedDict


class ItemState(TypedDict):
    """The item under evaluation, as `EvalItem.model_dump()` gives it."""

    id: str | int
    prompt: Any
    responses: list[str]


class EvaluationInput(TypedDict):
    item: ItemState


class EvaluationOutput(TypedDict):
    verdict: dict[str, Any]
