"""Shared fixtures. Unit tests can never reach a real provider: sockets to anything but loopback fail,
and the providers' API keys are removed from the environment."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.dev.stub_server import StubServer, StubSettings

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BENCHMARKS = SHARED / "benchmarks"


class RealNetworkBlocked(RuntimeError):
    pass


def _is_loopback(address: object) -> bool:
    if isinstance(address, tuple) and address:
        host = str(address[0])
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False
    return isinstance(address, str | bytes)  # unix sockets are local


LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _is_loopback_name(host: object) -> bool:
    text = host.decode() if isinstance(host, bytes) else str(host)
    if text in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_real_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sockets may reach loopback only, and names other than loopback's do not resolve (no DNS query leaves
    the machine): to the code under test, the world beyond 127.0.0.1 does not exist."""
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_getaddrinfo = socket.getaddrinfo

    def guarded_getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if host is not None and not _is_loopback_name(host):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (unit tests resolve loopback only)")
        return original_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    def guarded_connect(self: socket.socket, address: object) -> None:
        if not _is_loopback(address):
            raise RealNetworkBlocked(f"unit tests may not connect to {address!r}")
        original_connect(self, address)  # type: ignore[arg-type]

    def guarded_connect_ex(self: socket.socket, address: object) -> int:
        if not _is_loopback(address):
            raise RealNetworkBlocked(f"unit tests may not connect to {address!r}")
        return original_connect_ex(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    for variable in ("OPENAI_API_KEY", "TOGETHER_API_KEY", "COMPAT_API_KEY", "LANGSMITH_API_KEY",
                     "LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGCHAIN_API_KEY"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    """The stub OpenAI-compatible server on 127.0.0.1, answering at once; stopped after the test."""
    server = StubServer(StubSettings()).start_in_thread()
    yield server
    server.stop()


# Set by `make test` (and its tiers): every test must run there, so what a test needs and lacks fails it. A
# person running pytest by hand may go without a tier (Ray, the benchmarks) and sees it skipped, with the reason.
FULL_SUITE_VARIABLE = "FELLOWSHIP_FULL_SUITE"


def full_suite() -> bool:
    return os.environ.get(FULL_SUITE_VARIABLE) == "1"


def missing(what: str) -> None:
    """Fail under `make test`, else skip: `what` says what is missing and where it was looked for."""
    if full_suite():
        pytest.fail(f"{what} ({FULL_SUITE_VARIABLE}=1: make test runs every test)", pytrace=False)
    pytest.skip(what, allow_module_level=True)


def require_module(name: str) -> None:
    """Import a module a test tier needs (Ray), failing under `make test` when it is not installed."""
    if importlib.util.find_spec(name) is None:
        missing(f"the {name} package is not installed in {sys.prefix}")


@pytest.fixture
def benchmarks_dir() -> Path:
    """The human-labelled benchmarks: $FELLOWSHIP_BENCHMARKS, else ../shared/benchmarks beside the project."""
    configured = os.environ.get("FELLOWSHIP_BENCHMARKS")
    folder = Path(configured) if configured else BENCHMARKS
    if not folder.is_dir():
        where = f"$FELLOWSHIP_BENCHMARKS={configured}" if configured else str(folder)
        missing(f"the benchmarks folder was looked for at {where} and is not there")
    return folder


@pytest.fixture
def chromium() -> str:
    """The system's Chromium, which the browser tests drive headless (Playwright, `--no-sandbox` as root)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        missing("Chromium was looked for on PATH (chromium, chromium-browser) and is not there: "
                "apt-get install chromium")
    assert found is not None
    return found
