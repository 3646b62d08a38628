"""`fellowship review DIR`: a page on this machine where a person decides the prompts that wait for review.

The server listens on 127.0.0.1 only. Its URL carries a random token (as Jupyter's does); a request without the
token, or whose Host header is not this server's own (a page elsewhere reaching it by DNS rebinding), is refused
with 403. Prompts and answers are user data and model output: they are rendered as Markdown with raw HTML
escaped (markdown-it with `html` off, which also refuses `javascript:` links), and every other text is escaped,
so nothing in them runs in the page. Audit-sample prompts are sent without the evaluator's verdict, so the page
cannot show it (nor can a curious reviewer find it in the page's data).

Each decision is a POST that the review store commits before answering (`ReviewStore.decide`): killing the
server loses nothing, and a reload shows every decision made.
"""

from __future__ import annotations

import html
import json
import secrets
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from markdown_it import MarkdownIt
from pydantic import ValidationError

from tools.outputs.review_store import DecisionRefused, ReviewStore, WaitingPrompt
from tools.rules.decisions import HumanDecision
from tools.rules.verdicts import candidate_labels

TOKEN_HEADER = "X-Review-Token"
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def render_markdown(text: str) -> str:
    """Markdown to HTML, raw HTML in the text escaped (shown as text, never run)."""
    return _markdown.render(text)


def _prompt_html(messages: Any) -> str:
    if isinstance(messages, str):
        return render_markdown(messages)
    parts = []
    for message in messages:
        role = "" if message.get("role") == "user" and len(messages) == 1 else \
            f'<div class="role">{html.escape(str(message.get("role", "")))}</div>'
        parts.append(role + render_markdown(str(message.get("content", ""))))
    return "".join(parts)


def _evaluator_view(entry: WaitingPrompt) -> dict[str, Any] | None:
    """What the evaluators said, for a disputed prompt; None for an audit prompt (shown blind)."""
    if entry.sample == "audit":
        return None
    verdict = entry.record.get("verdict") or {}
    exchanges = [{"title": html.escape(" ".join(str(part) for part in (exchange.get("run") or exchange.get("role"),
                                                                       exchange.get("model")) if part)),
                  "text": html.escape(exchange.get("text", ""))} for exchange in verdict.get("exchanges", [])]
    transcript = [{"title": html.escape(f"round {turn.get('round')}: {turn.get('speaker') or turn.get('role')}"),
                   "text": html.escape(turn.get("text", ""))} for turn in verdict.get("transcript", [])]
    return {
        "method": html.escape(f"{verdict.get('method')}" + (f" ({verdict['strategy']})" if verdict.get("strategy")
                                                            else "")),
        "winner": html.escape(str(verdict.get("winner"))),
        "scores": [None if score is None else round(float(score), 2) for score in verdict.get("scores") or []],
        "juror_votes": [html.escape(str(vote)) for vote in verdict.get("juror_votes") or []],
        "order_winners": [html.escape(str(vote)) for vote in verdict.get("order_winners") or []],
        "referees": [{"role": html.escape(str(entry.get("role"))), "scores": entry.get("scores")}
                     for entry in verdict.get("referee_scores") or []],
        "reasons": [html.escape(reason) for reason in entry.request.get("reasons", [])],
        "exchanges": exchanges,
        "transcript": transcript,
    }


def page_items(store: ReviewStore) -> list[dict[str, Any]]:
    """Every waiting prompt as the page shows it: HTML already rendered and escaped, verdicts only where shown."""
    items = []
    for entry in store.prompts():
        answers = entry.record.get("answers", [])
        items.append({
            "prompt_id": entry.prompt_id,
            "sample": entry.sample,
            "prompt_html": _prompt_html(entry.record.get("prompt", "")),
            "answers": [{"letter": letter, "html": render_markdown(answer.get("text", ""))}
                        for letter, answer in zip(candidate_labels(len(answers)), answers, strict=True)],
            "evaluator": _evaluator_view(entry),
            "decision": entry.decision,
        })
    return items


def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element: no `<`, `>` or `&` can end it or open a tag."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


PAGE_FILE = Path(__file__).with_name("review_page.html")


def page_html(store: ReviewStore, token: str, run_dir: Path) -> str:
    """The whole page: its template with the waiting prompts and the token as data."""
    data = {"token": token, "run": str(run_dir), "items": page_items(store)}
    return PAGE_FILE.read_text(encoding="utf-8").replace("/*DATA*/null", _script_json(data))


class ReviewServer(ThreadingHTTPServer):
    """The review page's HTTP server for one run directory, on 127.0.0.1."""

    daemon_threads = True

    def __init__(self, run_dir: Path, *, port: int = 0) -> None:
        self.run_dir = run_dir
        self.token = secrets.token_urlsafe(24)
        self.lock = threading.Lock()  # one SQLite connection, used by one request at a time
        self.store = ReviewStore.of(run_dir)
        super().__init__(("127.0.0.1", port), ReviewRequestHandler)

    @property
    def url(self) -> str:
        """The page's URL, token included."""
        return f"http://127.0.0.1:{self.server_address[1]}/?token={self.token}"

    def allowed_hosts(self) -> set[str]:
        """The Host headers of this server's own URLs."""
        port = self.server_address[1]
        return {f"127.0.0.1:{port}", f"localhost:{port}"}

    def server_close(self) -> None:
        """Stop listening and close the review store."""
        super().server_close()
        self.store.close()


class ReviewRequestHandler(BaseHTTPRequestHandler):
    """GET / (the page), GET /api/prompts, POST /api/decide and /api/withdraw; everything else 404."""

    server: ReviewServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the URL holds the token, and the terminal is for the person's messages."""

    def _send(self, status: int, body: str, content_type: str = "application/json") -> None:
        encoded = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(encoded)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")  # the URL holds the token
        if content_type == "text/html":
            # Only the page's own inline script and style run: nothing an answer could smuggle in.
            self.send_header("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
                             "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:")
        self.end_headers()
        self.wfile.write(encoded)

    def _refused(self) -> bool:
        """Answer 403 unless the Host header is this server's and the token is the page's."""
        url = urlsplit(self.path)
        token = self.headers.get(TOKEN_HEADER) or parse_qs(url.query).get("token", [""])[0]
        if self.headers.get("Host") not in self.server.allowed_hosts() or \
                not secrets.compare_digest(token.encode(), self.server.token.encode()):
            self._send(HTTPStatus.FORBIDDEN, json.dumps({"error": "forbidden: open the URL `fellowship review` "
                                                                  "printed"}))
            return True
        return False

    def do_GET(self) -> None:
        """The page, or the waiting prompts as JSON."""
        if self._refused():
            return
        path = urlsplit(self.path).path
        with self.server.lock:
            if path == "/":
                self._send(HTTPStatus.OK, page_html(self.server.store, self.server.token, self.server.run_dir),
                           "text/html")
            elif path == "/api/prompts":
                self._send(HTTPStatus.OK, json.dumps(page_items(self.server.store)))
            else:
                self._send(HTTPStatus.NOT_FOUND, json.dumps({"error": "not found"}))

    def do_POST(self) -> None:
        """Store a decision (`/api/decide`) or take one back (`/api/withdraw`); 400 with the reason if refused."""
        if self._refused():
            return
        path = urlsplit(self.path).path
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            prompt_id = str(body.pop("prompt_id"))
            with self.server.lock:
                if path == "/api/decide":
                    decision = HumanDecision.model_validate({**body, "via": "page"})
                    self.server.store.decide([(prompt_id, decision)])
                    self._send(HTTPStatus.OK, json.dumps({"prompt_id": prompt_id, "decision": decision.model_dump()}))
                elif path == "/api/withdraw":
                    self.server.store.withdraw(prompt_id)
                    self._send(HTTPStatus.OK, json.dumps({"prompt_id": prompt_id, "decision": None}))
                else:
                    self._send(HTTPStatus.NOT_FOUND, json.dumps({"error": "not found"}))
        except (KeyError, ValueError, ValidationError, DecisionRefused) as error:
            reason = error.errors()[0]["msg"] if isinstance(error, ValidationError) else str(error)
            self._send(HTTPStatus.BAD_REQUEST, json.dumps({"error": reason}))
