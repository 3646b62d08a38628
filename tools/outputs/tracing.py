"""Local run traces: each item's run tree as JSON (`--trace DIR`), and a reader that prints the conversation.

With the standard LangSmith variables set (LANGSMITH_TRACING, LANGSMITH_API_KEY), LangChain sends the same
runs to LangSmith by itself; the run names (graph, role, round) and metadata (item id, role, round) set
by the nodes make them readable there too. This module is the offline alternative. API keys are never
written: run inputs are reduced to messages, the serialized model configuration is dropped, and any
known key value or `sk-...` token left in a text is masked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from langchain_core.tracers.base import BaseTracer
from langchain_core.tracers.schemas import Run

from tools.errors import InputError
from tools.rules.secrets import mask_secrets

HUMAN_PREFERENCE_KEY = "human_preference"


def langsmith_tracing() -> bool:
    """Whether the standard variables turn LangSmith tracing on (LANGSMITH_TRACING, or LangChain's older name)."""
    import os

    return os.environ.get("LANGSMITH_TRACING", os.environ.get("LANGCHAIN_TRACING_V2", "")).lower() == "true"


def send_human_feedback(decisions: list[tuple[str, dict[str, Any]]]) -> str | None:
    """Send each person's decision to LangSmith as feedback on the root run of the prompt's paused pipeline.

    `decisions` are (root run id, the record's `human` entry). Key `human_preference`, value the best answer's
    letter (`none`: no acceptable answer), the note as the comment, who decided and the sample as source info; so
    LangSmith shows the person's verdict beside the evaluator's. Returns a line for the user when sending failed
    (the decisions are applied and kept whatever LangSmith says), else None.
    """
    from langsmith import Client

    client = Client()
    failed = 0
    for run_id, human in decisions:
        try:
            client.create_feedback(
                run_id, HUMAN_PREFERENCE_KEY, value="none" if human.get("none") else human.get("best"),
                comment=human.get("note") or None, stop_after_attempt=2,
                source_info={"reviewer": human.get("reviewer", ""), "sample": human.get("sample"),
                             "worst": human.get("worst"), "via": human.get("via")},
            )
        except Exception:  # LangSmith unreachable or refusing: the run's own files hold every decision
            failed += 1
    if failed:
        return f"note: {failed} of {len(decisions)} decisions could not be sent to LangSmith as feedback"
    return None


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, dict):
        return {key: _scrub(item) for key, item in value.items() if "api_key" not in str(key).lower()}
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return mask_secrets(str(value))


def _message_dicts(messages: Any) -> list[dict[str, str]]:
    flattened: list[dict[str, str]] = []
    for message in messages or []:
        if isinstance(message, list):
            flattened.extend(_message_dicts(message))
            continue
        role = getattr(message, "type", None) or (message.get("type") if isinstance(message, dict) else None)
        content = getattr(message, "content", None)
        if content is None and isinstance(message, dict):
            content = message.get("content") or message.get("kwargs", {}).get("content")
        flattened.append({"role": str(role or "unknown"), "content": str(content or "")})
    return flattened


def run_to_dict(run: Run) -> dict[str, Any]:
    """A JSON-able run tree: name, type, timing, metadata, messages in and text out, children."""
    inputs: Any = run.inputs
    outputs: Any = run.outputs
    if run.run_type in ("llm", "chat_model"):
        inputs = {"messages": _message_dicts((run.inputs or {}).get("messages", []))}
        generations = (run.outputs or {}).get("generations", [])
        texts = [getattr(gen, "text", None) or (gen.get("text") if isinstance(gen, dict) else "")
                 for batch in generations for gen in batch]
        outputs = {"text": "".join(str(text or "") for text in texts)}
        usage = next(
            (gen.get("message", {}).get("kwargs", {}).get("usage_metadata")
             for batch in generations for gen in batch if isinstance(gen, dict)),
            None,
        )
        if usage:
            outputs["usage"] = usage
    return _scrub(
        {
            "name": run.name,
            "run_type": run.run_type,
            "start_time": run.start_time.isoformat() if run.start_time else None,
            "end_time": run.end_time.isoformat() if run.end_time else None,
            "tags": list(run.tags or []),
            "metadata": {
                key: value
                for key, value in (run.extra or {}).get("metadata", {}).items()
                if not key.startswith(("langgraph_", "checkpoint_", "ls_", "__"))
            },
            "error": run.error,
            "inputs": inputs,
            "outputs": outputs,
            "children": [run_to_dict(child) for child in sorted(run.child_runs, key=lambda child: child.start_time)],
        }
    )


class RunTreeRecorder(BaseTracer):
    """Collects the finished root runs of one invocation, for writing as JSON."""

    def __init__(self) -> None:
        super().__init__()
        self.roots: list[Run] = []

    def _persist_run(self, run: Run) -> None:
        self.roots.append(run)

    def document(self) -> dict[str, Any]:
        """The run trees as one JSON-able document (what `write` stores)."""
        trees = [run_to_dict(run) for run in self.roots]
        return trees[0] if len(trees) == 1 else {"name": "runs", "children": trees}

    def write(self, path: Path) -> None:
        """Write the run trees as one JSON document, atomically."""
        write_trace(path, self.document())


def write_trace(path: Path, document: dict[str, Any]) -> None:
    """Write one trace document atomically (a worker process builds it, the run's driver writes it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".partial")
    temporary.write_text(json.dumps(document, indent=1, ensure_ascii=False), encoding="utf-8")
    temporary.replace(path)


def trace_filename(item_id: str) -> str:
    """A safe file name for an item's trace."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", item_id)[:80] or "item"
    return f"{safe}.json"


def conversation_lines(tree: dict[str, Any]) -> list[str]:
    """Who said what, in which round: one block per model call, in the order the calls started."""
    calls: list[dict[str, Any]] = []

    def visit(node: dict[str, Any]) -> None:
        if node.get("run_type") in ("llm", "chat_model"):
            calls.append(node)
        for child in node.get("children", []):
            visit(child)

    visit(tree)
    calls.sort(key=lambda node: node.get("start_time") or "")
    lines = [f"trace: {tree.get('name')} ({len(calls)} model calls)"]
    for node in calls:
        metadata = node.get("metadata", {})
        speaker = metadata.get("role") or node.get("name")
        where = f", round {metadata['round']}" if "round" in metadata else ""
        label = next((tag for tag in node.get("tags", []) if "/" in tag), node.get("name"))
        lines.append(f"--- {speaker}{where} [{label}]")
        text = str((node.get("outputs") or {}).get("text", "")).strip()
        if not text and node.get("error"):
            # A call that failed (a reply cut off by the token cap, a refused request) says why, not nothing.
            first = str(node["error"]).split("Traceback (most recent call last)")[0].strip().splitlines()[0]
            text = f"(no reply: {first[:160]})"
        lines.append(text)
    return lines


def load_trace(path: Path) -> dict[str, Any]:
    """A trace file's run tree; a file that is not one raises InputError naming it."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, None, "file not found") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as error:
        raise InputError(path, None, f"cannot read a trace from it ({type(error).__name__})") from None
    except json.JSONDecodeError as error:
        raise InputError(path, error.lineno, f"not a trace file ({error.msg})") from None
    if not isinstance(document, dict) or "name" not in document:
        raise InputError(path, None, "not a trace file (expected a run tree object)")
    return document


def trace_files(path: Path) -> list[Path]:
    """The trace files at `path`: the file itself, or every `*.json` in a --trace folder, by name."""
    if path.is_dir():
        files = sorted(file for file in path.glob("*.json") if file.is_file())
        if not files:
            raise InputError(path, None, "no trace files (*.json) in this folder")
        return files
    if not path.exists():
        raise InputError(path, None, "file not found")
    return [path]
