"""Evaluation items and the loader for `PAIRS.jsonl` input files.

A line is `{"id": ..., "prompt": str or message list, "responses": [str, str, ...]}`. Every line is
checked before any model is called; the first bad one raises an InputError naming the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tools.errors import InputError

Prompt = str | list[dict[str, str]]


ItemId = str | int


class EvalItem(BaseModel):
    """One thing to judge: a prompt and two or more candidate answers.

    `id` keeps the JSON type it was given (a number stays a number in the output); `key` is its text,
    for matching ids across files.
    """

    id: ItemId
    prompt: Prompt
    responses: list[str] = Field(min_length=2)

    @property
    def key(self) -> str:
        """The id as text, for matching ids across files."""
        return str(self.id)

    @property
    def question(self) -> str:
        """The prompt as judges read it."""
        return prompt_text(self.prompt)


def prompt_text(prompt: Prompt) -> str:
    """A prompt as judges read it: a plain string, or a conversation written out turn by turn."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n\n".join(f"{message['role'].capitalize()}: {message['content']}" for message in prompt)


def check_prompt(value: Any, path: object, line: int, field: str = "prompt") -> Prompt:
    """A non-empty string, or a non-empty list of {role, content} messages ending with a user turn."""
    if isinstance(value, str):
        if not value.strip():
            raise InputError(path, line, f"'{field}' is empty")
        return value
    if isinstance(value, list) and value:
        for message in value:
            if not (
                isinstance(message, dict)
                and message.get("role") in {"system", "user", "assistant"}
                and isinstance(message.get("content"), str)
            ):
                raise InputError(path, line, f"'{field}' messages need a role (system/user/assistant) and text content")
        if value[-1]["role"] != "user":
            raise InputError(path, line, f"'{field}' must end with a user message")
        if not any(message["content"].strip() for message in value):
            raise InputError(path, line, f"'{field}' is empty")
        return [{"role": message["role"], "content": message["content"]} for message in value]
    raise InputError(path, line, f"'{field}' must be a non-empty string or a list of messages")


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a malformed line raises InputError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(path, None, f"cannot read file: {error}") from None
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(path, number, f"not valid JSON ({error.msg})") from None
        if not isinstance(value, dict):
            raise InputError(path, number, "expected a JSON object")
        rows.append((number, value))
    if not rows:
        raise InputError(path, None, "no items in file")
    return rows


def load_eval_items(path: Path) -> list[EvalItem]:
    """Read and validate a PAIRS.jsonl file; ids default to the line number and must be unique."""
    items: list[EvalItem] = []
    seen: set[str] = set()
    for number, row in read_jsonl(path):
        if "prompt" not in row:
            raise InputError(path, number, "missing field 'prompt'")
        if "responses" not in row:
            raise InputError(path, number, "missing field 'responses'")
        prompt = check_prompt(row["prompt"], path, number)
        responses = row["responses"]
        if not isinstance(responses, list) or len(responses) < 2:
            raise InputError(path, number, "'responses' must be a list of at least two answers")
        if not all(isinstance(response, str) for response in responses):
            raise InputError(path, number, "every entry of 'responses' must be a string")
        if len(responses) > 26:
            raise InputError(path, number, "at most 26 responses per item are supported")
        item_id = row.get("id", number)
        if isinstance(item_id, bool) or not isinstance(item_id, str | int):
            raise InputError(path, number, f"'id' must be a string or a whole number, got {item_id!r}")
        if str(item_id) in seen:
            raise InputError(path, number, f"duplicate id {str(item_id)!r}")
        seen.add(str(item_id))
        items.append(EvalItem(id=item_id, prompt=prompt, responses=responses))
    return items
