"""Known list prices (USD per million tokens, input / output) for cost estimates; unknown models cost None.

Prices change; these are the providers' published list prices when this table was written, for the
models the paper used. Local and self-hosted models cost nothing here. A call answered by a provider's batch
API (`--batch`) costs the batch price: OpenAI's and Together's are half the list price, unless `--price` sets
one; a `compat:` endpoint's batch price is its list price unless `--price` says otherwise.
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
# The share of the list price a batch call costs, by provider (both published "50% off" for batch jobs).
BATCH_DISCOUNT = {"openai": 0.5, "together": 0.5}


@dataclass(frozen=True)
class PriceTable:
    """Prices per million input / output tokens: `--price` overrides, then the built-in table.

    `local:` and self-hosted `compat:` models cost nothing unless overridden.
    """

    overrides: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    batch_overrides: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def per_million(self, model_spec: str, *, batch: bool = False) -> tuple[float, float] | None:
        """(input, output) USD per million tokens (at the batch price with `batch`), or None without a price."""
        if batch and model_spec in self.batch_overrides:
            return self.batch_overrides[model_spec]
        if model_spec in self.overrides:
            price = self.overrides[model_spec]
        elif model_spec.startswith(("local:", "compat:")):
            price = (0.0, 0.0)
        elif model_spec in PRICES_PER_MILLION:
            price = PRICES_PER_MILLION[model_spec]
        else:
            return None
        share = BATCH_DISCOUNT.get(model_spec.partition(":")[0], 1.0) if batch else 1.0
        return (price[0] * share, price[1] * share)

    def call_cost(self, model_spec: str, input_tokens: int, output_tokens: int, *,
                  batch: bool = False) -> float | None:
        """The USD cost of one call (by batch: at the batch price), or None for a model without a price."""
        price = self.per_million(model_spec, batch=batch)
        if price is None:
            return None
        return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000

    def total_cost(self, exchanges: Iterable[Exchange]) -> float | None:
        """Sum over calls paid for (not those the call cache served); None as soon as a model has no price."""
        total = 0.0
        for exchange in exchanges:
            if exchange.cached:
                continue
            cost = self.call_cost(exchange.model, exchange.input_tokens, exchange.output_tokens,
                                  batch=exchange.batched)
            if cost is None:
                return None
            total += cost
        return total


BUILT_IN_PRICES = PriceTable()


def parse_prices(values: Iterable[str]) -> PriceTable:
    """`--price SPEC=IN:OUT[:BATCH_IN:BATCH_OUT]` values, split at the last `=`.

    USD per million input / output tokens, then (optionally) the same at the provider's batch price.
    """
    overrides: dict[str, tuple[float, float]] = {}
    batch_overrides: dict[str, tuple[float, float]] = {}
    for value in values:
        spec, equals, prices = value.rpartition("=")
        parts = prices.split(":")
        try:
            if not (spec and equals and len(parts) in (2, 4)):
                raise ValueError
            numbers = [float(part) for part in parts]
        except ValueError:
            raise ConfigError(f"--price {value!r}: expected SPEC=IN:OUT (or SPEC=IN:OUT:BATCH_IN:BATCH_OUT), USD "
                              "per million input and output tokens, e.g. openai:gpt-4.1=2:8 or "
                              "openai:gpt-4.1=2:8:1:4") from None
        if min(numbers) < 0:
            raise ConfigError(f"--price {value!r}: prices cannot be negative")
        overrides[spec] = (numbers[0], numbers[1])
        if len(numbers) == 4:
            batch_overrides[spec] = (numbers[2], numbers[3])
    return PriceTable(overrides, batch_overrides)
