"""Turning scores and votes into verdicts: the tie rules, stated once.

Verdicts are candidate labels 'A', 'B', 'C', ... or 'tie'; None means no verdict could be formed
(the evaluator's output could not be parsed). Every rule here is deterministic and shared by the live
graphs and by re-scoring of recorded outputs.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable, Sequence

TIE = "tie"
# Paper-compatible scoring counts an unparsable score as -1 and compares it numerically.
PAPER_UNPARSED_SCORE = -1.0


def candidate_label(index: int) -> str:
    """'A' for the first candidate, 'B' for the second, and so on."""
    if not 0 <= index < len(string.ascii_uppercase):
        raise ValueError(f"at most {len(string.ascii_uppercase)} candidates are supported, got index {index}")
    return string.ascii_uppercase[index]


def candidate_labels(count: int) -> list[str]:
    """Answer labels A, B, C... for `count` answers."""
    return [candidate_label(index) for index in range(count)]


def label_index(label: str) -> int:
    """The position of an answer label (A is 0)."""
    return string.ascii_uppercase.index(label)


def winner_from_scores(scores: Sequence[float | None]) -> str | None:
    """The label of the unique highest score; 'tie' when the highest is shared; None if any is missing."""
    if not scores or any(score is None for score in scores):
        return None
    values = [float(score) for score in scores if score is not None]
    best = max(values)
    leaders = [index for index, value in enumerate(values) if value == best]
    return candidate_label(leaders[0]) if len(leaders) == 1 else TIE


def paper_winner_from_scores(scores: Sequence[float | None]) -> str:
    """The paper's rule: an unparsed score counts as -1, so it loses to any parsed one."""
    filled = [PAPER_UNPARSED_SCORE if score is None else score for score in scores]
    verdict = winner_from_scores(filled)
    assert verdict is not None
    return verdict


def plurality_verdict(votes: Iterable[str | None]) -> str | None:
    """The jury rule of the paper: the unique most frequent vote wins; a shared top count is a tie.

    Votes of None (jurors whose scores could not be parsed) abstain; with no votes at all there is
    no verdict.
    """
    counts = Counter(vote for vote in votes if vote is not None)
    if not counts:
        return None
    ranked = counts.most_common()
    top_count = ranked[0][1]
    leaders = [vote for vote, count in ranked if count == top_count]
    return leaders[0] if len(leaders) == 1 else TIE


def mean_scores(score_rows: Sequence[Sequence[float | None]]) -> list[float | None]:
    """Per-candidate mean over the rows that parsed that candidate's score (None if no row did)."""
    if not score_rows:
        return []
    width = len(score_rows[0])
    means: list[float | None] = []
    for column in range(width):
        values = [row[column] for row in score_rows if row[column] is not None]
        means.append(sum(values) / len(values) if values else None)  # type: ignore[arg-type]
    return means


def reconcile_orders(forward: str | None, backward: str | None) -> str | None:
    """Verdict when an item was judged in both answer orders (both already in original labels).

    Agreement keeps the verdict; disagreement becomes a tie (FastChat's rule); if one order failed to
    parse, the other stands alone.
    """
    if forward is None:
        return backward
    if backward is None:
        return forward
    return forward if forward == backward else TIE


def unreverse_label(label: str | None, count: int) -> str | None:
    """Map a verdict given on reversed candidates back to the original labels."""
    if label is None or label == TIE:
        return label
    return candidate_label(count - 1 - label_index(label))


def merge_orders(
    judged: Sequence[tuple[bool, Sequence[float | None], str | None]],
) -> tuple[list[float | None], str | None, list[str | None]]:
    """Combine judgements of one item in presented order and/or reversed order.

    Each entry is (reversed, scores as presented, winner as presented). Returns the per-candidate scores
    in original order (the mean over orders where both parsed), the reconciled winner, and each order's
    winner in original labels (forward first).
    """
    ordered = sorted(judged, key=lambda entry: entry[0])
    rows: list[list[float | None]] = []
    winners: list[str | None] = []
    for is_reversed, scores, winner in ordered:
        count = len(scores)
        rows.append(list(reversed(scores)) if is_reversed else list(scores))
        winners.append(unreverse_label(winner, count) if is_reversed else winner)
    merged_scores = mean_scores(rows)
    verdict: str | None = winners[0] if winners else None
    for other in winners[1:]:
        verdict = reconcile_orders(verdict, other)
    return merged_scores, verdict, winners
