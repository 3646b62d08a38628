"""Bradley-Terry ratings of K sides from pairwise verdicts, with bootstrap intervals and a length (style) control.

The model: side i beats side j with probability sigmoid(beta_i - beta_j (+ gamma * style)), fitted as a
logistic regression without intercept (scikit-learn), as Chatbot Arena and arena-hard-auto do. Each battle is
a row with +1 in the column of the side shown first and -1 in the other's; a win of the first side is 1, of
the second 0, and a tie is both, each with weight 1/2. Verdicts that could not be read are left out.

Two choices, stated once:
- A weak L2 prior (C = `PRIOR_C`: a normal prior with standard deviation 10 on each log-odds rating) keeps a
  side that won or lost every battle at a finite rating; with battles on both sides of every side it moves a
  rating by far less than its interval.
- Ratings are on the Elo scale, 400 / ln 10 points per unit of log-odds, anchored so that the baseline side
  (or, without one, the mean of the sides) is at 1000.

With style control, a column holds the battle's normalised length difference, (len_first - len_second) /
(len_first + len_second) in characters, and its coefficient (how many Elo points answering longer buys) is
reported; the sides' ratings are then what remains once length is accounted for.

Intervals: `rounds` bootstrap resamples of prompts (all of a prompt's battles go together, as a prompt's
answers are judged together), refitted each time; the 2.5 and 97.5 percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ELO_PER_LOGIT = 400 / math.log(10)
ANCHOR = 1000.0
# scikit-learn's C: it minimises ||beta||^2 / 2 + C * (weighted log-loss), the MAP fit under a normal prior of
# variance C: a standard deviation of 10 log-odds per rating.
PRIOR_C = 100.0


@dataclass(frozen=True)
class Battle:
    """One judged comparison: the side shown first, the other, the verdict, and the prompt it was on."""

    first: str
    second: str
    winner: str | None  # "A" (the first side), "B", "tie", or None when the verdict could not be read
    prompt: str
    first_length: int = 0
    second_length: int = 0


@dataclass(frozen=True)
class SideRating:
    """One side's rating, its interval, and its record."""

    side: str
    rating: float
    low: float
    high: float
    wins: int
    ties: int
    losses: int
    battles: int


@dataclass(frozen=True)
class Ratings:
    """Every side's rating, best first, and the style coefficient when length was controlled for."""

    sides: list[SideRating]
    style_coefficient: float | None
    style_low: float | None
    style_high: float | None
    rounds: int
    unread: int


def _design(battles: Sequence[Battle], sides: Sequence[str], style: bool) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
    """(X, y, weights) of the logistic regression; a tie gives two rows of weight 1/2."""
    column = {side: index for index, side in enumerate(sides)}
    rows: list[list[float]] = []
    outcomes: list[int] = []
    weights: list[float] = []
    for battle in battles:
        if battle.winner is None:
            continue
        row = [0.0] * (len(sides) + style)
        row[column[battle.first]] = 1.0
        row[column[battle.second]] = -1.0
        if style:
            total = battle.first_length + battle.second_length
            row[-1] = (battle.first_length - battle.second_length) / total if total else 0.0
        if battle.winner == "tie":
            rows += [row, row]
            outcomes += [1, 0]
            weights += [0.5, 0.5]
        else:
            rows.append(row)
            outcomes.append(1 if battle.winner == "A" else 0)
            weights.append(1.0)
    return np.array(rows, dtype=float), np.array(outcomes), np.array(weights)


def fit_coefficients(battles: Sequence[Battle], sides: Sequence[str], *, style: bool = False) -> np.ndarray:
    """The logistic regression's coefficients in log-odds: one per side, then the style coefficient if asked."""
    from sklearn.linear_model import LogisticRegression

    features, outcomes, weights = _design(battles, sides, style)
    if len(outcomes) == 0:
        return np.zeros(len(sides) + style)
    # Without an intercept, (x, won) and (-x, lost) are the same battle seen from the other side: each battle
    # counted half from each side leaves the objective as it was, and gives the fit both outcomes even when the
    # side shown first always won.
    features = np.vstack([features, -features])
    outcomes = np.concatenate([outcomes, 1 - outcomes])
    weights = np.concatenate([weights, weights]) / 2
    model = LogisticRegression(fit_intercept=False, C=PRIOR_C, tol=1e-10, max_iter=10_000)
    model.fit(features, outcomes, sample_weight=weights)
    return np.asarray(model.coef_[0], dtype=float)


def _to_elo(coefficients: np.ndarray, sides: Sequence[str], baseline: str | None) -> np.ndarray:
    side_part = coefficients[:len(sides)]
    anchor = side_part[list(sides).index(baseline)] if baseline is not None else side_part.mean()
    return ANCHOR + ELO_PER_LOGIT * (side_part - anchor)


def rate(
    battles: Sequence[Battle], *, rounds: int, baseline: str | None = None, style: bool = False, seed: int = 0,
) -> Ratings:
    """Ratings of every side that battled, with `rounds` bootstrap resamples of prompts for the intervals."""
    sides = sorted({battle.first for battle in battles} | {battle.second for battle in battles})
    point = fit_coefficients(battles, sides, style=style)
    elo = _to_elo(point, sides, baseline)
    by_prompt: dict[str, list[Battle]] = {}
    for battle in battles:
        by_prompt.setdefault(battle.prompt, []).append(battle)
    prompts = sorted(by_prompt)
    generator = np.random.default_rng(seed)
    samples = []
    style_samples = []
    for _ in range(rounds):
        drawn = generator.integers(0, len(prompts), size=len(prompts))
        resampled = [battle for index in drawn for battle in by_prompt[prompts[index]]]
        coefficients = fit_coefficients(resampled, sides, style=style)
        samples.append(_to_elo(coefficients, sides, baseline))
        if style:
            style_samples.append(coefficients[-1] * ELO_PER_LOGIT)
    low, high = (np.percentile(np.array(samples), [2.5, 97.5], axis=0) if samples
                 else (elo, elo))
    rows = []
    for index, side in enumerate(sides):
        mine = [battle for battle in battles if side in (battle.first, battle.second) and battle.winner is not None]
        wins = sum((battle.winner == "A") == (battle.first == side) and battle.winner != "tie" for battle in mine)
        ties = sum(battle.winner == "tie" for battle in mine)
        rows.append(SideRating(side=side, rating=float(elo[index]), low=float(low[index]), high=float(high[index]),
                               wins=wins, ties=ties, losses=len(mine) - wins - ties, battles=len(mine)))
    rows.sort(key=lambda row: -row.rating)
    style_low = style_high = None
    if style and style_samples:
        style_low, style_high = (float(value) for value in np.percentile(style_samples, [2.5, 97.5]))
    return Ratings(sides=rows, style_coefficient=float(point[-1] * ELO_PER_LOGIT) if style else None,
                   style_low=style_low, style_high=style_high, rounds=rounds,
                   unread=sum(battle.winner is None for battle in battles))
