"""A pool of Ray worker processes that each run jobs of one kind; the driver (this process) hands them out.

Used by `generate --workers N` (and `evaluate`, `meta-eval`, `winrate`). On one machine the driver is the
first of the N workers: it runs jobs from the first second with a runner of its own. A local Ray instance
with N - 1 CPUs starts beside it once the driver is CPU-bound with enough work left to pay for the start
(`--ray-start when-busy`, the default: see `LocalStartWatch`), or at once (`--ray-start at-once`); its N - 1
actors join in as soon as they are ready (starting Ray and importing the pipeline takes seconds that the
driver spends working). With `--ray-address` /
`RAY_ADDRESS` (Ray's own convention) the pool joins that cluster first, before any work, and places N
actors there. Each actor builds its job runner once, from a picklable job description, so models, HTTP
pools and checkpoint stores live in the worker that uses them. Results come back to the driver as each job
finishes; the driver alone commits them, so it stays the single source of truth of what is done.

A worker that dies (killed, out of memory, its machine gone), stops answering pings or stops finishing jobs is
replaced, and the jobs it held are run again on the worker with the most room; a job that takes down its worker
`MAX_DEATHS_PER_JOB` times fails with `WorkerLost` instead of hanging the run. A local instance whose raylet or
GCS server exits is given up whole: its processes are stopped and the driver finishes the run alone. A cluster
whose workers are all lost stops the run (`PoolLost`), finished work kept. Leaving Ray never holds the command
for more than a few seconds, and a local instance leaves no process behind.

Ray itself is imported only when a pool starts (`--workers` above 1, or an address): it is the optional
extra `fellowship[ray]`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import functools
import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any, Literal

from agents import garbage_collection
from agents.call_budget import jobs_in_flight
from agents.loop_executor import use_steps_on_loop
from agents.models import PREFLIGHT_TIMEOUT_S, ModelSettings, connect_problem
from graphs.ray_processes import LocalInstanceProcesses, process_running
from tools.errors import EXIT_CONFIG, ConfigError, FellowshipError, RunStopped

MAX_DEATHS_PER_JOB = 3
# How far below the driver's the CPU priority of a local instance's processes is (see `_own_local_instance`).
RAY_NICENESS = 5
# The local instance's shared-memory object store: results are one record each (kilobytes), so Ray's default
# of 30% of the machine's memory would only reserve what the workers need for themselves.
LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024
LOCAL_ONLY_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
USAGE_STATS_VARIABLE = "RAY_USAGE_STATS_ENABLED"
AUTH_MODE_VARIABLE = "RAY_AUTH_MODE"
# Which environment variables a worker needs from the driver: provider keys and base URLs, and LangSmith's.
FORWARDED_PREFIXES = ("OPENAI_", "TOGETHER_", "COMPAT_", "LANGSMITH_", "LANGCHAIN_", "FELLOWSHIP_")
# `--ray-start when-busy` (see `LocalStartWatch`): how often the driver looks, over how long a window, what share
# of one core makes it CPU-bound, and how much work must be left. A local instance costs 4-9 s and about ten
# CPU-seconds (Ray's daemons, the actor's imports) on this 2-core machine before its actor takes a job, while
# the driver slows down beside it: measured, a run of 10-20 s ended later with a second worker than without.
WATCH_EVERY_S = 0.5
WATCH_WINDOW_S = 2.0
BUSY_CPU_SHARE = 0.8
LOCAL_START_PAYBACK_S = 20.0
# The health watch (see `RayWorkerPool`): how often it looks; how often a ready actor is pinged and how long it may
# take to answer (a live actor answers in milliseconds); how long a new actor may take to load its runner; a
# worker holding jobs that finishes none for STALL_JOB_FACTOR x the slowest job so far (at least STALL_FLOOR_S)
# counts as lost; on a cluster, no ready actor for CLUSTER_LOST_S loses the pool.
HEALTH_EVERY_S = 1.0
PING_EVERY_S = 2.0
PING_TIMEOUT_S = 15.0
ACTOR_START_TIMEOUT_S = 120.0
STALL_FLOOR_S = 60.0
STALL_JOB_FACTOR = 10.0
CLUSTER_LOST_S = 20.0
# Leaving Ray: how long the actors may take to close their stores, and Ray to stop, before the pool stops what is
# left of a local instance itself (a half-dead instance can hold `ray.shutdown()` for many seconds).
CLOSE_TIMEOUT_S = 10.0
LEAVE_TIMEOUT_S = 5.0
# Ray's core worker ends its process with status 1 ("Failed to connect to GCS within 60 seconds",
# `gcs_rpc_server_reconnect_timeout_s`) when the GCS stays out of reach that long, and a driver whose cluster is
# gone cannot leave Ray cleanly before then (`ray.shutdown()` waits on the GCS). So the run must say it lost its
# cluster, and keep its work, well within those 60 s: the watch gives up after CLUSTER_LOST_S, and leaving a lost
# cluster waits LEAVE_TIMEOUT_S at most (giving Ray more time instead only turned that exit into a hang). Should the
# driver's event loop itself be held up by Ray meanwhile, a thread ends the run after CLUSTER_HARD_STOP_S.
CLUSTER_HARD_STOP_S = 45.0
RayStart = Literal["when-busy", "at-once"]
_INIT_OPTIONS: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
                                 "ignore_reinit_error": True}
logger = logging.getLogger(__name__)
# Owner threads of local instances still stopping after `shutdown(wait=False)`, with their pools (`finish_leaving`).
_LEAVING: dict[threading.Thread, RayWorkerPool] = {}
_LEAVING_LOCK = threading.Lock()


def finish_leaving() -> None:
    """Wait until every local Ray instance this process started has been stopped.

    `RayWorkerPool.shutdown(wait=False)` leaves the stopping to the instance's owner thread, so that the command's
    last work (the export) runs meanwhile; this waits for it. Called at interpreter exit, and before another
    local instance starts (two instances must not start and stop at once in one process). An owner thread still
    inside `ray.shutdown()` after `CLOSE_TIMEOUT_S + LEAVE_TIMEOUT_S` (a half-dead instance) has its instance's
    processes stopped for it, and is waited for `LEAVE_TIMEOUT_S` more at most: leaving never hangs the command.
    """
    with _LEAVING_LOCK:
        leaving = list(_LEAVING.items())
    for thread, pool in leaving:
        thread.join(CLOSE_TIMEOUT_S + LEAVE_TIMEOUT_S)
        if thread.is_alive():
            stopped = pool.stop_leftovers()
            logger.warning("note: the local Ray instance did not stop within %.0f s; its %d processes were killed",
                           CLOSE_TIMEOUT_S + LEAVE_TIMEOUT_S, stopped)
            thread.join(LEAVE_TIMEOUT_S)
        with _LEAVING_LOCK:
            _LEAVING.pop(thread, None)


@functools.cache
def _leave_at_exit() -> None:
    """Make the interpreter wait for stopping instances at exit, before Ray's own exit handler runs (once a process)."""
    # Registered after ray is imported (Ray registers its handler when imported), so it runs first.
    atexit.register(finish_leaving)


@dataclass(frozen=True)
class RayWorkers:
    """Run a command's jobs on `count` worker processes: this one and a local Ray instance's, or a cluster's.

    On one machine this process is the first worker and a local instance adds `count - 1`; with `address`,
    `count` actors run on that cluster. Each loads its own models with `model_settings` (clients cannot
    travel between processes).
    """

    count: int
    address: str | None
    model_settings: ModelSettings
    start: RayStart = "when-busy"
    stall_s: float | None = None  # `--worker-timeout`: None derives it from the job times (`RayWorkerPool`)

    def settings_of_a_worker(self, calls: int, concurrency: int) -> ModelSettings:
        """A Ray worker's model settings: its call slots, and the same share of each provider's rate."""
        return dataclasses.replace(self.model_settings, calls_cap=calls, rate_share=calls / max(1, concurrency))


def rate_share_setter(model_source: Any) -> Callable[[float], None] | None:
    """What sets the driver's share of each provider's rate as Ray workers join or are lost (None: nothing to set)."""
    controllers = getattr(model_source, "endpoint_controllers", None)
    if controllers is None:
        return None

    def set_share(share: float) -> None:
        controllers.share = share

    return set_share


class LocalStartWatch:
    """Tells when a local Ray instance would pay for its start-up, from samples of the driver's CPU time and jobs.

    A second process helps only when this one is CPU-bound: with a slow endpoint the calls in flight (a budget
    that all workers share) are the limit, and a second process would only add its own CPU. And only when the
    work left outlasts the start-up by far (`LOCAL_START_PAYBACK_S`): an instance costs seconds and CPU that the
    driver would otherwise spend on the jobs. The CPU share of one core is judged over the last `WATCH_WINDOW_S`.
    The work left follows Little's law: jobs left x the mean time a job takes / the jobs in flight. Counting jobs
    finished per second instead misleads: jobs that start together end together, in waves seconds apart. While
    no job has finished, each job in flight has taken at least its age so far, so their mean age stands in for
    the mean job time (a lower bound: on a CPU-bound start the first jobs end seconds later); and a driver that
    stays CPU-bound for `LOCAL_START_PAYBACK_S` has that much work left.
    """

    def __init__(self, jobs: int, *, payback_s: float = LOCAL_START_PAYBACK_S, window_s: float = WATCH_WINDOW_S,
                 busy_share: float = BUSY_CPU_SHARE) -> None:
        self.jobs = jobs
        self.payback_s = payback_s
        self.window_s = window_s
        self.busy_share = busy_share
        self.why_not = f"the run ended within the first {window_s:g} s"
        self._samples: deque[tuple[float, float]] = deque()
        self._busy_since: float | None = None

    def should_start(self, wall_s: float, cpu_s: float, finished: int, in_flight: int, job_s: float) -> bool:
        """Whether to start now.

        Given: the time, the driver's CPU time so far, the jobs finished, the jobs the driver holds now, and the
        mean seconds a finished job took (while none has finished: the mean age of the jobs in flight).
        """
        samples = self._samples
        samples.append((wall_s, cpu_s))
        # Keep the newest sample that is at least a window old as the window's start.
        while len(samples) > 2 and wall_s - samples[1][0] >= self.window_s:
            samples.popleft()
        first_wall, first_cpu = samples[0]
        span = wall_s - first_wall
        if span < self.window_s:
            return False
        if (cpu_s - first_cpu) / span < self.busy_share:
            self._busy_since = None
            self.why_not = ("this process was not CPU-bound: the endpoint's latency and --concurrency were the limit, "
                            "which a second process does not lift")
            return False
        if self._busy_since is None:
            self._busy_since = first_wall
        left = self.jobs - finished
        if left <= 0:
            left_s = 0.0
        elif finished == 0:
            left_s = max(wall_s - self._busy_since, left * job_s / max(1, in_flight))
        else:
            left_s = left * job_s / max(1, in_flight)
        if left_s >= self.payback_s:
            return True
        self.why_not = (f"the work left (about {left_s:.0f} s) was never more than a local Ray instance's start-up "
                        f"pays for ({self.payback_s:g} s)")
        return False


class WorkerLost(FellowshipError):
    """A job's worker process died `MAX_DEATHS_PER_JOB` times while running it."""


class PoolLost(RunStopped):
    """A cluster's workers are all lost (its head or every machine gone): the run stops, finished work kept."""


def _ray() -> Any:
    """The ray module, imported on first use: a local instance must set its loopback variable before the import."""
    try:
        import ray
    except ImportError as missing:  # the extra is not installed
        raise ConfigError("--workers: Ray is not installed; install the extra: pip install 'fellowship[ray]'") \
            from missing
    return ray


def _route_ray_messages_to_the_log(ray: Any) -> None:
    """Send the messages Ray's driver thread prints about its cluster (a dead raylet's log tail) to our debug log.

    Ray prints them on standard output, where the command's summary goes, whatever `log_to_driver` says; the pool
    says what happened to a worker or an instance in one line of its own. Call after `ray.init`.
    """
    worker_module = ray._private.worker

    def to_debug_log(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        for line in data.get("lines", []):
            logger.debug("ray (%s): %s", data.get("pid"), line)

    worker_module.print_to_stdstream = to_debug_log


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
            use_steps_on_loop(asyncio.get_running_loop())
            on_driver_machine = _ray().get_runtime_context().get_node_id() == self._driver_node
            self._runner = self._job(on_driver_machine)
            garbage_collection.for_the_run(owned=True)  # this worker's modules are loaded: out of the collector's way
        return self._runner

    async def ready(self) -> int:
        """Build the runner now (imports, models, stores), so that the first job does not wait for it; the PID."""
        self._ready()
        return os.getpid()

    async def ping(self) -> int:
        """Answer at once (the driver's health watch): the process and its event loop are alive."""
        return os.getpid()

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


class SeatLost(Exception):
    """(Inside the pool.) The actor a job was waiting on counts as lost: the job runs again elsewhere."""

    def __init__(self, reason: str, *, counts: bool) -> None:
        super().__init__(reason)
        self.counts = counts  # whether it counts towards the job's MAX_DEATHS_PER_JOB (not when the instance died)


@dataclass(eq=False)
class Seat:
    """One actor's place in the pool: the actor, the jobs it holds, and what the health watch knows of it.

    `lost` resolves (with the reason) the moment the actor counts as lost: every job waiting on it stops waiting.
    A seat takes jobs only once its actor has answered `ready` (a replacement starts not ready).
    """

    actor: Any
    lost: asyncio.Future[SeatLost]
    ready: bool = False
    busy: int = 0
    pid: int | None = None
    progress_at: float = 0.0  # when it last finished a job, or last began holding jobs
    probe: asyncio.Future[Any] | None = None  # the `ready` or `ping` call in flight
    probe_sent_at: float = 0.0
    answered_at: float = 0.0


class RayWorkerPool:
    """`workers` processes running jobs: this one and Ray actors on a local instance, or actors on a cluster.

    `job(on_driver_machine)` builds an actor's runner: an object with `async run(key, payload)`,
    `async forget(key)` and `close()`. `local` is the driver's own runner of the same kind (with `call_slots`);
    it works while a local instance starts and then beside its actors, keeping its share of the run's call
    slots (`actor_calls` each for the actors, the rest for itself). Each worker holds `jobs_in_flight` of its
    call slots in jobs; a job goes to the worker with the most room, and waits while every worker is full.
    `jobs` is how many jobs the run has, for `start="when-busy"` to judge the work left; `on_worker_lost` is
    called when a dead worker has been replaced, before its jobs run again; `on_share` is told the driver's share
    of the call slots whenever actors join or are given up (it paces its calls to that share of each provider's
    rate limit, as each actor does to its own); `unit` names the jobs in notes.

    A health watch runs beside the jobs (`_watch_health`): an actor counts as lost when Ray says it died, when it
    does not answer a ping within `PING_TIMEOUT_S`, or when it holds jobs and finishes none for `stall_s` (given,
    or `STALL_JOB_FACTOR` times the slowest job so far, at least `STALL_FLOOR_S`). Its jobs go back to the other
    workers at once. A local instance whose raylet or GCS server exits is lost whole: its processes are stopped
    and the driver runs the rest alone. On a cluster, a lost actor is replaced; when no actor has been ready for
    `CLUSTER_LOST_S`, `on_pool_lost(reason)` is called and jobs raise `PoolLost`.
    """

    def __init__(
        self, job: Callable[[bool], Any], *, workers: int, address: str | None, local: Any, actor_calls: int,
        jobs: int, start: RayStart = "when-busy", forgets: bool = True,
        on_worker_lost: Callable[[], None] | None = None, on_pool_lost: Callable[[str], None] | None = None,
        on_share: Callable[[float], None] | None = None, stall_s: float | None = None, unit: str = "jobs",
    ) -> None:
        self.job = job
        self.forgets = forgets  # whether the driver calls `forget` for every job (so the pool notes who ran it)
        self.workers = max(1, workers)
        self.address = address
        self.local = local
        self.actor_calls = actor_calls
        self.jobs = jobs
        self.start_policy = start
        self.on_worker_lost = on_worker_lost  # called when a dead worker has been replaced
        self.on_pool_lost = on_pool_lost  # called once when a cluster's workers are all lost
        self.on_share = on_share  # told the driver's share of the call slots when it changes (its rate share)
        self.stall_s = stall_s
        self.unit = unit
        self.finished = 0  # jobs that have returned a result
        self.finished_on_ray = 0  # of those, the jobs a Ray actor ran (the rest ran in the driver)
        self._finished_job_s = 0.0  # the seconds the finished jobs took, together (their mean: `LocalStartWatch`)
        self._slowest_job_s = 0.0  # the longest a finished job took (the default stall bound)
        self._began_total = 0.0  # the start times of the driver's jobs in flight, summed (their mean age: the same)
        self.joined_after_s: float | None = None  # when a local instance's actors joined, from `start`
        self.local_busy = 0
        self.seats: list[Seat] = []
        self.replaced = 0
        self.instance_lost: str | None = None  # why the local instance was given up, once it was
        self.pool_lost: str | None = None  # why a cluster's pool was given up, once it was
        self._ran_on: dict[str, Seat | None] = {}
        self._environment = forwarded_environment()
        self._driver_node = ""
        self._waiting_for_room: list[asyncio.Future[None]] = []
        self._owner: threading.Thread | None = None
        self._local_instance = False  # this pool works beside a local instance (started now or later)
        self._processes: LocalInstanceProcesses | None = None  # the local instance's processes, once it started
        self._started_at = 0.0
        self._watch: asyncio.Task[None] | None = None
        self._health: asyncio.Task[None] | None = None
        self._start_watch: LocalStartWatch | None = None
        self._stop = threading.Event()
        self._placed: list[Any] = []
        self._closed = False
        self._stores_closed = threading.Event()  # the actors have closed their stores (Ray may still be stopping)
        self._driver_limit: int | None = None  # the driver's call slots before actors took their share
        self._ever_ready = False  # whether any actor has been ready (a cluster's first start may take longer)
        self._killers: list[threading.Thread] = []  # threads asking Ray to kill lost actors (see `_stop_actor`)
        # Lost actors' seats, kept until Ray has stopped: an actor handle freed while `ray.shutdown()` runs (the
        # garbage collector may pick any moment) makes Ray end the process ("the core worker has already been shut
        # down"), so the owner of the instance drops them all once Ray is down (`_leave`).
        self._retired: list[Seat] = []

    @property
    def actors(self) -> list[Any]:
        """The actors the pool holds now."""
        return [seat.actor for seat in self.seats]

    def start(self) -> None:
        """Join the cluster and place its actors (refusing one too small), or start working beside a local instance.

        Joining happens here, before any work, so a wrong address or a small cluster stops the command with
        nothing done. A local instance starts in the background while the driver's runner takes the first jobs:
        at once, or (`when-busy`) once `LocalStartWatch` finds that it pays for its start-up.
        """
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
        self._started_at = time.monotonic()
        if joining:
            ray = _ray()
            _leave_at_exit()
            self._join(ray, joining)
            self.seats = [self._seat(self._spawn()) for _ in range(self.workers)]
            self._health = asyncio.get_running_loop().create_task(self._watch_health())
            threading.Thread(target=self._stop_if_the_cluster_stays_silent, args=(joining,), daemon=True,
                             name="ray-cluster-deadline").start()
            return
        if find_spec("ray") is None:  # the same one-line error as on a cluster, before any work rather than later
            _ray()
        self._local_instance = True
        loop = asyncio.get_running_loop()
        if self.start_policy == "at-once":
            self._start_local_instance_thread(loop)
        else:
            self._watch = loop.create_task(self._start_when_busy(loop))

    def _start_local_instance_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        self._owner = threading.Thread(target=self._own_local_instance, args=(loop,), daemon=True,
                                       name="ray-instance")
        self._owner.start()

    async def _start_when_busy(self, loop: asyncio.AbstractEventLoop) -> None:
        """(A task on the loop.) Sample the driver's CPU and finished jobs; start the local instance once it pays."""
        watch = self._start_watch = LocalStartWatch(self.jobs)
        while not self._closed:
            now = time.monotonic()
            if self.finished:
                job_s = self._finished_job_s / self.finished
            else:  # none has ended yet: the mean age of the jobs in flight (all on the driver until Ray starts)
                job_s = now - self._began_total / self.local_busy if self.local_busy else 0.0
            if watch.should_start(now, time.process_time(), self.finished, self.local_busy, job_s):
                self._start_local_instance_thread(loop)
                return
            await asyncio.sleep(WATCH_EVERY_S)

    def _join(self, ray: Any, joining: str) -> None:
        try:
            ray.init(address=joining, **_INIT_OPTIONS)
            _route_ray_messages_to_the_log(ray)
        except (ConnectionError, RuntimeError, ValueError) as error:
            flag = "--ray-address" if self.address else "RAY_ADDRESS"
            raise ConfigError(f"{flag} {joining}: could not join the Ray cluster "
                              f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < self.workers:
            ray.shutdown()
            raise ConfigError(f"--workers {self.workers}: the Ray cluster at {joining} has {cpus:g} CPUs; "
                              f"each worker takes one")
        self._driver_node = ray.get_runtime_context().get_node_id()

    def _own_local_instance(self, loop: asyncio.AbstractEventLoop) -> None:
        """(The owner thread.) Start a local instance, place N - 1 actors, hand them over once ready; leave at the end.

        The thread that starts the instance must also stop it, and live until then: Ray ties the processes it
        starts to the thread that started them (they are stopped when their parent ends), and an instance
        started in one thread and stopped from another leaves processes behind.
        """
        # Ray's processes inherit the CPU priority of the thread that starts them (Linux keeps it per thread):
        # a little below the driver's, the instance's start-up (seconds of CPU on every core while the driver is
        # already making calls) and later its daemons yield to the driver, which also commits every result.
        with contextlib.suppress(OSError):
            thread = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + RAY_NICENESS)
        ray: Any = None
        try:
            # Imported here, not on the loop: importing Ray takes half a second that the driver's jobs go on meanwhile.
            ray = _ray()
            _leave_at_exit()
            finish_leaving()  # two instances must not start and stop at once in one process
            self._start_local_instance(ray, loop)
        finally:
            self._stop.wait()
            if ray is None:
                self._stores_closed.set()
            else:
                self._leave(ray)

    def _start_local_instance(self, ray: Any, loop: asyncio.AbstractEventLoop) -> None:
        started = time.monotonic()
        self._processes = LocalInstanceProcesses()
        try:
            # address="local": a new instance of our own, even where a `ray start` cluster runs on this machine
            # (Ray would otherwise join that one).
            ray.init(address="local", num_cpus=self.workers - 1, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                     _node_ip_address="127.0.0.1", **_INIT_OPTIONS)
            _route_ray_messages_to_the_log(ray)
            self._driver_node = ray.get_runtime_context().get_node_id()
            actors = [self._spawn() for _ in range(self.workers - 1)]
            self._placed = actors  # for `shutdown`, should the run end before they are handed over
            pids = ray.get([actor.ready.remote() for actor in actors], timeout=ACTOR_START_TIMEOUT_S)
        except Exception as error:  # the run goes on in this process alone, and says so
            logger.warning("note: the local Ray instance did not start (%s); this process runs every job alone",
                           str(error).splitlines()[0] if str(error) else type(error).__name__)
            return
        # While the instance is whole: the daemons, their agents and the actors, to watch and, at the end, to stop.
        self._processes.note()
        with contextlib.suppress(RuntimeError):  # the loop is closed: the run ended first, shutdown cleans up
            loop.call_soon_threadsafe(self._adopt, actors, pids, started)

    def _adopt(self, actors: list[Any], pids: list[int], instance_started: float) -> None:
        """(On the loop.) The actors take jobs from now on; the driver keeps the call slots the actors do not take."""
        if self._closed:
            return
        now = time.monotonic()
        self.joined_after_s = now - self._started_at
        waited = "" if self.start_policy == "at-once" else f", started {instance_started - self._started_at:.1f} s in"
        logger.warning("note: %d Ray worker%s joined after %.1f s (the local instance's start-up%s); this process ran "
                       "the work until then and goes on with its share", len(actors), "" if len(actors) == 1 else "s",
                       now - instance_started, waited)
        self.seats = [self._seat(actor, ready=True, pid=pid) for actor, pid in zip(actors, pids, strict=True)]
        slots = self.local.call_slots
        if slots is not None:
            self._driver_limit = slots.limit
            slots.resize(slots.limit - len(actors) * self.actor_calls)
            # The actors take jobs once the driver's calls are down to its share (`_room`): the run never has more
            # than --concurrency calls out, not even while the driver's calls above its share end.
            slots.on_within_limit = self._wake_all
            if self.on_share is not None:
                self.on_share(slots.limit / self._driver_limit)
        self._health = asyncio.get_running_loop().create_task(self._watch_health())
        self._wake_all()  # room has appeared: every job waiting for it looks again

    @property
    def local_runs_jobs(self) -> bool:
        """Whether the driver's own runner takes jobs: with a local instance, not on a cluster."""
        return self._local_instance

    @property
    def max_jobs(self) -> int:
        """The most jobs the pool can hold at once (the driver's full share before the actors join, plus theirs)."""
        if self.local_runs_jobs:
            return self._capacity(None) + (self.workers - 1) * self._capacity(0)
        return self.workers * self._capacity(0)

    def _capacity(self, slot: int | None) -> int:
        """How many jobs a worker holds: `jobs_in_flight` of its call slots."""
        slots = self.local.call_slots if slot is None else None
        return jobs_in_flight(slots.limit if slots is not None else self.actor_calls)

    def _spawn(self) -> Any:
        actor_class = _ray().remote(PoolWorker).options(num_cpus=1, max_concurrency=self._capacity(0) + 8)
        return actor_class.remote(self.job, self._environment, self._driver_node)

    def _seat(self, actor: Any, *, ready: bool = False, pid: int | None = None) -> Seat:
        """A seat for an actor; one not known to be ready is asked at once to load its runner."""
        now = time.monotonic()
        seat = Seat(actor, asyncio.get_running_loop().create_future(), ready=ready, pid=pid, progress_at=now,
                    answered_at=now)
        if not ready:
            self._probe(seat, "ready")
        return seat

    # --- health ---------------------------------------------------------------------------------------------------

    def _stall_bound_s(self) -> float:
        """How long a worker may hold jobs without finishing one before it counts as lost."""
        if self.stall_s is not None:
            return self.stall_s
        return max(STALL_FLOOR_S, STALL_JOB_FACTOR * self._slowest_job_s)

    async def _watch_health(self) -> None:
        """(A task on the loop.) Look at the instance and every actor each `HEALTH_EVERY_S`, while the pool works."""
        while not self._closed and self.seats:
            await asyncio.sleep(HEALTH_EVERY_S)
            if self._closed:
                return
            self._check_health(time.monotonic())

    def _check_health(self, now: float) -> None:
        """Declare lost what has died, stopped answering or stopped making progress; send the next pings."""
        if self._processes is not None and self.instance_lost is None:
            dead = self._processes.dead_daemon()
            if dead is not None:
                self._give_up_instance(f"{dead} exited")
                return
        for seat in list(self.seats):
            if seat.lost.done():
                continue
            probe_age = now - seat.probe_sent_at
            if not seat.ready:
                if seat.probe is None:
                    self._probe(seat, "ready")
                elif probe_age > ACTOR_START_TIMEOUT_S:
                    self._lose(seat, f"did not start within {ACTOR_START_TIMEOUT_S:g} s")
                continue
            if seat.probe is not None and probe_age > PING_TIMEOUT_S:
                self._lose(seat, f"did not answer for {probe_age:.0f} s")
            elif seat.busy and now - seat.progress_at > self._stall_bound_s():
                self._lose(seat, f"finished no {self.unit[:-1] or 'job'} for {now - seat.progress_at:.0f} s")
            elif seat.probe is None and now - seat.answered_at >= PING_EVERY_S:
                self._probe(seat, "ping")
        if not self.local_runs_jobs and self.pool_lost is None and self.seats:
            # A cluster: when no actor has been ready for a while, the cluster (or every machine of it) is gone.
            bound = CLUSTER_LOST_S if self._ever_ready else ACTOR_START_TIMEOUT_S
            silent = now - max(seat.answered_at for seat in self.seats)
            if not any(seat.ready for seat in self.seats) and silent > bound:
                self._give_up_pool(f"no worker has answered for {silent:.0f} s")

    def _stop_if_the_cluster_stays_silent(self, where: str) -> None:
        """(A thread, on a cluster.) The last resort when the loop's watch cannot give a lost cluster up in time.

        Ray ends a driver that cannot reach its cluster's head for 60 s, with status 1 and its own message; the
        event loop that should have stopped the run first can be held up by Ray's calls against the dead head. So,
        once no worker has answered for CLUSTER_HARD_STOP_S and the pool is still working, this thread says what the
        run's own stop would have said and ends the process with the same status. Nothing is lost: every finished
        prompt is committed to the run store as it finishes, and the same command exports and resumes.
        """
        while not self._closed:
            time.sleep(HEALTH_EVERY_S)
            seats = list(self.seats)
            if self._closed or not self._ever_ready or not seats:
                continue
            silent = time.monotonic() - max(seat.answered_at for seat in seats)
            if silent > CLUSTER_HARD_STOP_S:
                sys.stdout.flush()
                sys.stderr.write(f"error: stopped: lost the Ray cluster at {where}: no worker has answered for "
                                 f"{silent:.0f} s; finished prompts are kept: run the same command to resume\n")
                sys.stderr.flush()
                os._exit(EXIT_CONFIG)  # the status of every stopped run (`user_errors`)

    def _probe(self, seat: Seat, method: str) -> None:
        """Call the actor's `ready` (a new actor: it loads its runner) or `ping` (a cheap sign of life)."""
        seat.probe_sent_at = time.monotonic()
        probe = asyncio.ensure_future(getattr(seat.actor, method).remote())
        seat.probe = probe

        def answered(done: asyncio.Future[Any]) -> None:
            if seat.probe is done:
                seat.probe = None
            if done.cancelled() or seat.lost.done():
                return
            if done.exception() is not None:
                self._lose(seat, f"its process died ({type(done.exception()).__name__})")
                return
            seat.answered_at = time.monotonic()
            if not seat.ready:
                self._ever_ready = True
                seat.ready, seat.pid, seat.progress_at = True, done.result(), seat.answered_at
                if self._processes is not None:
                    self._processes.note()
                self._wake_all()

        probe.add_done_callback(answered)

    def _lose(self, seat: Seat, reason: str, *, counts: bool = True) -> None:
        """The seat's actor counts as lost: its jobs stop waiting for it, and it is stopped and replaced."""
        if seat.lost.done() or seat not in self.seats:
            return
        if self._processes is not None:
            dead = self._processes.dead_daemon()
            if dead is not None:  # not the actor alone: the instance under it
                self._give_up_instance(f"{dead} exited")
                return
        seat.lost.set_result(SeatLost(reason, counts=counts))
        if seat.probe is not None:
            seat.probe.cancel()
        self._retired.append(seat)
        self._stop_actor(seat)
        slot = self.seats.index(seat)
        self.seats[slot] = self._seat(self._spawn())
        self.replaced += 1
        logger.debug("a Ray worker %s; replaced", reason)
        if self.on_worker_lost is not None:
            self.on_worker_lost()
        # The replacement takes jobs once ready; the jobs that waited on the lost actor look for room meanwhile.
        self._wake_all()

    def _stop_actor(self, seat: Seat) -> None:
        """Stop a lost actor for good, so that it makes no more calls for jobs that now run elsewhere."""
        if self._processes is not None and seat.pid is not None:
            # On this machine: at once, and wait until it is gone, so that its checkpoint file can be taken over
            # (its raylet sees it die: nothing to ask of Ray).
            with contextlib.suppress(OSError):
                os.kill(seat.pid, signal.SIGKILL)
            deadline = time.monotonic() + 2.0
            while process_running(seat.pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            return
        # Through Ray (another machine's actor, or one never seen ready): in a thread, as a dead GCS may not answer.
        # `_leave` waits for these threads before Ray stops: Ray ends a process that calls it after `ray.shutdown()`.
        killer = threading.Thread(target=_kill_quietly, args=(seat.actor,), daemon=True, name="ray-kill")
        self._killers.append(killer)
        killer.start()

    def _give_up_instance(self, reason: str) -> None:
        """The local instance is dead: stop what is left of it, and run everything in this process from now on."""
        if self.instance_lost is not None:
            return
        self.instance_lost = reason
        held = sum(seat.busy for seat in self.seats)
        if held:
            logger.warning("note: the local Ray instance died (%s); its %d %s run again here", reason, held,
                           self.unit if held != 1 else self.unit[:-1] or "job")
        else:
            logger.warning("note: the local Ray instance died (%s); this process runs the rest alone", reason)
        seats, self.seats = self.seats, []
        self._retired += seats
        if self._processes is not None:
            self._processes.kill_all()
        # The owner thread leaves Ray now: Ray's threads in this process would otherwise go on polling the dead
        # daemons (one spins on a GIL-holding poll, slowing the driver by a third).
        self._stop.set()
        for seat in seats:
            if not seat.lost.done():
                seat.lost.set_result(SeatLost(reason, counts=False))
            if seat.probe is not None:
                seat.probe.cancel()
        slots = self.local.call_slots
        if slots is not None and self._driver_limit is not None:
            slots.resize(self._driver_limit)  # the driver takes back the call slots the actors held
            if self.on_share is not None:
                self.on_share(1.0)
        if self.on_worker_lost is not None:
            self.on_worker_lost()  # their checkpoint files come back to the driver's
        self._wake_all()

    def _give_up_pool(self, reason: str) -> None:
        """A cluster's workers are all lost: every job stops, and the run says so."""
        where = f"the Ray cluster at {ray_address_in_use(self.address)}"
        self.pool_lost = f"lost {where}: {reason}"
        for seat in self.seats:
            if not seat.lost.done():
                seat.lost.set_result(SeatLost(self.pool_lost, counts=False))
        self._wake_all()
        if self.on_pool_lost is not None:
            self.on_pool_lost(self.pool_lost)

    # --- jobs -----------------------------------------------------------------------------------------------------

    def _room(self) -> tuple[bool, int | None]:
        """(True, worker) for the worker with the most room (None: the driver's runner); (False, None): all full."""
        best: tuple[float, int | None] | None = None
        if self.local_runs_jobs and self.local_busy < self._capacity(None):
            best = (self.local_busy / self._capacity(None), None)
        slots = self.local.call_slots
        if slots is not None and not slots.within_limit():
            # Just after the actors joined: the driver's calls above its share are still out.
            return (True, best[1]) if best is not None else (False, None)
        for slot, seat in enumerate(self.seats):
            load = seat.busy / self._capacity(slot)
            if seat.ready and seat.busy < self._capacity(slot) and (best is None or load < best[0]):
                best = (load, slot)
        return (True, best[1]) if best is not None else (False, None)

    async def _admit(self) -> Seat | None:
        """Wait for room on some worker and take it; returns the worker's seat (None: the driver's runner)."""
        while True:
            if self.pool_lost is not None:
                raise PoolLost(self.pool_lost)
            found, slot = self._room()
            if found:
                if slot is None:
                    self.local_busy += 1
                    return None
                seat = self.seats[slot]
                if not seat.busy:
                    seat.progress_at = time.monotonic()
                seat.busy += 1
                return seat
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting_for_room.append(waiter)
            await waiter

    def _release(self, seat: Seat | None) -> None:
        if seat is None:
            self.local_busy -= 1
        else:
            seat.busy -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiting_for_room:
            waiter = self._waiting_for_room.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def _wake_all(self) -> None:
        waiting, self._waiting_for_room = self._waiting_for_room, []
        for waiter in waiting:
            if not waiter.done():
                waiter.set_result(None)

    async def _on_seat(self, seat: Seat, call: Any) -> Any:
        """The result of a call to the seat's actor; SeatLost the moment the actor counts as lost."""
        if seat.lost.done():
            raise seat.lost.result()
        reply = asyncio.ensure_future(call)
        try:
            await asyncio.wait((reply, seat.lost), return_when=asyncio.FIRST_COMPLETED)
            if reply.done():
                return reply.result()
            raise seat.lost.result()
        finally:
            if not reply.done():
                reply.cancel()

    async def run(self, key: str, payload: Any) -> Any:
        """Run a job on the worker with the most room; if that worker is lost, again (on another or its replacement)."""
        deaths = 0
        while True:
            seat = await self._admit()
            began = time.monotonic()
            try:
                if seat is None:
                    self._began_total += began
                    result = await self.local.run(key, payload)
                else:
                    try:
                        result = await self._on_seat(seat, seat.actor.run.remote(key, payload))
                    except _actor_died() as error:
                        self._lose(seat, f"its process died ({type(error).__name__})")
                        deaths += 1
                        if deaths >= MAX_DEATHS_PER_JOB:
                            raise WorkerLost(f"its worker process died {deaths} times while running it "
                                             f"({type(error).__name__})") from error
                        continue
                    except SeatLost as lost:
                        if self.pool_lost is not None:
                            raise PoolLost(self.pool_lost) from None
                        deaths += lost.counts
                        if deaths >= MAX_DEATHS_PER_JOB:
                            raise WorkerLost(f"its worker was lost {deaths} times while running it ({lost})") from None
                        continue
                    seat.progress_at = seat.answered_at = time.monotonic()
                    self.finished_on_ray += 1
                if self.forgets:
                    self._ran_on[key] = seat
                self.finished += 1
                took = time.monotonic() - began
                self._finished_job_s += took
                self._slowest_job_s = max(self._slowest_job_s, took)
                return result
            finally:
                if seat is None:
                    self._began_total -= began
                self._release(seat)

    async def forget(self, key: str) -> None:
        """Tell the worker that ran a job that the driver has committed it (a lost worker has nothing to drop)."""
        if key not in self._ran_on:
            return
        seat = self._ran_on.pop(key)
        if seat is None:
            await self.local.forget(key)
        elif seat in self.seats:
            with contextlib.suppress(SeatLost, _actor_died()):
                await self._on_seat(seat, seat.actor.forget.remote(key))

    def where_jobs_ran(self) -> str:
        """One line saying how many jobs the Ray workers and this process each finished (the run's share on Ray)."""
        here = self.finished - self.finished_on_ray
        place = "the cluster's Ray workers" if not self.local_runs_jobs else "the Ray workers"
        return (f"note: {place} finished {self.finished_on_ray} {self.unit} and this process {here}"
                + (f" (the local instance was lost: {self.instance_lost})" if self.instance_lost else ""))

    def shutdown(self, *, wait: bool = True) -> None:
        """Close the workers' stores, then leave Ray (stopping the local instance if this pool started it).

        A local instance still starting is waited for first: its processes must not outlive the command. With
        `wait=False`, a local instance stops in the background once the workers' stores are closed (stopping Ray's
        processes takes over a second, which the command's export can use): `finish_leaving` waits for it, and
        the interpreter does at exit. Leaving never holds the command for long: a dead or half-dead instance's
        processes are stopped by the pool itself after `LEAVE_TIMEOUT_S`.
        """
        # `_adopt` may still be queued on the loop: from now on it hands nothing over.
        self._closed = True
        for task in (self._watch, self._health):
            if task is not None:
                task.cancel()
        if self._owner is None and self._local_instance:
            if self._start_watch is not None:
                logger.warning("note: no local Ray instance was started: %s; this process ran every job "
                               "(--ray-start at-once starts one at once)", self._start_watch.why_not)
        elif self._owner is not None:
            self._stop.set()
            with _LEAVING_LOCK:
                _LEAVING[self._owner] = self
            if wait:
                finish_leaving()
            else:
                self._stores_closed.wait(CLOSE_TIMEOUT_S + LEAVE_TIMEOUT_S)
        else:
            leaving = threading.Thread(target=self._leave, args=(_ray(),), daemon=True, name="ray-leave")
            leaving.start()
            # A lost cluster has no store to close and its GCS will not answer: the run's line comes first.
            leaving.join(LEAVE_TIMEOUT_S if self.pool_lost is not None else CLOSE_TIMEOUT_S + LEAVE_TIMEOUT_S)
        # The seats (and their actor handles) are dropped by `_leave`, once Ray has stopped.

    def _leave(self, ray: Any) -> None:
        """Close the actors' stores, then leave Ray, then stop what is left of a local instance."""
        try:
            # Seats exist once actors were adopted (a local instance) or placed (a cluster); before that, only placed.
            actors = [seat.actor for seat in self.seats if seat.ready] if self.seats else self._placed
            if ray.is_initialized() and actors and self.instance_lost is None and self.pool_lost is None:
                with contextlib.suppress(Exception):
                    ray.get([actor.close.remote() for actor in actors], timeout=CLOSE_TIMEOUT_S)
        finally:
            self._stores_closed.set()
        for killer in self._killers:
            killer.join(LEAVE_TIMEOUT_S)
        if ray.is_initialized():
            ray.shutdown()
        # Ray is down: its handles can go now (see `_retired`).
        self._retired, self._placed, self.seats = [], [], []
        self.stop_leftovers()

    def stop_leftovers(self) -> int:
        """SIGKILL whatever of the local instance still runs (Ray leaves some processes of a half-dead one)."""
        return self._processes.kill_all() if self._processes is not None else 0


def _kill_quietly(actor: Any) -> None:
    with contextlib.suppress(Exception):
        _ray().kill(actor, no_restart=True)
