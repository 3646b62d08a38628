"""Agreement of evaluator verdicts with human labels: Cohen's kappa, raw agreement, bootstrap interval.

Kappa is scikit-learn's unweighted `cohen_kappa_score` over the classes {A, B, tie}, with every item kept: a
verdict that could not be formed is counted as a tie prediction (or by the paper's rules upstream). Items with
more than two answers (a run's own `human.jsonl`: the best of N) add their letters C, D...: classes nobody uses
add nothing to kappa, so two-answer figures are the same as over {A, B, tie} alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import cohen_kappa_score

# A, B and tie first (their indices are fixed), then the answer letters of items with more answers (up to 10).
CLASSES = ["A", "B", "tie", "C", "D", "E", "F", "G", "H", "I", "J"]


@dataclass(frozen=True)
class Agreement:
    """Agreement of predicted labels with human labels: kappa with its interval, raw agreement, n."""
    n: int
    kappa: float
    agreement: float
    kappa_low: float
    kappa_high: float


def kappa(predicted: Sequence[str], human: Sequence[str]) -> float:
    """Cohen's kappa over {A, B, tie} and the letters of further answers (scikit-learn, unweighted)."""
    if len(predicted) != len(human):
        raise ValueError(f"{len(predicted)} predictions for {len(human)} labels")
    # A resample with a single class has no defined kappa; count it as no agreement beyond chance.
    return float(cohen_kappa_score(list(human), list(predicted), labels=CLASSES, replace_undefined_by=0.0))


def kappas_of_resamples(predicted: np.ndarray, human: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """Cohen's kappa of many resamples at once; `predicted`/`human` hold class indices, `picks` is (R, n).

    The same formula as scikit-learn (po - pe) / (1 - pe), computed from confusion counts for every
    resample together, so a bootstrap over dozens of juries stays fast. Undefined kappa (pe = 1) is 0.
    """
    size = len(CLASSES)
    cells = human[picks] * size + predicted[picks]
    offsets = np.arange(picks.shape[0])[:, None] * size * size
    counts = np.bincount((cells + offsets).ravel(), minlength=picks.shape[0] * size * size)
    confusion = counts.reshape(picks.shape[0], size, size).astype(float)
    total = confusion.sum(axis=(1, 2))
    observed = np.trace(confusion, axis1=1, axis2=2) / total
    expected = (confusion.sum(axis=2) * confusion.sum(axis=1)).sum(axis=1) / total**2
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (observed - expected) / (1 - expected)
    return np.where(np.isclose(expected, 1.0), 0.0, values)


def filled_predictions(predicted: Sequence[str | None]) -> list[str]:
    """Every item kept: a verdict that could not be formed counts as a tie prediction."""
    return [verdict if verdict in CLASSES else "tie" for verdict in predicted]


def agreement_with_humans(
    predicted: Sequence[str | None], human: Sequence[str], *, resamples: int = 1000, seed: int = 0
) -> Agreement:
    """Kappa, raw agreement and a percentile bootstrap 95% interval for kappa (items resampled)."""
    filled = filled_predictions(predicted)
    point = kappa(filled, human)
    raw = sum(p == h for p, h in zip(filled, human, strict=True)) / len(human)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(human), size=(resamples, len(human)))
    index = {label: position for position, label in enumerate(CLASSES)}
    samples = kappas_of_resamples(
        np.array([index[label] for label in filled]), np.array([index[label] for label in human]), picks
    )
    low, high = np.percentile(samples, [2.5, 97.5])
    return Agreement(n=len(human), kappa=point, agreement=raw, kappa_low=float(low), kappa_high=float(high))
