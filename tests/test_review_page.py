"""The review page in a real headless browser: keyboard decisions kept across a reload and a killed server, answers'
markup shown as text, audit prompts blind, and requests without the token or from another Host refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from typer.testing import CliRunner

from tests.test_review import split_by_audit
from tools.cli import app
from tools.dev.stub_server import StubServer
from tools.outputs.review_store import ReviewStore

runner = CliRunner()
REPOSITORY = Path(__file__).resolve().parent.parent


def paused_run(tmp_path: Path, stub: StubServer) -> Path:
    """Five prompts that all pause (`--review all`), two of them in the audit draw; one answer carries a script."""
    texts = [f"Question {index}? <script>window.planted = {index}</script>" for index in range(40)]
    audit, others = split_by_audit(texts, 0.3, audit=2, others=3)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in others + audit))
    output = tmp_path / "run"
    spec = f"compat:stub@{stub.base_url}"
    result = runner.invoke(app, ["generate", "--prompts", str(prompts), "--output", str(output), "--generator", spec,
                                 "--reviewer", spec, "--judge", spec, "--iterations", "2", "--review", "all",
                                 "--audit-share", "0.3", "--scoring", "parsed"])
    assert result.exit_code == 4, result.output
    return output


def start_review_page(output: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, "-m", "tools.cli", "review", str(output)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=REPOSITORY)
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("review page: "):
            return process, line.removeprefix("review page: ").strip()
        if not line and process.poll() is not None:
            raise AssertionError(f"the review page did not start: {process.stderr.read() if process.stderr else ''}")
    process.kill()
    raise AssertionError("the review page printed no URL within 60 s")


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_deciding_prompts_with_the_keyboard_in_a_real_browser(tmp_path: Path, stub: StubServer, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    output = paused_run(tmp_path, stub)
    process, url = start_review_page(output)
    try:
        base = url.split("?")[0]
        assert url.startswith("http://127.0.0.1:") and "token=" in url
        # Without the token, with another token, or through another Host name: refused.
        assert status_of(base) == 403
        assert status_of(base + "?token=wrong") == 403
        assert status_of(url, {"Host": "attacker.example:80"}) == 403
        assert status_of(url) == 200
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 760})
                problems: list[str] = []
                page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
                page.on("pageerror", lambda error: problems.append(str(error)))
                page.goto(url)
                assert page.locator("#position").inner_text() == "prompt 1 of 5"
                # The planted script is text on the page and never ran.
                assert "<script>window.planted" in page.locator(".answer").first.inner_text()
                assert page.evaluate("typeof window.planted") == "undefined"
                # A disputed-or-all prompt shows what the evaluators said; the first three are not audit prompts.
                assert page.locator("text=What the evaluators said").count() == 1
                page.locator("#reviewer").fill("ana")
                page.locator("#reviewer").press("Escape")
                page.keyboard.press("b")  # prompt 1: best B
                page.wait_for_selector("text=prompt 2 of 5")
                page.keyboard.press("Shift+B")  # prompt 2: worst B, then best A
                page.keyboard.press("a")
                page.wait_for_selector("text=prompt 3 of 5")
                page.keyboard.press("x")  # prompt 3: no acceptable answer
                page.wait_for_selector("text=prompt 4 of 5")
                # Prompts 4 and 5 are the audit draw: shown blind, and their data holds no verdict either.
                assert "audit sample" in page.locator("#view").inner_text()
                assert page.locator("text=What the evaluators said").count() == 0
                assert page.locator(".answer").count() == 2
                shot = tmp_path / "review-page.png"
                page.keyboard.press("p")
                page.keyboard.press("p")
                page.screenshot(path=str(shot), full_page=False)
                assert shot.stat().st_size > 5000
                if os.environ.get("FELLOWSHIP_UPDATE_SCREENSHOTS"):
                    shutil.copy(shot, REPOSITORY / "docs" / "review-page.png")
                page.reload()
                assert page.locator("#progress").inner_text() == "3 of 5 decided"
                assert page.locator("#decided").inner_text() == "decided: best A, worst B (ana)"
                page.keyboard.press("p")
                assert page.locator("#decided").inner_text() == "decided: best B (ana)"
                assert page.locator(".answer.best").get_attribute("data-letter") == "B"
                assert not problems
            finally:
                browser.close()
    finally:
        process.send_signal(signal.SIGKILL)  # a killed page loses nothing: each decision was committed
        process.wait(timeout=30)
    with ReviewStore.of(output) as store:
        decided = [(entry.decision or {}) for entry in store.prompts() if entry.decision]
    assert {(entry["best"], entry["worst"], entry["none"], entry["via"]) for entry in decided} == {
        ("A", "B", False, "page"), ("B", None, False, "page"), (None, None, True, "page")}
    assert all(entry["reviewer"] == "ana" for entry in decided)
