"""Known list prices (USD per million tokens, input / output) for cost estimates; unknown models cost None.

Prices change; these are the providers' published list prices when this table was written, for the
models the paper used. Local and self-hosted models cost nothing here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agents.records import Exchange
from tools.errors import ConfigError

PRICES_PER_MILLION: dict[str, tuple[float, float]] = {
    "openai:gpt-4o": (2.50, 10.00),
    "openai:gpt-4o-mini": (0.15, 0.60),
    "together:meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo": (0.18, 0.18),
    "together:meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo": (0.88, 0.88),
    "together:google/gemma-2-9b-it": (0.30, 0.30),
    "together:google/gemma-2-27b-it": (0.80, 0.80),
}


@dataclass(frozen=True)
class PriceTable:
    """Prices per million input / output tokens: `--price` overrides, then the built-in table.

    `local:` and self-hosted `compat:` models cost nothing unless overridden.
    """

    overrides: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def per_million(self, model_spec: str) -> tuple[float, float] | None:
        """(input, output) USD per million tokens, or None when the model has no price."""
        if model_spec in self.overrides:
            return self.overrides[model_spec]
        if model_spec.startswith(("local:", "compat:")):
            return (0.0, 0.0)
        return PRICES_PER_MILLION.get(model_spec)

    def call_cost(self, model_spec: str, input_tokens: int, output_tokens: int) -> float | None:
        """The USD cost of one call, or None for a model without a price."""
        price = self.per_million(model_spec)
        if price is None:
            return None
        return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000

    def total_cost(self, exchanges: Iterable[Exchange]) -> float | None:
        """Sum over calls paid for (not those the call cache served); None as soon as a model has no price."""
        total = 0.0
        for exchange in exchanges:
            if exchange.cached:
                continue
            cost = self.call_cost(exchange.model, exchange.input_tokens, exchange.output_tokens)
            if cost is None:
                return None
            total += cost
        return total


BUILT_IN_PRICES = PriceTable()


def parse_prices(values: Iterable[str]) -> PriceTable:
    """`--price SPEC=IN:OUT` values (USD per million input / output tokens), split at the last `=`."""
    overrides: dict[str, tuple[float, float]] = {}
    for value in values:
        spec, equals, pair = value.rpartition("=")
        low, colon, high = pair.partition(":")
        try:
            if not (spec and equals and colon):
                raise ValueError
            price = (float(low), float(high))
        except ValueError:
            raise ConfigError(f"--price {value!r}: expected SPEC=IN:OUT, USD per million input and output tokens, "
                              "e.g. openai:gpt-4.1=2:8") from None
        if min(price) < 0:
            raise ConfigError(f"--price {value!r}: prices cannot be negative")
        overrides[spec] = price
    return PriceTable(overrides)
