"""The graphs as LangGraph Studio sees them: schemas in-process, and the real `langgraph dev` server.

The server test starts `langgraph dev` on 127.0.0.1 from the project's own langgraph.json, checks that every
graph is served with its input and context schemas and an x-ray drawing, and runs the judge and a debate
through its HTTP API against the stub OpenAI-compatible server, with the context Studio sends; a pipeline run with
`review` in its context pauses in `human_review`, and a resume with a decision finishes it as the CLI would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.models import ModelRegistry
from graphs.context import EvaluationContext
from graphs.evaluation import evaluate_items
from tools.dev.stub_server import StubServer
from tools.inputs.items import EvalItem

ROOT = Path(__file__).resolve().parents[1]
GRAPHS = json.loads((ROOT / "langgraph.json").read_text())["graphs"]
LANGGRAPH = Path(sys.executable).parent / "langgraph"
ITEM = {"id": "sum", "prompt": "What is 2 + 2?", "responses": ["It is 4.", "It is 5."]}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_every_graph_yields_its_schemas(name: str) -> None:
    import importlib

    module_path, _, attribute = GRAPHS[name].partition(":")
    module = importlib.import_module(module_path.removeprefix("./").removesuffix(".py").replace("/", "."))
    graph = getattr(module, attribute)
    for schema in (graph.get_input_jsonschema(), graph.get_output_jsonschema(), graph.get_context_jsonschema()):
        assert schema["properties"], schema
    assert "models" in graph.get_context_jsonschema()["properties"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def call(base: str, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 60) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    environment = {**os.environ, "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false"}
    process = subprocess.Popen(
        [str(LANGGRAPH), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"langgraph dev exited: {process.stderr.read()[-2000:] if process.stderr else ''}")
            try:
                call(base, "GET", "/ok", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("langgraph dev did not answer within 90 s")
                time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def assistant_ids(base: str) -> dict[str, str]:
    assistants = call(base, "POST", "/assistants/search", {"limit": 100})
    return {assistant["graph_id"]: assistant["assistant_id"] for assistant in assistants}


def test_server_serves_every_graph_with_schemas_and_a_drawing(server: str) -> None:
    ids = assistant_ids(server)
    assert sorted(ids) == sorted(GRAPHS)
    for name, assistant_id in ids.items():
        schemas = call(server, "GET", f"/assistants/{assistant_id}/schemas")
        assert schemas["input_schema"]["properties"], name
        assert "models" in schemas["context_schema"]["properties"], name
        drawing = call(server, "GET", f"/assistants/{assistant_id}/graph?xray=true")
        assert len(drawing["nodes"]) > 3 and drawing["edges"], name
    pipeline = call(server, "GET", f"/assistants/{ids['pipeline']}/graph?xray=true")
    node_ids = {node["id"] for node in pipeline["nodes"]}
    assert {"judge", "jury:aggregate_votes", "debate:critic", "generate", "review"} <= node_ids


@pytest.mark.parametrize("method", ["judge", "debate"])
async def test_server_runs_evaluations_with_the_studio_context(server: str, stub: StubServer, method: str) -> None:
    spec = f"compat:stub@{stub.base_url}"
    result = call(server, "POST", "/runs/wait",
                  {"assistant_id": method, "input": {"item": ITEM}, "context": {"models": [spec]}}, timeout=120)
    served = result["verdict"]
    registry = ModelRegistry()  # chat clients are bound to this test's event loop
    try:
        [expected] = await evaluate_items([EvalItem(**ITEM)], method=method, context=EvaluationContext(models=[spec]),
                                          model_source=registry)
    finally:
        await registry.aclose()
    assert (served["id"], served["method"], served["scores"], served["winner"]) == (
        expected["id"], expected["method"], expected["scores"], expected["winner"])
    assert served["parse_ok"] is True and served["models"][0] == spec
    if method == "debate":
        assert [turn["speaker"] for turn in served["transcript"]] == ["General Public", "Psychologist", "Critic"] * 2


def test_a_pipeline_run_in_the_server_pauses_for_a_person_and_a_resume_finishes_it_as_the_cli_would(
    server: str, stub: StubServer, tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from tools.cli import app
    from tools.inputs.prompt_sets import prompt_id_for

    spec = f"compat:stub@{stub.base_url}"
    prompt = "Why do cats purr?"
    prompt_id = prompt_id_for(prompt)
    context = {"generator": spec, "reviewers": [spec], "models": [spec], "iterations": 2, "review": "all"}
    assistant = assistant_ids(server)["pipeline"]
    thread = call(server, "POST", "/threads", {})["thread_id"]
    call(server, "POST", f"/threads/{thread}/runs/wait", {
        "assistant_id": assistant, "input": {"prompt_id": prompt_id, "prompt": prompt}, "context": context},
        timeout=120)
    state = call(server, "GET", f"/threads/{thread}")
    assert state["status"] == "interrupted"
    [interrupt] = [value for values in state["interrupts"].values() for value in values]
    asked = interrupt["value"]
    assert (asked["prompt_id"], asked["sample"], asked["answers"]) == (prompt_id, "all", 2)
    assert {"best", "worst", "none", "reviewer", "note"} <= set(asked["answer_schema"]["properties"])
    call(server, "POST", f"/threads/{thread}/runs/wait", {
        "assistant_id": assistant, "command": {"resume": {"best": "B", "reviewer": "ana"}}, "context": context},
        timeout=120)
    finished = call(server, "GET", f"/threads/{thread}")
    assert finished["status"] == "idle"
    values = finished["values"]

    # The same prompt through the CLI, decided the same way.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": prompt}) + "\n")
    output = tmp_path / "run"
    args = ["generate", "--prompts", str(prompts), "--output", str(output), "--generator", spec, "--reviewer", spec,
            "--judge", spec, "--iterations", "2", "--review", "all"]
    runner = CliRunner()
    assert runner.invoke(app, args).exit_code == 4
    decision = tmp_path / "decision.jsonl"
    decision.write_text(json.dumps({"prompt_id": prompt_id, "best": "B", "reviewer": "ana"}) + "\n")
    assert runner.invoke(app, ["review", str(output), "--import", str(decision)]).exit_code == 0
    assert runner.invoke(app, args).exit_code == 0
    [record] = [json.loads(line) for line in (output / "records.jsonl").read_text().splitlines()]
    served_answers = [answer["text"] for answer in sorted(values["answers"], key=lambda answer: answer["iteration"])]
    assert served_answers == [answer["text"] for answer in record["answers"]]
    assert (values["verdict"]["scores"], values["verdict"]["winner"]) == (record["verdict"]["scores"],
                                                                          record["verdict"]["winner"])
    keys = ("best", "worst", "none", "reviewer", "sample", "reasons")
    assert {key: values["human"][key] for key in keys} == {key: record["human"][key] for key in keys}
    assert (values["human"]["via"], record["human"]["via"]) == ("studio", "import")
