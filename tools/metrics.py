"""Agreement of evaluator verdicts with human labels: Cohen's kappa, raw agreement, bootstrap interval.

Kappa is scikit-learn's unweighted `cohen_kappa_score` over the three classes {A, B, tie}, with every item
kept: a verdict that could not be formed is counted as a tie prediction (or by the paper's rules upstream).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import cohen_kappa_score

CLASSES = ["A", "B", "tie"]


@dataclass(frozen=True)
class Agreement:
    n: int
    kappa: float
    agreement: float
    kappa_low: float
    kappa_high: float


def kappa(predicted: Sequence[str], human: Sequence[str]) -> float:
    if len(predicted) != len(human):
        raise ValueError(f"{len(predicted)} predictions for {len(human)} labels")
    # A resample with a single class has no defined kappa; count it as no agreement beyond chance.
    return float(cohen_kappa_score(list(human), list(predicted), labels=CLASSES, replace_undefined_by=0.0))


def agreement_with_humans(
    predicted: Sequence[str | None], human: Sequence[str], *, resamples: int = 1000, seed: int = 0
) -> Agreement:
    """Kappa, raw agreement and a percentile bootstrap 95% interval for kappa (items resampled)."""
    filled = [verdict if verdict in CLASSES else "tie" for verdict in predicted]
    point = kappa(filled, human)
    raw = sum(p == h for p, h in zip(filled, human, strict=True)) / len(human)
    rng = np.random.default_rng(seed)
    predicted_array, human_array = np.array(filled), np.array(human)
    samples = []
    for _ in range(resamples):
        picks = rng.integers(0, len(human), len(human))
        samples.append(kappa(list(predicted_array[picks]), list(human_array[picks])))
    low, high = np.percentile(samples, [2.5, 97.5])
    return Agreement(n=len(human), kappa=point, agreement=raw, kappa_low=float(low), kappa_high=float(high))
