"""Probability-weighted scores: the mean of a judge's score distribution instead of the integer it wrote.

A reply asked for with `logprobs` carries, for each token written, the probabilities of the most likely
tokens at that place (`top_logprobs`, up to 20). At the place where the reply writes a score, those are the
judge's distribution over scores: torn between 7 and 8, it writes one of them, but the distribution says 7.4.
`--scoring expected` takes that mean (G-Eval; the "judgment distribution" study of Wang, Zhang & Choi 2025
found it agrees with people better than the mode).

The rules, for one score written at a known place in the reply text:

- The token that holds the score's first character is found by walking the reply's tokens (by their UTF-8
  bytes, so a token that splits a character does not shift the count). Where the tokens do not spell the text
  exactly (llama.cpp lists the tokens sampled before its JSON grammar applied, such as a code fence the grammar
  then left out), the score's line up to its first digit is looked for in the tokens instead (its last
  occurrence, as the parsers take the last). Alternatives at that place are the tokens listed in its
  `top_logprobs` that write the same text before the number (a space, a quote) and then a digit.
- An alternative's value is its digits followed by the written number's remaining integer digits, when the
  number spans several tokens and that stays on the scale; else its digits alone. So a tokenizer that writes
  one token per digit (Llama, SmolLM) is read right for 10 written as `1`,`0` (an alternative `9` is 9, not
  90) and for 85 written as `8`,`5` on the 100-point scale (an alternative `7` is 75: the distribution of the
  leading digit, the other digits as written); one that has a token per whole number (OpenAI's) is read
  directly. One case is read short: when the written score is not 10 and a one-digit-per-token model puts
  weight on `1`, that weight counts as 1 (whether it would have gone on to write 10 is not in the reply).
- Only values on the scale count (0 to the scale; llama.cpp reports probabilities before its JSON grammar
  applies, so tokens the grammar would have refused are left out here). The mean is renormalised over them,
  and `valid_mass` records how much of the probability they held.

A reply without logprobs, or a score whose place cannot be found in the tokens, gives no expected value: the
caller keeps the parsed score (and the record says so: `expected` is null).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tools.rules.contracts import OVERALL_SCORE, criterion_field, score_field
from tools.rules.parsing import (
    _NUMBER,
    _OVERALL_SCORE,
    _assistant_score_pattern,
    _criterion_score_pattern,
    load_json_object,
)

# Alternatives asked for at each token. OpenAI returns at most 20, and every one of them comes back for every token
# of the reply (a 300-token review: 6,000 entries, a few hundred KB to read); a score's distribution sits on a few
# digits, so 10 hold all but a sliver of it (`valid_mass` records what they held) at half the reading.
TOP_LOGPROBS = 10
OVERALL = "overall"  # the key of the one score of an independent judge call or a review
CRITERION_KEY = "criterion:"  # with criteria, a one-answer call's score on one: `criterion:harmlessness`


def criterion_key(name: str) -> str:
    """The score key of a one-answer call's score on criterion `name`."""
    return f"{CRITERION_KEY}{name}"


@dataclass(frozen=True)
class TokenChoice:
    """One token of a reply: what was written, its UTF-8 length, and the likeliest tokens at its place."""

    token: str
    raw: bytes  # the token's UTF-8 bytes (a token may hold part of a character)
    alternatives: tuple[tuple[str, float], ...]  # (token, probability), likeliest first


@dataclass(frozen=True)
class ExpectedScore:
    """A score's probability-weighted mean, and how much probability fell on valid scores."""

    expected: float
    valid_mass: float


def token_choices(logprobs: Any) -> list[TokenChoice] | None:
    """The tokens of a reply's `logprobs` in OpenAI's shape (`{"content": [...]}`); None when there are none.

    Each entry is `{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}`; an entry without
    alternatives counts its own token as the only one.
    """
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not isinstance(content, list) or not content:
        return None
    tokens = []
    for entry in content:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("token"), str):
            return None
        token = entry["token"]
        listed_bytes = entry.get("bytes")
        raw = bytes(listed_bytes) if isinstance(listed_bytes, list) else token.encode("utf-8")
        listed = entry.get("top_logprobs") or [{"token": token, "logprob": entry.get("logprob", 0.0)}]
        alternatives = tuple(
            (str(item["token"]), math.exp(float(item["logprob"])))
            for item in listed if isinstance(item, Mapping) and "token" in item and "logprob" in item
        )
        tokens.append(TokenChoice(token, raw, alternatives))
    return tokens


def score_places(text: str, keys: Sequence[str]) -> dict[str, int]:
    """Where in `text` (a character index) the number of each score key starts, as the parsers read it.

    `keys` are answer labels (`A`, `B`...) for combined and referee scores, or `OVERALL`. JSON replies are
    read by field name, text replies by their `###` lines; the last occurrence counts, as in the parsers.
    """
    is_json = load_json_object(text) is not None
    places: dict[str, int] = {}
    for key in keys:
        criterion = key.removeprefix(CRITERION_KEY) if key.startswith(CRITERION_KEY) else None
        if is_json:
            field = OVERALL_SCORE if key == OVERALL else criterion_field(criterion) if criterion else score_field(key)
            pattern = re.compile(rf'"{re.escape(field)}"\s*:\s*"?{_NUMBER}', re.IGNORECASE)
        elif criterion:
            pattern = _criterion_score_pattern(criterion)
        else:
            pattern = _OVERALL_SCORE if key == OVERALL else _assistant_score_pattern(key)
        matches = list(pattern.finditer(text))
        if matches:
            places[key] = matches[-1].start(1)
    return places


# How much of a score's line, before its first digit, identifies its place in tokens that do not spell the text.
_CONTEXT_CHARS = 40


def _token_at(tokens: Sequence[TokenChoice], text: str, place: int) -> tuple[int, int] | None:
    """(index of the token holding character `place`, byte offset of `place` inside it); None when not found."""
    joined = b"".join(token.raw for token in tokens)
    if joined == text.encode("utf-8"):
        target = len(text[:place].encode("utf-8"))
    else:
        # Tokens sampled around the text (a fence a grammar dropped): find the score's own line in them.
        window = text[max(0, place - _CONTEXT_CHARS):place + 1].encode("utf-8")
        found = joined.rfind(window)
        if found < 0:
            return None
        target = found + len(window) - 1  # the first digit: one byte, as every digit is
    offset = 0
    for index, token in enumerate(tokens):
        if offset <= target < offset + len(token.raw):
            return index, target - offset
        offset += len(token.raw)
    return None


def expected_score(tokens: Sequence[TokenChoice], text: str, place: int, scale: int) -> ExpectedScore | None:
    """The probability-weighted score whose number starts at character `place` of `text` (module docstring)."""
    found = _token_at(tokens, text, place)
    if found is None:
        return None
    index, inner = found
    written = re.match(r"\d+", text[place:])
    if written is None:
        return None
    chosen = tokens[index]
    prefix = chosen.raw[:inner].decode("utf-8", errors="ignore")
    digits_in_token = re.match(r"\d*", chosen.token[len(prefix):]).group(0)  # type: ignore[union-attr]
    rest_of_number = written.group(0)[len(digits_in_token):]
    weighted = 0.0
    mass = 0.0
    for alternative, probability in chosen.alternatives:
        if not alternative.startswith(prefix):
            continue
        leading = re.match(r"\d+", alternative[len(prefix):])
        if leading is None:
            continue
        value = _value(leading.group(0), rest_of_number, scale)
        if value is not None:
            weighted += probability * value
            mass += probability
    if mass <= 0:
        return None
    return ExpectedScore(expected=weighted / mass, valid_mass=min(1.0, mass))


def _value(leading: str, rest_of_number: str, scale: int) -> float | None:
    """What a number starting with `leading` is worth on the scale (module docstring); None if off the scale."""
    if rest_of_number and len(leading) == 1:
        extended = float(leading + rest_of_number)
        if extended <= scale:
            return extended
    value = float(leading)
    return value if value <= scale else None


def expected_scores(text: str, logprobs: Any, keys: Sequence[str], scale: int) -> dict[str, ExpectedScore]:
    """The expected value of every score key found in the reply (keys without one are left out)."""
    tokens = token_choices(logprobs)
    if tokens is None:
        return {}
    found = {}
    for key, place in score_places(text, keys).items():
        value = expected_score(tokens, text, place, scale)
        if value is not None:
            found[key] = value
    return found
