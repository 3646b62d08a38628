"""The walkthrough notebooks run top to bottom on the embedded model, so they cannot rot."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

pytestmark = pytest.mark.embedded
PROGRESS_BAR = "━"  # what rich draws a progress bar with (its tables, on stdout, use it too)


def run_notebook(name: str) -> str:
    """Execute a notebook in a fresh kernel and return all of its text output.

    Nothing on stderr may draw a progress bar: a saved notebook keeps every redraw of a live display.
    """
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("name") == "stderr":
                assert PROGRESS_BAR not in output.get("text", ""), output.get("text", "")[:300]
            texts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
            texts.append(output.get("data", {}).get("text/markdown", ""))
    return "\n".join(texts)


def test_generate_notebook_builds_and_checks_a_dataset() -> None:
    output = run_notebook("01_generate_preference_dataset.ipynb")
    assert "prompts done: 2  failed: 0" in output
    # Both datasets load with TRL's columns, however many rows the tiny model's verdicts allowed.
    assert "features: ['prompt'" in output and "'chosen', 'rejected'" in output and "'completion', 'label'" in output
    # The pipeline graph drawn as Mermaid text: the loop's nodes, then the evaluators as subgraphs.
    assert "review --> generate;" in output and "subgraph debate" in output
    assert "models: generator local:smollm2 (default)" in output


def test_evaluator_notebook_reports_kappa_and_juries(benchmarks_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel inherits this process's environment: point it at the benchmarks the tests use.
    monkeypatch.setenv("FELLOWSHIP_BENCHMARKS", str(benchmarks_dir))
    output = run_notebook("02_choose_an_evaluator.ipynb")
    assert "80 items; human labels: Counter({'B': 41, 'A': 25, 'tie': 14})" in output
    assert "baseline: always A" in output
    assert "always-B judge" in output
    assert "best jury:" in output and "on 4 items" in output
