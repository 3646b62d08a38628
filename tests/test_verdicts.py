"""Tie rules: scores to winners, the jury's plurality rule, means, and reconciling both answer orders."""

from __future__ import annotations

from tools.rules.verdicts import (
    mean_scores,
    merge_orders,
    paper_winner_from_scores,
    plurality_verdict,
    reconcile_orders,
    unreverse_label,
    winner_from_scores,
)


def test_winner_from_scores() -> None:
    assert winner_from_scores([8, 6]) == "A"
    assert winner_from_scores([6, 8]) == "B"
    assert winner_from_scores([7, 7]) == "tie"
    assert winner_from_scores([5, 9, 3]) == "B"
    assert winner_from_scores([9, 9, 3]) == "tie"
    assert winner_from_scores([8, None]) is None


def test_paper_rule_counts_unparsed_as_minus_one() -> None:
    assert paper_winner_from_scores([None, 0]) == "B"
    assert paper_winner_from_scores([None, None]) == "tie"
    assert paper_winner_from_scores([3, None]) == "A"


def test_plurality_unique_top_vote_wins() -> None:
    assert plurality_verdict(["A", "A", "B"]) == "A"
    assert plurality_verdict(["B", "tie", "B", "A"]) == "B"
    assert plurality_verdict(["tie", "tie", "A"]) == "tie"


def test_plurality_shared_top_count_is_tie() -> None:
    assert plurality_verdict(["A", "B"]) == "tie"
    assert plurality_verdict(["A", "B", "tie"]) == "tie"
    assert plurality_verdict(["A", "A", "B", "B", "tie"]) == "tie"


def test_plurality_abstentions() -> None:
    assert plurality_verdict([None, "B"]) == "B"
    assert plurality_verdict([None, None]) is None


def test_mean_scores_skips_missing() -> None:
    assert mean_scores([[8, 4], [6, None], [None, 2]]) == [7.0, 3.0]
    assert mean_scores([[None, 1]]) == [None, 1.0]


def test_reconcile_orders() -> None:
    assert reconcile_orders("A", "A") == "A"
    assert reconcile_orders("A", "B") == "tie"
    assert reconcile_orders(None, "B") == "B"
    assert unreverse_label("A", 2) == "B"
    assert unreverse_label("tie", 2) == "tie"


def test_merge_orders_maps_reversed_judgement_back() -> None:
    # Forward: A (first answer) scored 8, B 5. Reversed presentation: the first answer sits in slot B.
    scores, winner, order_winners = merge_orders([(False, [8, 5], "A"), (True, [4, 9], "B")])
    assert scores == [8.5, 4.5]
    assert winner == "A"
    assert order_winners == ["A", "A"]


def test_merge_orders_disagreement_is_tie() -> None:
    # Position bias: the judge prefers whatever is shown first.
    scores, winner, order_winners = merge_orders([(True, [9, 5], "A"), (False, [9, 5], "A")])
    assert winner == "tie"
    assert order_winners == ["A", "B"]
    assert scores == [7.0, 7.0]
