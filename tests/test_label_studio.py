"""`review --label-studio` against a real Label Studio (the `label-studio` package in `.venv-label-studio`, which
`make test` installs), started by the test on 127.0.0.1 with SQLite in a temporary folder: tasks sent once, the
evaluator's pick as a pre-annotation for disputed prompts only, finished annotations pulled back as decisions and
applied without a model call."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.conftest import missing
from tests.test_review import split_by_audit
from tools.cli import app
from tools.dev.stub_server import StubServer
from tools.inputs.prompt_sets import prompt_id_for

ROOT = Path(__file__).resolve().parents[1]
LABEL_STUDIO = ROOT / ".venv-label-studio" / "bin" / "label-studio"
TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c"
runner = CliRunner()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def api(base: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, method=method, data=data,
                                     headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        text = reply.read()
    return json.loads(text) if text else None


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not LABEL_STUDIO.exists():
        missing(f"Label Studio is not installed at {LABEL_STUDIO}: `make test` installs it (make .venv-label-studio)")
    data = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    environment = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data),
                   "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true"}
    log = (data / "server.log").open("w")
    process = subprocess.Popen(
        [str(LABEL_STUDIO), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port), "--username",
         "ana@example.com", "--password", "not-a-real-password", "--user-token", TOKEN],
        env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=data,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"label-studio exited: {(data / 'server.log').read_text()[-2000:]}")
            try:
                api(base, "GET", "/api/projects")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("label-studio did not answer within 180 s")
                time.sleep(1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_waiting_prompts_go_to_label_studio_and_its_annotations_come_back_as_decisions(
    tmp_path: Path, stub: StubServer, label_studio: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    texts = [f"Question {index}: how do magnets work?" for index in range(30)]
    audit, others = split_by_audit(texts, 0.3, audit=2, others=3)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in others + audit))
    output = tmp_path / "run"
    spec = f"compat:stub@{stub.base_url}"
    args = ["generate", "--prompts", str(prompts), "--output", str(output), "--generator", spec, "--reviewer", spec,
            "--judge", spec, "--iterations", "2", "--review", "all", "--audit-share", "0.3"]
    assert runner.invoke(app, args).exit_code == 4

    missing_token = runner.invoke(app, ["review", str(output), "--label-studio", label_studio])
    assert missing_token.exit_code == 1
    assert "set LABEL_STUDIO_API_KEY" in missing_token.output
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    sent = runner.invoke(app, ["review", str(output), "--label-studio", label_studio])
    assert sent.exit_code == 0, sent.output
    assert "5 tasks sent, 0 were there already" in sent.output and TOKEN not in sent.output
    again = runner.invoke(app, ["review", str(output), "--label-studio", label_studio])
    assert "0 tasks sent, 5 were there already" in again.output

    [project] = api(label_studio, "GET", "/api/projects")["results"]
    tasks = api(label_studio, "GET", f"/api/projects/{project['id']}/export?exportType=JSON&download_all_tasks=true")
    by_sample = {task["data"]["prompt_id"]: task for task in tasks}
    assert len(by_sample) == 5
    for text in audit:  # blind: no pick, no verdict
        task = by_sample[prompt_id_for(text)]
        assert task["data"]["sample"] == "audit" and not task["predictions"] and task["data"]["evaluator"] == ""
    for text in others:
        task = by_sample[prompt_id_for(text)]
        assert task["data"]["sample"] == "all" and len(task["predictions"]) == 1
        assert task["data"]["evaluator"].startswith("judge: winner ")
        assert task["data"]["answer_A"].startswith("Answer draft 1")

    def annotate(text: str, best: str, worst: str | None = None, note: str = "") -> None:
        result = [{"from_name": "best", "to_name": "prompt", "type": "choices", "value": {"choices": [best]}}]
        if worst:
            result.append({"from_name": "worst", "to_name": "prompt", "type": "choices", "value": {"choices": [worst]}})
        if note:
            result.append({"from_name": "note", "to_name": "prompt", "type": "textarea", "value": {"text": [note]}})
        api(label_studio, "POST", f"/api/tasks/{by_sample[prompt_id_for(text)]['id']}/annotations", {"result": result})

    annotate(others[0], "B", "A", "fewer words, same facts")
    annotate(audit[0], "none")
    pulled = runner.invoke(app, ["review", str(output), "--label-studio", label_studio, "--pull"])
    assert pulled.exit_code == 0, pulled.output
    assert "2 decisions taken from Label Studio; 3 prompts still wait" in pulled.output

    requests = stub.stats.requests
    applied = runner.invoke(app, args)
    assert applied.exit_code == 4, applied.output  # three prompts still wait
    assert stub.stats.requests == requests
    records = {json.loads(line)["prompt_id"]: json.loads(line)
               for line in (output / "records.jsonl").read_text().splitlines()}
    first = records[prompt_id_for(others[0])]["human"]
    assert (first["best"], first["worst"], first["note"], first["reviewer"], first["via"]) == (
        "B", "A", "fewer words, same facts", "ana@example.com", "label-studio")
    assert records[prompt_id_for(audit[0])]["human"]["none"] is True
