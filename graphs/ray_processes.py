"""The processes of a local Ray instance as its driver sees them: which still run, and how to stop every one.

A local instance is a tree of processes under the driver: the GCS server and the raylet (the two daemons it
cannot live without), their helpers (dashboard, monitors, the raylet's agents) and the worker actors the raylet
starts. When one daemon dies the others do not always follow: a killed GCS server leaves the raylet's agents
running, adopted by init, after `ray.shutdown()` has returned. So the driver notes the tree while it is whole
(`LocalInstanceProcesses.note`), tells a dead daemon at a glance (`dead_daemon`: two small reads of /proc), and
stops whatever is left itself (`kill_all`). A process is known by its PID and its start time, so a PID that
the system has given to another process since is never touched.

Linux only (/proc); elsewhere nothing is known, and the pool's pings alone tell a lost worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
# A local instance cannot go on without these: their executables' names, as /proc/PID/comm gives them.
VITAL_DAEMONS = {"raylet": "raylet", "gcs_server": "GCS server"}


@dataclass(frozen=True)
class ProcessId:
    """A process as it was seen: its PID, its start time (clock ticks after boot) and its name."""

    pid: int
    started: int
    name: str


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent PID, state letter, start time) of a process, or None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The name, field 2, is in parentheses and may hold spaces: the fields after its last ')' are plain.
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], int(fields[19])


def process_running(pid: int) -> bool:
    """Whether a process runs: it exists and has not exited (a zombie, exited but not yet reaped, has)."""
    stat = _stat(pid)
    if stat is None:
        if not PROC.is_dir():  # no /proc: ask the kernel whether the PID exists
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return False
    return stat[1] not in ("Z", "X")


def _is_alive(process: ProcessId) -> bool:
    stat = _stat(process.pid)
    return stat is not None and stat[2] == process.started and stat[1] not in ("Z", "X")


def _name(pid: int) -> str:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def descendants(root: int) -> dict[int, ProcessId]:
    """Every process below `root` (children, their children...), as they are now."""
    parents: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    if not PROC.is_dir():
        return {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None:
            parents.setdefault(stat[0], []).append(int(entry.name))
            started[int(entry.name)] = stat[2]
    found: dict[int, ProcessId] = {}
    below = list(parents.get(root, []))
    while below:
        pid = below.pop()
        if pid in found or pid not in started:
            continue
        found[pid] = ProcessId(pid, started[pid], _name(pid))
        below.extend(parents.get(pid, []))
    return found


class LocalInstanceProcesses:
    """The processes of the local Ray instance that this driver started.

    Built just before `ray.init`, so that whatever already ran under the driver is left out; `note` adds the
    instance's processes as they are now (call it once the instance is up, and when it starts new workers).
    """

    def __init__(self, driver_pid: int | None = None) -> None:
        self.driver_pid = driver_pid if driver_pid is not None else os.getpid()
        self._before = set(descendants(self.driver_pid))
        self.known: dict[int, ProcessId] = {}

    def note(self) -> None:
        """Add the instance's processes that run now."""
        for pid, process in descendants(self.driver_pid).items():
            if pid not in self._before:
                self.known.setdefault(pid, process)

    def dead_daemon(self) -> str | None:
        """The name of a vital daemon (raylet, GCS server) that has exited, or None while both run."""
        for process in self.known.values():
            label = VITAL_DAEMONS.get(process.name)
            if label is not None and not _is_alive(process):
                return label
        return None

    def kill_all(self, *, wait_s: float = 2.0) -> int:
        """SIGKILL every process of the instance that still runs, and wait (a while) for them to be gone.

        Returns how many were sent the signal.
        """
        alive = [process for process in self.known.values() if _is_alive(process)]
        for process in alive:
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + wait_s
        while any(_is_alive(process) for process in alive) and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(alive)

