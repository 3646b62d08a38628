"""One run per output directory: an exclusive lock held for the whole run, naming its holder.

The lock is `fcntl.flock` on `run.lock` in the directory, so the kernel releases it when the holding process
ends, however it ends (SIGKILL included): a lock left by a killed run is stale by construction and the next
run takes it over. The file holds the holder's pid, host and start time, for the one-line refusal a second
run gets while the first is alive.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from tools.errors import ConfigError

LOCK_NAME = "run.lock"


class RunLock:
    """`with RunLock(directory):` holds the directory for this process, or raises ConfigError naming the holder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_NAME
        self._descriptor: int | None = None

    def __enter__(self) -> RunLock:
        """Take the lock (a stale one included) and write this process in it, or refuse naming the holder."""
        self.directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(descriptor)
            os.close(descriptor)
            raise ConfigError(f"--output {self.directory}: in use by another run ({holder}); wait for it to end or "
                              "stop it, then run the same command") from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                         "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        os.fsync(descriptor)
        self._descriptor = descriptor
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        """Release the lock."""
        if self._descriptor is not None:
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
            os.close(self._descriptor)
            self._descriptor = None

    @staticmethod
    def _holder(descriptor: int) -> str:
        try:
            data = json.loads(os.pread(descriptor, 4096, 0) or b"{}")
        except (OSError, ValueError):
            data = {}
        if not data:
            return "holder unknown"
        return f"pid {data.get('pid')} on host {data.get('host')}, since {data.get('started')}"
