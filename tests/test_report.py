"""`report.html`: its figures against a hand computation, no resource from the network, and a real browser."""

from __future__ import annotations

import html
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.test_generation import generate_args
from tools.cli import app
from tools.dev.stub_server import StubServer
from tools.outputs.report import write_run_report

runner = CliRunner()


def answer(iteration: int, text: str, review: float | None) -> dict[str, Any]:
    exchange = {"model": "m", "role": "generator", "text": text, "input_tokens": 10, "output_tokens": 5}
    reviews = [] if review is None else [{"iteration": iteration, "seat": 0, "model": "m", "score": review,
                                         "feedback": "more", "exchange": {**exchange, "role": "reviewer"}}]
    return {"iteration": iteration, "text": text, "exchange": exchange, "reviews": reviews, "degenerate": False}


def record(prompt_id: str, texts: list[str], reviews: list[float | None], scores: list[float], winner: str,
           outcome: str, chosen: int | None) -> dict[str, Any]:
    return {
        "prompt_id": prompt_id, "prompt": [{"role": "user", "content": f"Question {prompt_id}?"}],
        "answers": [answer(index + 1, text, review) for index, (text, review) in enumerate(zip(texts, reviews,
                                                                                                strict=True))],
        "verdict": {"method": "judge", "scores": scores, "winner": winner, "exchanges": []},
        "models": {"generator": "m", "reviewers": ["m"], "evaluator": "judge:m"},
        "usage": {"cost_usd": 0.0}, "outcome": outcome, "chosen_iteration": chosen,
    }


def dpo_row(prompt_id: str, chosen: str, rejected: str, scores: tuple[float, float], iterations: tuple[int, int],
            ) -> dict[str, Any]:
    return {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "score_chosen": scores[0],
            "score_rejected": scores[1], "chosen_iteration": iterations[0], "rejected_iteration": iterations[1],
            "prompt_id": prompt_id}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_the_reports_figures_equal_a_hand_computation(tmp_path: Path) -> None:
    # Three prompts, N = 3. p1: the loop helped (r3 chosen, 9 against 5 and 7); p2: r1 chosen (8 against 6 and 7);
    # p3: all three tied (no rows).
    a, b, c, d, e, f = "a" * 10, "b" * 20, "c" * 30, "d" * 10, "e" * 40, "f" * 20
    write_jsonl(tmp_path / "records.jsonl", [
        record("p1", [a, b, c], [4, 6, None], [5, 7, 9], "C", "ok", 3),
        record("p2", [d, e, f], [6, 8, None], [8, 6, 7], "A", "ok", 1),
        record("p3", ["g", "h", "i"], [5, 5, None], [6, 6, 6], "tie", "tied_top", None),
    ])
    write_jsonl(tmp_path / "dpo.jsonl", [
        dpo_row("p1", c, a, (9, 5), (3, 1)), dpo_row("p1", c, b, (9, 7), (3, 2)),
        dpo_row("p2", d, e, (8, 6), (1, 2)), dpo_row("p2", d, f, (8, 7), (1, 3)),
    ])
    write_jsonl(tmp_path / "kto.jsonl", [{"prompt_id": pid} for pid in ("p1", "p1", "p1", "p2", "p2", "p2")])
    page = write_run_report(tmp_path)
    figures = json.loads((tmp_path / "report.json").read_text())

    assert (figures["prompts"], figures["dpo_rows"], figures["kto_rows"]) == (3, 4, 6)
    loop = {row["iteration"]: row for row in figures["loop"]}
    assert loop[1]["reviewers_mean"] == pytest.approx((4 + 6 + 5) / 3)
    half = 1.959964 * 1.0 / 3 ** 0.5  # the scores 4, 6, 5: standard deviation 1
    assert (loop[1]["reviewers_low"], loop[1]["reviewers_high"]) == (pytest.approx(5 - half), pytest.approx(5 + half))
    assert loop[2]["reviewers_mean"] == pytest.approx((6 + 8 + 5) / 3) and loop[3]["reviewers_mean"] is None
    assert [loop[i]["evaluator_mean"] for i in (1, 2, 3)] == pytest.approx([19 / 3, 19 / 3, 22 / 3])
    assert [loop[i]["chosen_share"] for i in (1, 2, 3)] == [0.5, 0.0, 0.5]
    assert figures["final_vs_first"] == {"wins": 1, "ties": 1, "losses": 1, "win_rate": pytest.approx(1 / 3)}
    trust = figures["trust"]
    assert trust["margin_mean"] == pytest.approx((4 + 2 + 2 + 1) / 4)
    assert trust["tie_rate"] == pytest.approx(1 / 3) and trust["no_verdict_rate"] == 0
    assert trust["chosen_longer_share"] == 0.5  # p1's two rows: chosen longer; p2's: shorter
    assert trust["median_length_ratio"] == pytest.approx(1.0)  # ratios 3, 1.5, 0.25, 0.5
    assert (trust["small_margin_rows"], trust["chosen_longer_share_small_margin"]) == (1, 0.0)
    assert figures["headline"] == "r3 beats r1 in 33% of prompts (ties 33%, losses 33%); reviewers' mean 5.0 -> 6.3."
    text = page.read_text()
    assert html.escape(figures["headline"]) in text


class ResourceReferences(HTMLParser):
    """Every attribute value or style text that could make a browser fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "srcset", "action", "data", "poster") and value:
                self.references.append(value)
            if name == "style" and value and "url(" in value:
                self.references.append(value)

    def handle_data(self, data: str) -> None:
        if self._in_style and ("url(" in data or "@import" in data):
            self.references.append(data)


def stub_run(tmp_path: Path, stub: StubServer, count: int = 12) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    # A prompt carrying markup: the stub's answers echo it, so it reaches every column of the table.
    prompts.write_text("".join(json.dumps({"prompt": f"Question {index}? <script>window.planted = {index}</script>"})
                               + "\n" for index in range(count)))
    output = tmp_path / "run"
    result = runner.invoke(app, generate_args(prompts, output, stub.base_url))
    assert result.exit_code == 0, result.output
    assert f"report: {output / 'report.html'}" in result.output
    return output


def test_a_runs_report_fetches_nothing_and_escapes_what_models_and_prompts_wrote(tmp_path: Path,
                                                                                  stub: StubServer) -> None:
    output = stub_run(tmp_path, stub)
    text = (output / "report.html").read_text()
    parser = ResourceReferences()
    parser.feed(text)
    assert not [reference for reference in parser.references if not reference.startswith("#")]
    assert "<script>window.planted" not in text and "&lt;script&gt;window.planted" in text
    # `fellowship report` writes the same page again from the folder alone.
    (output / "report.html").unlink()
    again = runner.invoke(app, ["report", str(output)])
    assert again.exit_code == 0, again.output
    assert (output / "report.html").read_text() == text
    missing_folder = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert missing_folder.exit_code == 1
    assert "records.jsonl: not found" in missing_folder.output


def test_the_report_in_a_real_browser(tmp_path: Path, stub: StubServer, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    output = stub_run(tmp_path, stub)
    figures = json.loads((output / "report.json").read_text())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("request", lambda request: problems.append(f"fetched {request.url}")
                    if not request.url.startswith("file://") else None)
            page.goto((output / "report.html").as_uri())
            assert not problems
            # Every chart is drawn: an SVG with a size in each of the four figures.
            boxes = [chart.bounding_box() for chart in page.locator("figure svg").all()]
            assert len(boxes) == 4 and all(box and box["width"] > 200 and box["height"] > 100 for box in boxes)
            rows = page.locator("#rows tbody tr.row:visible")
            assert rows.count() == 12
            outcome, count = max(figures["outcomes"].items(), key=lambda pair: pair[1])
            if count < 12:
                page.select_option("#outcome", outcome)
                assert rows.count() == count
                page.select_option("#outcome", "")
            page.fill("#search", "question 7?")
            assert rows.count() == 1 and "Question 7?" in rows.first.inner_text()
            # The planted script is text on the page, and never ran.
            assert "<script>window.planted = 7</script>" in rows.first.inner_text()
            assert page.evaluate("typeof window.planted") == "undefined"
            page.fill("#search", "")
            for section in ("glance", "loop", "trust", "rows-section"):
                shot = tmp_path / f"report-{section}.png"
                page.locator(f"#{section}").screenshot(path=str(shot))
                assert shot.stat().st_size > 1000
                print(f"screenshot of {section}: {shot}")
            assert not problems
        finally:
            browser.close()
