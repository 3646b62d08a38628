"""What an evaluation run is configured with: passed to every node through `Runtime[EvaluationContext]`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agents.models import DEFAULT_MODEL, ModelRegistry, ModelSource

Strategy = Literal["direct", "independent", "combined"]
JuryRule = Literal["plurality", "mean"]


@dataclass(kw_only=True)
class EvaluationContext:
    """Run configuration for the judge, jury and debate graphs. Explicit arguments win over defaults."""

    models: list[str] = field(
        default_factory=lambda: [DEFAULT_MODEL],
        metadata={"description": "model specs: the judge uses the first, a jury seats one juror per spec, "
                  "a debate gives all referees the one spec or each referee its own"},
    )
    strategy: Strategy = field(default="combined", metadata={"description": "judge prompting strategy"})
    scale: int = field(default=10, metadata={"description": "score scale for scoring strategies: 5, 10 or 100"})
    swap: bool = field(
        default=False,
        metadata={"description": "judge both answer orders; disagreement becomes a tie (two-answer items)"},
    )
    jury_rule: JuryRule = field(default="plurality", metadata={"description": "jury aggregation rule"})
    rounds: int = field(default=2, metadata={"description": "debate rounds before the final scores"})
    turn_max_tokens: int = field(
        default=200,
        metadata={"description": "cap on tokens per debate turn: referees speak briefly, and every turn "
                  "is re-read by all later speakers"},
    )
    model_source: ModelSource = field(
        default_factory=ModelRegistry,
        metadata={"description": "loader that turns model specs into chat models (fakes in tests)"},
    )


@dataclass(kw_only=True)
class GenerationContext(EvaluationContext):
    """Run configuration for the feedback loop and the pipeline; `models` etc. configure the evaluator."""

    generator: str = field(default=DEFAULT_MODEL, metadata={"description": "model spec that writes answers"})
    reviewers: list[str] = field(
        default_factory=lambda: [DEFAULT_MODEL],
        metadata={"description": "model specs that review each answer; with several, the generator gets every "
                  "feedback, labelled"},
    )
    iterations: int = field(default=3, metadata={"description": "answers written per prompt (N)"})
    stop_score: float | None = field(
        default=None,
        metadata={"description": "stop early once every reviewer scores the latest answer at least this"},
    )
    evaluator: Literal["judge", "jury", "debate"] = field(
        default="judge", metadata={"description": "which evaluation workflow picks the best answer"}
    )
