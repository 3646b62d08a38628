"""Building an item's verdict, the same way for the judge, the jury and the debate."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from agents.records import Exchange, Usage, Verdict
from graphs.state import ItemState


def verdict_update(
    item: ItemState,
    *,
    method: str,
    models: Sequence[str],
    scores: Sequence[float | None],
    winner: str | None,
    raw_exchanges: Sequence[dict[str, Any]],
    started_at: float | None,
    parsed: bool = True,
    **fields: Any,
) -> dict[str, Any]:
    """The state update `{"verdict": ...}` that ends an evaluation graph.

    Usage is summed over the exchanges; latency is measured from `started_at` (a sequential debate), or without
    it is the longest exchange's (the judge's and the jury's calls run in parallel). The verdict counts as parsed
    when there is a winner, every exchange parsed, and `parsed` (the method's own condition) holds. `fields`
    are the method's other Verdict fields (strategy, swapped, juror votes, transcript...).
    """
    exchanges = [Exchange(**raw) for raw in raw_exchanges]
    now = time.perf_counter()
    verdict = Verdict(
        id=item["id"],
        method=method,
        models=list(models),
        scores=list(scores),
        winner=winner,
        parse_ok=winner is not None and parsed and all(exchange.parse_ok for exchange in exchanges),
        exchanges=exchanges,
        usage=Usage.total(exchanges),
        latency_s=now - started_at if started_at is not None else max(
            (exchange.latency_s for exchange in exchanges), default=0.0),
        **fields,
    )
    return {"verdict": verdict.model_dump()}
