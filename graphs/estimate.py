"""What a generation run will cost before it starts: calls, tokens, money and time, without a single call.

The call counts follow the graphs' topology exactly (tested against real runs on the stub server); a
follow-up question, asked only when a reply lacks its answer, is not foreseen. With `stop_score` the loop
may stop after any answer, so calls are a range: from every prompt stopping after its first answer to none
stopping. Token counts are estimates: a prompt's own length (4 characters to a token), the templates'
overhead, and answers and replies of an assumed length capped by `max_tokens`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from agents.prices import PriceTable
from agents.roles import RefereeRole
from graphs.context import GenerationContext
from tools.inputs.items import Prompt, prompt_text

CHARS_PER_TOKEN = 4
TEMPLATE_TOKENS = {"generator": 60, "reviewer": 120, "judge": 160, "referee": 220}
ASSUMED_OUTPUT_TOKENS = {"generator": 400, "reviewer": 200, "judge": 150, "referee": 80}
# With criteria, each score beyond the first is one more line (`### Score Assistant A_harmlessness: 7/10`).
SCORE_LINE_TOKENS = 12


@dataclass
class RoleEstimate:
    """Calls and tokens of one role (generator, reviewer, judge, referee) with one model."""

    role: str
    model: str
    calls_low: int = 0
    calls_high: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class RunEstimate:
    """The whole run: per role and model, and the sequential steps per prompt (for the time)."""

    prompts: int
    roles: list[RoleEstimate] = field(default_factory=list)
    steps_per_prompt: int = 0

    @property
    def calls_low(self) -> int:
        """The fewest calls (with a stop score every prompt may stop after its first answer)."""
        return sum(role.calls_low for role in self.roles)

    @property
    def calls_high(self) -> int:
        """The most calls (exact without a stop score)."""
        return sum(role.calls_high for role in self.roles)

    def cost(self, prices: PriceTable, *, batch: bool = False) -> float | None:
        """The estimated cost in USD, or None when a model has no price; with `batch`, every call at its batch price."""
        costs = [prices.call_cost(role.model, role.input_tokens, role.output_tokens, batch=batch)
                 for role in self.roles]
        return None if any(cost is None for cost in costs) else sum(cost or 0.0 for cost in costs)

    def hours(self, concurrency: int, latency_s: float) -> float:
        """Wall time with `concurrency` calls in flight, each taking `latency_s`.

        All the calls through the slots, or one prompt's chain of sequential steps if that is longer.
        """
        rounds = max(self.steps_per_prompt, math.ceil(self.calls_high / max(1, concurrency)))
        return rounds * latency_s / 3600


def _tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN)


def estimate_run(
    prompts: Sequence[Prompt], context: GenerationContext, roles: Sequence[RefereeRole], *, max_tokens: int
) -> RunEstimate:
    """Calls and tokens of running the pipeline over `prompts` with this context and debate panel."""
    n, reviewers = context.iterations, len(context.reviewers)
    answer = min(max_tokens, ASSUMED_OUTPUT_TOKENS["generator"])
    review_out = min(max_tokens, ASSUMED_OUTPUT_TOKENS["reviewer"])
    judge_out = min(max_tokens, ASSUMED_OUTPUT_TOKENS["judge"])
    turn_out = min(context.turn_max_tokens, ASSUMED_OUTPUT_TOKENS["referee"])
    # Criteria make every scoring reply longer (a line per answer and criterion) and every scoring request too
    # (the criteria and their rubrics in its system prompt).
    more_scores = max(0, len(context.criteria) - 1) * SCORE_LINE_TOKENS
    listing = sum(_tokens(criterion.description) + 6 + sum(_tokens(band) + _tokens(meaning)
                                                           for band, meaning in (criterion.rubric or {}).items())
                  for criterion in context.criteria)
    review_out += more_scores
    estimate = RunEstimate(prompts=len(prompts))
    entries: dict[tuple[str, str], RoleEstimate] = {}

    def add(role: str, model: str, low: int, high: int, tokens_in: int, tokens_out: int) -> None:
        entry = entries.setdefault((role, model), RoleEstimate(role, model))
        entry.calls_low += low
        entry.calls_high += high
        entry.input_tokens += tokens_in
        entry.output_tokens += tokens_out

    early = context.stop_score is not None
    orders = 2 if context.swap else 1
    for prompt in prompts:
        asked = _tokens(prompt_text(prompt))
        history = sum(TEMPLATE_TOKENS["generator"] + asked + (index - 1) * (answer + review_out * reviewers)
                      for index in range(1, n + 1))
        add("generator", context.generator, 1 if early else n, n, history, n * answer)
        for spec in context.reviewers:
            reviews = n - 1
            add("reviewer", spec, 1 if early and n > 1 else reviews, reviews,
                reviews * (TEMPLATE_TOKENS["reviewer"] + listing + asked + answer), reviews * review_out)
        if n < 2:
            continue
        judged = TEMPLATE_TOKENS["judge"] + listing + asked + n * answer
        judge_reply = judge_out + n * more_scores  # one more line per answer and criterion
        low = 0 if early else None  # a loop that stops after one answer has nothing to rank
        if context.evaluator == "judge":
            spec = context.models[0]
            independent = context.strategy == "independent"
            calls = n if independent else orders
            tokens_in = n * (TEMPLATE_TOKENS["judge"] + listing + asked + answer) if independent else orders * judged
            reply = judge_out + more_scores if independent else judge_reply
            add("judge", spec, calls if low is None else low, calls, tokens_in, calls * reply)
        elif context.evaluator == "jury":
            for spec in context.models:
                add("judge", spec, orders if low is None else low, orders, orders * judged, orders * judge_reply)
        else:
            for seat, role in enumerate(roles):
                spec = role.model or (context.models[0] if len(context.models) == 1 else context.models[seat])
                turns = context.rounds + 1
                discussion = TEMPLATE_TOKENS["referee"] + listing + asked + n * answer
                tokens_in = sum(discussion + step * len(roles) * turn_out for step in range(turns))
                add("referee", spec, turns if low is None else low, turns, tokens_in,
                    turns * turn_out + n * more_scores)
    evaluator_steps = {"judge": 1, "jury": 1, "debate": context.rounds * len(roles) + 1}[context.evaluator]
    estimate.steps_per_prompt = n + (n - 1 if reviewers else 0) + (evaluator_steps if n >= 2 else 0)
    estimate.roles = list(entries.values())
    return estimate
