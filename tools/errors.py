"""User-facing errors and the exit statuses of every command.

An error is one line naming the file, line, flag or variable at fault. The CLI prints it without a
traceback (set FELLOWSHIP_DEBUG=1 to see one). Exit statuses, documented in README.md:

    0    everything asked for was done
    1    bad input or configuration: nothing was done (or, for a circuit-breaker stop, nothing more)
    2    the run finished, but some prompts or items failed: run again with --retry-failed
    3    stopped at the budget (--max-cost-usd): finished work kept; a higher cap continues
    4    the run finished, but some prompts wait for a person's decision (--review): `fellowship review DIR`,
         then the same command applies the decisions
    130  interrupted (Ctrl-C): run the same command again to resume
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_FAILURES = 2
EXIT_BUDGET = 3
EXIT_WAITING = 4
EXIT_INTERRUPTED = 130


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


class EndpointError(FellowshipError):
    """A model call failed for a reason no retry fixes.

    A bad key (401), no access (403), an unknown model (404), or an endpoint that still refuses connections after
    the client's retries.

    `reason` is the same text for every call that fails the same way, so a run can tell a broken
    configuration (every call fails alike) from one unlucky prompt.
    """

    def __init__(self, model_spec: str, reason: str) -> None:
        super().__init__(f"{model_spec}: {reason}")
        self.model_spec = model_spec
        self.reason = reason


class RunStopped(FellowshipError):
    """A run stopped early on purpose (circuit breaker); finished work is kept."""
