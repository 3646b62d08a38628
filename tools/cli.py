"""The `fellowship` command line: evaluate, draw graphs, read traces, run the demo.

Every command checks its flags, model specs and input files before any model is called; a problem is
one line on stderr naming the flag, variable, file or line, with exit status 1 (FELLOWSHIP_DEBUG=1
shows the traceback). One event loop per command: chat clients are bound to the loop that made them.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tools.errors import ConfigError, FellowshipError

app = typer.Typer(
    name="fellowship",
    help="Preference datasets built and judged by groups of LLMs, and how far those judges can be trusted.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
trace_app = typer.Typer(help="Read local run traces written with --trace.", no_args_is_help=True)
app.add_typer(trace_app, name="trace")

console = Console()
errors = Console(stderr=True)
CommandT = TypeVar("CommandT", bound=Callable[..., Any])

GraphName = Literal["judge", "jury", "debate"]


def user_errors(command: CommandT) -> CommandT:
    """Turn FellowshipError into one line on stderr and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FellowshipError as error:
            if os.environ.get("FELLOWSHIP_DEBUG"):
                raise
            errors.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


ModelOption = Annotated[
    list[str] | None,
    typer.Option("--model", "-m", help="model spec, repeatable: openai:MODEL, together:ORG/MODEL, "
                 "compat:MODEL@URL, local:smollm2 (default) or local:/path/file.gguf"),
]
ConcurrencyOption = Annotated[int, typer.Option("--concurrency", "-c", min=1, help="items in flight at once")]
MaxTokensOption = Annotated[int, typer.Option("--max-tokens", min=16, help="cap on tokens generated per call")]
OutputFormatOption = Annotated[
    Literal["auto", "text", "json"],
    typer.Option(
        "--output-format",
        help="evaluator answer format: text lines, JSON schema, or auto (JSON for local models)",
    ),
]


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=errors,
        transient=False,
    )


def _verdict_table(verdicts: list[dict[str, Any]]) -> Table:
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


def run_evaluation(
    *,
    input_path: Path,
    output_path: Path,
    method: str,
    strategy: str,
    scale: int,
    models: list[str],
    rounds: int,
    swap: bool,
    concurrency: int,
    jury_rule: str,
    max_tokens: int,
    output_format: str,
    trace_dir: Path | None,
) -> list[dict[str, Any]]:
    """Validate everything, then evaluate with a progress bar, resuming from a partial output file."""
    from agents.models import ModelRegistry, ModelSettings, check_model_spec
    from agents.referees import DEFAULT_ROLES
    from graphs.context import EvaluationContext
    from graphs.evaluation import evaluate_items
    from tools.items import load_eval_items
    from tools.jsonl import JsonlAppender, read_jsonl_tolerant, write_jsonl_atomic

    for spec in models:
        check_model_spec(spec)
    if method == "judge" and len(models) != 1:
        raise ConfigError(f"--model: the judge takes one model, got {len(models)} (use --method jury for several)")
    if method == "debate" and len(models) not in (1, len(DEFAULT_ROLES)):
        raise ConfigError(
            f"--model: a debate takes one model for all referees or one per referee ({len(DEFAULT_ROLES)}), "
            f"got {len(models)}"
        )
    items = load_eval_items(input_path)
    if method == "judge" and strategy == "direct":
        for item in items:
            if len(item.responses) != 2:
                raise ConfigError(f"--strategy direct: item {item.id!r} of {input_path} has "
                                  f"{len(item.responses)} responses; direct comparison takes two")
    if swap and method != "debate" and any(len(item.responses) != 2 for item in items):
        raise ConfigError(f"--swap: every item of {input_path} must have exactly two responses")

    settings = ModelSettings(max_tokens=max_tokens, output_format=output_format)  # type: ignore[arg-type]
    registry = ModelRegistry(settings)
    context = EvaluationContext(
        models=models,
        strategy=strategy,  # type: ignore[arg-type]
        scale=scale,
        swap=swap,
        jury_rule=jury_rule,  # type: ignore[arg-type]
        rounds=rounds,
        model_source=registry,
    )
    # Verdicts already written by an interrupted run with the same settings are kept, not paid for again.
    partial_path = output_path.with_name(output_path.name + ".partial")
    settings_key = {"method": method, "models": models, "swapped": swap and strategy != "independent"}
    done = {
        str(record["id"]): record
        for record in read_jsonl_tolerant(partial_path)
        if all(record.get(key) == value for key, value in settings_key.items()) and not record.get("error")
    }
    pending = [item for item in items if item.id not in done]
    if done:
        errors.print(f"resuming: {len(items) - len(pending)} of {len(items)} items already evaluated in {partial_path}")

    appender = JsonlAppender(partial_path)
    try:
        with _progress() as progress:
            task = progress.add_task(f"{method}", total=len(items), completed=len(items) - len(pending), status="")
            failures = 0

            def on_verdict(verdict: dict[str, Any]) -> None:
                nonlocal failures
                appender.append(verdict)
                failures += bool(verdict.get("error")) or not verdict["parse_ok"]
                progress.update(task, advance=1, status=f"unparsed/failed: {failures}")

            fresh = asyncio.run(
                _evaluate_and_close(
                    evaluate_items(
                        pending,
                        method=method,  # type: ignore[arg-type]
                        context=context,
                        concurrency=concurrency,
                        trace_dir=trace_dir,
                        on_verdict=on_verdict,
                    ),
                    registry,
                )
            )
    finally:
        appender.close()
    by_id = {**done, **{str(verdict["id"]): verdict for verdict in fresh}}
    verdicts = [by_id[item.id] for item in items]
    write_jsonl_atomic(output_path, verdicts)
    partial_path.unlink(missing_ok=True)
    return verdicts


async def _evaluate_and_close(work: Any, registry: Any) -> Any:
    try:
        return await work
    finally:
        registry.close()


@app.command()
@user_errors
def evaluate(
    input_path: Annotated[Path, typer.Option("--input", "-i", help="PAIRS.jsonl: {id, prompt, responses}")],
    output_path: Annotated[Path, typer.Option("--output", "-o", help="VERDICTS.jsonl to write")],
    method: Annotated[Literal["judge", "jury", "debate"], typer.Option(help="evaluation workflow")] = "judge",
    strategy: Annotated[
        Literal["direct", "independent", "combined"], typer.Option(help="judge prompting strategy")
    ] = "combined",
    scale: Annotated[Literal["5", "10", "100"], typer.Option(help="score scale for scoring strategies")] = "10",
    model: ModelOption = None,
    rounds: Annotated[int, typer.Option(min=1, max=20, help="debate rounds")] = 2,
    swap: Annotated[bool, typer.Option(help="judge both answer orders; disagreement becomes a tie")] = False,
    jury_rule: Annotated[Literal["plurality", "mean"], typer.Option(help="jury aggregation rule")] = "plurality",
    concurrency: ConcurrencyOption = 4,
    max_tokens: MaxTokensOption = 512,
    output_format: OutputFormatOption = "auto",
    trace: Annotated[Path | None, typer.Option(help="write each item's run tree as JSON into this folder")] = None,
) -> None:
    """Judge which answer is best for every item, with a judge, a jury or a debate."""
    from agents.models import DEFAULT_MODEL

    verdicts = run_evaluation(
        input_path=input_path,
        output_path=output_path,
        method=method,
        strategy=strategy,
        scale=int(scale),
        models=list(model or [DEFAULT_MODEL]),
        rounds=rounds,
        swap=swap,
        concurrency=concurrency,
        jury_rule=jury_rule,
        max_tokens=max_tokens,
        output_format=output_format,
        trace_dir=trace,
    )
    console.print(_verdict_table(verdicts))
    console.print(f"wrote {len(verdicts)} verdicts to {output_path}")


def draw_graph(name: str, output_format: str, output: Path | None) -> str:
    """Mermaid or ASCII text of a workflow graph, or a PNG written to `output`."""
    from graphs.evaluation import evaluation_graph

    compiled = evaluation_graph(name)  # type: ignore[arg-type]
    drawable = compiled.get_graph()
    if output_format == "mermaid":
        return drawable.draw_mermaid()
    if output_format == "ascii":
        return drawable.draw_ascii()
    target = output or Path(f"{name}.png")
    try:
        drawable.draw_png(str(target))
    except ImportError:
        raise ConfigError("--format png needs pygraphviz: pip install 'fellowship[png]'") from None
    return f"wrote {target}"


@app.command()
@user_errors
def graph(
    name: Annotated[GraphName, typer.Argument(help="workflow to draw")],
    output_format: Annotated[Literal["mermaid", "ascii", "png"], typer.Option("--format")] = "mermaid",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="PNG file to write")] = None,
) -> None:
    """Draw a workflow graph offline: Mermaid text, ASCII art, or a PNG."""
    typer.echo(draw_graph(name, output_format, output))


@trace_app.command("show")
@user_errors
def trace_show(file: Annotated[Path, typer.Argument(help="a trace JSON written with --trace")]) -> None:
    """Print the conversation in a trace: who said what, in which round."""
    from tools.tracing import conversation_lines, load_trace

    for line in conversation_lines(load_trace(file)):
        console.print(line, markup=False, highlight=False)


@app.command()
@user_errors
def demo(
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("runs/demo"),
    model: ModelOption = None,
) -> None:
    """Judge a few bundled items with the embedded model (no API keys needed) and print the verdicts."""
    from agents.models import DEFAULT_MODEL

    pairs = Path(str(resources.files("tools").joinpath("data/demo_pairs.jsonl")))
    output_path = output / "verdicts.jsonl"
    verdicts = run_evaluation(
        input_path=pairs,
        output_path=output_path,
        method="judge",
        strategy="combined",
        scale=10,
        models=list(model or [DEFAULT_MODEL]),
        rounds=2,
        swap=False,
        concurrency=4,
        jury_rule="plurality",
        max_tokens=512,
        output_format="auto",
        trace_dir=None,
    )
    console.print(_verdict_table(verdicts))
    console.print(f"wrote {output_path}")


def main() -> None:
    app(prog_name="fellowship")


if __name__ == "__main__":
    main()
