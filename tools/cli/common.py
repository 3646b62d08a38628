"""Pieces shared by the `fellowship` commands.

Error reporting, common options, progress, and the evaluation runner that `evaluate`, `meta-eval` and `winrate` all
use.

One event loop per command: chat clients are bound to the loop that made them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agents import garbage_collection
from agents.loop_executor import run_with_steps_on_loop
from graphs.ray_pool import RayStart
from tools.errors import EXIT_CONFIG, EXIT_FAILURES, EXIT_INTERRUPTED, ConfigError, FellowshipError

# Piped or captured output gets wide tables rather than the 80 columns rich assumes off a terminal.
console = Console(width=None if sys.stdout.isatty() else 160)
# Not the Jupyter renderer: progress bars would need ipywidgets there; plain stderr text works everywhere.
errors = Console(stderr=True, force_jupyter=False)
CommandT = TypeVar("CommandT", bound=Callable[..., Any])
ResultT = TypeVar("ResultT")


def user_errors(command: CommandT) -> CommandT:
    """Turn FellowshipError into one line on stderr and exit status 1, and Ctrl-C into exit status 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FellowshipError as error:
            if os.environ.get("FELLOWSHIP_DEBUG"):
                raise
            errors.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_CONFIG) from None
        except KeyboardInterrupt:
            errors.print("interrupted: finished work is kept; run the same command again to resume",
                         markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        finally:
            flush_traces()

    return wrapper  # type: ignore[return-value]


def flush_traces() -> None:
    """Wait for LangSmith's background sender, when tracing is on, so a command's last runs are not lost."""
    if os.environ.get("LANGSMITH_TRACING", os.environ.get("LANGCHAIN_TRACING_V2", "")).lower() != "true":
        return
    from langchain_core.tracers.langchain import wait_for_all_tracers

    wait_for_all_tracers()


def exit_if_failed(failed: int, total: int, unit: str, retry_hint: str) -> None:
    """Exit status 2 with one line when a finished run has failures, so scripts can tell."""
    if failed:
        errors.print(f"{failed} of {total} {unit} failed: {retry_hint}", markup=False, highlight=False,
                     soft_wrap=True)
        raise typer.Exit(EXIT_FAILURES)


def announce_models(roles: list[tuple[str, str, str | None]]) -> None:
    """Say on stderr which model plays each role, and warn when a role falls back to the embedded model.

    `roles` are (role, spec, what chose it: a flag, "demo", or None for the default); the warning comes when
    some roles were chosen and others fell back.
    """
    from agents.models import DEFAULT_MODEL

    parts = [f"{role} {spec} ({flag or 'default'})" for role, spec, flag in roles]
    errors.print("models: " + ", ".join(parts), markup=False, highlight=False, soft_wrap=True)
    defaulted = sorted({role for role, spec, flag in roles if flag is None and spec == DEFAULT_MODEL})
    if defaulted and any(flag is not None for _, _, flag in roles):
        errors.print(
            f"warning: {', '.join(defaulted)} fall back to the embedded {DEFAULT_MODEL} (135M parameters, for "
            "trying the machinery, not for real data); name a model for each role",
            markup=False, highlight=False, soft_wrap=True,
        )


ModelOption = Annotated[
    list[str] | None,
    typer.Option("--model", "-m", help="model spec, repeatable: openai:MODEL, together:ORG/MODEL, "
                 "compat:MODEL@URL, local:smollm2 (default) or local:/path/file.gguf"),
]
MethodOption = Annotated[Literal["judge", "jury", "debate"], typer.Option(help="evaluation workflow")]
RoundsOption = Annotated[int, typer.Option(min=1, max=20, help="debate rounds")]
SwapOption = Annotated[bool, typer.Option(help="judge both answer orders; disagreement becomes a tie")]
JuryRuleOption = Annotated[Literal["plurality", "mean"], typer.Option(help="jury aggregation rule")]
ConcurrencyOption = Annotated[
    int, typer.Option("--concurrency", "-c", min=1, help="model calls in flight at once (a rate-limit budget)")
]
WorkersOption = Annotated[int, typer.Option(
    "--workers", min=1, max=1024, help="worker processes; more than 1 runs on a local Ray instance, or on the cluster "
    "of --ray-address / $RAY_ADDRESS (pip install 'fellowship[ray]')")]
RayAddressOption = Annotated[str | None, typer.Option(
    "--ray-address", help="join this Ray cluster instead of starting one (default: $RAY_ADDRESS with --workers "
    "above 1)")]
RayStartOption = Annotated[RayStart, typer.Option(
    "--ray-start", help="with --workers N on one machine, when the local Ray instance starts: when-busy (once this "
    "process is CPU-bound with at least ~20 s of work left: a start costs seconds and CPU) or at-once")]
AdaptiveOption = Annotated[bool, typer.Option(
    "--adaptive/--no-adaptive", help="pace the calls to each endpoint to the rate limit its headers announce, wait "
    "out 429s for every call to it, and lower or raise the calls in flight under --concurrency (off: each call "
    "retries a 429 on its own, within --max-retries)")]
WorkerTimeoutOption = Annotated[float | None, typer.Option(
    "--worker-timeout", min=1, help="with --workers: seconds a Ray worker may hold work without finishing any "
    "before its work moves to the others (default: 10x the slowest prompt or item so far, at least 60)")]
BatchOption = Annotated[bool, typer.Option(
    "--batch", help="send every model call through the providers' batch APIs (openai:, together:, or a compat: "
    "endpoint with OpenAI's batch routes): about half the price, results within 24 hours; a step of every prompt "
    "under way is one batch round trip, and a killed run re-attaches to its batches (nothing is sent twice)")]
BatchSizeOption = Annotated[int | None, typer.Option(
    "--batch-size", min=1, max=50_000, help="with --batch: requests per batch, and prompts under way at once "
    "(default: the provider's limit of 50,000 requests and 200 MB (Together 100 MB) per batch; 10,000 prompts)")]
BatchWaitOption = Annotated[float, typer.Option(
    "--batch-wait", min=0, help="with --batch: seconds from a queue's first request until it is sent, full or not")]
MaxTokensOption = Annotated[int, typer.Option("--max-tokens", min=16, help="cap on tokens generated per call")]
MaxRetriesOption = Annotated[
    int, typer.Option("--max-retries", min=0, max=20, help="retries of timeouts, 5xx and 429 per call, with backoff")
]
TimeoutOption = Annotated[float, typer.Option("--timeout", min=1, help="seconds before a call times out")]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="YAML file of this command's options (names with - or _) and the debate panel "
                 "(debate_roles); options on the command line win"),
]
OutputFormatOption = Annotated[
    Literal["auto", "text", "json"],
    typer.Option(
        "--output-format",
        help="evaluator answer format: text lines, JSON schema, or auto (JSON for local models)",
    ),
]
ScoringOption = Annotated[
    Literal["auto", "expected", "parsed"],
    typer.Option(
        "--scoring",
        help="scores as the probability-weighted mean over the score tokens' top_logprobs (expected) or as written "
        "(parsed); auto: expected for openai, compat and local models, parsed for together",
    ),
]


CriteriaOption = Annotated[
    Path | None,
    typer.Option("--criteria", help="YAML file of criteria ({name, description, weight, rubric} each): scored one by "
                 "one, an answer's score their weighted mean"),
]
TraceOption = Annotated[
    Path | None,
    typer.Option("--trace", help="write each item's run tree as JSON into this folder (read with `fellowship "
                 "trace show`)"),
]
EXIT_CODES_HELP = (
    "Exit status: 0 all done; 1 bad input or configuration (nothing done); 2 finished with failures "
    "(retry them); 3 stopped at the budget (--max-cost-usd); 4 prompts wait for a person (fellowship review); "
    "130 interrupted (run the same command to resume)."
)


def interactive() -> bool:
    """True in a terminal.

    Not piped, not in CI logs, not in a notebook (whose saved outputs would keep every redraw of a progress bar).
    """
    in_kernel = "ipykernel" in sys.modules
    return errors.is_terminal and not in_kernel


def progress_bar() -> Progress:
    """The live progress display on stderr; off where nobody watches it redraw (see `interactive`)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=errors,
        transient=False,
        disable=not interactive(),
        # Redrawn when something changes, and twice a second for the clock: not ten times (rich's default), which
        # kept a terminal run's process busy while its calls waited.
        refresh_per_second=2,
    )


def verdict_table(verdicts: list[dict[str, Any]]) -> Table:
    """The verdicts as a table for the terminal: scores, winner, parse outcome, tokens, time."""
    table = Table(title="verdicts")
    for column in ("id", "method", "scores", "winner", "parsed", "tokens in/out", "seconds"):
        table.add_column(column)
    for verdict in verdicts:
        scores = ", ".join("-" if score is None else f"{score:g}" for score in verdict["scores"])
        usage = verdict.get("usage", {})
        table.add_row(
            str(verdict["id"]),
            verdict["method"],
            scores,
            str(verdict["winner"]),
            "error: " + verdict["error"][:40] if verdict.get("error") else ("yes" if verdict["parse_ok"] else "no"),
            f"{usage.get('input_tokens', 0)}/{usage.get('output_tokens', 0)}",
            f"{verdict.get('latency_s', 0):.1f}",
        )
    return table


def load_items_for(
    input_path: Path, *, method: str, strategy: str, models: list[str], swap: bool, roles: Sequence[Any]
) -> list[Any]:
    """Read PAIRS.jsonl and check that its items and the flags fit together, before any model call."""
    from tools.inputs.items import load_eval_items

    items = load_eval_items(input_path)
    check_evaluation_flags(items, method=method, strategy=strategy, models=models, swap=swap, source=str(input_path),
                           roles=roles)
    return items


def check_evaluation_flags(
    items: list[Any], *, method: str, strategy: str, models: list[str], swap: bool, source: str,
    flag: str = "--model", roles: Sequence[Any] = (),
) -> None:
    """Check, before any work, that the evaluator can judge these items as asked and reach its models.

    A problem is one line naming the flag. `roles` is the debate panel.
    """
    from agents.models import check_model_spec, preflight_endpoints

    for spec in models:
        check_model_spec(spec, flag=flag)
    if method == "judge" and len(models) != 1:
        raise ConfigError(f"--model: the judge takes one model, got {len(models)} (use --method jury for several)")
    if method == "debate" and len(models) not in (1, len(roles)):
        raise ConfigError(
            f"--model: a debate takes one model for all referees or one per referee ({len(roles)}), got {len(models)}"
        )
    own_models = [role.model for role in roles if method == "debate" and role.model]
    for spec in own_models:
        check_model_spec(spec, flag="debate_roles")
    if method == "judge" and strategy == "direct":
        for item in items:
            if len(item.responses) != 2:
                raise ConfigError(f"--strategy direct: item {item.id!r} of {source} has "
                                  f"{len(item.responses)} responses; direct comparison takes two")
    if swap and method != "debate" and any(len(item.responses) != 2 for item in items):
        raise ConfigError(f"--swap: every item of {source} must have exactly two responses")
    preflight_endpoints([(flag, spec) for spec in models] + [("debate_roles", spec) for spec in own_models])


def run_evaluation(
    *, items: list[Any], output_path: Path, options: Any, reuse_output: bool = False
) -> list[dict[str, Any]]:
    """Evaluate checked items with a progress bar; the runner resumes from a partial output file.

    `options` are the command's validated EvaluationOptions (tools/cli/options.py). With `reuse_output`,
    verdicts already in `output_path` (the same settings, no error) are kept too: the meta-evaluation cache,
    where an output file belongs to one evaluator.
    """
    from agents.models import ModelRegistry, ModelSettings
    from graphs.evaluation import evaluate_into_file, reusable_verdicts

    specs = [("--model", spec) for spec in options.models()] + [("debate_roles", role.model)
                                                                 for role in options.panel() if role.model]
    batch = options.batch_settings(output_path.parent / f"{output_path.stem}.batches", specs)
    jobs_at_once = options.jobs_at_once()
    model_settings = ModelSettings(max_tokens=options.max_tokens, output_format=options.output_format,
                                   scoring=options.scoring, adaptive=options.adaptive, calls_cap=options.concurrency,
                                   batch=batch)
    workers = options.ray_workers(model_settings)  # a cluster that cannot be reached stops the command here
    registry = ModelRegistry(model_settings)
    context, roles, method = options.context(), options.panel(), options.method
    done = reusable_verdicts(items, output_path, method=method, context=context, roles=roles,
                             reuse_output=reuse_output)
    if done:
        errors.print(f"reusing {len(done)} of {len(items)} verdicts already made with these settings")
    with progress_bar() as progress:
        task = progress.add_task(f"{method}", total=len(items), completed=len(done), status="")
        failures = 0

        def status_line() -> str:
            limited = "".join(f"; {line}" for line in registry.endpoint_controllers.status())
            batches = registry.batches.status() if registry.batches is not None else ""
            return f"unparsed/failed: {failures}{limited}{f'; {batches}' if batches else ''}"

        def on_verdict(verdict: dict[str, Any]) -> None:
            nonlocal failures
            failures += bool(verdict.get("error")) or not verdict["parse_ok"]
            progress.update(task, advance=1, status=status_line())

        def on_batch_event(line: str) -> None:
            errors.print(line, markup=False, highlight=False, soft_wrap=True)
            progress.update(task, status=status_line())

        return run_coroutine(run_then_close(
            evaluate_into_file(
                items, output_path, method=method, context=context, roles=roles, model_source=registry,
                concurrency=options.calls_at_once(),
                trace_dir=options.trace,
                done=done, reuse_output=reuse_output, on_verdict=on_verdict, workers=workers,
                jobs_at_once=jobs_at_once,
            ),
            registry, on_batch_event=on_batch_event,
        ))


def run_coroutine(work: Coroutine[Any, Any, ResultT]) -> ResultT:
    """Run the work on a new event loop (`run_with_steps_on_loop`), also from inside Jupyter.

    Jupyter's kernel already runs an event loop in this thread, so there the work runs on a thread of its own.
    """
    garbage_collection.for_the_run()  # the run's modules are loaded (in the CLI: frozen out of the collector's way)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_with_steps_on_loop(work)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run_with_steps_on_loop, work).result()


async def run_then_close(work: Any, registry: Any, *, on_batch_event: Callable[[str], None] | None = None) -> Any:
    """Await the work, then close the model registry inside the same event loop.

    With `--batch`, `on_batch_event` hears each batch sent, re-attached and finished (the coordinator is made in
    this loop, with the registry's first model).
    """
    if on_batch_event is not None:
        registry.on_batch_event = on_batch_event
    try:
        return await work
    finally:
        await registry.aclose()

