"""Prompt sources for `fellowship generate`: a JSONL file, a shared prompt set, or a local HF dataset.

Every prompt is validated before any model is called; a bad one raises an InputError naming the file
and line (or row). Duplicate prompts are kept once (they would share a prompt id).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.errors import ConfigError, InputError
from tools.inputs.items import Prompt, check_prompt, read_jsonl

# The prompt sets shipped beside the project in ../shared/benchmarks, by short name.
PROMPT_SETS = {
    "alpaca_eval": "alpaca_eval/alpaca-7b_model_outputs.json",
    "mt_bench": "mt_bench/question.jsonl",
}


@dataclass(frozen=True)
class PromptSource:
    """The prompts read from one source, once each, with what identifies the source."""

    prompts: list[Prompt]
    duplicates: int
    origin: str
    field: str

    @property
    def sha256(self) -> str:
        """A hash of every prompt, in order: another file or the same file edited gives another hash."""
        digest = hashlib.sha256()
        for prompt in self.prompts:
            digest.update(json.dumps(prompt, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n")
        return digest.hexdigest()


def benchmarks_root() -> Path:
    """`$FELLOWSHIP_BENCHMARKS`, else `../shared/benchmarks` from the working directory or the project."""
    configured = os.environ.get("FELLOWSHIP_BENCHMARKS")
    if configured:
        return Path(configured)
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base.parent / "shared" / "benchmarks"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "benchmarks"


def _dedupe(prompts: list[Prompt], origin: str, field: str) -> PromptSource:
    seen: set[str] = set()
    unique: list[Prompt] = []
    for prompt in prompts:
        key = json.dumps(prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(prompt)
    return PromptSource(prompts=unique, duplicates=len(prompts) - len(unique), origin=origin, field=field)


def _from_jsonl(path: Path, field: str) -> list[Prompt]:
    prompts = []
    for number, row in read_jsonl(path):
        if field == "turns" and isinstance(row.get("turns"), list) and row["turns"]:
            prompts.append(check_prompt(row["turns"][0], path, number, "turns[0]"))  # MT-Bench: first turn
            continue
        if field not in row:
            raise InputError(path, number, f"missing field '{field}'")
        prompts.append(check_prompt(row[field], path, number, field))
    return prompts


def _from_json_array(path: Path, field: str) -> list[Prompt]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(path, error.lineno, f"not valid JSON ({error.msg})") from None
    if not isinstance(rows, list):
        raise InputError(path, None, "expected a JSON array of objects")
    prompts = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or field not in row:
            raise InputError(path, None, f"entry {index}: missing field '{field}'")
        prompts.append(check_prompt(row[field], f"{path} entry", index, field))
    return prompts


def _from_hf_dataset(path: Path, field: str) -> list[Prompt]:
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise InputError(path, None, f"not a saved Hugging Face dataset ({error})") from None
    dataset: Dataset = loaded["train"] if isinstance(loaded, DatasetDict) else loaded
    if field not in dataset.column_names:
        raise ConfigError(f"--prompt-field {field!r}: {path} has columns {dataset.column_names}")
    return [check_prompt(value, f"{path} row", index, field) for index, value in enumerate(dataset[field])]


def load_prompts(source: str, *, prompt_field: str | None = None) -> PromptSource:
    """Prompts from `source`: a short name (alpaca_eval, mt_bench), a .jsonl/.json file, or a dataset folder."""
    if source in PROMPT_SETS:
        path = benchmarks_root() / PROMPT_SETS[source]
        if not path.is_file():
            raise ConfigError(f"--prompts {source}: prompt set not found at {path} (set FELLOWSHIP_BENCHMARKS)")
        if source == "alpaca_eval":
            field = prompt_field or "instruction"
            return _dedupe(_from_json_array(path, field), source, field)
        field = prompt_field or "turns"
        return _dedupe(_from_jsonl(path, field), source, field)
    path = Path(source)
    field = prompt_field or "prompt"
    if path.is_dir():
        return _dedupe(_from_hf_dataset(path, field), str(path), field)
    if not path.exists():
        raise InputError(path, None, "file not found")
    if path.suffix == ".json":
        return _dedupe(_from_json_array(path, field), str(path), field)
    return _dedupe(_from_jsonl(path, field), str(path), field)


def prompt_id_for(prompt: Any) -> str:
    """A stable id from the prompt's content (as distilabel does): the same prompt, the same id."""
    canonical = json.dumps(prompt, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """TRL's conversational prompt: a list of messages ending with the user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(message) for message in prompt]
