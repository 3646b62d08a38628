"""Benchmark loaders against the shared files (label counts from benchmarks/README.md), and kappa."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tools.benchmarks import load_benchmark, load_faireval, load_llmbar, load_pandalm, majority_label
from tools.errors import InputError
from tools.metrics import agreement_with_humans, kappa


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
