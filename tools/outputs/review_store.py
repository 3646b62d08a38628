"""Prompts that wait for a person, and people's decisions on them: `review.sqlite` in the run directory.

The run's driver writes a row when a prompt pauses in `human_review` (its request and its record so far: the
answers and the verdict, for the review page and `review --export`) and marks it applied once the prompt's
finished record is committed to the run store. The review page, `review --import` and Label Studio write
decisions; each is one autocommitted row, durable the moment it is made, and can be changed until applied.
The prompt's status in `progress.sqlite` stays `pending` while it waits: the run store still says what is done.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.rules.decisions import HumanDecision

REVIEW_FILE = "review.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS waiting (
    prompt_id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    run_id TEXT,
    sample TEXT NOT NULL,
    request TEXT NOT NULL,
    record TEXT NOT NULL,
    paused_at REAL NOT NULL,
    applied_at REAL
);
CREATE TABLE IF NOT EXISTS decisions (
    prompt_id TEXT PRIMARY KEY REFERENCES waiting (prompt_id),
    decision TEXT NOT NULL,
    updated REAL NOT NULL
);
"""


class DecisionRefused(ValueError):
    """A decision that cannot be taken: unknown prompt, already applied, or letters the prompt does not have."""


@dataclass
class WaitingPrompt:
    """One prompt that paused for a person: what it asks, its record so far, and the decision made (if any)."""

    prompt_id: str
    sample: str
    request: dict[str, Any]
    record: dict[str, Any]
    decision: dict[str, Any] | None
    applied: bool
    run_id: str | None = None

    def answer_count(self) -> int:
        """How many answers the person chooses from."""
        return len(self.record.get("answers", []))


class ReviewStore:
    """The review file of one run directory (created on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Autocommit: every write is durable at once. The review page's request threads share the connection,
        # one at a time (its server holds a lock), hence check_same_thread off.
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    @classmethod
    def of(cls, run_dir: Path) -> ReviewStore:
        """The review store of a run directory."""
        return cls(run_dir / REVIEW_FILE)

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> ReviewStore:
        """The store itself."""
        return self

    def __exit__(self, *_: object) -> None:
        """Close the store."""
        self.close()

    def add_waiting(self, prompt_id: str, position: int, request: dict[str, Any], record: dict[str, Any],
                    run_id: str | None = None) -> None:
        """A prompt paused for a person (again, after a kill: its row is refreshed, its decision kept).

        `position` is the prompt's place in the run directory's order, which the review page follows; `run_id` the
        root run of the pipeline invocation that paused (LangSmith feedback goes there).
        """
        self._db.execute(
            "INSERT INTO waiting (prompt_id, position, run_id, sample, request, record, paused_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (prompt_id) DO UPDATE SET run_id = excluded.run_id, "
            "sample = excluded.sample, request = excluded.request, record = excluded.record",
            (prompt_id, position, run_id, request["sample"], json.dumps(request, ensure_ascii=False),
             json.dumps(record, ensure_ascii=False), time.time()),
        )

    def _select(self, where: str, parameters: tuple[Any, ...] = ()) -> list[WaitingPrompt]:
        rows = self._db.execute(
            "SELECT w.prompt_id, w.sample, w.request, w.record, d.decision, w.applied_at IS NOT NULL, w.run_id "
            f"FROM waiting w LEFT JOIN decisions d ON d.prompt_id = w.prompt_id {where} ORDER BY w.position",
            parameters,
        ).fetchall()
        return [WaitingPrompt(prompt_id, sample, json.loads(request), json.loads(record),
                              json.loads(decision) if decision else None, bool(applied), run_id)
                for prompt_id, sample, request, record, decision, applied, run_id in rows]

    def prompts(self, *, include_applied: bool = False) -> list[WaitingPrompt]:
        """The prompts that paused, in the run's prompt order, with their decisions."""
        return self._select("" if include_applied else "WHERE w.applied_at IS NULL")

    def prompt(self, prompt_id: str) -> WaitingPrompt | None:
        """One prompt that paused (applied or not), or None: one row read, so checking an import stays linear."""
        found = self._select("WHERE w.prompt_id = ?", (prompt_id,))
        return found[0] if found else None

    def check(self, prompt_id: str, decision: HumanDecision) -> None:
        """Raise DecisionRefused unless the decision can be taken for this prompt now."""
        waiting = self.prompt(prompt_id)
        if waiting is None:
            raise DecisionRefused(f"prompt_id {prompt_id!r} is not waiting for review in {self.path.parent}")
        if waiting.applied:
            raise DecisionRefused(f"prompt_id {prompt_id!r} was already applied: its rows are made")
        try:
            decision.check_letters(waiting.answer_count())
        except ValueError as error:
            raise DecisionRefused(str(error)) from None

    def decide(self, decisions: Sequence[tuple[str, HumanDecision]]) -> None:
        """Store decisions (replacing earlier ones not yet applied): all of them, or none if one is refused."""
        for prompt_id, decision in decisions:
            self.check(prompt_id, decision)
        now = time.time()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for prompt_id, decision in decisions:
                self._db.execute(
                    "INSERT INTO decisions (prompt_id, decision, updated) VALUES (?, ?, ?) "
                    "ON CONFLICT (prompt_id) DO UPDATE SET decision = excluded.decision, updated = excluded.updated",
                    (prompt_id, decision.model_dump_json(), now),
                )

    def withdraw(self, prompt_id: str) -> None:
        """Take back a decision not yet applied: the prompt waits again."""
        waiting = self.prompt(prompt_id)
        if waiting is None or waiting.applied:
            raise DecisionRefused(f"prompt_id {prompt_id!r} has no decision that can be withdrawn")
        self._db.execute("DELETE FROM decisions WHERE prompt_id = ?", (prompt_id,))

    def mark_applied(self, prompt_ids: Sequence[str]) -> None:
        """These prompts' records, with their decisions, are committed to the run store."""
        now = time.time()
        self._db.executemany("UPDATE waiting SET applied_at = ? WHERE prompt_id = ? AND applied_at IS NULL",
                             [(now, prompt_id) for prompt_id in prompt_ids])

    def waiting_usage(self) -> dict[str, Any]:
        """Calls and cost of the prompts that wait (not applied): paid for, though their records are not done yet."""
        calls, cost = 0, 0.0
        for (record,) in self._db.execute("SELECT record FROM waiting WHERE applied_at IS NULL"):
            usage = json.loads(record).get("usage") or {}
            calls += usage.get("calls", 0)
            cost += usage.get("cost_usd") or 0.0
        return {"calls": calls, "cost_usd": cost}

    def counts(self) -> dict[str, int]:
        """Prompts that wait (`undecided`), decided but not applied (`decided`), and `applied`."""
        row = self._db.execute(
            "SELECT SUM(w.applied_at IS NULL AND d.prompt_id IS NULL), SUM(w.applied_at IS NULL AND d.prompt_id "
            "IS NOT NULL), SUM(w.applied_at IS NOT NULL) FROM waiting w LEFT JOIN decisions d USING (prompt_id)"
        ).fetchone()
        return {"undecided": row[0] or 0, "decided": row[1] or 0, "applied": row[2] or 0}


def review_counts(run_dir: Path) -> dict[str, int]:
    """`ReviewStore.counts` of a run directory, all zero when it has no review file (read without creating one)."""
    if not (run_dir / REVIEW_FILE).is_file():
        return {"undecided": 0, "decided": 0, "applied": 0}
    with ReviewStore.of(run_dir) as store:
        return store.counts()
