"""The pipeline's checkpointer: LangGraph's SQLite saver, called directly from the event loop.

LangGraph's async SQLite saver sends every statement through aiosqlite's worker thread and wakes the
event loop for each result; with dozens of statements per step and hundreds of prompts in flight, that
hand-off cost more CPU than the steps themselves (`make bench`). A checkpoint write to SQLite in WAL
mode with synchronous=NORMAL takes tens of microseconds and never waits on the disk, so doing it inline
is cheaper than the hand-off, and it keeps the same file format and the same guarantee: a step committed
before a kill is there on resume.

A saver that alone writes its file can also commit in groups: every step written during one round of the
event loop is committed together at the start of the next round (microseconds later) instead of one commit
per write, which is most of what a write costs.

Every process writes a file of its own: two processes writing one SQLite file wait on each other's write lock
with the event loop blocked (measured with two Ray workers at 20 ms per call: 20-30% slower than with a file
each). The driver's `checkpoints.sqlite` is the run directory's meeting point: a Ray worker on the driver's
machine writes `checkpoints-worker-PID.sqlite` beside it, and takes over (moves into its own file) the thread
of a prompt it is given that the meeting point holds, so a prompt cut off by a kill resumes from its last step
whichever process runs it next. The driver moves the threads of files whose process has ended back into the
meeting point (`take_over`): at a run's start (a killed run's workers), when a worker dies, and at the end.
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

from graphs.ray_processes import process_running

WORKER_FILE_PREFIX = "checkpoints-worker-"
# LangGraph's SQLite saver keeps a thread in these two tables (both keyed by thread_id).
THREAD_TABLES = ("checkpoints", "writes")


def worker_file(meeting_point: Path, pid: int) -> Path:
    """The checkpoint file of the worker process `pid`, beside the run's meeting point."""
    return meeting_point.with_name(f"{WORKER_FILE_PREFIX}{pid}.sqlite")


def worker_files(meeting_point: Path, *, ended_only: bool = False) -> list[Path]:
    """The worker files beside `meeting_point`; with `ended_only`, those whose process is no longer running."""
    found = []
    for path in sorted(meeting_point.parent.glob(f"{WORKER_FILE_PREFIX}*.sqlite")):
        pid = path.stem.removeprefix(WORKER_FILE_PREFIX)
        if not ended_only or not pid.isdigit() or not process_running(int(pid)):
            found.append(path)
    return found


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


class InlineSqliteSaver(SqliteSaver):
    """SqliteSaver whose async methods run the sync ones in place (one event loop, one connection)."""

    group_commit = False
    _commit_soon: asyncio.Handle | None = None  # the round's scheduled commit, if one is pending
    meeting_point: Path | None = None  # where this worker's saver takes the threads it is given from
    _looked_up: set[str]  # threads already looked for in the meeting point

    @classmethod
    def open(cls, path: Path, *, group_commit: bool = False, meeting_point: Path | None = None) -> InlineSqliteSaver:
        """A saver on the SQLite file at `path`, created with its tables if new.

        `group_commit`: commit once per event-loop round (only for a file no other process writes).
        `meeting_point`: the run's main checkpoint file, from which the first read of a thread that this file
        lacks moves the thread here (a worker process's saver).
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
        saver._looked_up = set()
        if meeting_point is not None:
            connection.execute("ATTACH DATABASE ? AS meeting_point", (str(meeting_point),))
            saver.meeting_point = meeting_point
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

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The latest checkpoint of a thread; a worker's saver first takes the thread over from the meeting point."""
        if self.meeting_point is not None:
            thread_id = str(config["configurable"]["thread_id"])
            if thread_id not in self._looked_up:
                self._looked_up.add(thread_id)
                self._take_from_meeting_point(thread_id)
        return super().get_tuple(config)

    def _take_from_meeting_point(self, thread_id: str) -> None:
        """Move a thread from the meeting point into this file, if it is there (a prompt cut off by a kill)."""
        with self.lock:
            try:
                found = self.conn.execute("SELECT 1 FROM meeting_point.checkpoints WHERE thread_id = ? LIMIT 1",
                                          (thread_id,)).fetchone()
            except sqlite3.OperationalError:  # a meeting point without tables holds no thread
                return
        if found is None:
            return
        self.flush()
        # Copied and committed before it is deleted there: a kill in between leaves the thread in both files (the
        # same rows, which `take_over` merges), never in neither. (Table names in the SQL are this module's own.)
        with self.lock:
            with self.conn:
                for table in THREAD_TABLES:
                    self.conn.execute(f"INSERT OR REPLACE INTO main.{table} "
                                      f"SELECT * FROM meeting_point.{table} WHERE thread_id = ?", (thread_id,))
            with self.conn:
                for table in THREAD_TABLES:
                    self.conn.execute(f"DELETE FROM meeting_point.{table} WHERE thread_id = ?",
                                      (thread_id,))

    def take_over(self, paths: Sequence[Path]) -> int:
        """Move every thread of these checkpoint files (of ended processes) into this one, then delete the files.

        Returns how many threads moved. A file that cannot be read as a checkpoint file is left where it is.
        """
        moved = 0
        self.flush()  # ATTACH cannot run inside a transaction
        for path in paths:
            with self.lock:
                try:
                    self.conn.execute("ATTACH DATABASE ? AS leftover", (str(path),))
                except sqlite3.DatabaseError:
                    continue
                try:
                    with self.conn:
                        tables = {row[0] for row in self.conn.execute(
                            "SELECT name FROM leftover.sqlite_master WHERE type = 'table'")}
                        if "checkpoints" in tables:
                            moved += self.conn.execute(
                                "SELECT COUNT(DISTINCT thread_id) FROM leftover.checkpoints").fetchone()[0]
                        for table in THREAD_TABLES:
                            if table in tables:
                                self.conn.execute(f"INSERT OR REPLACE INTO main.{table} "
                                                  f"SELECT * FROM leftover.{table}")
                except sqlite3.DatabaseError:
                    continue
                finally:
                    self.conn.execute("DETACH DATABASE leftover")
            _remove_database(path)
        return int(moved)

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint of a thread (and forget having looked it up)."""
        super().delete_thread(thread_id)
        self._looked_up.discard(str(thread_id))

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
