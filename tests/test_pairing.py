"""Pairing strategies, margins, every shape of tie, and degenerate answers, on hand-made records."""

from __future__ import annotations

import pytest

from tools.outputs.export import preference_rows
from tools.rules.pairing import PairingRules, rank_answers, repetition_share

TEXTS = ["first", "second", "third", "fourth"]


def pairs(scores: list[float | None], winner: str | None, texts: list[str] = TEXTS, **rules: object) -> object:
    ranked = rank_answers(texts[:len(scores)], scores, winner, PairingRules(**rules))  # type: ignore[arg-type]
    return ranked.outcome, ranked.dpo, ranked.kto


def test_best_vs_rest_is_the_paper_rows() -> None:
    assert pairs([5, 9, 6], "B") == ("ok", [(1, 0), (1, 2)], [(1, True), (0, False), (2, False)])


def test_best_vs_worst_takes_the_lowest_and_the_earliest_among_equals() -> None:
    assert pairs([5, 9, 6, 5], "B", pairs="best-vs-worst")[:2] == ("ok", [(1, 0)])


def test_all_pairs_orders_by_score_and_starts_with_the_chosen() -> None:
    outcome, dpo, _ = pairs([5, 9, 6], "B", pairs="all-pairs")
    assert outcome == "ok" and dpo == [(1, 0), (1, 2), (2, 0)]


def test_margin_keeps_only_gaps_at_least_that_large() -> None:
    assert pairs([5, 9, 8], "B", min_margin=2)[:2] == ("ok", [(1, 0)])
    assert pairs([5, 9, 8], "B", min_margin=2)[2] == [(1, True), (0, False)]  # 8 sits within the margin: left out
    assert pairs([8.5, 9, 8], "B", min_margin=2)[:2] == ("below_margin", [])
    assert pairs([5, 9, 8], "B", pairs="all-pairs", min_margin=3)[1] == [(1, 0), (2, 0)]


@pytest.mark.parametrize(("scores", "expected"), [
    ([8, 8, 3], ("ok_tied_top_later", [(1, 2)])),          # two on top: the later one is chosen
    ([8, 3, 8], ("ok_tied_top_later", [(2, 1)])),
    ([3, 8, 8, 8], ("ok_tied_top_later", [(3, 0)])),       # three on top
    ([8, 8, 8], ("tied_top", [])),                          # all tied: nothing to prefer
])
def test_tied_top_chooses_the_later_iteration(scores: list[float], expected: tuple) -> None:
    assert pairs(scores, "tie")[:2] == expected


def test_tied_top_kto_marks_every_top_answer_desirable() -> None:
    assert pairs([8, 8, 3], "tie")[2] == [(0, True), (1, True), (2, False)]


def test_tied_top_skip_keeps_the_old_behaviour_and_direct_ties_have_no_scores() -> None:
    assert pairs([8, 8, 3], "tie", top_tie="skip")[:2] == ("tied_top", [])
    assert pairs([None, None], "tie")[:2] == ("tied_top", [])


def test_direct_comparison_without_scores_prefers_the_winner_only_without_margin() -> None:
    assert pairs([None, None], "A")[:2] == ("ok", [(0, 1)])
    assert pairs([None, None], "A", min_margin=1)[:2] == ("below_margin", [])


def test_never_a_row_whose_chosen_equals_rejected() -> None:
    outcome, dpo, _ = pairs([9, 4, 4], "A", texts=["same", "same ", "other"])
    assert outcome == "ok" and dpo == [(0, 2)]
    assert pairs([9, 4], "A", texts=["same", " same"])[:2] == ("identical_answers", [])


def test_a_degenerate_winner_is_never_chosen() -> None:
    loop = "The moon pulls the sea. " * 8
    texts = ["Tides follow the moon.", loop, "The moon's pull raises the sea twice a day."]
    assert repetition_share(loop) > 0.8 and repetition_share(texts[2]) == 0.0
    ranked = rank_answers(texts, [6, 9, 7], "B", PairingRules(), [repetition_share(t) >= 0.5 for t in texts])
    # The loop scored higher than the new chosen answer, so it is no rejected answer either: rows need a gap.
    assert ranked.outcome == "ok" and ranked.chosen == 2 and ranked.dpo == [(2, 0)]
    every = rank_answers([loop, loop + "x"], [9, 8], "A", PairingRules(), [True, True])
    assert every.outcome == "degenerate_top" and every.dpo == []


def test_preference_rows_apply_the_rules_and_never_choose_a_loop() -> None:
    loop = "yes it is yes it is yes it is yes it is yes it is yes it is"
    record = {"prompt_id": "p", "prompt": [{"role": "user", "content": "Q?"}],
              "answers": [{"iteration": 1, "text": "A fine answer."}, {"iteration": 2, "text": loop},
                          {"iteration": 3, "text": "Another fine answer."}],
              "verdict": {"winner": "B", "scores": [7, 9, 8]},
              "models": {"generator": "g", "reviewers": ["r"], "evaluator": "judge:j"}}
    dpo, kto, outcome = preference_rows(record)
    assert outcome == "ok"
    assert {row["chosen"][0]["content"] for row in dpo} == {"Another fine answer."}
    assert [row["rejected"][0]["content"] for row in dpo] == ["A fine answer."]
    assert [(row["completion"][0]["content"], row["label"]) for row in kto] == [
        ("Another fine answer.", True), ("A fine answer.", False)]
