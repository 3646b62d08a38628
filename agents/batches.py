"""Provider batch APIs under the graphs (`--batch`): each chat call waits in a queue per model for a batch.

The graphs do not change. A `--batch` run's models send their chat requests through `BatchTransport`, an HTTP
transport that answers `POST .../chat/completions` itself: it hands the request body to the run's
`BatchCoordinator` and returns the line's result as the HTTP response the provider would have sent, so the
openai client, LangChain, tracing and the call cache above it work as for any call. The coordinator keeps a
queue per (endpoint, model); a queue is sent as one batch when it holds `size` requests (default: the
provider's limit, also in bytes) or `wait_s` seconds after its first request, and each line's result goes back
to the graph step waiting for it by `custom_id`. Every prompt of a run is under way at once, so each step of the
pipeline is one batch round trip for all of them.

Nothing is paid twice (agents/batch_store.py): a line's `custom_id` is a hash of its endpoint and request
body (with a count for identical requests in one process), so the same call made again after a kill has the
same id. Before a batch is sent its request file and lines are committed; its provider id is committed the
moment the provider returns it (a batch created just before a kill is found again by the run token in its
metadata). A run started again re-attaches to the batches still out, takes finished lines' results without a
request, waits for lines a live batch holds, and sends only the rest. Lines that failed, expired or were
cancelled are sent again in a later batch, at most `max_retries` times each in a process; a batch the provider
refuses (its validation failed) fails its lines with an EndpointError, which stops the run in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2

from agents.batch_store import FINISHED_STATUSES, BatchStore, OutgoingLine, StoredBatch
from agents.models import BatchSettings
from agents.rate_limits import call_meter
from tools.errors import EndpointError
from tools.rules.secrets import mask_secrets

logger = logging.getLogger(__name__)

BATCH_ENDPOINT = "/v1/chat/completions"
# The providers' limits on one batch: requests and bytes of the request file (OpenAI: 50,000 and 200 MB;
# Together: 50,000 and 100 MB). An OpenAI-compatible server's batch routes get OpenAI's.
PROVIDER_LIMITS = {"openai": (50_000, 200_000_000), "together": (50_000, 100_000_000),
                   "compat": (50_000, 200_000_000)}
MAX_POLL_S = 60.0  # a batch takes minutes to hours: polling slows down to this, and no further
LIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling", "queued", "running")


@dataclass(frozen=True)
class BatchEndpoint:
    """An endpoint's batch API: its base URL, provider (which dialect it speaks) and key (never written anywhere)."""

    base_url: str
    provider: str
    api_key: str = field(repr=False)


class BatchRefused(Exception):
    """The provider would not take a batch (an HTTP error no retry fixes, or a batch that failed validation)."""


@dataclass
class WaitingCall:
    """A graph step waiting for a line's result: the line (to send it again if it fails) and its futures."""

    line: OutgoingLine
    key: tuple[str, str]
    futures: list[asyncio.Future[tuple[int, Any]]] = field(default_factory=list)
    sends: int = 0  # how often this process sent the line


@dataclass
class Queue:
    """Lines of one (endpoint, model) waiting to be sent, their request-file lines and size."""

    lines: list[tuple[OutgoingLine, str]] = field(default_factory=list)
    bytes: int = 0
    timer: asyncio.TimerHandle | None = None


def provider_status(view: dict[str, Any]) -> str:
    """A batch's status in OpenAI's lower-case words (Together writes them in capitals)."""
    return str(view.get("status", "")).lower()


def request_counts(view: dict[str, Any]) -> tuple[int, int, int]:
    """(total, completed, failed) requests of a batch as the provider reports them (Together: from `progress`)."""
    counts = view.get("request_counts")
    if isinstance(counts, dict):
        return int(counts.get("total") or 0), int(counts.get("completed") or 0), int(counts.get("failed") or 0)
    total = int(view.get("request_count") or 0)
    return total, round(total * float(view.get("progress") or 0) / 100), 0


def refusal_text(view: dict[str, Any]) -> str:
    """Why a batch failed, in a few words: the provider's first error, with its line."""
    errors = view.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    if data:
        first = data[0]
        where = f"line {first.get('line')}: " if first.get("line") is not None else ""
        return f"{where}{first.get('message')} ({first.get('code')})"
    return str(view.get("error") or "no reason given")


class BatchCoordinator:
    """The queues, batches and results of one run's `--batch` calls (one per ModelRegistry, in its event loop)."""

    def __init__(self, settings: BatchSettings, *, on_event: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.on_event = on_event
        self.store = BatchStore(settings.directory)
        self.endpoints: dict[str, BatchEndpoint] = {}
        self.specs: dict[tuple[str, str], str] = {}
        self._occurrences: Counter[str] = Counter()
        self._waiting: dict[str, WaitingCall] = {}
        self._queues: dict[tuple[str, str], Queue] = {}
        self._live: dict[str, StoredBatch] = {}
        self._attached: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._http: httpx2.AsyncClient | None = None
        self.sent = 0  # batches this process created or re-attached to
        self.finished = 0
        self._counts: dict[str, tuple[int, int, int]] = {}

    def register(self, base_url: str, model: str, *, provider: str, spec: str, api_key: str) -> None:
        """Say which provider answers at `base_url` and which spec a model there is (for messages)."""
        self.endpoints[base_url] = BatchEndpoint(base_url, provider, api_key)
        self.specs[(base_url, model)] = spec

    def _event(self, line: str) -> None:
        if self.on_event is not None:
            self.on_event(line)
        else:
            logger.info("%s", line)

    def status(self) -> str:
        """One line for the progress display: batches sent, in progress, done, and the provider's request counts."""
        if not self.sent:
            queued = sum(len(queue.lines) for queue in self._queues.values())
            return f"batch queue: {queued} requests" if queued else ""
        total = sum(counts[0] for name, counts in self._counts.items() if name in self._live)
        completed = sum(counts[1] for name, counts in self._counts.items() if name in self._live)
        failed = sum(counts[2] for name, counts in self._counts.items() if name in self._live)
        detail = f" ({completed}/{total} requests done{f', {failed} failed' if failed else ''})" if total else ""
        return f"batches: {self.sent} sent, {len(self._live)} in progress{detail}, {self.finished} done"

    # -- the calls ------------------------------------------------------------------------------------------

    async def submit(self, base_url: str, body: dict[str, Any]) -> tuple[int, Any]:
        """A chat request's (HTTP status, response body) by batch.

        From an earlier run's result, a live batch holding the line, or a new batch.
        """
        await self._attach(base_url)
        meter = call_meter.get()
        if meter is not None:
            meter.batched = True
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(f"{base_url}\n{canonical}".encode()).hexdigest()[:32]
        custom_id = f"{digest}-{self._occurrences[digest]}"  # identical requests in one process stay apart
        self._occurrences[digest] += 1
        stored = self.store.line(custom_id)
        if stored is not None and stored.state == "done":  # paid for and downloaded by an earlier run
            return stored.status or 200, stored.result
        future: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.get(custom_id)
        if waiting is None:
            line = OutgoingLine(custom_id, body, meter.item if meter else None, meter.run if meter else None,
                                attempts=(stored.attempts + 1) if stored is not None else 1)
            waiting = self._waiting[custom_id] = WaitingCall(line, (base_url, str(body.get("model"))))
        waiting.futures.append(future)
        held_by_live_batch = stored is not None and stored.state == "sent" and stored.batch in self._live
        if not held_by_live_batch and waiting.sends == 0:
            self._enqueue(waiting)
        try:
            return await future
        finally:
            if custom_id in self._waiting:
                waiting.futures = [other for other in waiting.futures if other is not future]
                if not waiting.futures:
                    del self._waiting[custom_id]

    def _enqueue(self, waiting: WaitingCall) -> None:
        key = waiting.key
        waiting.sends += 1
        queue = self._queues.setdefault(key, Queue())
        text = waiting.line.request_line(BATCH_ENDPOINT)
        size = len(text.encode("utf-8"))
        most_requests, most_bytes = self._limits(key)
        if queue.lines and queue.bytes + size > most_bytes:
            self._send_queue(key)
            queue = self._queues.setdefault(key, Queue())
        queue.lines.append((waiting.line, text))
        queue.bytes += size
        if len(queue.lines) >= most_requests:
            self._send_queue(key)
        elif queue.timer is None:
            queue.timer = asyncio.get_running_loop().call_later(self.settings.wait_s, self._send_queue, key)

    def _limits(self, key: tuple[str, str]) -> tuple[int, int]:
        endpoint = self.endpoints.get(key[0])
        most_requests, most_bytes = PROVIDER_LIMITS.get(endpoint.provider if endpoint else "compat",
                                                        PROVIDER_LIMITS["compat"])
        return min(self.settings.size or most_requests, most_requests), most_bytes

    def _send_queue(self, key: tuple[str, str]) -> None:
        queue = self._queues.pop(key, None)
        if queue is None or not queue.lines:
            return
        if queue.timer is not None:
            queue.timer.cancel()
        self._spawn(self._send(key, queue.lines))

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- batches --------------------------------------------------------------------------------------------

    async def _send(self, key: tuple[str, str], lines: list[tuple[OutgoingLine, str]]) -> None:
        base_url, model = key
        endpoint = self.endpoints[base_url]
        spec = self.specs.get(key, f"{endpoint.provider}:{model}")
        name = self.store.next_name()
        data = "".join(text for _, text in lines).encode("utf-8")
        path = self.store.prepare(name, base_url=base_url, model=model, spec=spec,
                                  lines=[line for line, _ in lines], data=data)
        self._live[name] = self.store.batch(name)
        self.sent += 1
        creating = False
        try:
            file_id = await self._upload(endpoint, name, data)
            self.store.update_batch(name, input_file_id=file_id)
            creating = True
            view = await self._create(endpoint, file_id, name)
        except Exception as refusal:  # refused, or an answer this client cannot read: its calls must not wait on
            if isinstance(refusal, BatchRefused):
                self.store.update_batch(name, status="refused", note=str(refusal))
            else:
                # The provider may have made the batch all the same: left `prepared`, the next run looks for it by
                # its metadata before sending any of its lines again.
                refusal = BatchRefused(f"{type(refusal).__name__}: {mask_secrets(str(refusal))[:160]}")
                if not creating:
                    self.store.update_batch(name, status="refused", note=str(refusal))
            self._live.pop(name, None)
            self.finished += 1
            error = EndpointError(spec, f"batch {name} ({path}) was not taken: {refusal}")
            for line, _ in lines:
                self._fail(line.custom_id, error)
            return
        self.store.update_batch(name, provider_id=str(view["id"]), status=provider_status(view) or "validating")
        self._live[name] = self.store.batch(name)
        self._event(f"batch {name} sent: {len(lines)} requests to {spec} ({view['id']}; {path})")
        self._ensure_poller()

    def _fail(self, custom_id: str, error: BaseException) -> None:
        waiting = self._waiting.pop(custom_id, None)
        for future in waiting.futures if waiting else []:
            if not future.done():
                future.set_exception(error)

    def _resolve(self, custom_id: str, status: int, payload: Any) -> None:
        waiting = self._waiting.pop(custom_id, None)
        for future in waiting.futures if waiting else []:
            if not future.done():
                future.set_result((status, payload))

    async def _attach(self, base_url: str) -> None:
        """Once per endpoint and process: re-attach to the batches an earlier run left out at it."""
        lock = self._attached.get(base_url)
        if lock is None:
            lock = self._attached[base_url] = asyncio.Lock()
            async with lock:
                for batch in self.store.batches(unfinished=True):
                    if batch.base_url == base_url:
                        await self._reattach(batch)
            return
        async with lock:  # another call is re-attaching: its batches must be known before this one looks
            return

    async def _reattach(self, batch: StoredBatch) -> None:
        endpoint = self.endpoints.get(batch.base_url)
        if endpoint is None:
            return
        if batch.provider_id is None:
            found = await self._find_by_metadata(endpoint, batch.name)
            if found is None:  # never created: its lines are sent again, in a new batch, when asked for
                self.store.update_batch(batch.name, status="unsent")
                return
            self.store.update_batch(batch.name, provider_id=str(found["id"]), status=provider_status(found))
        self._live[batch.name] = self.store.batch(batch.name)
        self.sent += 1
        self._event(f"re-attached to batch {batch.name} ({self._live[batch.name].provider_id}, "
                    f"{batch.requests} requests to {batch.spec}), sent by an earlier run")
        self._ensure_poller()

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        while self._live:
            # A batch is polled about five times over its age so far (at least every `poll_s` seconds, at most every
            # MAX_POLL_S): one answered in seconds is seen within a second, one of hours costs a request a minute.
            youngest_s = time.time() - max(batch.created_at for batch in self._live.values())
            await asyncio.sleep(min(MAX_POLL_S, max(self.settings.poll_s, 0.2 * youngest_s)))
            for name, batch in list(self._live.items()):
                if batch.provider_id is None:
                    continue  # still being created
                endpoint = self.endpoints[batch.base_url]
                try:
                    view = await self._request(endpoint, "GET", f"/batches/{batch.provider_id}")
                except (BatchRefused, httpx2.HTTPError) as problem:
                    logger.warning("note: batch %s: cannot read its status (%s); trying again",
                                   name, mask_secrets(str(problem)))
                    continue
                view = view.get("job", view)
                status = provider_status(view)
                counts = request_counts(view)
                if (status, counts) != (batch.status, self._counts.get(name)):
                    self._counts[name] = counts
                    batch.status = status
                    self.store.update_batch(name, status=status if status not in FINISHED_STATUSES else "finalizing",
                                            completed=counts[1], failed=counts[2])
                if status in FINISHED_STATUSES:
                    try:
                        await self._finish(batch, view, endpoint)
                    except Exception as error:  # results this client cannot read: the calls stop waiting
                        self._give_up(batch, f"its results could not be read ({type(error).__name__}: "
                                             f"{mask_secrets(str(error))[:160]})")

    def _give_up(self, batch: StoredBatch, reason: str) -> None:
        """Fail the calls waiting on a batch, leaving it recorded as unfinished: the next run re-attaches to it."""
        self._live.pop(batch.name, None)
        error = EndpointError(batch.spec, f"batch {batch.name} ({batch.provider_id}): {reason}")
        for line in self.store.lines_of(batch.name):
            self._fail(line.custom_id, error)

    async def _finish(self, batch: StoredBatch, view: dict[str, Any], endpoint: BatchEndpoint) -> None:
        """Take a finished batch's results: keep them, route them by custom_id, send failed lines again."""
        status = provider_status(view)
        name = batch.name
        lines = {line.custom_id: line for line in self.store.lines_of(name)}
        if status == "failed":
            reason = refusal_text(view)
            self.store.finish(name, [(custom_id, "failed", None, None) for custom_id in lines],
                              status="failed", note=reason)
            self._live.pop(name, None)
            self.finished += 1
            error = EndpointError(batch.spec, f"batch {name} failed validation at the provider: {reason} "
                                              f"(request file {self.store.request_file(name)})")
            self._event(f"batch {name} failed validation: {reason}")
            for custom_id in lines:
                self._fail(custom_id, error)
            return
        entries: list[dict[str, Any]] = []
        for file_key in ("output_file_id", "error_file_id"):
            if view.get(file_key):
                try:
                    entries += await self._download(endpoint, str(view[file_key]))
                except (BatchRefused, httpx2.HTTPError) as problem:
                    logger.warning("note: batch %s: cannot download its results yet (%s)", name,
                                   mask_secrets(str(problem)))
                    return  # the next poll tries again
        results: list[tuple[str, str, int | None, Any]] = []
        answered: dict[str, tuple[int, Any]] = {}
        failed: dict[str, tuple[int, Any]] = {}
        for entry in entries:
            custom_id = str(entry.get("custom_id"))
            if custom_id not in lines or custom_id in answered:
                continue
            response = entry.get("response") or {}
            code = response.get("status_code")
            payload = response.get("body")
            if code == 200 and isinstance(payload, dict):
                answered[custom_id] = (200, payload)
                results.append((custom_id, "done", 200, payload))
                continue
            said = entry.get("error") or {}
            payload = payload if isinstance(payload, dict) else {
                "error": {"message": str(said.get("message") or "no result"), "code": said.get("code")}}
            failed[custom_id] = (int(code or 500), payload)
        for custom_id in lines:
            if custom_id not in answered and custom_id not in failed:  # in neither file: cancelled or lost
                failed[custom_id] = (500, {"error": {"message": f"no result in batch {name} ({status})",
                                                     "code": f"batch_{status}"}})
        results += [(custom_id, "failed", code, payload) for custom_id, (code, payload) in failed.items()]
        total, completed, failed_count = len(lines), len(answered), len(failed)
        self.store.finish(name, results, status=status, completed=completed, failed=failed_count)
        self._live.pop(name, None)
        self.finished += 1
        for custom_id, (code, payload) in answered.items():
            self._resolve(custom_id, code, payload)
        again = 0
        for custom_id, (code, payload) in failed.items():
            waiting = self._waiting.get(custom_id)
            retryable = code in (408, 409, 429) or code >= 500
            if waiting is not None and retryable and waiting.sends <= self.settings.max_retries:
                waiting.line.attempts += 1
                self._enqueue(waiting)
                again += 1
            else:
                self._resolve(custom_id, code, payload)
        note = f"; {failed_count} failed ({again} sent again in a later batch)" if failed_count else ""
        self._event(f"batch {name} {status}: {completed} of {total} requests done{note}")

    # -- the provider's API ---------------------------------------------------------------------------------

    async def _client(self) -> httpx2.AsyncClient:
        if self._http is None:
            self._http = httpx2.AsyncClient(timeout=httpx2.Timeout(300.0, connect=10.0))
        return self._http

    async def _request(self, endpoint: BatchEndpoint, method: str, path: str, **kwargs: Any) -> Any:
        """One call to the batch API, with retries of 5xx, 429 and connection errors; other errors refuse."""
        client = await self._client()
        headers = {"Authorization": f"Bearer {endpoint.api_key}"}
        for attempt in range(self.settings.max_retries + 1):
            try:
                response = await client.request(method, endpoint.base_url + path, headers=headers, **kwargs)
            except httpx2.TransportError as error:
                if attempt == self.settings.max_retries:
                    raise BatchRefused(f"{method} {path}: cannot connect ({type(error).__name__})") from None
                await asyncio.sleep(min(30.0, 0.5 * 2 ** attempt))
                continue
            if response.status_code < 300:
                return response.json() if "json" in response.headers.get("content-type", "") else response.text
            if (response.status_code in (408, 409, 429) or response.status_code >= 500) \
                    and attempt < self.settings.max_retries:
                await asyncio.sleep(min(30.0, 0.5 * 2 ** attempt))
                continue
            try:
                detail = response.json().get("error", {})
                message = detail.get("message") if isinstance(detail, dict) else detail
            except ValueError:
                message = response.text[:200]
            raise BatchRefused(f"{method} {path} answered HTTP {response.status_code}: "
                               f"{mask_secrets(str(message))[:200]}")
        raise AssertionError("unreachable")

    async def _upload(self, endpoint: BatchEndpoint, name: str, data: bytes) -> str:
        filename = f"fellowship-{self.store.run_token}-{name}.jsonl"
        if endpoint.provider == "together":
            fields = {"purpose": "batch-api", "file_name": filename, "file_type": "jsonl"}
            found = await self._request(endpoint, "POST", "/files/upload", data=fields,
                                        files={"file": (filename, data, "application/jsonl")})
        else:
            found = await self._request(endpoint, "POST", "/files", data={"purpose": "batch"},
                                        files={"file": (filename, data, "application/jsonl")})
        return str(found["id"])

    async def _create(self, endpoint: BatchEndpoint, file_id: str, name: str) -> dict[str, Any]:
        request = {"input_file_id": file_id, "endpoint": BATCH_ENDPOINT, "completion_window": "24h",
                   "metadata": {"fellowship_run": self.store.run_token, "fellowship_batch": name}}
        found = await self._request(endpoint, "POST", "/batches", json=request)
        view = found.get("job", found) if isinstance(found, dict) else {}
        if "id" not in view:
            raise BatchRefused(f"POST /batches answered without a batch id: {str(found)[:200]}")
        return dict(view)

    async def _find_by_metadata(self, endpoint: BatchEndpoint, name: str) -> dict[str, Any] | None:
        """A batch this run created but whose id it did not get to keep (killed in between), by its metadata."""
        try:
            found = await self._request(endpoint, "GET", "/batches", params={"limit": 100})
        except BatchRefused:
            return None
        entries = found.get("data", []) if isinstance(found, dict) else found if isinstance(found, list) else []
        for entry in entries:
            view = entry.get("job", entry) if isinstance(entry, dict) else {}
            metadata = view.get("metadata") or {}
            if metadata.get("fellowship_run") == self.store.run_token and metadata.get("fellowship_batch") == name:
                return dict(view)
        return None

    async def _download(self, endpoint: BatchEndpoint, file_id: str) -> list[dict[str, Any]]:
        text = await self._request(endpoint, "GET", f"/files/{file_id}/content")
        if not isinstance(text, str):
            text = json.dumps(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    async def aclose(self) -> None:
        """Stop polling and sending; batches still out stay recorded for the next run to re-attach to."""
        for queue in self._queues.values():
            if queue.timer is not None:
                queue.timer.cancel()
        self._queues.clear()
        tasks = [*self._tasks, *([self._poller] if self._poller is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        self.store.close()


class BatchTransport(httpx2.AsyncBaseTransport):
    """An HTTP transport that answers chat-completion requests by batch and sends everything else as usual."""

    def __init__(self, coordinator: BatchCoordinator) -> None:
        self.coordinator = coordinator
        self._direct = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """A chat completion's response from its batch line; any other request as it is."""
        if request.method == "POST" and request.url.path.endswith("/chat/completions"):
            body = json.loads(await request.aread())
            base_url = str(request.url.copy_with(query=None)).removesuffix("/chat/completions")
            started = time.perf_counter()
            status, payload = await self.coordinator.submit(base_url, body)
            logger.debug("batch line answered %s after %.1f s", status, time.perf_counter() - started)
            return httpx2.Response(status, json=payload, request=request)
        return await self._direct.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the direct transport (the coordinator is closed by its registry)."""
        await self._direct.aclose()
