"""What a `--batch` run has sent to providers' batch APIs: `batches.sqlite` and `batches/NAME.jsonl` in its directory.

A batch's request file and the mapping of each `custom_id` to its prompt and graph step are written and
committed before the batch is sent; the provider's batch id is committed the moment the provider returns it.
A line's result is committed when its batch's output is downloaded, before the waiting graph step gets it.
So a run killed at any moment (SIGKILL included) finds, when run again, every batch still out (to re-attach to)
and every result already paid for (to use without a request).

Line states: `sent` (in the batch named beside it), `done` (its result is kept), `failed` (its last attempt
failed; the next request of it goes into a later batch). Batch statuses: `prepared` (written, not yet created at
the provider: re-attached by its metadata or sent again), the provider's own statuses in lower case, and
`refused` (the provider would not take the file).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BATCH_FILE = "batches.sqlite"
BATCH_FOLDER = "batches"
# Statuses after which a batch changes no more.
FINISHED_STATUSES = frozenset({"completed", "expired", "cancelled", "failed", "refused", "unsent"})

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    name TEXT PRIMARY KEY,
    base_url TEXT NOT NULL,
    model TEXT NOT NULL,
    spec TEXT NOT NULL,
    requests INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    status TEXT NOT NULL,
    provider_id TEXT,
    input_file_id TEXT,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL,
    note TEXT
);
CREATE TABLE IF NOT EXISTS lines (
    custom_id TEXT PRIMARY KEY,
    batch TEXT NOT NULL,
    item TEXT,
    step TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    status INTEGER,
    result TEXT
);
CREATE INDEX IF NOT EXISTS lines_by_batch ON lines (batch);
"""


@dataclass
class StoredBatch:
    """One batch as the run directory keeps it."""

    name: str
    base_url: str
    model: str
    spec: str
    requests: int
    bytes: int
    status: str
    provider_id: str | None
    input_file_id: str | None
    completed: int
    failed: int
    created_at: float
    finished_at: float | None
    note: str | None

    @property
    def finished(self) -> bool:
        """Whether the batch changes no more."""
        return self.status in FINISHED_STATUSES


@dataclass
class StoredLine:
    """One request line: where it went, what came of it."""

    custom_id: str
    batch: str
    item: str | None
    step: str | None
    state: str
    attempts: int
    status: int | None
    result: Any


@dataclass
class OutgoingLine:
    """A line about to be sent: its id, what it asks, and the prompt and step it answers."""

    custom_id: str
    body: dict[str, Any]
    item: str | None
    step: str | None
    attempts: int = 1

    def request_line(self, endpoint: str) -> str:
        """The line of the batch's request file (the providers' shared format)."""
        return json.dumps({"custom_id": self.custom_id, "method": "POST", "url": endpoint, "body": self.body},
                          separators=(",", ":")) + "\n"


def unfinished_batches(directory: Path) -> int:
    """How many batches a run directory has out at providers (0 without `batches.sqlite`); read only."""
    path = directory / BATCH_FILE
    if not path.is_file():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        statuses = [row[0] for row in db.execute("SELECT status FROM batches")]
    return sum(status not in FINISHED_STATUSES for status in statuses)


def _stored_line(row: tuple[Any, ...]) -> StoredLine:
    custom_id, batch, item, step, state, attempts, status, result = row
    return StoredLine(custom_id=custom_id, batch=batch, item=item, step=step, state=state, attempts=attempts,
                      status=status, result=json.loads(result) if result is not None else None)


class BatchStore:
    """`batches.sqlite` of one run directory (autocommitted: each write is durable when it returns)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / BATCH_FOLDER).mkdir(exist_ok=True)
        self._db = sqlite3.connect(directory / BATCH_FILE, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        found = self._db.execute("SELECT value FROM meta WHERE key = 'run_token'").fetchone()
        if found is None:
            # Written into each batch's metadata: a batch created just before a kill is found again by it.
            self._db.execute("INSERT INTO meta VALUES ('run_token', ?)", (secrets.token_hex(8),))
            found = self._db.execute("SELECT value FROM meta WHERE key = 'run_token'").fetchone()
        self.run_token: str = found[0]

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def next_name(self) -> str:
        """A new batch's name: the next number, five digits."""
        count = self._db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
        return f"{count + 1:05d}"

    def request_file(self, name: str) -> Path:
        """Where a batch's request file is written."""
        return self.directory / BATCH_FOLDER / f"{name}.jsonl"

    def prepare(self, name: str, *, base_url: str, model: str, spec: str, lines: list[OutgoingLine],
                data: bytes) -> Path:
        """Write the request file, then record the batch and its lines (one transaction) before anything is sent."""
        path = self.request_file(name)
        partial = path.with_suffix(".partial")
        with open(partial, "wb") as handle:
            handle.write(data)
            handle.flush()
        partial.replace(path)
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO batches (name, base_url, model, spec, requests, bytes, status, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'prepared', ?)",
                (name, base_url, model, spec, len(lines), len(data), time.time()))
            self._db.executemany(
                "INSERT INTO lines (custom_id, batch, item, step, state, attempts) VALUES (?, ?, ?, ?, 'sent', ?) "
                "ON CONFLICT (custom_id) DO UPDATE SET batch = excluded.batch, state = 'sent', "
                "attempts = excluded.attempts, status = NULL, result = NULL",
                [(line.custom_id, name, line.item, line.step, line.attempts) for line in lines])
        return path

    def update_batch(self, name: str, **values: Any) -> None:
        """Set some of a batch's columns (provider id, file id, status, counts, note)."""
        if values.get("status") in FINISHED_STATUSES:
            values.setdefault("finished_at", time.time())
        columns = ", ".join(f"{column} = ?" for column in values)
        self._db.execute(f"UPDATE batches SET {columns} WHERE name = ?", (*values.values(), name))

    def batches(self, *, unfinished: bool = False) -> list[StoredBatch]:
        """Every batch (only those that may still change, with `unfinished`), oldest first."""
        rows = self._db.execute("SELECT * FROM batches ORDER BY name").fetchall()
        found = [StoredBatch(*row) for row in rows]
        return [batch for batch in found if not batch.finished] if unfinished else found

    def batch(self, name: str) -> StoredBatch:
        """One batch by its name."""
        return StoredBatch(*self._db.execute("SELECT * FROM batches WHERE name = ?", (name,)).fetchone())

    def line(self, custom_id: str) -> StoredLine | None:
        """One line by its id."""
        row = self._db.execute("SELECT * FROM lines WHERE custom_id = ?", (custom_id,)).fetchone()
        return None if row is None else _stored_line(row)

    def lines_of(self, name: str) -> list[StoredLine]:
        """The lines last sent in a batch."""
        rows = self._db.execute("SELECT * FROM lines WHERE batch = ?", (name,)).fetchall()
        return [_stored_line(row) for row in rows]

    def finish(self, name: str, results: Iterable[tuple[str, str, int | None, Any]], **batch_values: Any) -> None:
        """Record a finished batch's lines (custom_id, state, status, result) and the batch itself, in one go."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE lines SET state = ?, status = ?, result = ? WHERE custom_id = ? AND batch = ?",
                [(state, status, json.dumps(result) if result is not None else None, custom_id, name)
                 for custom_id, state, status, result in results])
            self.update_batch(name, **batch_values)
