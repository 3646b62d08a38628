"""The pipeline's checkpointer: LangGraph's SQLite saver, called directly from the event loop.

LangGraph's async SQLite saver sends every statement through aiosqlite's worker thread and wakes the
event loop for each result; with dozens of statements per step and hundreds of prompts in flight, that
hand-off cost more CPU than the steps themselves (`make bench`). A checkpoint write to SQLite in WAL
mode with synchronous=NORMAL takes tens of microseconds and never waits on the disk, so doing it inline
is cheaper than the hand-off, and it keeps the same file format and the same guarantee: a step committed
before a kill is there on resume.

A saver that alone writes its file can also commit in groups: every step written during one round of the
event loop is committed together at the start of the next round (microseconds later) instead of one commit
per write, which is most of what a write costs. A file that several processes write (Ray workers on the
driver's machine) commits each write at once, so no process holds the file's write lock for a whole round.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata, CheckpointTuple
from langgraph.checkpoint.sqlite import SqliteSaver


class InlineSqliteSaver(SqliteSaver):
    """SqliteSaver whose async methods run the sync ones in place (one event loop, one connection)."""

    group_commit = False
    _commit_soon: asyncio.Handle | None = None  # the round's scheduled commit, if one is pending

    @classmethod
    def open(cls, path: Path, *, group_commit: bool = False) -> InlineSqliteSaver:
        """A saver on the SQLite file at `path`, created with its tables if new.

        `group_commit`: commit once per event-loop round (only for a file no other process writes).
        """
        # check_same_thread=False: LangGraph may call the sync API from a worker thread; the saver locks.
        connection = sqlite3.connect(str(path), check_same_thread=False)
        # WAL with synchronous=NORMAL: a committed step survives a killed process (SIGKILL included); only
        # a power loss could drop the last steps. FULL would fsync every step and throttle the run.
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        saver = cls(connection)
        saver.setup()
        saver.group_commit = group_commit
        return saver

    @contextlib.contextmanager
    def cursor(self, transaction: bool = True) -> Iterator[sqlite3.Cursor]:
        """A cursor under the saver's lock; a write is committed now, or with its round's group."""
        with self.lock:
            cur = self.conn.cursor()
            try:
                yield cur
            finally:
                if transaction and not self._commit_later():
                    self.conn.commit()
                cur.close()

    def _commit_later(self) -> bool:
        """Schedule the group's commit for the next loop round; False when the write must commit now."""
        if not self.group_commit:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # the sync API from a thread without a loop
            return False
        if self._commit_soon is None:
            self._commit_soon = loop.call_soon(self.flush)
        return True

    def flush(self) -> None:
        """Commit what the current group has written (a commit still scheduled is then not needed: cancel it)."""
        with self.lock:
            if self._commit_soon is not None:
                self._commit_soon.cancel()  # else it would run after `close`, on a closed connection
                self._commit_soon = None
            self.conn.commit()

    def bind_graph_version(self, version: int) -> int:
        """Tie the file to a version of the graph's shape; drop the threads another version left. Returns how many.

        A checkpoint names the nodes still to run. Resumed by a graph whose nodes changed (an upgrade between a
        kill and the rerun), a thread would skip the vanished nodes silently and end with a wrong state, so such
        threads are dropped and their prompts start again. A file with no version is the first version's.
        """
        with self.lock, self.conn:
            self.conn.execute("CREATE TABLE IF NOT EXISTS graph_version (version INTEGER NOT NULL)")
            row = self.conn.execute("SELECT version FROM graph_version").fetchone()
            if row is not None and row[0] == version:
                return 0
            dropped = self.conn.execute("SELECT COUNT(DISTINCT thread_id) FROM checkpoints").fetchone()[0]
            self.conn.execute("DELETE FROM checkpoints")
            self.conn.execute("DELETE FROM writes")
            self.conn.execute("DELETE FROM graph_version")
            self.conn.execute("INSERT INTO graph_version (version) VALUES (?)", (version,))
            return int(dropped)

    def close(self) -> None:
        """Commit what is pending, then close the database connection."""
        self.flush()
        self.conn.close()

    def thread_ids(self) -> set[str]:
        """Every thread with a checkpoint."""
        with self.lock:
            return {row[0] for row in self.conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}

    def compact(self) -> None:
        """Give the space of deleted threads back to the file system (after a run, when nothing is in flight)."""
        self.flush()  # VACUUM cannot run inside a transaction
        with self.lock:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.conn.execute("VACUUM")

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The latest checkpoint of a thread (or the one `config` names), read inline."""
        return self.get_tuple(config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Checkpoints matching the filters, newest first, read inline."""
        for entry in self.list(config, filter=filter, before=before, limit=limit):
            yield entry

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint, inline."""
        return self.put(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        """Store a task's pending writes, inline."""
        self.put_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint of a thread, inline."""
        self.delete_thread(thread_id)

    async def aget_delta_channel_history(self, *args: Any, **kwargs: Any) -> Any:
        """Delta-channel history, read inline."""
        return self.get_delta_channel_history(*args, **kwargs)
