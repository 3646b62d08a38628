"""A pool of Ray worker processes that each run jobs of one kind; the driver (this process) hands them out.

Used by `generate --workers N`. The pool starts a local Ray instance with N CPUs, or joins the cluster at
`--ray-address` / `RAY_ADDRESS` (Ray's own convention), and places one actor per worker. Each actor builds
its job runner once, from a picklable job description, so models, HTTP pools and checkpoint stores live in
the worker that uses them. Results come back to the driver as each job finishes; the driver alone commits
them, so it stays the single source of truth of what is done.

A worker that dies (killed, out of memory, its machine gone) is replaced, and the jobs it held are run
again on the least busy worker; a job that takes down its worker `MAX_DEATHS_PER_JOB` times fails with
`WorkerLost` instead of hanging the run.

Ray itself is imported only when a pool starts (`--workers` above 1, or an address): it is the optional
extra `fellowship[ray]`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.models import PREFLIGHT_TIMEOUT_S, ModelSettings, connect_problem
from tools.errors import ConfigError, FellowshipError

MAX_DEATHS_PER_JOB = 3
# The local instance's shared-memory object store: results are one record each (kilobytes), so Ray's default
# of 30% of the machine's memory would only reserve what the workers need for themselves.
LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024
LOCAL_ONLY_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
USAGE_STATS_VARIABLE = "RAY_USAGE_STATS_ENABLED"
AUTH_MODE_VARIABLE = "RAY_AUTH_MODE"
# Which environment variables a worker needs from the driver: provider keys and base URLs, and LangSmith's.
FORWARDED_PREFIXES = ("OPENAI_", "TOGETHER_", "COMPAT_", "LANGSMITH_", "LANGCHAIN_", "FELLOWSHIP_")


@dataclass(frozen=True)
class RayWorkers:
    """Run a command's jobs on `count` Ray worker processes: a local instance, or the cluster at `address`.

    Each worker loads its own models with `model_settings` (clients cannot travel between processes).
    """

    count: int
    address: str | None
    model_settings: ModelSettings


class WorkerLost(FellowshipError):
    """A job's worker process died `MAX_DEATHS_PER_JOB` times while running it."""


def _ray() -> Any:
    """The ray module, imported on first use: a local instance must set its loopback variable before the import."""
    try:
        import ray
    except ImportError as missing:  # the extra is not installed
        raise ConfigError("--workers: Ray is not installed; install the extra: pip install 'fellowship[ray]'") \
            from missing
    return ray


def _actor_died() -> type[Exception]:
    from ray.exceptions import RayActorError

    return RayActorError


def ray_address_in_use(flag_value: str | None) -> str | None:
    """The cluster a pool would join: `--ray-address`, else `RAY_ADDRESS`; None for a local instance."""
    return flag_value or os.environ.get("RAY_ADDRESS") or None


def _split_address(address: str) -> tuple[str, str]:
    """HOST and PORT of `HOST:PORT` or `ray://HOST:PORT` (PORT empty when not given)."""
    location = address.removeprefix("ray://").split("/", 1)[0]
    host, _, port = location.rpartition(":") if ":" in location else (location, "", "")
    return host.strip("[]"), port


def _is_loopback_address(address: str) -> bool:
    host, _ = _split_address(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def preflight_ray_address(flag_value: str | None) -> None:
    """Connect to the cluster's address before any work: Ray itself retries an address for minutes.

    `HOST:PORT` (the head's GCS, port 6379 by default) and `ray://HOST:PORT` (Ray Client, 10001) are checked;
    `auto` and `local` are Ray's own look-ups and are left to it.
    """
    address = ray_address_in_use(flag_value)
    if address is None or address in ("auto", "local"):
        return
    flag = "--ray-address" if flag_value else "RAY_ADDRESS"
    host, port_text = _split_address(address)
    if not port_text:
        port_text = "10001" if address.startswith("ray://") else "6379"
    if not host or not port_text.isdigit():
        raise ConfigError(f"{flag} {address}: expected HOST:PORT or ray://HOST:PORT")
    problem = connect_problem(host, int(port_text), PREFLIGHT_TIMEOUT_S)
    if problem is not None:
        raise ConfigError(f"{flag} {address}: cannot reach the Ray cluster at {host}:{port_text} ({problem}); "
                          "start it with ray start --head or fix the address")


def _auth_token_available() -> bool:
    """Whether this machine holds a Ray authentication token (Ray's variables, or its default file)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    return os.path.isfile(path)


def forwarded_environment() -> dict[str, str]:
    """The driver's variables a worker needs (keys included: they go to the workers, never to an output)."""
    return {name: value for name, value in os.environ.items() if name.startswith(FORWARDED_PREFIXES)}


class PoolWorker:
    """The actor: builds its runner from the job description on first use, then runs and forgets jobs."""

    def __init__(self, job: Callable[[bool], Any], environment: dict[str, str], driver_node: str) -> None:
        os.environ.update(environment)
        self._job = job
        self._driver_node = driver_node
        self._runner: Any = None

    def _ready(self) -> Any:
        # Built inside the actor's event loop: chat clients bind to the loop that makes them.
        if self._runner is None:
            on_driver_machine = _ray().get_runtime_context().get_node_id() == self._driver_node
            self._runner = self._job(on_driver_machine)
        return self._runner

    async def run(self, key: str, payload: Any) -> Any:
        """Run one job and return its result."""
        return await self._ready().run(key, payload)

    async def forget(self, key: str) -> None:
        """Drop what the worker kept for a job the driver has committed."""
        await self._ready().forget(key)

    async def close(self) -> None:
        """Close the runner's stores."""
        if self._runner is not None:
            self._runner.close()
            self._runner = None


class RayWorkerPool:
    """`workers` PoolWorker actors on a local Ray instance or an existing cluster; jobs go to the least busy.

    `job(on_driver_machine)` builds a worker's runner: an object with `async run(key, payload)`,
    `async forget(key)` and `close()`.
    """

    def __init__(
        self, job: Callable[[bool], Any], *, workers: int, address: str | None, max_in_flight: int,
        forgets: bool = True,
    ) -> None:
        self.job = job
        self.forgets = forgets  # whether the driver calls `forget` for every job (so the pool notes who ran it)
        self.workers = max(1, workers)
        self.address = address
        self.max_in_flight = max_in_flight
        self.actors: list[Any] = []
        self.busy: list[int] = []
        self.replaced = 0
        self._ran_on: dict[str, Any] = {}
        self._environment = forwarded_environment()
        self._driver_node = ""

    def start(self) -> None:
        """Start (or join) Ray and place the workers; refuse a cluster too small for them."""
        joining = ray_address_in_use(self.address)
        # Ray reports usage statistics to its makers by default: no run of ours sends anything anywhere unasked
        # (and the attempt costs a second of start-up where there is no network).
        os.environ.setdefault(USAGE_STATS_VARIABLE, "0")
        if joining and AUTH_MODE_VARIABLE not in os.environ and _auth_token_available():
            # `ray start --head` turns token authentication on and leaves the token in ~/.ray/auth_token, but a
            # driver joining it sends the token only when told to (Ray 2.60): tell it, as Ray does for its own.
            os.environ[AUTH_MODE_VARIABLE] = "token"
        if not joining or _is_loopback_address(joining):
            # A local instance (or a cluster this machine runs on loopback) talks over loopback only: Ray's own
            # single-machine mode, as on macOS. Ray reads the variable when imported, and its processes inherit
            # it: none advertises or dials the machine's network address (Ray would turn 127.0.0.1 into it).
            os.environ[LOCAL_ONLY_VARIABLE] = "0"
        ray = _ray()
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                   "logging_level": logging.ERROR, "ignore_reinit_error": True}
        if joining:
            try:
                ray.init(address=joining, **options)
            except (ConnectionError, RuntimeError, ValueError) as error:
                flag = "--ray-address" if self.address else "RAY_ADDRESS"
                raise ConfigError(f"{flag} {joining}: could not join the Ray cluster "
                                  f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
        else:
            # address="local": a new instance of our own, even where a `ray start` cluster runs on this machine
            # (Ray would otherwise join that one).
            ray.init(address="local", num_cpus=self.workers, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                     _node_ip_address="127.0.0.1", **options)
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < self.workers:
            ray.shutdown()
            raise ConfigError(f"--workers {self.workers}: the Ray cluster at {joining} has {cpus:g} CPUs; "
                              f"each worker takes one")
        self._driver_node = ray.get_runtime_context().get_node_id()
        self.actors = [self._spawn() for _ in range(self.workers)]
        self.busy = [0] * self.workers

    def _spawn(self) -> Any:
        actor_class = _ray().remote(PoolWorker).options(num_cpus=1, max_concurrency=self.max_in_flight + 8)
        return actor_class.remote(self.job, self._environment, self._driver_node)

    def _replace(self, slot: int, dead: Any) -> None:
        if self.actors[slot] is dead:  # the first job to see the death replaces the worker; the others follow
            with contextlib.suppress(Exception):
                _ray().kill(dead, no_restart=True)
            self.actors[slot] = self._spawn()
            self.replaced += 1

    async def run(self, key: str, payload: Any) -> Any:
        """Run a job on the least busy worker; on a worker's death, again on another (or its replacement)."""
        deaths = 0
        while True:
            slot = min(range(self.workers), key=self.busy.__getitem__)
            actor = self.actors[slot]
            self.busy[slot] += 1
            try:
                result = await actor.run.remote(key, payload)
                if self.forgets:
                    self._ran_on[key] = actor
                return result
            except _actor_died() as error:
                deaths += 1
                self._replace(slot, actor)
                if deaths >= MAX_DEATHS_PER_JOB:
                    raise WorkerLost(f"its worker process died {deaths} times while running it "
                                     f"({type(error).__name__})") from error
            finally:
                self.busy[slot] -= 1

    async def forget(self, key: str) -> None:
        """Tell the worker that ran a job that the driver has committed it (a dead worker has nothing to drop)."""
        actor = self._ran_on.pop(key, None)
        if actor is not None:
            with contextlib.suppress(_actor_died()):
                await actor.forget.remote(key)

    def shutdown(self) -> None:
        """Close the workers' stores, then leave Ray (stopping the local instance if this pool started it)."""
        ray = _ray()
        if ray.is_initialized():
            with contextlib.suppress(Exception):
                ray.get([actor.close.remote() for actor in self.actors], timeout=10)
            ray.shutdown()
        self.actors = []
