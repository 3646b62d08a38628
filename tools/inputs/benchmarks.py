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
from tools.inputs.items import EvalItem, read_jsonl
from tools.inputs.prompt_sets import benchmarks_root
from tools.rules.verdicts import candidate_labels


class LabelledItem(BaseModel):
    """A benchmark item with its human votes and the label they give."""
    id: str
    prompt: str | list[dict[str, str]]
    responses: list[str]
    votes: list[str]
    label: str
    sample: str | None = None
    """How a run's own prompt came to a person (`human.jsonl`: audit, disputed, all); None for public benchmarks."""

    def as_eval_item(self) -> EvalItem:
        """The item as an evaluator sees it (without the labels)."""
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
    """Plain JSONL `{prompt, responses, label}`; id defaults to the line.

    The label is an answer's letter (A, B, and C... for items with more answers) or tie, or a list of such votes;
    `sample` (optional) says how the item was chosen for labelling (a run's `human.jsonl`).
    """
    from tools.rules.metrics import CLASSES  # scikit-learn loads only when a benchmark is read

    items = []
    for number, row in read_jsonl(path):
        for field in ("prompt", "responses", "label"):
            if field not in row:
                raise InputError(path, number, f"missing field '{field}'")
        responses = row["responses"]
        if not isinstance(responses, list) or not 2 <= len(responses) <= len(CLASSES) - 1:
            raise InputError(path, number, f"'responses' must be a list of 2 to {len(CLASSES) - 1} answers")
        allowed = [*candidate_labels(len(responses)), "tie"]
        votes = row["label"] if isinstance(row["label"], list) else [row["label"]]
        if any(vote not in allowed for vote in votes):
            raise InputError(path, number, f"label must be one of {', '.join(allowed)}")
        items.append(LabelledItem(id=str(row.get("id", number)), prompt=row["prompt"], responses=responses,
                                  votes=votes, label=majority_label(votes), sample=row.get("sample")))
    return items


def _mt_bench_rows(path: Path) -> list[tuple[int | None, dict[str, Any]]]:
    """Rows of an MT-Bench judgments file, as JSON Lines or one JSON list (line numbers where known)."""
    if path.suffix == ".json":
        rows = _read_json(path)
        if not isinstance(rows, list):
            raise InputError(path, None, "expected a JSON list of judgment rows")
        return [(None, row) for row in rows]
    return [(number, row) for number, row in read_jsonl(path)]


def _conversation_turns(conversation: list[dict[str, str]]) -> tuple[list[str], list[str]]:
    users = [message["content"] for message in conversation if message.get("role") == "user"]
    assistants = [message["content"] for message in conversation if message.get("role") == "assistant"]
    return users, assistants


def load_mt_bench_human(path: Path) -> list[LabelledItem]:
    """MT-Bench human judgments: one item per (question_id, model pair, turn), every vote kept.

    A = the pair's first-seen `model_a`. A vote written with the models the other way round is mirrored,
    so all votes of a pair speak about the same slots. `winner` model_a -> A, model_b -> B, anything
    starting with 'tie' -> tie. Turn 1 judges the first answers to the first question; turn 2 judges the
    second answers, with the first question and answer of each side written into its response. The id is
    `QUESTION_ID/MODEL_A/MODEL_B/turnT`.
    """
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for number, row in _mt_bench_rows(path):
        for field in ("question_id", "model_a", "model_b", "winner", "conversation_a", "conversation_b"):
            if field not in row:
                raise InputError(path, number, f"missing field '{field}'")
        turn = int(row.get("turn", 1))
        winner = str(row["winner"])
        if winner not in ("model_a", "model_b") and not winner.startswith("tie"):
            raise InputError(path, number, f"unknown winner {winner!r} (model_a, model_b or tie...)")
        vote = {"model_a": "A", "model_b": "B"}.get(winner, "tie")
        pair = (row["question_id"], row["model_a"], row["model_b"], turn)
        mirrored = (row["question_id"], row["model_b"], row["model_a"], turn)
        if pair not in groups and mirrored in groups:
            groups[mirrored]["votes"].append({"A": "B", "B": "A"}.get(vote, vote))
            continue
        if pair in groups:
            groups[pair]["votes"].append(vote)
            continue
        users, answers_a = _conversation_turns(row["conversation_a"])
        _, answers_b = _conversation_turns(row["conversation_b"])
        if len(users) < turn or len(answers_a) < turn or len(answers_b) < turn:
            raise InputError(path, number, f"conversation has fewer than {turn} turns")
        if turn == 1:
            prompt, responses = users[0], [answers_a[0], answers_b[0]]
        else:
            prompt = users[1]
            responses = [
                f"(first question: {users[0]})\n(first answer: {answers[0]})\n\n{answers[1]}"
                for answers in (answers_a, answers_b)
            ]
        groups[pair] = {"id": f"{pair[0]}/{pair[1]}/{pair[2]}/turn{turn}", "prompt": prompt,
                        "responses": responses, "votes": [vote]}
    return [LabelledItem(**group, label=majority_label(group["votes"])) for group in groups.values()]


def load_alpaca_cross_annotations(path: Path) -> list[LabelledItem]:
    """AlpacaEval human cross-annotations: one item per (instruction, input, output_1, output_2), all votes kept.

    `preference` 1 -> A (output_1), 2 -> B (output_2), 0 or 1.5 -> tie; with four annotators a 2-2 split is
    a tie. Ids are the positions of the pairs' first rows, from 0. A JSON list or JSON Lines.
    """
    rows = _mt_bench_rows(path)
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for number, row in rows:
        for field in ("instruction", "output_1", "output_2", "preference"):
            if field not in row:
                raise InputError(path, number, f"missing field '{field}'")
        try:
            vote = {1.0: "A", 2.0: "B", 0.0: "tie", 1.5: "tie"}.get(float(row["preference"]))
        except (TypeError, ValueError):
            vote = None
        if vote is None:
            raise InputError(path, number, f"preference {row['preference']!r} is not 1, 2 (or 0 / 1.5 for a tie)")
        extra = str(row.get("input") or "")
        key = (str(row["instruction"]), extra, str(row["output_1"]), str(row["output_2"]))
        if key not in groups:
            prompt = key[0] + (f"\n\n{extra}" if extra else "")
            groups[key] = {"id": str(len(groups)), "prompt": prompt, "responses": [key[2], key[3]], "votes": []}
        groups[key]["votes"].append(vote)
    return [LabelledItem(**group, label=majority_label(group["votes"])) for group in groups.values()]


BENCHMARK_FILES: dict[str, tuple[str, Callable[[Path], list[LabelledItem]]]] = {
    "pandalm": ("pandalm/testset-v1.json", load_pandalm),
    "faireval": ("faireval", load_faireval),
    "llmbar-natural": ("llmbar/natural.json", load_llmbar),
    "llmbar-adversarial-gptinst": ("llmbar/adversarial_gptinst.json", load_llmbar),
    "llmbar-adversarial-gptout": ("llmbar/adversarial_gptout.json", load_llmbar),
    "llmbar-adversarial-manual": ("llmbar/adversarial_manual.json", load_llmbar),
    "llmbar-adversarial-neighbor": ("llmbar/adversarial_neighbor.json", load_llmbar),
}

# Which loader reads a file, told by the fields of its first row.
_FORMAT_FIELDS: list[tuple[str, Callable[[Path], list[LabelledItem]]]] = [
    ("annotator1", load_pandalm),
    ("conversation_a", load_mt_bench_human),
    ("preference", load_alpaca_cross_annotations),
    ("output_1", load_llmbar),
    ("responses", load_plain),
]


def _first_row(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8").lstrip()
    if text.startswith("["):
        rows = _read_json(path)
        return rows[0] if rows and isinstance(rows[0], dict) else {}
    first_line = text.split("\n", 1)[0]
    try:
        value = json.loads(first_line) if first_line else {}
    except json.JSONDecodeError:
        raise InputError(path, 1, "not valid JSON") from None
    return value if isinstance(value, dict) else {}


def loader_for(path: Path) -> Callable[[Path], list[LabelledItem]]:
    """The loader for a benchmark path: FairEval's folder, or a file recognised by its fields."""
    if path.is_dir():
        if (path / "review_gpt35_vicuna-13b_human.txt").exists():
            return load_faireval
        raise ConfigError(f"--benchmark {path}: a folder must hold FairEval's four files")
    row = _first_row(path)
    for field, loader in _FORMAT_FIELDS:
        if field in row:
            return loader
    raise InputError(path, 1, "unknown benchmark format (expected PandaLM, LLMBar, MT-Bench human judgments, "
                     "AlpacaEval cross-annotations or {prompt, responses, label})")


def load_benchmark(name_or_path: str) -> list[LabelledItem]:
    """A benchmark by short name (from ../shared/benchmarks) or by path, in any supported format."""
    if name_or_path in BENCHMARK_FILES:
        relative, loader = BENCHMARK_FILES[name_or_path]
        path = benchmarks_root() / relative
        if not path.exists():
            raise ConfigError(f"--benchmark {name_or_path}: not found at {path} (set FELLOWSHIP_BENCHMARKS)")
        return loader(path)
    path = Path(name_or_path)
    if not path.exists():
        known = ", ".join(BENCHMARK_FILES)
        raise ConfigError(f"--benchmark {name_or_path}: neither a known name ({known}) nor an existing path")
    items = loader_for(path)(path)
    if not items:
        raise InputError(path, None, "holds no items")
    return items
