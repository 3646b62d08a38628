"""The stub's batch API: OpenAI's file and batch routes, and Together's variant of them, on 127.0.0.1.

Routes (under `/v1`): `POST /files` (OpenAI: multipart `purpose=batch`, `file`) or `POST /files/upload`
(Together: `purpose=batch-api`, `file_name`, `file`), `GET /files/{id}/content`, `POST /batches`,
`GET /batches`, `GET /batches/{id}`, `POST /batches/{id}/cancel`. A batch is validated when it is created (each
line a JSON object with a unique `custom_id`, `method` POST, the batch's endpoint as `url`, a `body` naming one
model for the whole file); one that fails is `failed` with `errors.data` naming the line. A valid batch is
`in_progress` until `batch_delay_s` has passed, then each line is answered by the stub's own chat reply (the
same text a direct request gets), the output file lists them out of order, and chosen lines (`batch_error_rate`,
`batch_expire_rate`, deterministic per request and attempt, so a retried line can succeed) go to the error file.
Together's dialect answers with upper-case statuses, wraps a created batch as `{"job": ...}` and reports
`progress` instead of request counts. `counts()` says what it was sent: batches, lines, and lines per request.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

BatchDialect = Literal["openai", "together"]
# What answers one chat request: (request body, request key, attempt) -> (status, payload, header lines).
LineAnswerer = Callable[[dict[str, Any], str, int], Awaitable[tuple[int, Any, list[str]]]]
FINISHED = ("completed", "expired", "cancelled", "failed")


@dataclass
class RawBody:
    """A response body sent as it is (a file's content), with its content type."""

    data: bytes
    content_type: str = "application/octet-stream"

    def body(self) -> bytes:
        """The bytes to send."""
        return self.data


@dataclass
class StubBatch:
    """One batch as the stub keeps it."""

    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, Any]
    created_at: float
    lines: list[dict[str, Any]]
    status: str = "in_progress"
    errors: list[dict[str, Any]] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0


def _fraction(*parts: str) -> float:
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def multipart_fields(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (file name or None, content)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


class StubBatches:
    """The batch routes of one stub server; `answer` answers each line as a direct request would be."""

    def __init__(self, answer: LineAnswerer, *, dialect: BatchDialect = "openai", delay_s: float = 1.0,
                 error_rate: float = 0.0, expire_rate: float = 0.0, refuse_model: str | None = None) -> None:
        self.answer = answer
        self.dialect = dialect
        self.delay_s = delay_s
        self.error_rate = error_rate
        self.expire_rate = expire_rate
        self.refuse_model = refuse_model  # a model the stub does not serve by batch: its batches fail validation
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, StubBatch] = {}
        self.lines_received = 0  # lines of every valid batch created: what a provider would bill for
        self.lines_by_request: Counter[str] = Counter()  # how often each request body came in a batch
        self.line_faults: Counter[str] = Counter()
        self.cancelled = 0

    def counts(self) -> dict[str, Any]:
        """What the stub was sent (`GET /stats` includes it)."""
        return {"batches": len(self.batches), "batch_lines": self.lines_received,
                "batch_lines_repeated": sum(count - 1 for count in self.lines_by_request.values() if count > 1),
                "batch_faults": dict(self.line_faults), "batches_cancelled": self.cancelled,
                "files": len(self.files)}

    def handles(self, route: str) -> bool:
        """Whether a route (path without query) is one of the batch API's."""
        return "/files" in route or "/batches" in route

    async def respond(self, method: str, route: str, body: bytes,
                      headers: dict[str, str]) -> tuple[int, Any, list[str]]:
        """Answer one request to the file or batch routes."""
        parts = route.split("/")
        if method == "POST" and route.endswith(("/files", "/files/upload")):
            return self._upload(body, headers, together_route=route.endswith("/upload"))
        if method == "GET" and len(parts) >= 3 and parts[-1] == "content" and parts[-3] == "files":
            data = self.files.get(parts[-2])
            if data is None:
                return 404, {"error": {"message": f"no file {parts[-2]}"}}, []
            return 200, RawBody(data), []
        if method == "POST" and route.endswith("/batches"):
            return self._create(json.loads(body or b"{}"))
        if method == "GET" and route.endswith("/batches"):
            return 200, {"object": "list", "data": [self._view(batch) for batch in reversed(self.batches.values())],
                         "has_more": False}, []
        if parts[-2:-1] == ["batches"] or parts[-3:-2] == ["batches"]:
            batch_id = parts[-1] if parts[-2] == "batches" else parts[-2]
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, {"error": {"message": f"no batch {batch_id}"}}, []
            if method == "POST" and parts[-1] == "cancel":
                if batch.status not in FINISHED:
                    batch.status = "cancelled"
                    self.cancelled += 1
                return 200, self._view(batch), []
            if method == "GET":
                await self._advance(batch)
                return 200, self._view(batch), []
        return 404, {"error": {"message": "not found"}}, []

    def _upload(self, body: bytes, headers: dict[str, str], *, together_route: bool) -> tuple[int, Any, list[str]]:
        fields = multipart_fields(body, headers.get("content-type", ""))
        purpose = fields.get("purpose", (None, b""))[1].decode()
        wanted = "batch-api" if self.dialect == "together" else "batch"
        if purpose != wanted or "file" not in fields:
            return 400, {"error": {"message": f"expected purpose={wanted} and a file, got purpose={purpose!r}"}}, []
        if (self.dialect == "together") != together_route:
            return 404, {"error": {"message": "files are uploaded at /files/upload" if self.dialect == "together"
                                  else "not found"}}, []
        file_id = f"file-{len(self.files) + 1:04d}"
        name, data = fields["file"]
        self.files[file_id] = data
        return 200, {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                     "filename": (fields.get("file_name", (None, b""))[1].decode() or name or "batch.jsonl"),
                     "purpose": purpose}, []

    def _create(self, request: dict[str, Any]) -> tuple[int, Any, list[str]]:
        file_id = str(request.get("input_file_id"))
        if file_id not in self.files:
            return 400, {"error": {"message": f"no file {file_id}"}}, []
        endpoint = str(request.get("endpoint", ""))
        batch = StubBatch(id=f"batch_{len(self.batches) + 1:04d}", input_file_id=file_id, endpoint=endpoint,
                          metadata=dict(request.get("metadata") or {}), created_at=time.monotonic(), lines=[])
        problem = self._validate(self.files[file_id], endpoint, batch)
        if problem is not None:
            batch.status = "failed"
            batch.errors = [problem]
        else:
            self.lines_received += len(batch.lines)
            for line in batch.lines:
                self.lines_by_request[self._key(line["body"])] += 1
        self.batches[batch.id] = batch
        view = self._view(batch)
        return 200, ({"job": view, "warning": None} if self.dialect == "together" else view), []

    def _validate(self, data: bytes, endpoint: str, batch: StubBatch) -> dict[str, Any] | None:
        seen: set[str] = set()
        models: set[str] = set()
        for number, raw in enumerate(data.decode("utf-8").splitlines(), start=1):
            try:
                line = json.loads(raw)
            except ValueError:
                return {"code": "invalid_json_line", "message": "This line is not parseable as valid JSON.",
                        "line": number}
            custom_id = line.get("custom_id")
            if not custom_id or custom_id in seen:
                return {"code": "duplicate_custom_id" if custom_id else "missing_required_parameter",
                        "message": "custom_id must be present and unique", "line": number}
            if line.get("method") != "POST" or line.get("url") != endpoint or not isinstance(line.get("body"), dict):
                return {"code": "invalid_request", "message": f"expected method POST, url {endpoint} and a body",
                        "line": number}
            model = str(line["body"].get("model"))
            if model == self.refuse_model:
                return {"code": "model_not_found", "message": f"The model '{model}' is not available for batch.",
                        "line": number}
            seen.add(custom_id)
            models.add(model)
            batch.lines.append(line)
        if len(models) > 1:
            return {"code": "mismatched_model", "message": "every line of a batch must name the same model", "line": 1}
        if not batch.lines:
            return {"code": "empty_file", "message": "the file has no requests", "line": 1}
        return None

    @staticmethod
    def _key(body: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(body.get("messages", []), sort_keys=True).encode()).hexdigest()

    async def _advance(self, batch: StubBatch) -> None:
        """Finish a batch whose delay has passed: answer its lines, write its output and error files."""
        if batch.status != "in_progress" or time.monotonic() - batch.created_at < self.delay_s:
            return
        outputs: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        expired = False
        for line in batch.lines:
            key = self._key(line["body"])
            attempt = self.lines_by_request[key] - 1
            roll = _fraction("batch-fault", key, str(attempt))
            if roll < self.expire_rate:
                expired = True
                self.line_faults["expired"] += 1
                failures.append({"id": f"batch_req_{len(failures)}", "custom_id": line["custom_id"], "response": None,
                                 "error": {"code": "batch_expired",
                                           "message": "This request could not be executed before the completion "
                                                      "window expired."}})
                continue
            if roll < self.expire_rate + self.error_rate:
                self.line_faults["error"] += 1
                failures.append({"id": f"batch_req_{len(failures)}", "custom_id": line["custom_id"],
                                 "response": {"status_code": 500, "request_id": "stub",
                                              "body": {"error": {"message": "injected server error",
                                                                 "type": "server_error"}}},
                                 "error": None})
                continue
            status, payload, _ = await self.answer(line["body"], key, attempt)
            outputs.append({"id": f"batch_req_{len(outputs)}", "custom_id": line["custom_id"],
                            "response": {"status_code": status, "request_id": "stub", "body": payload},
                            "error": None})
        # Out of order, as providers return them: by a hash of the custom_id.
        outputs.sort(key=lambda entry: _fraction("order", entry["custom_id"]))
        batch.completed = sum(1 for entry in outputs if entry["response"]["status_code"] == 200)
        batch.failed = len(batch.lines) - batch.completed
        if outputs:
            batch.output_file_id = self._store_file(outputs)
        if failures:
            batch.error_file_id = self._store_file(failures)
        batch.status = "expired" if expired else "completed"

    def _store_file(self, entries: list[dict[str, Any]]) -> str:
        file_id = f"file-{len(self.files) + 1:04d}"
        self.files[file_id] = "".join(json.dumps(entry) + "\n" for entry in entries).encode("utf-8")
        return file_id

    def _view(self, batch: StubBatch) -> dict[str, Any]:
        """The batch as the provider's API shows it."""
        status = batch.status
        if self.dialect == "together":
            total = len(batch.lines)
            return {"id": batch.id, "input_file_id": batch.input_file_id, "status": status.upper(),
                    "endpoint": batch.endpoint, "output_file_id": batch.output_file_id,
                    "error_file_id": batch.error_file_id, "progress": 100 if status in FINISHED else 0,
                    "error": batch.errors[0]["message"] if batch.errors else None,
                    "metadata": batch.metadata, "file_size_bytes": len(self.files.get(batch.input_file_id, b"")),
                    "request_count": total}
        return {"id": batch.id, "object": "batch", "endpoint": batch.endpoint, "input_file_id": batch.input_file_id,
                "completion_window": "24h", "status": status, "output_file_id": batch.output_file_id,
                "error_file_id": batch.error_file_id, "errors": {"object": "list", "data": batch.errors} if batch.errors
                else None, "metadata": batch.metadata,
                "request_counts": {"total": len(batch.lines), "completed": batch.completed, "failed": batch.failed}}
