"""A person's decision on a prompt that waits for review, and what a paused prompt asks for.

One schema for every way a decision arrives (the review page, `review --import`, Label Studio, a Studio resume):
`HumanDecision` is the answer schema of the pipeline's `human_review` interrupt, the line format of
`review --import` files, and the `human` entry of a record. Letters are the answers in iteration order (A = the
first answer).
"""

from __future__ import annotations

import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tools.rules.verdicts import candidate_labels

DecisionSource = Literal["page", "import", "label-studio", "studio"]


class HumanDecision(BaseModel):
    """The best answer (and optionally the worst), or `none`: no acceptable answer; who decided, why, and when."""

    model_config = ConfigDict(extra="forbid")

    best: str | None = Field(default=None, description="the best answer's letter (A = the first answer)")
    worst: str | None = Field(default=None, description="the worst answer's letter (optional)")
    none: bool = Field(default=False, description="no answer is acceptable: the prompt gives no rows")
    reviewer: str = Field(default="", description="who decided")
    note: str = Field(default="", description="why, in the reviewer's words")
    decided_at: str = Field(default="", description="when, ISO 8601 in UTC (filled in when left empty)")
    via: DecisionSource = Field(default="studio", description="how the decision arrived")

    @model_validator(mode="after")
    def _best_or_none(self) -> HumanDecision:
        if self.none and (self.best or self.worst):
            raise ValueError("'none' means no acceptable answer: give no 'best' or 'worst' with it")
        if not self.none and not self.best:
            raise ValueError("give 'best' (an answer letter) or 'none': true")
        if self.best and self.worst and self.best == self.worst:
            raise ValueError(f"'best' and 'worst' are the same answer ({self.best})")
        if not self.decided_at:
            self.decided_at = now_iso()
        return self

    def check_letters(self, answers: int) -> None:
        """Raise ValueError unless `best` and `worst` name answers of a prompt with `answers` answers."""
        letters = candidate_labels(answers)
        for name, letter in (("best", self.best), ("worst", self.worst)):
            if letter is not None and letter not in letters:
                raise ValueError(f"'{name}' is {letter!r}: the prompt has answers {', '.join(letters)}")


class ReviewRequest(BaseModel):
    """What a paused prompt shows a person (the `human_review` interrupt's value)."""

    prompt_id: str
    sample: str = Field(description="disputed, audit (shown blind) or all")
    reasons: list[str] = Field(default_factory=list, description="why the verdict is disputed")
    answers: int = Field(description="how many answers there are to choose from")
    answer_schema: dict[str, Any] = Field(default_factory=lambda: HumanDecision.model_json_schema(),
                                          description="the JSON schema a resume value follows")


def now_iso() -> str:
    """The current time in UTC, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
