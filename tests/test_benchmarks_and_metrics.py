"""Benchmark loaders against the shared files (label counts from benchmarks/README.md), and kappa."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tools.errors import InputError
from tools.inputs.benchmarks import load_benchmark, load_faireval, load_llmbar, load_pandalm, majority_label
from tools.rules.metrics import CLASSES, agreement_with_humans, kappa, kappas_of_resamples


def test_pandalm_majority_labels(benchmarks_dir: Path) -> None:
    items = load_pandalm(benchmarks_dir / "pandalm/testset-v1.json")
    assert len(items) == 999
    assert Counter(item.label for item in items) == {"A": 422, "B": 472, "tie": 105}
    assert sum(len(set(item.votes)) == 1 for item in items) == 879


def test_faireval_slots_and_labels(benchmarks_dir: Path) -> None:
    items = load_faireval(benchmarks_dir / "faireval")
    assert len(items) == 80 and items[0].id == "1"
    assert Counter(item.label for item in items) == {"A": 25, "B": 41, "tie": 14}


def test_llmbar_has_no_ties(benchmarks_dir: Path) -> None:
    items = load_llmbar(benchmarks_dir / "llmbar/natural.json")
    assert len(items) == 100 and items[0].id == "0"
    assert set(item.label for item in items) <= {"A", "B"}


def test_plain_jsonl_and_votes(tmp_path: Path) -> None:
    path = tmp_path / "plain.jsonl"
    rows = [{"prompt": "Q", "responses": ["a", "b"], "label": ["A", "A", "B"]},
            {"id": "x", "prompt": "Q2", "responses": ["a", "b"], "label": "tie"}]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    items = load_benchmark(str(path))
    assert [(item.id, item.label) for item in items] == [("1", "A"), ("x", "tie")]
    path.write_text(json.dumps({"prompt": "Q", "responses": ["a", "b"], "label": "C"}))
    with pytest.raises(InputError, match=r"plain\.jsonl:1: label must be one of"):
        load_benchmark(str(path))


def test_majority_without_majority_is_tie() -> None:
    assert majority_label(["A", "B"]) == "tie"
    assert majority_label(["A", "A", "B"]) == "A"


def test_kappa_hand_computed() -> None:
    human = ["A", "A", "B", "B"]
    # Perfect agreement.
    assert kappa(["A", "A", "B", "B"], human) == pytest.approx(1.0)
    # po = 0.5, pe = 0.5 -> 0.
    assert kappa(["A", "B", "A", "B"], human) == pytest.approx(0.0)
    # po = 0.75; predicted A 3/4, B 1/4; human 1/2 each: pe = 0.5 -> kappa = 0.5.
    assert kappa(["A", "A", "A", "B"], human) == pytest.approx(0.5)


def test_agreement_keeps_unparsed_items_as_ties() -> None:
    result = agreement_with_humans(["A", None, "B", "B"], ["A", "tie", "B", "A"], resamples=200)
    assert result.n == 4
    assert result.agreement == pytest.approx(0.75)
    assert result.kappa_low <= result.kappa <= result.kappa_high


def test_vectorised_resample_kappa_equals_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    human = rng.integers(0, 3, 40)
    predicted = np.where(rng.random(40) < 0.6, human, rng.integers(0, 3, 40))
    picks = rng.integers(0, 40, size=(50, 40))
    fast = kappas_of_resamples(predicted, human, picks)
    for row, value in zip(picks, fast, strict=True):
        slow = kappa([CLASSES[i] for i in predicted[row]], [CLASSES[i] for i in human[row]])
        assert value == pytest.approx(slow, abs=1e-12)
    # A resample where both sides hold one class only has no defined kappa: counted as 0.
    assert kappas_of_resamples(np.zeros(3, int), np.zeros(3, int), np.zeros((1, 3), int))[0] == 0.0


def conversation(question: str, answer: str, question_2: str = "And then?", answer_2: str = "More.") -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer},
            {"role": "user", "content": question_2}, {"role": "assistant", "content": answer_2}]


def test_mt_bench_human_judgments_votes_grouped_and_mirrored(tmp_path: Path) -> None:
    base = {"question_id": 81, "judge": "author_0"}
    rows = [
        {**base, "model_a": "gpt-4", "model_b": "vicuna", "winner": "model_a", "turn": 1,
         "conversation_a": conversation("Q1", "gpt-4 says"), "conversation_b": conversation("Q1", "vicuna says")},
        # The same pair written the other way round: its vote for model_b is a vote for gpt-4 (slot A).
        {**base, "model_a": "vicuna", "model_b": "gpt-4", "winner": "model_b", "turn": 1, "judge": "expert_1",
         "conversation_a": conversation("Q1", "vicuna says"), "conversation_b": conversation("Q1", "gpt-4 says")},
        {**base, "model_a": "gpt-4", "model_b": "vicuna", "winner": "tie (bothbad)", "turn": 1, "judge": "expert_2",
         "conversation_a": conversation("Q1", "gpt-4 says"), "conversation_b": conversation("Q1", "vicuna says")},
        {**base, "model_a": "gpt-4", "model_b": "vicuna", "winner": "model_b", "turn": 2,
         "conversation_a": conversation("Q1", "gpt-4 says", "Q2", "gpt-4 again"),
         "conversation_b": conversation("Q1", "vicuna says", "Q2", "vicuna again")},
    ]
    path = tmp_path / "human.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    items = load_benchmark(str(path))
    assert [(item.id, item.votes, item.label) for item in items] == [
        ("81/gpt-4/vicuna/turn1", ["A", "A", "tie"], "A"),
        ("81/gpt-4/vicuna/turn2", ["B"], "B"),
    ]
    assert items[0].responses == ["gpt-4 says", "vicuna says"]
    assert items[1].prompt == "Q2" and items[1].responses[1].endswith("vicuna again")
    assert "vicuna says" in items[1].responses[1]
    rows[0]["winner"] = "model_c"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(InputError, match=r"human\.jsonl:1: unknown winner 'model_c'"):
        load_benchmark(str(path))


def test_alpaca_eval_cross_annotations_majority_and_split(tmp_path: Path) -> None:
    pair = {"instruction": "Name a colour.", "output_1": "Red.", "output_2": "Blue is a colour."}
    other = {"instruction": "Add 2+2.", "input": "", "output_1": "4", "output_2": "5"}
    rows = [{**pair, "preference": vote} for vote in (2, 2, 1, 2)] + [{**other, "preference": vote}
                                                                        for vote in (1, 2, 1, 2)]
    path = tmp_path / "alpaca_farm_human_crossannotations.json"
    path.write_text(json.dumps(rows))
    items = load_benchmark(str(path))
    assert [(item.id, item.label, item.votes) for item in items] == [
        ("0", "B", ["B", "B", "A", "B"]), ("1", "tie", ["A", "B", "A", "B"])]
    assert items[0].responses == ["Red.", "Blue is a colour."]
    rows[0]["preference"] = 3
    path.write_text(json.dumps(rows))
    with pytest.raises(InputError, match=r"preference 3 is not 1, 2"):
        load_benchmark(str(path))


def test_benchmark_paths_are_recognised_by_format(benchmarks_dir: Path) -> None:
    assert len(load_benchmark(str(benchmarks_dir / "pandalm/testset-v1.json"))) == 999
    assert len(load_benchmark(str(benchmarks_dir / "faireval"))) == 80
    assert len(load_benchmark(str(benchmarks_dir / "llmbar/adversarial_neighbor.json"))) == 134
