"""User-facing errors: one line naming the file, line, flag or variable at fault.

The CLI prints these without a traceback (set FELLOWSHIP_DEBUG=1 to see one) and exits with status 1.
"""

from __future__ import annotations


class FellowshipError(Exception):
    """An error the user can fix; its message is a single line that says what and where."""


class InputError(FellowshipError):
    """A bad input file: the message names the file and line."""

    def __init__(self, path: object, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


class ConfigError(FellowshipError):
    """A bad model spec, a missing API key, an unreachable endpoint, a bad flag value."""
