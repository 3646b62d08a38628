"""Masking API keys: whatever the project writes or sends (records, traces, error lines) passes through here."""

from __future__ import annotations

import os
import re

_SECRET_VARIABLES = ("OPENAI_API_KEY", "TOGETHER_API_KEY", "COMPAT_API_KEY", "LANGSMITH_API_KEY", "LANGCHAIN_API_KEY")
_TOKEN_PATTERN = re.compile(r"\b(sk|lsv2|tgp)[-_][A-Za-z0-9_\-]{8,}")
MASK = "***"


def mask_secrets(text: str) -> str:
    """Replace API-key values from the environment, and anything shaped like a key, with ***."""
    for variable in _SECRET_VARIABLES:
        value = os.environ.get(variable)
        if value and len(value) >= 6:
            text = text.replace(value, MASK)
    return _TOKEN_PATTERN.sub(MASK, text)


def failure_reason(error: BaseException) -> str:
    """An error as the one line a record keeps: its type and first line, keys masked, at most 500 characters."""
    return mask_secrets(f"{type(error).__name__}: {error}".splitlines()[0])[:500]
