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

A worker that dies (killed, out of memory, its machine gone) is replaced, and the jobs it held are run
again on the worker with the most room; a job that takes down its worker `MAX_DEATHS_PER_JOB` times fails with
`WorkerLost` instead of hanging the run.

Ray itself is imported only when a pool starts (`--workers` above 1, or an address): it is the optional
extra `fellowship[ray]`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import ipaddress
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any, Literal

from agents.call_budget import jobs_in_flight
from agents.loop_executor import use_steps_on_loop
from agents.models import PREFLIGHT_TIMEOUT_S, ModelSettings, connect_problem
from tools.errors import ConfigError, FellowshipError

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
RayStart = Literal["when-busy", "at-once"]
_INIT_OPTIONS: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
                                 "ignore_reinit_error": True}
logger = logging.getLogger(__name__)
# Owner threads of local instances still stopping after `shutdown(wait=False)` (see `finish_leaving`).
_LEAVING: set[threading.Thread] = set()
_LEAVING_LOCK = threading.Lock()


def finish_leaving() -> None:
    """Wait until every local Ray instance this process started has been stopped (`ray.shutdown` has returned).

    `RayWorkerPool.shutdown(wait=False)` leaves the stopping to the instance's owner thread, so that the command's
    last work (the export) runs meanwhile; this waits for it. Called at interpreter exit, and before another
    local instance starts (two instances must not start and stop at once in one process).
    """
    with _LEAVING_LOCK:
        leaving = list(_LEAVING)
    for thread in leaving:
        thread.join()
        with _LEAVING_LOCK:
            _LEAVING.discard(thread)


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
            use_steps_on_loop(asyncio.get_running_loop())
            on_driver_machine = _ray().get_runtime_context().get_node_id() == self._driver_node
            self._runner = self._job(on_driver_machine)
        return self._runner

    async def ready(self) -> None:
        """Build the runner now (imports, models, stores), so that the first job does not wait for it."""
        self._ready()

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
    """`workers` processes running jobs: this one and Ray actors on a local instance, or actors on a cluster.

    `job(on_driver_machine)` builds an actor's runner: an object with `async run(key, payload)`,
    `async forget(key)` and `close()`. `local` is the driver's own runner of the same kind (with `call_slots`);
    it works while a local instance starts and then beside its actors, keeping its share of the run's call
    slots (`actor_calls` each for the actors, the rest for itself). Each worker holds `jobs_in_flight` of its
    call slots in jobs; a job goes to the worker with the most room, and waits while every worker is full.
    `jobs` is how many jobs the run has, for `start="when-busy"` to judge the work left; `on_worker_lost` is
    called when a dead worker has been replaced, before its jobs run again.
    """

    def __init__(
        self, job: Callable[[bool], Any], *, workers: int, address: str | None, local: Any, actor_calls: int,
        jobs: int, start: RayStart = "when-busy", forgets: bool = True,
        on_worker_lost: Callable[[], None] | None = None,
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
        self.finished = 0  # jobs that have returned a result
        self._finished_job_s = 0.0  # the seconds the finished jobs took, together (their mean: `LocalStartWatch`)
        self._began_total = 0.0  # the start times of the driver's jobs in flight, summed (their mean age: the same)
        self.joined_after_s: float | None = None  # when a local instance's actors joined, from `start`
        self.local_busy = 0
        self.actors: list[Any] = []
        self.busy: list[int] = []
        self.replaced = 0
        self._ran_on: dict[str, Any] = {}
        self._environment = forwarded_environment()
        self._driver_node = ""
        self._waiting_for_room: list[asyncio.Future[None]] = []
        self._owner: threading.Thread | None = None
        self._local_instance = False  # this pool works beside a local instance (started now or later)
        self._started_at = 0.0
        self._watch: asyncio.Task[None] | None = None
        self._start_watch: LocalStartWatch | None = None
        self._stop = threading.Event()
        self._placed: list[Any] = []
        self._closed = False
        self._stores_closed = threading.Event()  # the actors have closed their stores (Ray may still be stopping)

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
        if joining:
            ray = _ray()
            _leave_at_exit()
            self._join(ray, joining)
            self.actors = [self._spawn() for _ in range(self.workers)]
            self.busy = [0] * self.workers
            return
        if find_spec("ray") is None:  # the same one-line error as on a cluster, before any work rather than later
            _ray()
        self._local_instance = True
        self._started_at = time.monotonic()
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
        try:
            # address="local": a new instance of our own, even where a `ray start` cluster runs on this machine
            # (Ray would otherwise join that one).
            ray.init(address="local", num_cpus=self.workers - 1, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                     _node_ip_address="127.0.0.1", **_INIT_OPTIONS)
            self._driver_node = ray.get_runtime_context().get_node_id()
            actors = [self._spawn() for _ in range(self.workers - 1)]
            self._placed = actors  # for `shutdown`, should the run end before they are handed over
            ray.get([actor.ready.remote() for actor in actors])
        except Exception as error:  # the run goes on in this process alone, and says so
            logger.warning("note: the local Ray instance did not start (%s); this process runs every job alone",
                           str(error).splitlines()[0] if str(error) else type(error).__name__)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the run ended first, shutdown cleans up
            loop.call_soon_threadsafe(self._adopt, actors, started)

    def _adopt(self, actors: list[Any], instance_started: float) -> None:
        """(On the loop.) The actors take jobs from now on; the driver keeps the call slots the actors do not take."""
        if self._closed:
            return
        now = time.monotonic()
        self.joined_after_s = now - self._started_at
        waited = "" if self.start_policy == "at-once" else f", started {instance_started - self._started_at:.1f} s in"
        logger.warning("note: %d Ray worker%s joined after %.1f s (the local instance's start-up%s); this process ran "
                       "the work until then and goes on with its share", len(actors), "" if len(actors) == 1 else "s",
                       now - instance_started, waited)
        self.busy = [0] * len(actors)
        self.actors = actors
        slots = self.local.call_slots
        if slots is not None:
            slots.limit = max(1, slots.limit - len(actors) * self.actor_calls)
        # Room has appeared: every job waiting for it looks again (those that find none wait again).
        waiting, self._waiting_for_room = self._waiting_for_room, []
        for waiter in waiting:
            if not waiter.done():
                waiter.set_result(None)

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

    def _replace(self, slot: int, dead: Any) -> None:
        if self.actors[slot] is dead:  # the first job to see the death replaces the worker; the others follow
            with contextlib.suppress(Exception):
                _ray().kill(dead, no_restart=True)
            self.actors[slot] = self._spawn()
            self.replaced += 1
            if self.on_worker_lost is not None:
                self.on_worker_lost()

    def _room(self) -> tuple[bool, int | None]:
        """(True, worker) for the worker with the most room (None: the driver's runner); (False, None): all full."""
        best: tuple[float, int | None] | None = None
        if self.local_runs_jobs and self.local_busy < self._capacity(None):
            best = (self.local_busy / self._capacity(None), None)
        for slot, busy in enumerate(self.busy):
            load = busy / self._capacity(slot)
            if busy < self._capacity(slot) and (best is None or load < best[0]):
                best = (load, slot)
        return (True, best[1]) if best is not None else (False, None)

    async def _admit(self) -> int | None:
        """Wait for room on some worker and take it; returns the worker (None: the driver's runner)."""
        while True:
            found, slot = self._room()
            if found:
                if slot is None:
                    self.local_busy += 1
                else:
                    self.busy[slot] += 1
                return slot
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting_for_room.append(waiter)
            await waiter

    def _release(self, slot: int | None) -> None:
        if slot is None:
            self.local_busy -= 1
        else:
            self.busy[slot] -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiting_for_room:
            waiter = self._waiting_for_room.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    async def run(self, key: str, payload: Any) -> Any:
        """Run a job on the worker with the most room; on an actor's death, again (on another, or its replacement)."""
        deaths = 0
        while True:
            slot = await self._admit()
            try:
                worker = self.local if slot is None else self.actors[slot]
                began = time.monotonic()
                if slot is None:
                    self._began_total += began
                try:
                    result = await (self.local.run(key, payload) if slot is None else worker.run.remote(key, payload))
                except _actor_died() as error:
                    deaths += 1
                    self._replace(slot, worker)  # type: ignore[arg-type]  # only an actor dies this way
                    if deaths >= MAX_DEATHS_PER_JOB:
                        raise WorkerLost(f"its worker process died {deaths} times while running it "
                                         f"({type(error).__name__})") from error
                    continue
                if self.forgets:
                    self._ran_on[key] = worker
                self.finished += 1
                self._finished_job_s += time.monotonic() - began
                return result
            finally:
                if slot is None:
                    self._began_total -= began
                self._release(slot)

    async def forget(self, key: str) -> None:
        """Tell the worker that ran a job that the driver has committed it (a dead worker has nothing to drop)."""
        worker = self._ran_on.pop(key, None)
        if worker is self.local:
            await self.local.forget(key)
        elif worker is not None:
            with contextlib.suppress(_actor_died()):
                await worker.forget.remote(key)

    def shutdown(self, *, wait: bool = True) -> None:
        """Close the workers' stores, then leave Ray (stopping the local instance if this pool started it).

        A local instance still starting is waited for first: its processes must not outlive the command. With
        `wait=False`, a local instance stops in the background once the workers' stores are closed (stopping Ray's
        processes takes over a second, which the command's export can use): `finish_leaving` waits for it, and
        the interpreter does at exit.
        """
        # `_adopt` may still be queued on the loop: from now on it hands nothing over.
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
        if self._owner is None and self._local_instance:
            if self._start_watch is not None:
                logger.warning("note: no local Ray instance was started: %s; this process ran every job "
                               "(--ray-start at-once starts one at once)", self._start_watch.why_not)
        elif self._owner is not None:
            self._stop.set()
            if wait:
                self._owner.join()
            else:
                with _LEAVING_LOCK:
                    _LEAVING.add(self._owner)
                self._stores_closed.wait()
        else:
            self._leave(_ray())
        self.actors = []

    def _leave(self, ray: Any) -> None:
        """Close the actors' stores, then leave Ray."""
        try:
            if ray.is_initialized():
                with contextlib.suppress(Exception):
                    ray.get([actor.close.remote() for actor in self.actors or self._placed], timeout=10)
        finally:
            self._stores_closed.set()
        if ray.is_initialized():
            ray.shutdown()
