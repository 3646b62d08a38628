"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, for testing `--push-to-hub` offline.

It answers what `HfApi.create_repo` and `HfApi.create_commit` ask for small files: repository creation,
the pre-upload check (every file uploaded inline, "regular"), and the commit (NDJSON: a header, then one
line per file with its content in base64). It keeps the repositories and their files, and every request.
"""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import dataclass, field
from typing import Any

from tools.dev.stub_server import ThreadedJsonServer


@dataclass
class HubState:
    """Repositories created (name -> private), files committed (repo -> path -> bytes), requests seen."""

    repos: dict[str, bool] = field(default_factory=dict)
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)


class HubStub(ThreadedJsonServer):
    """The stand-in server; `start_in_thread()` serves it on a free port, `stop()` ends it."""

    def __init__(self) -> None:
        self.state = HubState()
        super().__init__()

    async def _respond(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, list[str]]:
        path = path.split("?")[0]
        self.state.requests.append((method, path))
        self.state.tokens.append(headers.get("authorization", ""))
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if method == "POST" and path == "/api/repos/create":
            request = json.loads(body or b"{}")
            name = "/".join(part for part in (request.get("organization"), request.get("name")) if part)
            self.state.repos[name] = bool(request.get("private")) or request.get("visibility") == "private"
            return 200, {"url": f"{self.endpoint}/datasets/{name}", "name": name}, []
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {}, []  # the card's YAML front matter is checked by our own tests instead
        parts = path.strip("/").split("/")
        if method == "POST" and len(parts) >= 6 and parts[:2] == ["api", "datasets"] and parts[4] == "preupload":
            request = json.loads(body or b"{}")
            files = [{"path": entry["path"], "uploadMode": "regular", "shouldIgnore": False}
                     for entry in request.get("files", [])]
            return 200, {"files": files}, []
        if method == "POST" and len(parts) >= 6 and parts[:2] == ["api", "datasets"] and parts[4] == "commit":
            repo = f"{parts[2]}/{parts[3]}"
            if repo not in self.state.repos:
                return 404, {"error": "Repository not found"}, []
            stored = self.state.files.setdefault(repo, {})
            for line in body.decode("utf-8").splitlines():
                entry = json.loads(line)
                if entry.get("key") == "file":
                    value = entry["value"]
                    stored[value["path"]] = base64.b64decode(value["content"])
            return 200, {"commitUrl": f"{self.endpoint}/datasets/{repo}/commit/abc", "commitOid": "a" * 40,
                         "success": True}, []
        return 404, {"error": f"not implemented in the stand-in: {method} {path}"}, []
