"""Loaders for human-labelled benchmarks, in their published formats (SPEC.md section 5).

Each loader yields `LabelledItem`s: the benchmark's own id, the prompt, the candidate answers (A first),
every human vote, and the label in {A, B, tie}, following the label rules of `benchmarks/README.md`.
Where several humans voted, the label is the majority (a split without majority is a tie).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tools.errors import ConfigError, InputError
from tools.items import EvalItem, read_jsonl
from tools.prompt_sets import benchmarks_root

LABELS = ("A", "B", "tie")


class LabelledItem(BaseModel):
    id: str
    prompt: str | list[dict[str, str]]
    responses: list[str]
    votes: list[str]
    label: str

    def as_eval_item(self) -> EvalItem:
        return EvalItem(id=self.id, prompt=self.prompt, responses=self.responses)


def majority_label(votes: list[str]) -> str:
    """The most frequent vote; when the top count is shared there is no majority, which counts as a tie."""
    ranked = Counter(votes).most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return "tie"
    return ranked[0][0]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, None, "file not found") from None
    except json.JSONDecodeError as error:
        raise InputError(path, error.lineno, f"not valid JSON ({error.msg})") from None


def load_pandalm(path: Path) -> list[LabelledItem]:
    """PandaLM `testset-v1.json`: A = response1, B = response2; annotators 0 tie, 1 A, 2 B; majority of 3.

    A few published responses are JSON booleans or numbers; they are read as their text.
    """
    mapping = {0: "tie", 1: "A", 2: "B"}
    items = []
    for row in _read_json(path):
        prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        votes = [mapping[int(row[f"annotator{index}"])] for index in (1, 2, 3)]
        responses = [str(row["response1"]), str(row["response2"])]
        items.append(LabelledItem(id=str(row["idx"]), prompt=prompt, responses=responses,
                                  votes=votes, label=majority_label(votes)))
    return items


def load_faireval(folder: Path) -> list[LabelledItem]:
    """FairEval's four files: vicuna-13b in slot A, gpt-3.5 in slot B; human line i is question_id i."""
    questions = [row for _, row in read_jsonl(folder / "question.jsonl")]
    vicuna = {row["question_id"]: row["text"] for _, row in read_jsonl(folder / "answer_vicuna-13b.jsonl")}
    gpt35 = {row["question_id"]: row["text"] for _, row in read_jsonl(folder / "answer_gpt35.jsonl")}
    human_path = folder / "review_gpt35_vicuna-13b_human.txt"
    humans = [line.strip() for line in human_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    mapping = {"VICUNA13B": "A", "CHATGPT": "B", "TIE": "tie"}
    items = []
    for question in questions:
        qid = question["question_id"]
        if qid - 1 >= len(humans):
            raise InputError(human_path, None, f"no human label for question_id {qid}")
        raw = humans[qid - 1]
        if raw not in mapping:
            raise InputError(human_path, qid, f"unknown label {raw!r}")
        items.append(LabelledItem(id=str(qid), prompt=question["text"], responses=[vicuna[qid], gpt35[qid]],
                                  votes=[mapping[raw]], label=mapping[raw]))
    return items


def load_llmbar(path: Path) -> list[LabelledItem]:
    """LLMBar `dataset.json`: label 1 -> A (output_1), 2 -> B (output_2); ids are positions from 0."""
    items = []
    for index, row in enumerate(_read_json(path)):
        label = {1: "A", 2: "B"}[int(row["label"])]
        items.append(LabelledItem(id=str(index), prompt=row["input"], responses=[row["output_1"], row["output_2"]],
                                  votes=[label], label=label))
    return items


def load_plain(path: Path) -> list[LabelledItem]:
    """Plain JSONL `{prompt, responses, label}` (label A/B/tie, or a list of votes); id defaults to the line."""
    items = []
    for number, row in read_jsonl(path):
        for field in ("prompt", "responses", "label"):
            if field not in row:
                raise InputError(path, number, f"missing field '{field}'")
        votes = row["label"] if isinstance(row["label"], list) else [row["label"]]
        if any(vote not in LABELS for vote in votes):
            raise InputError(path, number, f"label must be one of {', '.join(LABELS)}")
        items.append(LabelledItem(id=str(row.get("id", number)), prompt=row["prompt"], responses=row["responses"],
                                  votes=votes, label=majority_label(votes)))
    return items


BENCHMARK_FILES: dict[str, tuple[str, Callable[[Path], list[LabelledItem]]]] = {
    "pandalm": ("pandalm/testset-v1.json", load_pandalm),
    "faireval": ("faireval", load_faireval),
    "llmbar-natural": ("llmbar/natural.json", load_llmbar),
    "llmbar-adversarial-gptinst": ("llmbar/adversarial_gptinst.json", load_llmbar),
    "llmbar-adversarial-gptout": ("llmbar/adversarial_gptout.json", load_llmbar),
    "llmbar-adversarial-manual": ("llmbar/adversarial_manual.json", load_llmbar),
    "llmbar-adversarial-neighbor": ("llmbar/adversarial_neighbor.json", load_llmbar),
}


def load_benchmark(name_or_path: str) -> list[LabelledItem]:
    """A benchmark by short name (from ../shared/benchmarks) or a path to a plain JSONL file."""
    if name_or_path in BENCHMARK_FILES:
        relative, loader = BENCHMARK_FILES[name_or_path]
        path = benchmarks_root() / relative
        if not path.exists():
            raise ConfigError(f"--benchmark {name_or_path}: not found at {path} (set FELLOWSHIP_BENCHMARKS)")
        return loader(path)
    path = Path(name_or_path)
    if not path.exists():
        known = ", ".join(BENCHMARK_FILES)
        raise ConfigError(f"--benchmark {name_or_path}: neither a known name ({known}) nor an existing file")
    return load_plain(path)
