"""JSON Lines output written so that a crash never leaves a half-written file under the final name."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def dump_line(record: Any) -> str:
    """One JSON line (no newline), non-ASCII kept as is."""
    return json.dumps(record, ensure_ascii=False, sort_keys=False)


def write_jsonl_atomic(path: Path, records: Iterable[Any]) -> None:
    """Write to a sibling temporary file, fsync, then rename over `path` in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(dump_line(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


class JsonlWriter:
    """A JSON Lines file written one record at a time under a temporary name.

    It is renamed over `path` when the `with` block ends without error (and removed if it raises), so no
    half-written file ever has the final name.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._temporary = path.with_name(path.name + ".tmp")
        self._handle = self._temporary.open("w", encoding="utf-8")

    def write(self, record: Any) -> None:
        """Write one record."""
        self._handle.write(dump_line(record) + "\n")

    def __enter__(self) -> JsonlWriter:
        """The writer itself."""
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> None:
        """Rename the finished file into place, or throw the temporary away after an error."""
        if kind is None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._temporary.replace(self.path)
        else:
            self._handle.close()
            self._temporary.unlink(missing_ok=True)


class JsonlAppender:
    """Appends one record per line and flushes each, so finished work survives a kill."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handle = path.open("a", encoding="utf-8")

    def append(self, record: Any) -> None:
        """Write one record and flush it to disk."""
        self._handle.write(dump_line(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        """Close the file."""
        self._handle.close()


def read_jsonl_tolerant(path: Path) -> list[dict[str, Any]]:
    """Records of a partial file; a torn last line (from a kill mid-write) is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            records.append(value)
    return records
