"""The `fellowship` command line: evaluate, generate, meta-evaluate, draw graphs, read traces, run the demo.

Every command checks its flags, model specs and input files before any model is called; a problem is
one line on stderr naming the flag, variable, file or line, with exit status 1 (FELLOWSHIP_DEBUG=1
shows the traceback). One event loop per command: chat clients are bound to the loop that made them.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from agents import garbage_collection
from tools.cli.common import (
    EXIT_CODES_HELP,
    AdaptiveOption,
    BatchOption,
    BatchSizeOption,
    BatchWaitOption,
    ConcurrencyOption,
    ConfigOption,
    CriteriaOption,
    JuryRuleOption,
    MaxRetriesOption,
    MaxTokensOption,
    MethodOption,
    ModelOption,
    OutputFormatOption,
    RayAddressOption,
    RayStartOption,
    RoundsOption,
    ScoringOption,
    SwapOption,
    TimeoutOption,
    TraceOption,
    WorkersOption,
    WorkerTimeoutOption,
    announce_models,
    console,
    errors,
    exit_if_failed,
    load_items_for,
    progress_bar,
    run_coroutine,
    run_evaluation,
    run_then_close,
    user_errors,
    verdict_table,
)
from tools.cli.meta import jury_search_command, meta_app, winrate_command
from tools.cli.options import (
    EVALUATE_DEFAULTS,
    GENERATE_DEFAULTS,
    EvaluateOptions,
    GenerateOptions,
    GraphOptions,
    criteria_setting,
    prompts_setting,
    resolve_options,
    scoring_setting,
)
from tools.cli.prompt_show import prompts_app
from tools.cli.rank import rank_command
from tools.cli.review import review_command
from tools.errors import EXIT_BUDGET, EXIT_WAITING, ConfigError

if TYPE_CHECKING:
    from agents.roles import RefereeRole

# `fellowship --help` lists the commands in the order a user meets them: the main job first.
COMMAND_ORDER = ("generate", "demo", "report", "review", "evaluate", "meta-eval", "winrate", "rank", "jury-search",
                 "graph", "trace")


class CommandsInUseOrder(typer.core.TyperGroup):
    """The command group, listing its commands in `COMMAND_ORDER` (any other after them)."""

    def list_commands(self, ctx: Any) -> list[str]:
        """The command names, main job first."""
        names = super().list_commands(ctx)
        return [name for name in COMMAND_ORDER if name in names] + [name for name in names if name not in COMMAND_ORDER]


app = typer.Typer(
    cls=CommandsInUseOrder,
    name="fellowship",
    help="Preference datasets built and judged by groups of LLMs, and how far those judges can be trusted. "
    + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
trace_app = typer.Typer(help="Read local run traces written with --trace.", no_args_is_help=True)
app.add_typer(trace_app, name="trace")
app.add_typer(meta_app, name="meta-eval")
app.command("jury-search")(user_errors(jury_search_command))
app.command("winrate")(user_errors(winrate_command))
app.command("rank")(user_errors(rank_command))
app.command("review")(user_errors(review_command))
app.add_typer(prompts_app, name="prompts")

GraphName = Literal["judge", "jury", "debate", "feedback_loop", "pipeline"]


@app.command()
@user_errors
def evaluate(
    ctx: typer.Context,
    input_path: Annotated[
        Path | None, typer.Option("--input", "-i", help="PAIRS.jsonl: {id, prompt, responses} (required)")
    ] = None,
    output_path: Annotated[Path | None, typer.Option("--output", "-o", help="VERDICTS.jsonl to write (required)")]
    = None,
    method: MethodOption = EVALUATE_DEFAULTS["method"],
    strategy: Annotated[Literal["direct", "independent", "combined"], typer.Option(help="judge prompting strategy")]
    = EVALUATE_DEFAULTS["strategy"],
    scale: Annotated[Literal["5", "10", "100"], typer.Option(help="score scale for scoring strategies")]
    = EVALUATE_DEFAULTS["scale"],
    model: ModelOption = None,
    rounds: RoundsOption = EVALUATE_DEFAULTS["rounds"],
    swap: SwapOption = EVALUATE_DEFAULTS["swap"],
    jury_rule: JuryRuleOption = EVALUATE_DEFAULTS["jury_rule"],
    concurrency: ConcurrencyOption = EVALUATE_DEFAULTS["concurrency"],
    workers: WorkersOption = EVALUATE_DEFAULTS["workers"],
    ray_address: RayAddressOption = None,
    ray_start: RayStartOption = EVALUATE_DEFAULTS["ray_start"],
    worker_timeout: WorkerTimeoutOption = None,
    adaptive: AdaptiveOption = EVALUATE_DEFAULTS["adaptive"],
    batch: BatchOption = False,
    batch_size: BatchSizeOption = None,
    batch_wait: BatchWaitOption = 60.0,
    max_tokens: MaxTokensOption = EVALUATE_DEFAULTS["max_tokens"],
    output_format: OutputFormatOption = EVALUATE_DEFAULTS["output_format"],
    scoring: ScoringOption = EVALUATE_DEFAULTS["scoring"],
    trace: TraceOption = None,
    criteria: CriteriaOption = None,
    config: ConfigOption = None,
) -> None:
    """Judge which answer is best for every item, with a judge, a jury or a debate."""
    options: EvaluateOptions = resolve_options(ctx, EvaluateOptions)
    models = options.models()
    roles = options.panel()
    items = load_items_for(options.input_path, method=options.method, strategy=options.strategy, models=models,
                           swap=options.swap, roles=roles)
    announce_models([(options.method, spec, "--model" if options.model else None) for spec in models])
    verdicts = run_evaluation(items=items, output_path=options.output_path, options=options)
    console.print(verdict_table(verdicts))
    console.print(f"wrote {len(verdicts)} verdicts to {options.output_path}")
    exit_if_failed(sum(bool(verdict.get("error")) for verdict in verdicts), len(verdicts), "items",
                   "their calls failed (see `error` in the output); run the same command again to retry them")


GRAPH_FORMATS_BY_SUFFIX = {".png": "png", ".mmd": "mermaid", ".mermaid": "mermaid", ".md": "mermaid",
                           ".txt": "ascii"}


def graph_format(output_format: str | None, output: Path | None) -> str:
    """The drawing format: --format when given, else from the --output file's extension, else Mermaid."""
    if output_format is not None:
        return output_format
    if output is None:
        return "mermaid"
    found = GRAPH_FORMATS_BY_SUFFIX.get(output.suffix.lower())
    if found is None:
        known = ", ".join(GRAPH_FORMATS_BY_SUFFIX)
        raise ConfigError(f"--output {output}: cannot tell the format from '{output.suffix}' ({known}); pass --format")
    return found


def draw_graph(
    name: str, output_format: str | None, output: Path | None, *, roles: Sequence[RefereeRole] | None = None
) -> str:
    """Mermaid or ASCII text of a workflow graph, or a PNG.

    With `output`, written there (the line says so). `roles` is the debate panel (of the debate and the pipeline).
    """
    from agents.roles import DEFAULT_ROLES
    from graphs.evaluation import evaluation_graph
    from graphs.feedback_loop import build_feedback_loop_graph
    from graphs.pipeline import build_pipeline_graph

    chosen = graph_format(output_format, output)
    roles = DEFAULT_ROLES if roles is None else roles
    if name == "feedback_loop":
        compiled = build_feedback_loop_graph().compile(name=name)
    elif name == "pipeline":
        compiled = build_pipeline_graph(roles=roles).compile(name=name)
    else:
        compiled = evaluation_graph(name, roles=roles)  # type: ignore[arg-type]
    drawable = compiled.get_graph(xray=name == "pipeline")
    if chosen == "png":
        target = output or Path(f"{name}.png")
        try:
            drawable.draw_png(str(target))
        except ImportError:
            raise ConfigError("--format png needs pygraphviz: pip install 'fellowship[png]'") from None
        return f"wrote {target}"
    text = drawable.draw_mermaid() if chosen == "mermaid" else drawable.draw_ascii()
    if output is None:
        return text
    output.write_text(text + "\n", encoding="utf-8")
    return f"wrote {output}"


@app.command()
@user_errors
def graph(
    ctx: typer.Context,
    name: Annotated[GraphName, typer.Argument(help="workflow to draw")],
    output_format: Annotated[
        Literal["mermaid", "ascii", "png"] | None,
        typer.Option("--format", help="default: from the --output extension (.png, .mmd, .txt), else mermaid"),
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file to write (.png, .mmd or .txt)")] = None,
    config: ConfigOption = None,
) -> None:
    """Draw a workflow graph offline: Mermaid text, ASCII art, or a PNG (the debate with a --config panel)."""
    options: GraphOptions = resolve_options(ctx, GraphOptions)
    typer.echo(draw_graph(name, options.output_format, options.output, roles=options.panel()))


@app.command("report")
@user_errors
def report_command(
    directory: Annotated[Path, typer.Argument(help="a generate output folder (records.jsonl, dpo.jsonl, kto.jsonl)")],
) -> None:
    """Write DIR/report.html: did the loop help, can the labels be trusted, and every row (no model call)."""
    from tools.outputs.report import write_run_report

    page = write_run_report(directory)
    console.print(f"report: {page} (and its figures: {page.with_suffix('.json')})")


@trace_app.command("show")
@user_errors
def trace_show(
    path: Annotated[Path, typer.Argument(help="a trace JSON written with --trace, or the --trace folder")],
) -> None:
    """Print the conversation in a trace: who said what, in which round (every trace of a folder, in turn)."""
    from tools.outputs.tracing import conversation_lines, load_trace, trace_files

    files = trace_files(path)
    for number, file in enumerate(files):
        if len(files) > 1:
            console.print(f"{'' if number == 0 else chr(10)}=== {file.name}", markup=False, highlight=False)
        for line in conversation_lines(load_trace(file)):
            console.print(line, markup=False, highlight=False)


def check_run_directory(output: Path, settings: dict[str, Any], source: Any, *, extend: bool) -> None:
    """Refuse, before any work, an --output that holds a run with other settings or other prompts."""
    from tools.outputs.run_store import RunStore

    if not (output / "progress.sqlite").is_file():
        return
    store = RunStore(output / "progress.sqlite")
    try:
        store.bind_settings(settings)
        store.bind_prompt_source(source, extend=extend)
    finally:
        store.close()


def run_generate(
    *,
    prompts_source: str,
    output: Path,
    generator: str,
    reviewers: list[str],
    judges: list[str],
    evaluator: str,
    strategy: str,
    scale: int,
    swap: bool,
    iterations: int,
    stop_score: float | None,
    concurrency: int,
    limit: int | None,
    prompt_field: str | None,
    retry_failed: bool,
    max_tokens: int,
    output_format: str,
    scoring: str = "auto",
    max_retries: int = 6,
    timeout_s: float = 120.0,
    extend: bool = False,
    trace_dir: Path | None = None,
    rounds: int = 2,
    given_flags: frozenset[str] = frozenset(),
    chosen_by: str | None = None,
) -> dict[str, Any]:
    """The generate command as a function (the demo and the notebooks call it).

    Validates these values as GenerateOptions, then runs `run_generate_with`.
    """
    options = GenerateOptions(
        prompts=prompts_source, output=output, generator=generator, reviewer=reviewers, judge=judges,
        evaluator=evaluator, strategy=strategy, scale=scale, swap=swap, iterations=iterations,  # type: ignore[arg-type]
        stop_score=stop_score, rounds=rounds, concurrency=concurrency, limit=limit, prompt_field=prompt_field,
        retry_failed=retry_failed, extend=extend, max_tokens=max_tokens, output_format=output_format,  # type: ignore[arg-type]
        scoring=scoring, max_retries=max_retries, timeout=timeout_s, trace=trace_dir,  # type: ignore[arg-type]
    )
    return run_generate_with(options, given_flags=given_flags, chosen_by=chosen_by)


def dry_run_report(options: GenerateOptions, prompts: list[Any], context: Any, panel: Any, prices: Any) -> dict:
    """Print what the run would cost, without a call and without writing anything; return the figures."""
    from rich.table import Table

    from graphs.estimate import estimate_run
    from tools.inputs.prompt_sets import prompt_id_for
    from tools.outputs.run_store import done_prompt_ids

    done = done_prompt_ids(options.output / "progress.sqlite")
    to_run = [prompt for prompt in prompts if prompt_id_for(prompt) not in done]
    estimate = estimate_run(to_run, context, panel, max_tokens=options.max_tokens)
    console.print(f"dry run: no call made, nothing written; prompts to run: {len(to_run)} "
                  f"({len(prompts) - len(to_run)} already done in {options.output})", markup=False)
    if estimate.calls_low == estimate.calls_high:
        calls = f"calls: {estimate.calls_high}"
    else:
        calls = f"calls: {estimate.calls_low} to {estimate.calls_high} (--stop-score may end loops early)"
    console.print(calls + " (follow-ups to unparsed replies not included)", markup=False)
    table = Table(title="estimate")
    for column in ("role", "model", "calls", "input tokens", "output tokens", "cost USD"):
        table.add_column(column)
    for role in estimate.roles:
        cost = prices.call_cost(role.model, role.input_tokens, role.output_tokens, batch=options.batch)
        table.add_row(role.role, role.model, str(role.calls_high), str(role.input_tokens), str(role.output_tokens),
                      "no price: --price" if cost is None else f"{cost:.4f}")
    console.print(table)
    total = estimate.cost(prices, batch=options.batch)
    list_total = estimate.cost(prices)
    by_batch = (f" at the providers' batch prices (list price: ${list_total:.4f})"
                if options.batch and list_total is not None else "")
    console.print("cost: " + (f"${total:.4f} estimated{by_batch}" if total is not None else
                              "unknown (a model has no price: add --price SPEC=IN:OUT)"), markup=False)
    if options.batch:
        console.print(f"time: {estimate.steps_per_prompt} steps in a row per prompt, each one batch round trip for "
                      f"up to {options.jobs_at_once()} prompts at once (a batch is sent when full or "
                      f"{options.batch_wait:g} s after its first request, --batch-wait; providers answer within 24 "
                      "hours, often minutes)", markup=False)
    else:
        hours = estimate.hours(options.concurrency, options.assumed_latency)
        console.print(f"time: about {duration_text(hours)} at --concurrency {options.concurrency} with "
                      f"{options.assumed_latency:g} s per call (--assumed-latency)", markup=False)
    return {"dry_run": True, "prompts": len(to_run), "calls_low": estimate.calls_low,
            "calls_high": estimate.calls_high, "cost_usd": total, "list_cost_usd": list_total}


def run_generate_with(
    options: GenerateOptions, *, given_flags: frozenset[str] = frozenset(), chosen_by: str | None = None
) -> dict[str, Any]:
    """Validate everything, run the pipeline with a progress bar, export the datasets; return a summary.

    `given_flags` names the role flags the user set, the others holding defaults; `chosen_by` names who chose
    every model instead (the demo). The start-up line says which model plays each role and why.
    """
    from agents.models import ModelRegistry, ModelSettings, check_model_roles
    from agents.prices import parse_prices
    from graphs.estimate import estimate_run
    from tools.inputs.prompt_sets import load_prompts
    from tools.outputs.run_lock import RunLock
    from tools.outputs.run_store import PromptSourceId, iter_done_records

    context = options.context()
    panel = options.panel()
    generator, reviewers, judges = context.generator, context.reviewers, context.models
    evaluator, strategy, iterations, swap = options.evaluator, options.strategy, options.iterations, options.swap
    output = options.output
    roles = [("--generator", generator), *[("--reviewer", spec) for spec in reviewers],
             *[("--judge", spec) for spec in judges]]
    if evaluator == "debate":
        if len(judges) not in (1, len(panel)):
            raise ConfigError(f"--judge: a debate takes one model for all referees or one per referee ({len(panel)}), "
                              f"got {len(judges)}")
        roles += [("debate_roles", role.model) for role in panel if role.model]
    if evaluator == "judge" and len(judges) != 1:
        raise ConfigError(f"--judge: the judge evaluator takes one model, got {len(judges)} (use --evaluator jury)")
    if evaluator == "judge" and strategy == "direct" and iterations != 2:
        raise ConfigError("--strategy direct compares two answers: use --iterations 2 or another strategy")
    if swap and iterations != 2:
        raise ConfigError("--swap reverses two answers: use --iterations 2")
    source = load_prompts(options.prompts, prompt_field=options.prompt_field)
    prompts = source.prompts[:options.limit] if options.limit else source.prompts
    if source.duplicates:
        errors.print(f"note: {source.duplicates} duplicate prompts in {source.origin} are kept once")
    settings: dict[str, Any] = {
        "generator": generator, "reviewers": reviewers, "evaluator": evaluator, "judges": judges,
        "strategy": strategy, "scale": options.scale, "swap": swap, "iterations": iterations,
        "stop_score": options.stop_score, "max_tokens": options.max_tokens, "output_format": options.output_format,
        **scoring_setting(options.scoring), **options.review_settings(), **prompts_setting(context.prompt_templates),
        **criteria_setting(context.criteria),
    }
    if evaluator == "debate":
        settings |= {"rounds": options.rounds,
                     "debate_roles": [[role.key, role.name, role.description, role.model] for role in panel]}
    prompt_source = PromptSourceId(origin=source.origin, field=source.field, sha256=source.sha256,
                                   prompts=len(source.prompts))
    prices = parse_prices(options.price or [])
    # Refused here with one line (local models, Ray workers), before a dry run or any work.
    batch = options.batch_settings(output, roles, max_retries=options.max_retries)
    if options.dry_run:
        return dry_run_report(options, prompts, context, panel, prices)
    reserve_per_prompt: float | None = None
    if options.max_cost_usd is not None:
        unpriced = sorted({spec for _, spec in roles if prices.per_million(spec) is None})
        if unpriced:
            raise ConfigError(f"--max-cost-usd: no price for {unpriced[0]}; add --price {unpriced[0]}=IN:OUT "
                              "(USD per million input and output tokens)")
        estimate = estimate_run(prompts, context, panel, max_tokens=options.max_tokens)
        reserve_per_prompt = (estimate.cost(prices, batch=options.batch) or 0.0) / max(1, len(prompts))
    check_run_directory(output, settings, prompt_source, extend=options.extend)
    check_model_roles(roles)  # keys and endpoints: every check before any call (the early ones included)
    early_calls = start_early_calls(options, prompts, context)
    # The pipeline (LangGraph, LangChain, the openai client) and the exporters load only for a real run.
    from graphs.generation import Budget, PromptOutcome, run_generation
    from tools.outputs.export import dataset_card, export_records, preload_export_modules

    budget = None
    if options.max_cost_usd is not None and reserve_per_prompt is not None:
        budget = Budget(max_usd=options.max_cost_usd, reserve_per_prompt_usd=reserve_per_prompt)
    role_names = {"--generator": "generator", "--reviewer": "reviewer", "--judge": evaluator,
                  "debate_roles": "referee"}
    own = {"debate_roles"} | given_flags
    announce_models([(role_names[flag], spec, chosen_by or (flag if flag in own else None))
                     for flag, spec in roles])
    cache = options.cache or (Path(os.environ["FELLOWSHIP_CACHE"]) if os.environ.get("FELLOWSHIP_CACHE") else None)
    model_settings = ModelSettings(max_tokens=options.max_tokens, output_format=options.output_format,
                                   scoring=options.scoring, max_retries=options.max_retries, timeout_s=options.timeout,
                                   cache_path=cache.resolve() if cache is not None else None,
                                   adaptive=options.adaptive, calls_cap=options.concurrency, batch=batch)
    workers = options.ray_workers(model_settings)
    jobs_at_once = options.jobs_at_once()
    # One run per directory: a second run on it stops here, before anything is written or paid for.
    with RunLock(output):
        registry = ModelRegistry(model_settings)
        registry.early_calls = early_calls
        # What the export and the report need loads beside the run, once its first call is answered (not before:
        # the first call must not wait for it).
        registry.after_first_reply = preload_export_modules
        with progress_bar() as progress:
            task = progress.add_task("prompts", total=len(prompts), status="")
            totals = {"failed": 0, "waiting": 0, "tokens": 0, "cost": 0.0, "priced": True}

            def on_outcome(outcome: PromptOutcome) -> None:
                totals["failed"] += not outcome.ok
                totals["waiting"] += outcome.waiting
                totals["tokens"] += outcome.input_tokens + outcome.output_tokens
                if outcome.cost_usd is None:
                    totals["priced"] = False
                else:
                    totals["cost"] += outcome.cost_usd
                progress.update(task, advance=1, status=status_line())

            def status_line() -> str:
                cost = f", ${totals['cost']:.4f}" if totals["priced"] else ""
                limited = "".join(f"; {line}" for line in registry.endpoint_controllers.status())
                waiting = f", waiting for review {totals['waiting']}" if totals["waiting"] else ""
                batches = registry.batches.status() if registry.batches is not None else ""
                return (f"failed {totals['failed']}{waiting}, tokens {totals['tokens']}{cost}{limited}"
                        + (f"; {batches}" if batches else ""))

            def on_batch_event(line: str) -> None:
                errors.print(line, markup=False, highlight=False, soft_wrap=True)
                progress.update(task, status=status_line())

            result = run_coroutine(
                run_then_close(
                    run_generation(
                        prompts, context=context, output_dir=output, settings=settings, prompt_source=prompt_source,
                        extend=options.extend, retry_failed=options.retry_failed,
                        concurrency=options.calls_at_once(),
                        trace_dir=options.trace, model_source=registry, roles=panel, prices=prices, budget=budget,
                        on_outcome=on_outcome, workers=workers, jobs_at_once=jobs_at_once,
                    ),
                    registry, on_batch_event=on_batch_event,
                )
            )
            progress.update(task, completed=result.skipped_done + len(result.outcomes) + result.skipped_failed)
        if result.threads_dropped:
            errors.print(f"note: {result.threads_dropped} unfinished prompts were checkpointed by another version of "
                         "the pipeline and start again", markup=False, highlight=False, soft_wrap=True)
        if result.feedback_problem:
            errors.print(result.feedback_problem, markup=False, highlight=False, soft_wrap=True)
        if result.where_prompts_ran:
            errors.print(result.where_prompts_ran, markup=False, highlight=False, soft_wrap=True)
        if result.workers_replaced:
            errors.print(f"note: {result.workers_replaced} worker processes died and were replaced; the prompts they "
                         "held ran again on the others", markup=False, highlight=False, soft_wrap=True)
        rules = options.pairing_rules()
        summary = export_records(iter_done_records(output / "progress.sqlite"), output, rules)
        usage = summary.usage()
        if usage["batched_calls"]:
            usage["list_cost_usd"] = list_price_of(iter_done_records(output / "progress.sqlite"), prices)
        export_settings = {"pairs": rules.pairs, "min_margin": rules.min_margin, "top_tie": rules.top_tie,
                           "max_repetition": rules.degenerate_share}
        from tools.outputs.report import write_run_report

        report_page = write_run_report(output)
        card = dataset_card(settings={**settings, **export_settings}, summary=summary, failures=result.failures,
                            usage=usage, prompt_sources=result.prompt_sources, license=options.license,
                            report=json.loads((output / "report.json").read_text()),
                            waiting=result.waiting_for_review, custom_prompts=context.prompt_templates)
        (output / "README.md").write_text(card, encoding="utf-8")
        published = None
        if options.push_to_hub:
            from tools.outputs.hub import push_to_hub

            published = push_to_hub(output, options.push_to_hub, private=options.private)
        failed_now = {prompt_id for prompt_id, _ in result.failures} & set(result.prompt_ids)
        return {
            "prompts": len(prompts), "done": result.done, "failed": len(result.failures),
            "failed_now": len(failed_now), "in_directory": result.done + len(result.failures),
            "reused": result.skipped_done, "failed_skipped": result.skipped_failed,
            "calls_made": sum(outcome.calls_made for outcome in result.outcomes),
            "dpo_rows": summary.dpo_rows, "kto_rows": summary.kto_rows, "outcomes": dict(summary.outcomes),
            "first_dpo_row": summary.first_dpo_row, "usage": usage, "failures": result.failures,
            "published": published, "budget_stopped": result.budget_stopped, "spent_usd": result.spent_usd,
            "max_cost_usd": options.max_cost_usd, "report": report_page,
            "waiting_for_review": result.waiting_for_review, "decisions_applied": result.decisions_applied,
            "waiting_calls": result.waiting_calls,
            "decided_by_people": summary.decided_by_people, "human_labels": summary.human_labels,
        }


def _print_generate_summary(output: Path, report: dict[str, Any], *, report_line: bool = True) -> None:
    console.print(
        f"prompts: {report['prompts']}  done: {report['done']}  failed: {report['failed']}  "
        f"reused from earlier runs: {report['reused']}  outcomes: {report['outcomes']}"
    )
    if report["in_directory"] > report["prompts"]:
        console.print(f"the directory holds {report['in_directory']} prompts in all (earlier runs, larger --limit "
                      "or --extend); the files below cover them all")
    cost = report["usage"]["cost_usd"]
    console.print(
        f"tokens in/out: {report['usage']['input_tokens']}/{report['usage']['output_tokens']}  "
        f"calls: {report['usage']['calls']}" + (f"  cost: ${cost:.4f}" if cost is not None else "")
        + (f"  from the call cache: {report['usage']['cached_calls']}" if report["usage"]["cached_calls"] else "")
    )
    if report["usage"].get("batched_calls"):
        listed = report["usage"].get("list_cost_usd")
        console.print(f"by batch: {report['usage']['batched_calls']} of {report['usage']['calls']} calls, priced at "
                      "the providers' batch rates" + (f" (at list prices: ${listed:.4f})" if listed is not None
                                                       else ""), markup=False)
    if report["usage"].get("rate_limited") or report["usage"].get("rate_waited_s", 0) >= 0.05:
        console.print(f"rate limits: {report['usage']['rate_limited']} answers 429 waited out; the calls waited "
                      f"{report['usage']['rate_waited_s']:.1f} s in all for the providers' limits")
    console.print(f"DPO rows: {report['dpo_rows']} -> {output / 'dpo'} and {output / 'dpo.jsonl'}")
    console.print(f"KTO rows: {report['kto_rows']} -> {output / 'kto'} and {output / 'kto.jsonl'}")
    console.print(f"records: {output / 'records.jsonl'}  card: {output / 'README.md'}")
    if report.get("decisions_applied"):
        console.print(f"applied {report['decisions_applied']} people's decisions without a model call; "
                      f"{report['decided_by_people']} prompts in all were decided by people; their labels: "
                      f"{output / 'human.jsonl'}", markup=False)
    if report.get("waiting_for_review"):
        console.print(f"{report['waiting_for_review']} prompts wait for review: fellowship review {output} (their "
                      f"{report['waiting_calls']} calls are made and kept: applying a decision calls nothing)",
                      markup=False)
    if report_line and report.get("report") is not None:
        console.print(f"report: {report['report']} (open it in a browser)")
    if report.get("published"):
        console.print(f"published: {report['published']}", markup=False)
    for prompt_id, reason in report["failures"][:5]:
        console.print(f"failed {prompt_id}: {reason}", markup=False)


def start_early_calls(options: GenerateOptions, prompts: list[Any], context: Any) -> Any:
    """Send a fresh run's first calls now, before the graphs load (agents/early_calls.py); None when it gets none.

    Only a fresh (absent or empty) run directory, and not with `--batch`, `--cache`, Ray workers, `--max-cost-usd`
    or a `local:` generator: each of those decides which calls go out, or when. One call per prompt whose text is
    a string, as many as `--concurrency`: the generator's answer, the first call its prompt makes.
    """
    import prompts as templates
    from agents.early_calls import EarlyCalls, first_generator_request
    from agents.models import API_KEY_VARIABLES, ModelSettings, base_url_of, parse_model_spec

    spec = parse_model_spec(context.generator, flag="--generator")
    fresh = not options.output.exists() or not any(options.output.iterdir())
    cache = options.cache or os.environ.get("FELLOWSHIP_CACHE")
    if (spec.provider == "local" or not fresh or options.batch or cache or options.on_ray()
            or options.max_cost_usd is not None):
        return None
    base_url = base_url_of(spec)
    key = os.environ.get(API_KEY_VARIABLES[spec.provider]) or "not-needed"
    system = templates.render_role("generator_system", context.prompt_templates.get("generator_system"))
    temperature = ModelSettings().temperature
    first = [prompt for prompt in prompts if isinstance(prompt, str)][:options.concurrency]
    early = EarlyCalls(timeout_s=options.timeout)
    if base_url is not None:
        early.send(base_url, key, [first_generator_request(spec.provider, spec.model, prompt, system,
                                                           temperature=temperature, max_tokens=options.max_tokens)
                                   for prompt in first])
    return early


def list_price_of(records: Any, prices: Any) -> float | None:
    """What the records' paid calls would have cost at list prices (a `--batch` run's saving is the difference)."""
    from graphs.generation import record_exchanges

    exchanges = (exchange.model_copy(update={"batched": False}) for record in records
                 for exchange in record_exchanges(record))
    return prices.total_cost(exchanges)


def duration_text(hours: float) -> str:
    """A time estimate in the unit a person reads it in: minutes up to 90, then hours up to 48, then days."""
    if hours * 60 <= 90:
        return f"{hours * 60:.1f} min"
    if hours <= 48:
        return f"{hours:.1f} hours"
    return f"{hours / 24:.1f} days"


def why_no_rows(report: dict[str, Any]) -> str:
    """One line saying why a run produced no DPO row, from the per-prompt outcomes."""
    reasons = {
        "tied_top": "the evaluator tied the top answers", "no_verdict": "the evaluator gave no verdict",
        "identical_answers": "the answers were identical", "single_answer": "there was one answer per prompt",
        "below_margin": "the answers' scores differ by less than --min-margin",
        "degenerate_top": "every answer fit to be chosen repeats itself (--max-repetition)",
        "none_acceptable": "a person found no answer acceptable (--review)",
    }
    found = [f"{count} prompts: {reasons.get(outcome, outcome)}" for outcome, count in report["outcomes"].items()
             if not outcome.startswith("ok") and count]
    if report["failed"]:
        found.append(f"{report['failed']} prompts failed")
    return "no DPO row: " + ("; ".join(found) if found else "no prompt finished")


def _exit_for(report: dict[str, Any]) -> None:
    exit_if_failed(report["failed_now"], report["prompts"], "prompts",
                   "run the same command with --retry-failed to retry them")


@app.command()
@user_errors
def generate(
    ctx: typer.Context,
    prompts: Annotated[str | None, typer.Option("--prompts", "-p", help="JSONL with a prompt field, alpaca_eval, "
                                                "mt_bench, or a saved Hugging Face dataset folder (required)")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="output directory (holds progress; rerun "
                                                "resumes; required)")] = None,
    generator: Annotated[str | None, typer.Option(help="model spec that writes answers [default: local:smollm2]")]
    = None,
    reviewer: Annotated[
        list[str] | None, typer.Option(help="reviewer model spec, repeatable (two: both feedbacks) "
                                       "[default: local:smollm2]")
    ] = None,
    judge: Annotated[list[str] | None, typer.Option(help="evaluator model spec, repeatable for a jury "
                                                    "[default: local:smollm2]")] = None,
    evaluator: Annotated[Literal["judge", "jury", "debate"], typer.Option(help="evaluation workflow")]
    = GENERATE_DEFAULTS["evaluator"],
    strategy: Annotated[Literal["direct", "independent", "combined"], typer.Option()] = GENERATE_DEFAULTS["strategy"],
    scale: Annotated[Literal["5", "10", "100"], typer.Option()] = GENERATE_DEFAULTS["scale"],
    swap: Annotated[bool, typer.Option(help="judge both orders (two answers only)")] = GENERATE_DEFAULTS["swap"],
    iterations: Annotated[int, typer.Option("--iterations", "-n", min=1, max=10, help="answers per prompt")]
    = GENERATE_DEFAULTS["iterations"],
    stop_score: Annotated[
        float | None, typer.Option(min=0, max=10, help="stop when every reviewer scores >= this")
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, max=20, help="debate rounds (with --evaluator debate)")]
    = GENERATE_DEFAULTS["rounds"],
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="model calls in flight at once, across "
                                             "all workers (a rate-limit budget)")] = GENERATE_DEFAULTS["concurrency"],
    workers: WorkersOption = GENERATE_DEFAULTS["workers"],
    ray_address: RayAddressOption = None,
    ray_start: RayStartOption = GENERATE_DEFAULTS["ray_start"],
    worker_timeout: WorkerTimeoutOption = None,
    adaptive: AdaptiveOption = GENERATE_DEFAULTS["adaptive"],
    batch: BatchOption = False,
    batch_size: BatchSizeOption = None,
    batch_wait: BatchWaitOption = 60.0,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N prompts")] = None,
    prompt_field: Annotated[str | None, typer.Option(help="field or column holding the prompt")] = None,
    retry_failed: Annotated[bool, typer.Option(help="retry prompts that failed in an earlier run")]
    = GENERATE_DEFAULTS["retry_failed"],
    extend: Annotated[
        bool, typer.Option(help="add prompts from another source (or an edited file) to the run in --output")
    ] = GENERATE_DEFAULTS["extend"],
    max_tokens: MaxTokensOption = GENERATE_DEFAULTS["max_tokens"],
    output_format: OutputFormatOption = GENERATE_DEFAULTS["output_format"],
    scoring: ScoringOption = GENERATE_DEFAULTS["scoring"],
    max_retries: MaxRetriesOption = GENERATE_DEFAULTS["max_retries"],
    timeout: TimeoutOption = GENERATE_DEFAULTS["timeout"],
    trace: TraceOption = None,
    push_to_hub: Annotated[str | None, typer.Option(
        "--push-to-hub", help="publish the card and the dpo and kto configs to this Hugging Face dataset repo "
        "(token from HF_TOKEN)")] = None,
    private: Annotated[bool, typer.Option(help="with --push-to-hub: create the repository private")] = False,
    license: Annotated[str, typer.Option(help="the licence the dataset card names")] = GENERATE_DEFAULTS["license"],
    cache: Annotated[Path | None, typer.Option(
        help="SQLite file caching model calls across runs and directories (default: $FELLOWSHIP_CACHE; none)")]
    = None,
    pairs: Annotated[Literal["best-vs-rest", "best-vs-worst", "all-pairs"], typer.Option(
        help="DPO pairs per prompt: the best against every lower answer (the paper), against the worst only, or "
        "every pair whose scores differ")] = GENERATE_DEFAULTS["pairs"],
    min_margin: Annotated[float, typer.Option(min=0, help="least score gap between chosen and rejected")]
    = GENERATE_DEFAULTS["min_margin"],
    top_tie: Annotated[Literal["later", "skip"], typer.Option(
        help="when the top answers tie: choose the later one (the published pipeline), or give the prompt no rows")]
    = GENERATE_DEFAULTS["top_tie"],
    dry_run: Annotated[bool, typer.Option(help="print prompts, calls, tokens, cost and time; call nothing, write "
                                          "nothing")] = False,
    price: Annotated[list[str] | None, typer.Option(help="SPEC=IN:OUT: USD per million input / output tokens, "
                                                    "repeatable; overrides the built-in prices")] = None,
    max_cost_usd: Annotated[float | None, typer.Option(min=0, help="start no prompt once the money spent plus a "
                                                       "reserve for those in flight would pass this")] = None,
    assumed_latency: Annotated[float, typer.Option(min=0, help="seconds per call for --dry-run's time estimate")]
    = GENERATE_DEFAULTS["assumed_latency"],
    max_repetition: Annotated[float, typer.Option(
        min=0.01, max=1, help="share of repeated word 3-grams from which an answer is degenerate and never chosen")]
    = GENERATE_DEFAULTS["max_repetition"],
    review: Annotated[Literal["none", "disputed", "all"], typer.Option(
        help="pause prompts for a person after the evaluator: none, the disputed ones (README), or all")]
    = GENERATE_DEFAULTS["review"],
    audit_share: Annotated[float | None, typer.Option(
        min=0, max=1, help="share of prompts drawn by id for a blind review [default: 0 with --review none, else "
        "0.05]")] = None,
    dispute_margin: Annotated[float, typer.Option(
        min=0, max=10, help="top two scores this close make a verdict disputed (10-point scale; scaled for 5, 100)")]
    = GENERATE_DEFAULTS["dispute_margin"],
    criteria: CriteriaOption = None,
    config: ConfigOption = None,
) -> None:
    """Write N answers per prompt with a feedback loop, rank them, and export DPO and KTO datasets."""
    options: GenerateOptions = resolve_options(ctx, GenerateOptions)
    given = {flag for flag, value in (("--generator", options.generator), ("--reviewer", options.reviewer),
                                      ("--judge", options.judge)) if value}
    report = run_generate_with(options, given_flags=frozenset(given))
    if report.get("dry_run"):
        return
    _print_generate_summary(options.output, report)
    if report["budget_stopped"]:
        errors.print(f"stopped at the budget: ${report['spent_usd']:.4f} spent of --max-cost-usd "
                     f"{report['max_cost_usd']:g}; finished prompts are kept: run again with a higher --max-cost-usd "
                     "to continue", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BUDGET)
    _exit_for(report)
    if report["waiting_for_review"]:
        raise typer.Exit(EXIT_WAITING)


@app.command()
@user_errors
def demo(
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("runs/demo"),
) -> None:
    """Generate DPO and KTO datasets from a few bundled prompts with the embedded model (no API keys)."""
    prompts_file = str(resources.files("tools").joinpath("data/demo_prompts.jsonl"))
    report = run_generate(
        prompts_source=prompts_file, output=output, generator="local:smollm2", reviewers=["local:smollm2"],
        # The default judge: combined scoring, read as probability-weighted scores (`--scoring auto`), which
        # separate answers the 135M judge writes the same integer for.
        judges=["local:smollm2"], evaluator="judge", strategy="combined", scale=10, swap=False, iterations=3,
        stop_score=None, concurrency=3, limit=None, prompt_field=None, retry_failed=False, max_tokens=256,
        output_format="auto", chosen_by="demo",
    )
    _print_generate_summary(output, report, report_line=False)
    if report["first_dpo_row"] is not None:
        console.print("one DPO row:")
        console.print_json(json.dumps(report["first_dpo_row"], ensure_ascii=False))
    else:
        console.print(why_no_rows(report), markup=False)
    # Last, where the eye lands: the page that shows what the run made.
    console.print(f"report: {report['report']} (open it in a browser)")
    _exit_for(report)


def main() -> None:
    """The `fellowship` entry point: the command, then the process ends without the interpreter's teardown.

    Tearing down the modules a run loads (LangChain's, LangGraph's, the openai client's types, datasets) takes a
    second of a small run's end (`make bench`, fixed cost) and does nothing a command needs: every file is written
    and closed by then. So once the command has returned, the exit handlers run (a local Ray instance is stopped,
    logging flushed; LangSmith's sender was waited for by the command), the standard streams are flushed, and the
    process exits at once with the command's status.
    """
    garbage_collection.during_start_up()
    try:
        app(prog_name="fellowship")
        status: Any = 0
    except SystemExit as ended:
        status = ended.code
    if isinstance(status, str):  # a message instead of a number: printed, status 1, as the interpreter would
        print(status, file=sys.stderr)
        status = 1
    end_process(int(status or 0))


def end_process(status: int) -> None:
    """Run the exit handlers, flush stdout and stderr, and end the process with `status`, skipping the teardown."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


