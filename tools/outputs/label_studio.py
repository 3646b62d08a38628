"""Label Studio for teams: the waiting prompts of a run as a Label Studio project, and its annotations back.

`push` creates the run's project (or reuses it: one per run directory, found by its title) with a labeling config
that asks for the best answer (or none acceptable), optionally the worst, and a note; then imports every waiting
prompt not imported yet as a task. A disputed prompt carries the evaluator's pick as a prediction (Label Studio
shows it as a pre-annotation to accept or change); an audit prompt carries none, and no verdict in its data, so the
label does not copy it. `pull` reads the finished annotations back (the latest one of each task that was not
cancelled) as decisions.

Plain REST over HTTP (the same routes the `label-studio-sdk` calls), authenticated with the user's token: a legacy
API token (`Authorization: Token T`), or a personal access token (a JWT), exchanged for a short-lived access token at
`/api/token/refresh` first. The token is never printed nor written.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from tools.errors import ConfigError
from tools.outputs.review_store import WaitingPrompt
from tools.rules.decisions import HumanDecision
from tools.rules.verdicts import candidate_labels

TOKEN_VARIABLE = "LABEL_STUDIO_API_KEY"
NONE_CHOICE = "none"


def labeling_config(answers: int) -> str:
    """The project's labeling config for prompts with up to `answers` answers: best (or none), worst, note."""
    letters = candidate_labels(answers)
    texts = "".join(f'<Header value="Answer {letter}"/><Text name="answer_{letter}" value="$answer_{letter}"/>'
                    for letter in letters)
    best = "".join(f"<Choice value={quoteattr(letter)}/>" for letter in letters)
    return (
        '<View><Header value="Prompt"/><Text name="prompt" value="$prompt"/>' + texts
        + '<Header value="What the evaluators said (disputed prompts only)"/>'
        + '<Text name="evaluator" value="$evaluator"/>'
        + '<Header value="Best answer"/><Choices name="best" toName="prompt" choice="single" required="true">'
        + best + f'<Choice value="{NONE_CHOICE}" alias="{NONE_CHOICE}" hint="no acceptable answer"/></Choices>'
        + '<Header value="Worst answer (optional)"/><Choices name="worst" toName="prompt" choice="single">'
        + best + '</Choices><Header value="Note"/><TextArea name="note" toName="prompt" rows="2" maxSubmissions="1"/>'
        + "</View>"
    )


def project_title(run_dir: Path) -> str:
    """One project per run directory: its name and a hash of its full path (a title has at least 3 characters)."""
    digest = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:8]
    return f"fellowship {run_dir.resolve().name} {digest}"


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{message.get('role')}: {message.get('content')}" if len(prompt) > 1 else
                       str(message.get("content", "")) for message in prompt)


def _evaluator_text(entry: WaitingPrompt) -> str:
    verdict = entry.record.get("verdict") or {}
    scores = ", ".join(f"{letter} {score if score is None else round(float(score), 2)}"
                       for letter, score in zip(candidate_labels(len(verdict.get("scores") or [])),
                                                verdict.get("scores") or [], strict=True))
    lines = [f"{verdict.get('method')}: winner {verdict.get('winner')}" + (f"; scores {scores}" if scores else "")]
    if verdict.get("juror_votes"):
        lines.append("juror votes: " + ", ".join(str(vote) for vote in verdict["juror_votes"]))
    lines += [f"disputed: {reason}" for reason in entry.request.get("reasons", [])]
    return "\n".join(lines)


def task_for(entry: WaitingPrompt, answers: int) -> dict[str, Any]:
    """One waiting prompt as a Label Studio task: with the evaluator's pick as a prediction unless it is an audit."""
    texts = [answer.get("text", "") for answer in entry.record.get("answers", [])]
    data: dict[str, Any] = {"prompt_id": entry.prompt_id, "sample": entry.sample,
                            "prompt": _prompt_text(entry.record.get("prompt", "")),
                            "evaluator": "" if entry.sample == "audit" else _evaluator_text(entry)}
    for index, letter in enumerate(candidate_labels(answers)):
        data[f"answer_{letter}"] = texts[index] if index < len(texts) else "(no such answer for this prompt)"
    task: dict[str, Any] = {"data": data}
    winner = (entry.record.get("verdict") or {}).get("winner")
    if entry.sample != "audit" and winner in candidate_labels(len(texts)):
        task["predictions"] = [{"model_version": "fellowship-evaluator", "result": [
            {"from_name": "best", "to_name": "prompt", "type": "choices", "value": {"choices": [winner]}}]}]
    return task


def decision_from_annotation(
    annotation: dict[str, Any], people: dict[int, str] | None = None
) -> HumanDecision | None:
    """An annotation's decision (None when it picked no best answer).

    Who decided is their e-mail (from `people`, by user id) when known; when is the annotation's last change.
    """
    chosen: dict[str, str] = {}
    note = ""
    for result in annotation.get("result") or []:
        value = result.get("value") or {}
        if result.get("from_name") in ("best", "worst") and value.get("choices"):
            chosen[result["from_name"]] = str(value["choices"][0])
        elif result.get("from_name") == "note" and value.get("text"):
            note = "\n".join(str(line) for line in value["text"])
    if "best" not in chosen:
        return None
    who = annotation.get("completed_by")
    user_id = who.get("id") if isinstance(who, dict) else who
    reviewer = (people or {}).get(user_id) if isinstance(user_id, int) else None
    decision: dict[str, Any] = {
        "reviewer": reviewer or str(user_id or ""), "note": note, "via": "label-studio",
        "decided_at": str(annotation.get("updated_at") or annotation.get("created_at") or ""),
    }
    if chosen["best"] == NONE_CHOICE:
        decision["none"] = True
    else:
        worst = chosen.get("worst")
        decision |= {"best": chosen["best"], "worst": worst if worst != chosen["best"] else None}
    return HumanDecision.model_validate(decision)


@dataclass
class LabelStudio:
    """A Label Studio server at `url`, spoken to with `token`."""

    url: str
    token: str = field(repr=False)  # never shown

    def __post_init__(self) -> None:
        """Normalise the URL; exchange a personal access token for an access token."""
        self.url = self.url.rstrip("/")
        self._authorization = f"Token {self.token}"
        if self.token.count(".") == 2:  # a personal access token (JWT): exchange it for an access token
            answer = self._request("POST", "/api/token/refresh", {"refresh": self.token}, authorized=False)
            self._authorization = f"Bearer {answer['access']}"

    def _request(self, method: str, path: str, body: Any = None, *, authorized: bool = True) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if authorized:
            headers["Authorization"] = self._authorization
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                text = reply.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")[:200].replace("\n", " ")
            hint = f" (check {TOKEN_VARIABLE})" if error.code in (401, 403) else ""
            raise ConfigError(f"--label-studio {self.url}: {method} {path.split('?')[0]} answered {error.code}"
                              f"{hint}: {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ConfigError(f"--label-studio {self.url}: cannot reach it ({reason})") from None
        return json.loads(text) if text else None

    def find_project(self, title: str) -> int | None:
        """The id of the project with this title, or None."""
        page = 1
        while True:
            listing = self._request("GET", f"/api/projects?page={page}&page_size=100")
            projects = listing.get("results", []) if isinstance(listing, dict) else listing
            for project in projects:
                if project.get("title") == title:
                    return int(project["id"])
            if not isinstance(listing, dict) or not listing.get("next"):
                return None
            page += 1

    def project(self, title: str, answers: int) -> int:
        """The id of the project with this title, created with the labeling config when there is none."""
        found = self.find_project(title)
        if found is not None:
            return found
        created = self._request("POST", "/api/projects", {
            "title": title, "label_config": labeling_config(answers),
            "description": "Prompts of a fellowship run that wait for a person: pick the best answer.",
        })
        return int(created["id"])

    def tasks(self, project: int) -> list[dict[str, Any]]:
        """Every task of a project with its annotations (Label Studio's JSON export)."""
        exported = self._request("GET", f"/api/projects/{project}/export?exportType=JSON&download_all_tasks=true")
        return list(exported or [])

    def push(self, run_dir: Path, waiting: list[WaitingPrompt]) -> tuple[int, int]:
        """Import the waiting prompts not imported yet; (project id, tasks imported now)."""
        answers = max((entry.answer_count() for entry in waiting), default=2)
        project = self.project(project_title(run_dir), answers)
        known = {str((task.get("data") or {}).get("prompt_id")) for task in self.tasks(project)}
        new = [task_for(entry, answers) for entry in waiting if entry.prompt_id not in known]
        if new:
            self._request("POST", f"/api/projects/{project}/import", new)
        return project, len(new)

    def pull(self, run_dir: Path) -> list[tuple[str, HumanDecision]]:
        """The decisions of every task with a finished annotation (the latest one not cancelled)."""
        project = self.find_project(project_title(run_dir))
        if project is None:
            raise ConfigError(f"--label-studio {self.url}: no project '{project_title(run_dir)}' for {run_dir}; "
                              "send the waiting prompts first (without --pull)")
        users = self._request("GET", "/api/users")
        people = {int(user["id"]): str(user.get("email") or user["id"]) for user in users}
        decisions = []
        for task in self.tasks(project):
            annotations = [annotation for annotation in task.get("annotations") or []
                           if not annotation.get("was_cancelled")]
            annotations.sort(key=lambda annotation: str(annotation.get("updated_at") or annotation.get("created_at")))
            decision = decision_from_annotation(annotations[-1], people) if annotations else None
            prompt_id = (task.get("data") or {}).get("prompt_id")
            if decision is not None and prompt_id is not None:
                decisions.append((str(prompt_id), decision))
        return decisions
