"""Run progress in SQLite, inside the output directory: which prompts are done, failed or pending.

One row per prompt holds its finished record, so a finished prompt is never paid for twice. The
settings of the run are stored too: reusing a directory with different settings is refused rather
than mixing two configurations in one dataset. (LangGraph's own checkpoints, for resuming a prompt
mid-loop, live in a separate file beside this one.)
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tools.errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prompts (
    prompt_id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    record TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
"""


@dataclass(frozen=True)
class PromptSourceId:
    """What a run's prompts came from: the source as named, the field read, and a hash of every prompt in it."""

    origin: str
    field: str
    sha256: str
    prompts: int

    def describe(self) -> str:
        """The source in a few words, for messages and the card."""
        return f"{self.origin} (field '{self.field}', {self.prompts} prompts, sha256 {self.sha256[:12]})"


def iter_done_records(path: Path, batch: int = 256) -> Iterator[dict[str, Any]]:
    """Every finished record of a progress file in prompt order, a batch at a time (read-only, flat memory)."""
    database = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        position = -1
        while True:
            rows = database.execute(
                "SELECT position, record FROM prompts WHERE status = 'done' AND position > ? ORDER BY position "
                "LIMIT ?", (position, batch),
            ).fetchall()
            if not rows:
                return
            for _, record in rows:
                yield json.loads(record)
            position = rows[-1][0]
    finally:
        database.close()


def done_prompt_ids(path: Path) -> set[str]:
    """The finished prompts of a progress file, read without writing anything (none if there is no file)."""
    if not path.is_file():
        return set()
    database = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {row[0] for row in database.execute("SELECT prompt_id FROM prompts WHERE status = 'done'")}
    finally:
        database.close()


class RunStore:
    """The progress file of one output directory; the only writer of which prompts are done."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)  # autocommit: each write is durable at once
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def bind_settings(self, settings: dict[str, Any]) -> None:
        """Record the run's settings, or refuse if the directory holds a run with other settings."""
        wanted = json.dumps(settings, sort_keys=True)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta (key, value) VALUES ('settings', ?)", (wanted,))
            return
        if row[0] != wanted:
            stored = json.loads(row[0])
            changed = sorted(key for key in set(stored) | set(settings) if stored.get(key) != settings.get(key))
            raise ConfigError(
                f"--output {self.path.parent}: holds a run with other settings ({', '.join(changed)}); "
                "use a new --output directory"
            )

    def prompt_sources(self) -> list[PromptSourceId]:
        """Every prompt source this directory's runs used, first first."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'prompt_sources'").fetchone()
        return [PromptSourceId(**entry) for entry in json.loads(row[0])] if row else []

    def bind_prompt_source(self, source: PromptSourceId, *, extend: bool = False) -> None:
        """Record where the prompts come from, or refuse another source unless `extend` says to add it.

        A source is the same when its content is: the same prompts under another path are accepted; the
        same path with other content is not (its prompts changed since the run began).
        """
        known = self.prompt_sources()
        if any(entry.sha256 == source.sha256 and entry.field == source.field for entry in known):
            return
        if known and not extend:
            first = known[-1]
            differs = [what for what, differ in (("file or set", first.origin != source.origin),
                                                 ("field", first.field != source.field),
                                                 ("content", first.sha256 != source.sha256)) if differ]
            raise ConfigError(
                f"--prompts {source.origin}: this --output {self.path.parent} was made from {first.describe()}; "
                f"the {' and '.join(differs)} differ ({source.describe()}): add --extend to add these prompts "
                "to the run, or use a new --output directory"
            )
        value = json.dumps([asdict(entry) for entry in [*known, source]], ensure_ascii=False)
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('prompt_sources', ?)", (value,))

    def prompt_ids(self) -> list[str]:
        """Every prompt of the directory, in the order they were first added."""
        return [row[0] for row in self._db.execute("SELECT prompt_id FROM prompts ORDER BY position")]

    def add_prompts(self, prompts: list[tuple[str, Any]]) -> None:
        """Register prompts (id, prompt) in order; ones already known keep their status."""
        now = time.time()
        with self._db:
            self._db.execute("BEGIN")
            offset = self._db.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM prompts").fetchone()[0]
            for index, (prompt_id, prompt) in enumerate(prompts):
                self._db.execute(
                    "INSERT OR IGNORE INTO prompts (prompt_id, position, prompt, status, updated) "
                    "VALUES (?, ?, ?, 'pending', ?)",
                    (prompt_id, offset + index, json.dumps(prompt, ensure_ascii=False), now),
                )

    def position(self, prompt_id: str) -> int:
        """Where a prompt stands in the directory's order (the order its prompts were first added)."""
        return int(self._db.execute("SELECT position FROM prompts WHERE prompt_id = ?", (prompt_id,)).fetchone()[0])

    def status_of(self, prompt_ids: list[str]) -> dict[str, str]:
        """Status (pending, done, failed) of each of these prompts."""
        marks = ",".join("?" * len(prompt_ids))
        rows = self._db.execute(f"SELECT prompt_id, status FROM prompts WHERE prompt_id IN ({marks})", prompt_ids)
        return dict(rows.fetchall())

    def mark_done(self, prompt_id: str, record: dict[str, Any]) -> None:
        """Store a prompt's finished record: it is never paid for again."""
        self._db.execute(
            "UPDATE prompts SET status = 'done', record = ?, error = NULL, attempts = attempts + 1, updated = ? "
            "WHERE prompt_id = ?",
            (json.dumps(record, ensure_ascii=False), time.time(), prompt_id),
        )

    def mark_failed(self, prompt_id: str, reason: str) -> None:
        """Record why a prompt failed; `--retry-failed` runs it again."""
        self._db.execute(
            "UPDATE prompts SET status = 'failed', error = ?, attempts = attempts + 1, updated = ? WHERE prompt_id = ?",
            (reason, time.time(), prompt_id),
        )

    def _column_where(self, column: str, status: str, prompt_ids: list[str]) -> dict[str, str]:
        marks = ",".join("?" * len(prompt_ids))
        query = f"SELECT prompt_id, {column} FROM prompts WHERE status = ? AND prompt_id IN ({marks})"
        return dict(self._db.execute(query, [status, *prompt_ids]).fetchall())

    def count(self, status: str) -> int:
        """How many prompts of the directory have this status."""
        return int(self._db.execute("SELECT COUNT(*) FROM prompts WHERE status = ?", (status,)).fetchone()[0])

    def spent_usd(self) -> float:
        """The cost of every finished prompt (unpriced ones count nothing), read a batch at a time."""
        return sum(record["usage"]["cost_usd"] or 0.0 for record in iter_done_records(self.path))

    def failures(self, prompt_ids: list[str]) -> list[tuple[str, str]]:
        """(prompt id, reason) of each failed prompt among these, in the order given."""
        rows = self._column_where("error", "failed", prompt_ids)
        return [(prompt_id, rows[prompt_id]) for prompt_id in prompt_ids if prompt_id in rows]
