"""`fellowship review DIR`: decide the prompts a `generate --review` run paused, on a page or through files.

Without options it serves the review page (`tools/outputs/review_page.py`) until Ctrl-C. `--export FILE.jsonl`
writes one line per waiting prompt for scripts and other tools; `--import FILE.jsonl` reads decisions, all of a
file or none of it. Decisions are applied (rows made, `human.jsonl` written) by running the same `generate`
command again, which resumes each decided prompt without a model call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from tools.cli.common import console
from tools.errors import ConfigError, InputError
from tools.outputs.review_store import REVIEW_FILE, DecisionRefused, ReviewStore, WaitingPrompt

EXPORT_FIELDS = ("prompt_id", "sample", "reasons", "prompt", "answers", "verdict", "decision")


def export_line(entry: WaitingPrompt) -> dict[str, Any]:
    """One waiting prompt as a `review --export` line: what a person or a script needs to decide it.

    `answers` are the texts in iteration order (letter A first); `verdict` the evaluator's (winner, scores, juror
    votes, each answer order's pick), also for audit prompts: a script decides for itself whether to look.
    """
    verdict = entry.record.get("verdict") or {}
    return {
        "prompt_id": entry.prompt_id,
        "sample": entry.sample,
        "reasons": entry.request.get("reasons", []),
        "prompt": entry.record.get("prompt"),
        "answers": [answer.get("text", "") for answer in entry.record.get("answers", [])],
        "verdict": {key: verdict.get(key) for key in ("method", "strategy", "winner", "scores", "juror_votes",
                                                      "order_winners") if verdict.get(key) not in (None, [])},
        "decision": entry.decision,
    }


def read_decisions(path: Path, store: ReviewStore) -> list[tuple[str, Any]]:
    """Every decision of an import file, checked against the waiting prompts; the first bad line raises InputError.

    A line is `{"prompt_id": ..., "best": "B", "worst": "A", "reviewer": "ana", "note": "..."}` or
    `{"prompt_id": ..., "none": true}`.
    """
    from tools.inputs.items import read_jsonl
    from tools.rules.decisions import HumanDecision

    decisions: list[tuple[str, Any]] = []
    seen: dict[str, int] = {}
    for number, row in read_jsonl(path):
        if "prompt_id" not in row:
            raise InputError(path, number, "missing field 'prompt_id'")
        prompt_id = str(row.pop("prompt_id"))
        if prompt_id in seen:
            raise InputError(path, number, f"prompt_id {prompt_id!r} is decided twice (first on line "
                             f"{seen[prompt_id]})")
        seen[prompt_id] = number
        try:
            decision = HumanDecision.model_validate({**row, "via": "import"})
            store.check(prompt_id, decision)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ()))
            raise InputError(path, number, f"{where + ': ' if where else ''}{first['msg']}") from None
        except DecisionRefused as error:
            raise InputError(path, number, str(error)) from None
        decisions.append((prompt_id, decision))
    return decisions


def open_store(run_dir: Path) -> ReviewStore:
    """The run directory's review store; a directory where nothing paused is refused with one line."""
    if not (run_dir / REVIEW_FILE).is_file():
        raise ConfigError(f"{run_dir}: no prompt of this directory paused for review (run generate with --review "
                          "disputed or --audit-share)")
    return ReviewStore.of(run_dir)


def serve(run_dir: Path, port: int) -> None:
    """Serve the review page until Ctrl-C."""
    from tools.outputs.review_page import ReviewServer

    server = ReviewServer(run_dir, port=port)
    counts = server.store.counts()
    console.print(f"review page: {server.url}", markup=False, soft_wrap=True)
    console.print(f"{counts['undecided']} prompts wait, {counts['decided']} decided and not yet applied. Each "
                  "decision is saved as you make it; Ctrl-C stops the page. Then run the same generate command "
                  "to apply the decisions (no model call).", markup=False, soft_wrap=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        console.print("review page stopped; every decision made is saved", markup=False)
    finally:
        server.server_close()


def label_studio_command(run_dir: Path, store: ReviewStore, url: str, *, pull: bool) -> None:
    """Send the waiting prompts to Label Studio, or (`pull`) take its finished annotations as decisions.

    Pulled decisions are taken one by one: one that cannot be (a prompt already applied, a letter the prompt does
    not have) is left out and counted, so one annotator's slip does not hold the team's other decisions back.
    """
    import os

    from tools.outputs.label_studio import TOKEN_VARIABLE, LabelStudio, project_title

    token = os.environ.get(TOKEN_VARIABLE)
    if not token:
        raise ConfigError(f"--label-studio: set {TOKEN_VARIABLE} to your Label Studio access token")
    server = LabelStudio(url, token)
    if not pull:
        waiting = store.prompts()
        project, sent = server.push(run_dir, waiting)
        console.print(f"Label Studio project {project} ('{project_title(run_dir)}'): {sent} tasks sent, "
                      f"{len(waiting) - sent} were there already; {server.url}/projects/{project}", markup=False)
        return
    taken, refused = [], []
    for prompt_id, decision in server.pull(run_dir):
        try:
            store.check(prompt_id, decision)
            taken.append((prompt_id, decision))
        except DecisionRefused as error:
            refused.append(f"{prompt_id}: {error}")
    store.decide(taken)
    counts = store.counts()
    console.print(f"{len(taken)} decisions taken from Label Studio; {counts['undecided']} prompts still wait; run the "
                  "same generate command to apply them (no model call)", markup=False)
    for line in refused[:5]:
        console.print(f"left out: {line}", markup=False)


def review_command(
    run_dir: Annotated[Path, typer.Argument(help="the generate run's --output directory")],
    export: Annotated[Path | None, typer.Option("--export", help="write the waiting prompts to this JSONL file")]
    = None,
    import_file: Annotated[Path | None, typer.Option("--import", help="read decisions from this JSONL file "
                                                     "(all of it or none)")] = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="the page's port on 127.0.0.1 (0: any free port)")]
    = 0,
    label_studio: Annotated[str | None, typer.Option(
        "--label-studio", help="send the waiting prompts to this Label Studio as a project's tasks (token from "
        "LABEL_STUDIO_API_KEY)")] = None,
    pull: Annotated[bool, typer.Option(help="with --label-studio: read its finished annotations back as decisions")]
    = False,
) -> None:
    """Decide the prompts a `generate --review` run paused: on a local page, with files, or in Label Studio."""
    if sum(option is not None for option in (export, import_file, label_studio)) > 1:
        raise ConfigError("--export, --import and --label-studio: give one of them")
    if pull and label_studio is None:
        raise ConfigError("--pull reads from Label Studio: give --label-studio URL")
    with open_store(run_dir) as store:
        if label_studio is not None:
            label_studio_command(run_dir, store, label_studio, pull=pull)
            return
        if export is not None:
            from tools.outputs.jsonl import write_jsonl_atomic

            waiting = store.prompts()
            write_jsonl_atomic(export, [export_line(entry) for entry in waiting])
            console.print(f"{len(waiting)} waiting prompts -> {export}", markup=False)
            return
        if import_file is not None:
            decisions = read_decisions(import_file, store)
            store.decide(decisions)
            counts = store.counts()
            console.print(f"{len(decisions)} decisions taken from {import_file}; {counts['undecided']} prompts still "
                          f"wait; run the same generate command to apply them (no model call)", markup=False)
            return
    serve(run_dir, port)
