"""A cross-run cache of model calls: content-addressed, in one SQLite file, shared by every run that names it.

A call's key is a hash of the model spec, the model's generation parameters (model name, temperature,
max_tokens, a bound response format...) and the messages; settings that do not change a reply (retries,
timeouts) are left out. Only successful replies are stored (LangChain caches nothing that raised). The
file takes concurrent runs: WAL, a busy timeout, and one write per reply. It plugs into the chat models as a
LangChain `BaseCache`; a reply served from it is marked in its metadata, so records can say so and cost
accounting can leave it out.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core._api import LangChainBetaWarning
from langchain_core.caches import BaseCache
from langchain_core.load import dumps, loads
from langchain_core.outputs import ChatGeneration, Generation

CACHED_MARK = "fellowship_cache"
# Constructor settings that never change what a model says.
_IRRELEVANT = ("max_retries", "request_timeout", "http_async_client", "http_client")


@dataclass
class CacheStats:
    """Hits and misses of one run, over every model."""

    hits: int = 0
    misses: int = 0


def _normal_llm_string(llm_string: str) -> str:
    """The generation parameters without the settings that never change a reply."""
    serialized, separator, parameters = llm_string.partition("---")
    try:
        data = json.loads(serialized)
    except json.JSONDecodeError:
        return llm_string
    if isinstance(data, dict) and isinstance(data.get("kwargs"), dict):
        for name in _IRRELEVANT:
            data["kwargs"].pop(name, None)
    return json.dumps(data, sort_keys=True) + separator + parameters


class CallCacheFile:
    """The SQLite file, opened once per run and shared by the models' caches (thread-safe)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, reply TEXT NOT NULL, "
                         "model TEXT NOT NULL, created REAL NOT NULL)")

    def get(self, key: str) -> str | None:
        """The stored reply of a key."""
        with self._lock:
            row = self._db.execute("SELECT reply FROM calls WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, reply: str, model: str) -> None:
        """Store a reply (a concurrent run storing the same key first is fine: the replies are equal)."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO calls (key, reply, model, created) VALUES (?, ?, ?, ?)",
                             (key, reply, model, time.time()))

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


class CallCache(BaseCache):
    """The cache of one model spec over a shared `CallCacheFile`."""

    def __init__(self, store: CallCacheFile, model_spec: str, stats: CacheStats) -> None:
        self.store = store
        self.model_spec = model_spec
        self.stats = stats

    def _key(self, prompt: str, llm_string: str) -> str:
        material = "\x1f".join((self.model_spec, _normal_llm_string(llm_string), prompt))
        return hashlib.sha256(material.encode("utf-8")).hexdigest()

    def lookup(self, prompt: str, llm_string: str) -> Sequence[Generation] | None:
        """The stored generations, marked as served from the cache; None on a miss."""
        stored = self.store.get(self._key(prompt, llm_string))
        if stored is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LangChainBetaWarning)  # `loads` is beta; the messages format is stable
            messages: list[Any] = loads(stored, allowed_objects="messages")
        generations = []
        for message in messages:
            message.response_metadata = {**message.response_metadata, CACHED_MARK: True}
            generations.append(ChatGeneration(message=message))
        return generations

    def update(self, prompt: str, llm_string: str, return_val: Sequence[Generation]) -> None:
        """Store a successful reply: its messages only, which load back without trusting anything else."""
        messages = [generation.message for generation in return_val if isinstance(generation, ChatGeneration)]
        if len(messages) != len(return_val):
            return  # not a chat model's reply: nothing this cache serves
        self.store.put(self._key(prompt, llm_string), dumps(messages), self.model_spec)

    def clear(self, **kwargs: Any) -> None:
        """Clearing is not offered: the file is shared by other runs (delete it to start afresh)."""
        raise NotImplementedError("delete the cache file to clear it")
