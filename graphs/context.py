"""What a run is configured with, passed to every node through `Runtime[...]`: configuration data only.

Model spec strings, numbers and names; nothing live. The chat models themselves come from a model source
injected where a graph is built (`build_*_graph(model_source=...)`), so LangGraph Studio can draw a form
for the context (`get_context_jsonschema()`), and tests swap in scripted fakes. These pydantic models are
also the fields the command line and `--config` files set (`tools/cli/options.py` builds on them).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.models import DEFAULT_MODEL
from tools.rules.criteria import Criterion
from tools.rules.disputes import DEFAULT_DISPUTE_MARGIN, ReviewMode

Strategy = Literal["direct", "independent", "combined"]
JuryRule = Literal["plurality", "mean"]
EvaluatorName = Literal["judge", "jury", "debate"]


class EvaluationContext(BaseModel):
    """Run configuration for the judge, jury and debate graphs. Explicit arguments win over defaults."""

    model_config = ConfigDict(frozen=True)

    models: list[str] = Field(
        default_factory=lambda: [DEFAULT_MODEL],
        description="model specs: the judge uses the first, a jury seats one juror per spec, a debate gives all "
        "referees the one spec or each referee its own",
    )
    strategy: Strategy = Field(default="combined", description="judge prompting strategy")
    scale: Literal[5, 10, 100] = Field(default=10, description="score scale for scoring strategies")
    swap: bool = Field(
        default=False, description="judge both answer orders; disagreement becomes a tie (two-answer items)"
    )
    jury_rule: JuryRule = Field(default="plurality", description="jury aggregation rule")
    rounds: int = Field(default=2, ge=1, le=20, description="debate rounds before the final scores")
    criteria: list[Criterion] = Field(
        default_factory=list,
        description="what the evaluators score, each answer on each criterion; an answer's score is the weighted "
        "mean (none: the paper's one score per answer)",
    )
    prompt_templates: dict[str, str] = Field(
        default_factory=dict,
        description="the user's own prompt templates by role (generator_system, reviewer, judge_direct, "
        "judge_independent, judge_combined), as Jinja text; the answer format is added by the project",
    )
    turn_max_tokens: int = Field(
        default=200, ge=16,
        description="cap on tokens per debate turn: referees speak briefly, and every turn is re-read by all "
        "later speakers",
    )


class GenerationContext(EvaluationContext):
    """Run configuration for the feedback loop and the pipeline; `models` etc. configure the evaluator."""

    generator: str = Field(default=DEFAULT_MODEL, description="model spec that writes answers")
    reviewers: list[str] = Field(
        default_factory=lambda: [DEFAULT_MODEL],
        description="model specs that review each answer; with several, the generator gets every feedback, "
        "labelled",
    )
    iterations: int = Field(default=3, ge=1, le=10, description="answers written per prompt (N)")
    stop_score: float | None = Field(
        default=None, ge=0, le=10,
        description="stop early once every reviewer scores the latest answer at least this",
    )
    evaluator: EvaluatorName = Field(default="judge", description="which evaluation workflow picks the best answer")
    review: ReviewMode = Field(
        default="none",
        description="which prompts pause for a person after the evaluator: none, the disputed ones, or all",
    )
    audit_share: float | None = Field(
        default=None, ge=0, le=1,
        description="share of prompts drawn by id to pause for a person, shown blind (default 0 with review none, "
        "0.05 otherwise)",
    )
    dispute_margin: float = Field(
        default=DEFAULT_DISPUTE_MARGIN, ge=0, le=10,
        description="top two scores this close (on a 10-point scale) make a verdict disputed",
    )
