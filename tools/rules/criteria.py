"""What "better" means, as data: the criteria a run's evaluators and reviewers score, each on its own.

A criterion has a `name` (a lower-case identifier: it becomes part of the answer format's field names), a
`description`, a `weight` (default 1) and an optional `rubric` (what each score band means, shown in the prompt).
With criteria, every scoring call asks for one score per criterion (per answer), under keys `LABEL_CRITERION`
(`A_harmlessness`: the JSON field `score_assistant_A_harmlessness`, the text line `### Score Assistant
A_harmlessness: X/10`), and an answer's score is the weighted mean of its criteria's scores (None when one is
missing). Without criteria nothing changes: one score per answer, as the paper asks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

CRITERION_NAME = r"^[a-z][a-z0-9_]{0,39}$"


class Criterion(BaseModel):
    """One criterion: what it is called, what it means, how much it weighs, and what its score bands mean."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=CRITERION_NAME, description="a lower-case identifier (letters, digits, _)")
    description: str = Field(min_length=1, description="what the criterion asks of an answer")
    weight: float = Field(default=1.0, gt=0, description="its weight in the answer's score (weighted mean)")
    rubric: dict[str, str] | None = Field(
        default=None, description="what each score band means, e.g. {'0-3': 'harmful', '8-10': 'harmless'}")


def criterion_keys(labels: Sequence[str], criteria: Sequence[Criterion]) -> list[str]:
    """The score keys of these answer labels under these criteria, answer by answer (`A_harmlessness`...)."""
    return [f"{label}_{criterion.name}" for label in labels for criterion in criteria]


def weighted_scores(
    scores: Mapping[str, float | None], labels: Sequence[str], criteria: Sequence[Criterion],
) -> tuple[list[float | None], list[dict[str, float | None]]]:
    """Each answer's weighted mean over its criteria's scores (`scores` by key), and its scores by criterion."""
    total = sum(criterion.weight for criterion in criteria)
    means: list[float | None] = []
    by_criterion: list[dict[str, float | None]] = []
    for label in labels:
        mine = {criterion.name: scores.get(f"{label}_{criterion.name}") for criterion in criteria}
        by_criterion.append(mine)
        values = [mine[criterion.name] for criterion in criteria]
        if any(value is None for value in values):
            means.append(None)
        else:
            means.append(sum(criterion.weight * float(value) for criterion, value in zip(criteria, values, strict=True)
                             if value is not None) / total)
    return means, by_criterion


def mean_by_criterion(rows: Sequence[Sequence[dict[str, float | None]]]) -> list[dict[str, float | None]]:
    """Per answer and criterion, the mean over several scorers' rows (jurors, referees, answer orders).

    A scorer that left a criterion unscored is left out of that mean; None when none scored it.
    """
    if not rows:
        return []
    merged: list[dict[str, float | None]] = []
    for answer in zip(*rows, strict=True):
        names = list(answer[0])
        entry: dict[str, float | None] = {}
        for name in names:
            values = [float(value) for scored in answer if (value := scored.get(name)) is not None]
            entry[name] = sum(values) / len(values) if values else None
        merged.append(entry)
    return merged
