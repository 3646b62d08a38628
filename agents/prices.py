"""Known list prices (USD per million tokens, input / output) for cost estimates; unknown models cost None.

Prices change; these are the providers' published list prices when this table was written, for the
models the paper used. Local and self-hosted models cost nothing here.
"""

from __future__ import annotations

from collections.abc import Iterable

from agents.records import Exchange

PRICES_PER_MILLION: dict[str, tuple[float, float]] = {
    "openai:gpt-4o": (2.50, 10.00),
    "openai:gpt-4o-mini": (0.15, 0.60),
    "together:meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo": (0.18, 0.18),
    "together:meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo": (0.88, 0.88),
    "together:google/gemma-2-9b-it": (0.30, 0.30),
    "together:google/gemma-2-27b-it": (0.80, 0.80),
}


def call_cost(model_spec: str, input_tokens: int, output_tokens: int) -> float | None:
    """The USD cost of one call from the built-in price table, or None for a model without a price."""
    if model_spec.startswith(("local:", "compat:")):
        return 0.0
    price = PRICES_PER_MILLION.get(model_spec)
    if price is None:
        return None
    return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000


def total_cost(exchanges: Iterable[Exchange]) -> float | None:
    """Sum over calls; None as soon as one model's price is unknown (a partial sum would mislead)."""
    total = 0.0
    for exchange in exchanges:
        cost = call_cost(exchange.model, exchange.input_tokens, exchange.output_tokens)
        if cost is None:
            return None
        total += cost
    return total
