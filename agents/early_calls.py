"""A fresh run's first calls, sent before the graph machinery has loaded: the start-up overlaps their network wait.

Loading LangGraph, LangChain and the openai client takes two seconds on a small machine, and a run's first call
needs all of them. Each prompt's first call is known before any of them loads: the generator's answer to the
prompt, under its system prompt, with the run's temperature and token cap. So `generate` sends these (one per
prompt, as many as `--concurrency`) at once, from threads and with the standard library's HTTP client, then loads
the graphs; when the generator's first call of such a prompt reaches the model's HTTP client, `EarlyReplyClient`
answers it with the early call's HTTP response instead of sending it again, and everything above the HTTP layer
(the openai client, LangChain, tracing, the call's record) is as for any call.

An early reply is used only for a request byte-for-byte equal (as JSON) to the one it answers; any other request
goes out as usual. `tests/test_early_calls.py` checks, for each provider, that the request built here is the one
the client sends, and that a run with early calls pays for no call more than one without. Only a fresh run
directory gets them (a resumed run's first calls are other steps), and never with `--batch`, `--cache`, Ray
workers or a budget (each decides which calls go out, and how) or a `local:` generator (its server starts first).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)
USER_AGENT = "fellowship-early-call"


@dataclass(frozen=True)
class EarlyReply:
    """An early call's HTTP response: status, headers and body, as they came."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def request_key(url: str, body: Any) -> str:
    """What identifies a chat request: its URL and its JSON body, keys sorted."""
    return url + "\n" + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def first_generator_request(provider: str, model: str, prompt: str, system_prompt: str, *, temperature: float,
                            max_tokens: int) -> dict[str, Any]:
    """The body of the generator's first call for a prompt, as the chat model's client sends it.

    ChatOpenAI (`openai:`, `compat:`) names the token cap `max_completion_tokens`, ChatTogether `max_tokens`.
    """
    cap = "max_tokens" if provider == "together" else "max_completion_tokens"
    return {"model": model, "stream": False, "temperature": temperature, cap: max_tokens,
            "messages": [{"content": system_prompt, "role": "system"}, {"content": prompt, "role": "user"}]}


def _post(url: str, api_key: str, body: bytes, timeout_s: float) -> EarlyReply:
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname or "localhost", parts.port, timeout=timeout_s)
    try:
        connection.request("POST", parts.path, body=body, headers={
            "Authorization": f"Bearer {api_key}", "Content-Type": "application/json", "Accept": "application/json",
            "Accept-Encoding": "identity", "User-Agent": USER_AGENT})
        response = connection.getresponse()
        return EarlyReply(response.status, response.getheaders(), response.read())
    finally:
        connection.close()


class EarlyCalls:
    """The early calls of one run: sent at once from threads, each taken at most once by the request it answers."""

    def __init__(self, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._replies: dict[str, concurrent.futures.Future[EarlyReply]] = {}
        self._lock = threading.Lock()

    def send(self, base_url: str, api_key: str, bodies: list[dict[str, Any]]) -> None:
        """Send each body to `base_url`/chat/completions, all at once."""
        if not bodies:
            return
        url = base_url.rstrip("/") + "/chat/completions"
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(bodies), thread_name_prefix="early-call")
        for body in bodies:
            data = json.dumps(body).encode("utf-8")
            self._replies[request_key(url, body)] = self._pool.submit(_post, url, api_key, data, self.timeout_s)

    def take(self, url: str, content: bytes) -> concurrent.futures.Future[EarlyReply] | None:
        """The early call answering this request (URL and JSON body), once; None when there is none."""
        if not self._replies:
            return None
        try:
            key = request_key(url, json.loads(content))
        except ValueError:
            return None
        with self._lock:
            found = self._replies.pop(key, None)
            last = not self._replies
        if last and self._pool is not None:  # every early call is taken: their threads end as their requests do
            self._pool.shutdown(wait=False)
        return found

    def close(self) -> None:
        """Forget the early calls nobody asked for (their threads end with their requests)."""
        if self._replies:
            logger.debug("%d early calls were not used", len(self._replies))
        self._replies.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


async def _early_send(self: Any, base: type[Any], request: Any, **options: Any) -> Any:
    response = await _answer(self, base, request, **options)
    after_first_reply = getattr(self, "after_first_reply", None)
    if after_first_reply is not None:  # once, when the run's first call has its answer
        self.after_first_reply = None
        after_first_reply()
    return response


async def _answer(self: Any, base: type[Any], request: Any, **options: Any) -> Any:
    early: EarlyCalls | None = getattr(self, "early_calls", None)
    if early is not None and request.method == "POST" and request.url.path.endswith("/chat/completions"):
        found = early.take(str(request.url), request.content)
        if found is not None:
            try:
                reply = await asyncio.wrap_future(found)
            except Exception as error:  # the early call never got an answer: this one goes out as usual
                logger.debug("early call failed (%s); sending the request", type(error).__name__)
            else:
                import httpx2  # the HTTP library of the openai client (and of this client)

                # The body came whole and unencoded: the headers about its transfer do not apply any more.
                headers = [(name, value) for name, value in reply.headers
                           if name.lower() not in ("content-length", "transfer-encoding", "connection")]
                return httpx2.Response(reply.status, headers=headers, content=reply.body, request=request)
    return await base.send(self, request, **options)


_EARLY_CLASSES: dict[type[Any], type[Any]] = {}


def early_reply_client_class(base: type[Any]) -> type[Any]:
    """A subclass of an httpx2 AsyncClient class: its `send` answers a request from its `early_calls`, if one does.

    Any other request is sent by the base class. Its `after_first_reply`, if set, is called once, when the first
    answer has come (work that may then load beside the run's calls). Made below the rate-limit pacing
    (`paced_client_class`), which must be the outermost class.
    """
    if base not in _EARLY_CLASSES:

        async def send(self: Any, request: Any, **options: Any) -> Any:
            return await _early_send(self, base, request, **options)

        _EARLY_CLASSES[base] = type(f"EarlyReply{base.__name__}", (base,), {"send": send})
    return _EARLY_CLASSES[base]
