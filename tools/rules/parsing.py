"""Parsers for what judges, referees and reviewers write.

Every parser accepts the answer formats of SPEC.md section 2.1 with harmless variants (markdown bold,
`8 / 10`, decimals, lower case, extra spaces) and also the JSON objects that the structured-output mode
produces, so one parser serves live runs and the re-scoring of recorded raw texts. A parser returns
None (or a None score) when the required line is absent: the caller records that as a parse failure,
never as a score.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from tools.rules.contracts import ANSWER, FEEDBACK, OVERALL_SCORE, criterion_field, score_field

_NUMBER = r"(-?\d+(?:\.\d+)?)"
# Decorations models put between a label and its value: markdown bold/italics, brackets, colons.
_DECOR = r"[\s*_`\[\]():：]*"

_DIRECT_ANSWER = re.compile(rf"answer{_DECOR}(?:assistant\s+)?([abc]|tie)\b", re.IGNORECASE)
_OVERALL_SCORE = re.compile(rf"overall\s+score{_DECOR}{_NUMBER}(?:\s*\**\s*/\s*(\d+))?", re.IGNORECASE)


def load_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object a structured-output reply holds, or None when the text is not one.

    Models in JSON mode sometimes wrap the object in a code fence; that is accepted.
    """
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", stripped)
    if not stripped.startswith("{"):
        return None
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _score_in_range(value: Any, scale: int | None) -> float | None:
    """A numeric score within [0, scale], else None (an out-of-range number is not a usable score)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if number != number or number < 0 or (scale is not None and number > scale):
        return None
    return number


def parse_direct_answer(text: str) -> str | None:
    """Direct comparison verdict: 'A', 'B' or 'tie' (answer C means tie), or None if absent."""
    data = load_json_object(text)
    if data is not None:
        raw = str(data.get(ANSWER, "")).strip().upper()
        return {"A": "A", "B": "B", "C": "tie", "TIE": "tie"}.get(raw)
    matches = _DIRECT_ANSWER.findall(text)
    if not matches:
        return None
    choice = matches[-1].upper()
    return "tie" if choice in {"C", "TIE"} else choice


def parse_overall_score(text: str, scale: int = 10) -> float | None:
    """Independent-scoring and reviewer score: the number in `### Overall Score: X/10`, or None."""
    data = load_json_object(text)
    if data is not None:
        return _score_in_range(data.get(OVERALL_SCORE, data.get("score")), scale)
    matches = _OVERALL_SCORE.findall(text)
    if not matches:
        return None
    return _score_in_range(matches[-1][0], scale)


def _assistant_score_pattern(label: str) -> re.Pattern[str]:
    return re.compile(
        rf"score{_DECOR}(?:for\s+|of\s+)?assistant\s*{re.escape(label)}\b{_DECOR}{_NUMBER}",
        re.IGNORECASE,
    )


def parse_assistant_scores(text: str, labels: Sequence[str], scale: int = 10) -> dict[str, float | None]:
    """Combined-scoring and debate scores: `### Score Assistant A: X/10` for each label.

    Returns every label, with None where that label's score is missing or out of range. When a model
    repeats a line (a draft, then a final), the last one counts.
    """
    data = load_json_object(text)
    if data is not None:
        lowered = {str(key).lower(): value for key, value in data.items()}
        return {
            label: _score_in_range(lowered.get(score_field(label).lower()), scale) for label in labels
        }
    scores: dict[str, float | None] = {}
    for label in labels:
        matches = _assistant_score_pattern(label).findall(text)
        scores[label] = _score_in_range(matches[-1], scale) if matches else None
    return scores


def _criterion_score_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"score{_DECOR}(?:for\s+|on\s+)?{re.escape(name)}\b{_DECOR}{_NUMBER}", re.IGNORECASE)


def parse_criterion_scores(text: str, names: Sequence[str], scale: int = 10) -> dict[str, float | None]:
    """A one-answer call's scores by criterion (reviews, independent scoring): `### Score harmlessness: X/10`.

    Every criterion, None where its score is missing or out of range; the last line of a criterion counts.
    """
    data = load_json_object(text)
    if data is not None:
        lowered = {str(key).lower(): value for key, value in data.items()}
        return {name: _score_in_range(lowered.get(criterion_field(name)), scale) for name in names}
    scores: dict[str, float | None] = {}
    for name in names:
        matches = _criterion_score_pattern(name).findall(text)
        scores[name] = _score_in_range(matches[-1], scale) if matches else None
    return scores


_FEEDBACK_SECTION = re.compile(r"#+\s*\**\s*feedback\s*\**\s*:?\s*\n?(.*)", re.IGNORECASE | re.DOTALL)


def parse_feedback(text: str) -> str:
    """The reviewer's `### Feedback` section, or the whole text when the section is missing.

    The generator still needs something to act on when a reviewer ignores the format, so this never
    fails; the reviewer's score is what records the parse outcome.
    """
    data = load_json_object(text)
    if data is not None:
        return str(data.get(FEEDBACK, "")).strip() or text.strip()
    match = _FEEDBACK_SECTION.search(text)
    if match and match.group(1).strip():
        return match.group(1).strip()
    return text.strip()


# --- The published code's parsers, for paper-compatible re-scoring only --------------------------------
# The paper's code searched the lower-cased reply for `### score assistant a:` (optionally a line break)
# followed directly by `X/10` (so `8 / 10` or `**8/10**` did not count), took the first match, and for
# direct comparison required the letter on the line after `### answer:`. Reproducing published figures
# from recorded replies needs exactly this strictness.

_PUBLISHED_NUMBER = {
    5: r"([0-5](?:\.\d+)?)",
    10: r"(10|[0-9](?:\.\d+)?)",
    100: r"([0-9]?\d(?:\.\d+)?|100(?:\.0+)?)",
}


def _published_value_pattern(scale: int) -> str:
    return _PUBLISHED_NUMBER.get(scale, r"(\d+(?:\.\d+)?)") + rf"/{scale}\b"


def published_score_positions(text: str, name: str, scale: int) -> list[tuple[int, float]]:
    """(position, value) of every `### score assistant NAME: X/scale` the published code would match."""
    pattern = re.compile(rf"###\s*score\s*assistant\s*{re.escape(name.lower())}\s*:\s*\n?\s*"
                         + _published_value_pattern(scale))
    return [(match.start(), float(match.group(1))) for match in pattern.finditer(text.lower())]


def published_overall_score(text: str, scale: int = 10) -> float | None:
    """The published code's reading of `### Overall Score: X/scale` (strict, first match)."""
    match = re.search(r"###\s*overall\s*score\s*:\s*\n?\s*" + _published_value_pattern(scale), text.lower())
    return float(match.group(1)) if match else None


def published_direct_answer(text: str) -> str | None:
    """The published code's reading of a direct comparison: the letter on the line after `### Answer:`."""
    match = re.search(r"###\s*answer\s*:\s*\n\s*([abc])\b", text.lower())
    if match is None:
        return None
    return {"a": "A", "b": "B", "c": "tie"}[match.group(1)]
