"""A LangSmith-compatible capture server on 127.0.0.1, for tests: it takes what the LangSmith client sends.

It answers `GET /info` (no compression, multipart ingestion on), accepts runs at `POST /runs/multipart`
(multipart/form-data parts named `post.<id>`, `post.<id>.inputs`, `patch.<id>.outputs`...), `POST /runs/batch`
(`{"post": [...], "patch": [...]}`), `POST /runs` and `PATCH /runs/<id>`, and feedback at `POST /feedback`; it
keeps every raw request body (to look for secrets), every run merged by id, and every feedback as sent. It talks to
nobody else and stops when told to.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from tools.dev.stub_server import ThreadedJsonServer

INFO = {
    "version": "0.0.0-capture",
    "instance_flags": {},
    "batch_ingest_config": {
        "use_multipart_endpoint": True, "size_limit": 100, "size_limit_bytes": 20_971_520,
        "scale_up_qsize_trigger": 1000, "scale_up_nthreads_limit": 16, "scale_down_nempty_trigger": 4,
    },
}
_PART_NAME = re.compile(rb'name="([^"]+)"')


@dataclass
class Capture:
    """What arrived: raw bodies and headers of every request, and runs merged by id."""

    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    feedback: list[dict[str, Any]] = field(default_factory=list)

    def merge(self, run: dict[str, Any]) -> None:
        """Add what a request said about a run to what is known of it."""
        run_id = str(run.get("id"))
        self.runs.setdefault(run_id, {}).update({key: value for key, value in run.items() if value is not None})


def _multipart_parts(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    boundary = content_type.split("boundary=", 1)[1].strip().strip('"').encode()
    parts = []
    for chunk in body.split(b"--" + boundary):
        head, separator, payload = chunk.partition(b"\r\n\r\n")
        match = _PART_NAME.search(head)
        if not separator or match is None:
            continue
        parts.append((match.group(1).decode(), payload.removesuffix(b"\r\n")))
    return parts


class LangSmithCapture(ThreadedJsonServer):
    """The capture server; `start_in_thread()` serves it on a free port, `stop()` ends it."""

    def __init__(self) -> None:
        self.capture = Capture()
        super().__init__()

    async def _respond(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, list[str]]:
        path = path.split("?")[0]
        if method == "GET" and path.rstrip("/").endswith("/info"):
            return 200, INFO, []
        self.capture.bodies.append(body)
        self.capture.headers.append(headers)
        if path.rstrip("/").endswith("/feedback"):
            self.capture.feedback.append(json.loads(body or b"{}"))
        elif path.rstrip("/").endswith("/runs/multipart"):
            self._take_multipart(body, headers.get("content-type", ""))
        elif path.rstrip("/").endswith("/runs/batch"):
            batch = json.loads(body or b"{}")
            for run in [*batch.get("post", []), *batch.get("patch", [])]:
                self.capture.merge(run)
        elif "/runs" in path and body:
            run = json.loads(body)
            if method == "PATCH":
                run["id"] = path.rstrip("/").rsplit("/", 1)[-1]
            self.capture.merge(run)
        return 200, {}, []

    def _take_multipart(self, body: bytes, content_type: str) -> None:
        for name, payload in _multipart_parts(body, content_type):
            kind, _, rest = name.partition(".")
            run_id, _, field_name = rest.partition(".")
            if kind not in ("post", "patch") or not run_id:
                continue
            value = json.loads(payload) if payload else None
            if field_name:
                self.capture.merge({"id": run_id, field_name: value})
            elif isinstance(value, dict):
                self.capture.merge({**value, "id": run_id})
