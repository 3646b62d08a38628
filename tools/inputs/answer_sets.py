"""Answer sets for win rates: one answer per prompt, from a `generate` output folder or a prompt/answer file.

A side of a comparison maps a prompt's key (its content-derived id) to the prompt and the answer that speaks
for it; prompts without such an answer (with `--answer best`: no pick, because the evaluator tied or failed)
are kept apart, so a report never counts them as missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.errors import ConfigError, InputError
from tools.inputs.items import check_prompt, read_jsonl
from tools.inputs.prompt_sets import as_messages, prompt_id_for
from tools.rules.verdicts import label_index

# Fields that hold the answer in a plain prompt/answer file (AlpacaEval outputs use `output`).
_ANSWER_FIELDS = ("response", "output", "answer", "completion")
_PROMPT_FIELDS = ("prompt", "instruction")


@dataclass
class Side:
    """One side of a win-rate comparison.

    Prompt key -> (prompt, answer), and the keys of its prompts that have no answer to speak for them (with
    `--answer best`: no pick, because the evaluator tied or failed).
    """

    answers: dict[str, tuple[Any, str]]
    without_answer: set[str]


def side_coverage(side_a: Side, side_b: Side, answer: str) -> str:
    """One line: prompts only one side has, and prompts a side has but without an answer to compare."""
    only_a = sum(1 for key in side_a.answers.keys() | side_a.without_answer
                 if key not in side_b.answers and key not in side_b.without_answer)
    only_b = sum(1 for key in side_b.answers.keys() | side_b.without_answer
                 if key not in side_a.answers and key not in side_a.without_answer)
    line = f"prompts only in A: {only_a}, only in B: {only_b}"
    if side_a.without_answer or side_b.without_answer:
        why = "no pick (tie or no verdict)" if answer == "best" else "no answer"
        line += f"; left out, {why}: {len(side_a.without_answer)} in A, {len(side_b.without_answer)} in B"
    return line


def load_side(source: Path, answer: str) -> Side:
    """Prompt key -> (prompt, answer) for one side of a win-rate comparison.

    A `generate` output folder (or its records.jsonl) gives each prompt's final, first or best answer;
    any other JSON/JSONL file gives rows with a prompt (`prompt` or `instruction`) and an answer
    (`response`, `output`, `answer` or `completion`).
    """
    path = source / "records.jsonl" if source.is_dir() else source
    if not path.is_file():
        raise ConfigError(f"{source}: neither a generate output folder nor a file")
    rows: list[tuple[int | None, dict[str, Any]]]
    if path.suffix == ".json":
        try:
            rows = [(None, row) for row in json.loads(path.read_text(encoding="utf-8"))]
        except json.JSONDecodeError as error:
            raise InputError(path, error.lineno, f"not valid JSON ({error.msg})") from None
    else:
        rows = [(number, row) for number, row in read_jsonl(path)]
    side = Side(answers={}, without_answer=set())
    for number, row in rows:
        if "answers" in row and "prompt_id" in row:
            answers = [entry["text"] for entry in row["answers"]]
            key = prompt_id_for(as_messages(row["prompt"]))
            if not answers:
                side.without_answer.add(key)
                continue
            if answer == "best":
                winner = (row.get("verdict") or {}).get("winner")
                if winner is None or winner == "tie":
                    side.without_answer.add(key)
                    continue
                text = answers[label_index(winner)]
            else:
                text = answers[-1] if answer == "final" else answers[0]
            side.answers[key] = (row["prompt"], text)
            continue
        prompt_field = next((field for field in _PROMPT_FIELDS if field in row), None)
        answer_field = next((field for field in _ANSWER_FIELDS if field in row), None)
        if prompt_field is None or answer_field is None:
            raise InputError(path, number, f"needs a prompt ({' or '.join(_PROMPT_FIELDS)}) and an answer "
                             f"({', '.join(_ANSWER_FIELDS)})")
        prompt = check_prompt(row[prompt_field], path, number or 0, prompt_field)
        side.answers[prompt_id_for(as_messages(prompt))] = (prompt, str(row[answer_field]))
    return side


