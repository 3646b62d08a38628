"""Meta-evaluation commands: `meta-eval` (run and `score`), `jury-search` and `winrate`.

Each prints its table and writes `report.md`, PNG charts and a JSON of the figures into its output
folder. Live runs keep every verdict in a cache file per evaluator, so a rerun (or a larger --limit)
pays only for items not judged yet.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from tools.cli.common import (
    AdaptiveOption,
    BatchOption,
    BatchSizeOption,
    BatchWaitOption,
    ConcurrencyOption,
    ConfigOption,
    CriteriaOption,
    JuryRuleOption,
    MaxTokensOption,
    MethodOption,
    ModelOption,
    OutputFormatOption,
    RayAddressOption,
    RayStartOption,
    RoundsOption,
    ScoringOption,
    SwapOption,
    TraceOption,
    WorkersOption,
    WorkerTimeoutOption,
    announce_models,
    check_evaluation_flags,
    console,
    exit_if_failed,
    run_evaluation,
    user_errors,
)
from tools.cli.options import (
    META_EVAL_DEFAULTS,
    EvaluationOptions,
    MetaEvalOptions,
    criteria_setting,
    prompts_setting,
    resolve_options,
    scoring_setting,
)
from tools.errors import ConfigError
from tools.inputs.answer_sets import load_side, side_coverage
from tools.outputs.jsonl import write_jsonl_atomic

meta_app = typer.Typer(
    help="Agreement of an evaluator with human labels: run it on a benchmark, or score recorded verdicts "
    "(`meta-eval score`).",
    invoke_without_command=True,
)

StrategyOption = Annotated[
    Literal["direct", "independent", "combined"], typer.Option(help="judge prompting strategy")
]
ScaleOption = Annotated[Literal["5", "10", "100"], typer.Option(help="score scale for scoring strategies")]
BenchmarkOption = Annotated[
    str | None,
    typer.Option("--benchmark", "-b", help="pandalm, faireval, llmbar-natural, llmbar-adversarial-*, or a path "
                 "(PandaLM, LLMBar, MT-Bench human judgments, AlpacaEval cross-annotations, {prompt, responses, "
                 "label} JSONL, or FairEval's folder)"),
]
RawStrategyOption = Annotated[
    Literal["direct", "independent", "combined"] | None,
    typer.Option(help="strategy of raw-text verdict lines that do not name one"),
]
RawScaleOption = Annotated[int, typer.Option(min=1, help="scale of raw-text verdict lines that do not name one")]
VerdictsOption = Annotated[
    list[Path] | None, typer.Option("--verdicts", "-v", help="verdict file (JSONL), repeatable; format in README")
]
PaperCompatOption = Annotated[
    bool,
    typer.Option(help="the paper's rules: unparsed score = -1, unparsed direct = tie, score A not re-read after "
                 "a follow-up"),
]


def _slug(text: str) -> str:
    return "".join(character if character.isalnum() or character in "-." else "-" for character in text).strip("-")


def settings_digest(settings: dict[str, Any]) -> str:
    """Names a verdict cache after everything that shapes a verdict, so other settings never reuse it."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def benchmark_label(name_or_path: str) -> str:
    """A short, file-name-safe label for a benchmark given by name or path."""
    return _slug(Path(name_or_path).stem if "/" in name_or_path or "\\" in name_or_path else name_or_path)


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def _require(value: Any, flag: str) -> Any:
    if value is None or value == []:
        raise ConfigError(f"{flag} is required")
    return value


def read_benchmark_and_verdicts(
    benchmark: str, paths: Sequence[Path], paper_compat: bool, strategy: str | None, scale: int
) -> tuple[list[Any], list[Any]]:
    """The benchmark's items and every verdict file, each file's evaluator under a distinct name."""
    from tools.inputs.benchmarks import load_benchmark
    from tools.inputs.verdict_files import read_verdict_file

    items = load_benchmark(benchmark)
    files = [read_verdict_file(path, paper_compat=paper_compat, default_strategy=strategy, default_scale=scale)
             for path in paths]
    _distinct_names(files)
    return items, files


def _distinct_names(files: Sequence[Any]) -> None:
    """Two files naming the same evaluator are told apart by their file names."""
    names = [verdict_file.name for verdict_file in files]
    for verdict_file in files:
        if names.count(verdict_file.name) > 1:
            verdict_file.name = f"{verdict_file.name} ({verdict_file.path.name})"


def write_kappa_outputs(
    output: Path, rows: Sequence[Any], *, title: str, notes: str, extra: dict[str, Any]
) -> None:
    """report.md, kappa.png and scores.json for a kappa table; print the table."""
    from tools.meta_eval.reports import KAPPA_COLUMNS, kappa_chart, kappa_table_rows, markdown_table, write_report

    output.mkdir(parents=True, exist_ok=True)
    table_rows = kappa_table_rows(rows)
    console.print(_table(title, KAPPA_COLUMNS, table_rows))
    chart = kappa_chart(rows, output / "kappa.png", title)
    report = write_report(output / "report.md", title, [
        ("Agreement with human labels", markdown_table(KAPPA_COLUMNS, table_rows) + "\n\n![kappa](kappa.png)"),
        ("How to read this", notes),
    ])
    (output / "scores.json").write_text(
        json.dumps({**extra, "rows": [asdict(row) for row in rows]}, indent=2), encoding="utf-8"
    )
    console.print(f"wrote {report}, {chart} and {output / 'scores.json'}")


READING_NOTES = (
    "Kappa is scikit-learn's unweighted Cohen's kappa over {A, B, tie} with every item kept; a verdict that "
    "could not be parsed counts as a tie. The interval is a percentile bootstrap (1000 resamples of items). "
    "Position consistency: share of items judged in both orders whose two verdicts agree. P(first): share of "
    "decisive verdicts that picked the answer shown first. P(longer): share of decisive verdicts, on items "
    "whose answers differ in length, that picked the longer one. With several evaluators, 'vs best' is each one's "
    "kappa minus the best one's on the items both have, with a paired bootstrap interval (the same resamples for "
    "both): an interval that includes 0 means the data cannot tell the two apart. An evaluator is worth using only "
    "where it beats the baselines. On a run's own `human.jsonl`, rows named 'audit sample: ...' cover the prompts "
    "drawn at random for a blind review (the unbiased estimate of agreement on the run's prompts), and 'disputed "
    "sample: ...' the prompts the evaluators could not agree on (hard by construction: agreement there is lower); "
    "labels are the best of all N answers, so kappa runs over the answer letters."
)


def evaluator_name(options: MetaEvalOptions, roles: Sequence[Any]) -> str:
    """The evaluator's name as its records give it (`record_evaluator_name`).

    So a live run and a re-scoring of its verdicts report it under the same name.
    """
    from graphs.debate import referee_model
    from tools.inputs.verdict_files import evaluator_label

    method, models = options.method, options.models()
    strategy: str | None
    scale: int | None
    if method == "judge":
        strategy, scale = options.strategy, None if options.strategy == "direct" else options.scale
    elif method == "jury":
        strategy, scale = f"combined/{options.jury_rule}", options.scale
        models = list(models)
    else:
        strategy, scale = None, None
        models = [referee_model(roles, seat, models) for seat in range(len(roles))]
    swapped = {"judge": options.swap and options.strategy != "independent", "jury": options.swap}.get(method, False)
    return evaluator_label(method=method, strategy=strategy, scale=scale, models=models[:1] if method == "judge"
                           else models, swapped=swapped)


@meta_app.callback()
@user_errors
def meta_eval(
    context: typer.Context,
    benchmark: BenchmarkOption = None,
    method: MethodOption = META_EVAL_DEFAULTS["method"],
    model: ModelOption = None,
    strategy: StrategyOption = META_EVAL_DEFAULTS["strategy"],
    scale: ScaleOption = META_EVAL_DEFAULTS["scale"],
    swap: SwapOption = META_EVAL_DEFAULTS["swap"],
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N items of the benchmark")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="report folder (default "
                                                "runs/meta-eval/BENCHMARK)")] = None,
    rounds: RoundsOption = META_EVAL_DEFAULTS["rounds"],
    jury_rule: JuryRuleOption = META_EVAL_DEFAULTS["jury_rule"],
    concurrency: ConcurrencyOption = META_EVAL_DEFAULTS["concurrency"],
    workers: WorkersOption = META_EVAL_DEFAULTS["workers"],
    ray_address: RayAddressOption = None,
    ray_start: RayStartOption = META_EVAL_DEFAULTS["ray_start"],
    worker_timeout: WorkerTimeoutOption = None,
    adaptive: AdaptiveOption = META_EVAL_DEFAULTS["adaptive"],
    batch: BatchOption = False,
    batch_size: BatchSizeOption = None,
    batch_wait: BatchWaitOption = 60.0,
    max_tokens: MaxTokensOption = META_EVAL_DEFAULTS["max_tokens"],
    output_format: OutputFormatOption = META_EVAL_DEFAULTS["output_format"],
    scoring: ScoringOption = META_EVAL_DEFAULTS["scoring"],
    trace: TraceOption = None,
    criteria: CriteriaOption = None,
    config: ConfigOption = None,
) -> None:
    """Run an evaluator over a human-labelled benchmark and report its agreement with the humans."""
    if context.invoked_subcommand is not None:
        return
    from tools.inputs.benchmarks import load_benchmark
    from tools.inputs.verdict_files import ItemVerdict, verdict_from_record
    from tools.meta_eval.scores import baseline_scores, differences_from_best, rows_by_sample, score_evaluator

    options: MetaEvalOptions = resolve_options(context, MetaEvalOptions)
    models, method = options.models(), options.method
    roles = options.panel()
    labelled = load_benchmark(options.benchmark)[:options.limit]
    items = [item.as_eval_item() for item in labelled]
    check_evaluation_flags(items, method=method, strategy=options.strategy, models=models, swap=options.swap,
                           source=options.benchmark, roles=roles)
    announce_models([(method, spec, "--model" if options.model else None) for spec in models])
    output = options.output or Path("runs/meta-eval") / benchmark_label(options.benchmark)
    settings: dict[str, Any] = {
        "method": method, "strategy": options.strategy, "scale": options.scale, "models": models,
        "swap": options.swap, "rounds": options.rounds, "jury_rule": options.jury_rule,
        "max_tokens": options.max_tokens, "output_format": options.output_format,
        **scoring_setting(options.scoring), **prompts_setting(options.prompt_templates()),
        **criteria_setting(options.criteria_list()),
    }
    if options.debate_roles is not None:
        settings["debate_roles"] = [[role.key, role.name, role.description, role.model] for role in roles]
    cache = output / "verdicts" / f"{method}-{_slug('+'.join(models))[:60]}-{settings_digest(settings)}.jsonl"
    records = run_evaluation(items=items, output_path=cache, options=options, reuse_output=True)
    name = evaluator_name(options, roles)
    verdicts = [verdict_from_record(record, paper_compat=False, path=cache, line=None) for record in records]
    evaluated = [list(zip(labelled, verdicts, strict=True))]
    names = [name]
    if method == "jury":
        for seat, spec in enumerate(models):
            votes = [(record.get("juror_votes") or [None] * len(models))[seat] for record in records]
            evaluated.append(list(zip(labelled, [ItemVerdict(winner=vote) for vote in votes], strict=True)))
            names.append(f"juror {seat + 1}: {spec}")
    scored = [(score_evaluator(one, pairs), pairs) for one, pairs in zip(names, evaluated, strict=True)]
    rows = differences_from_best(scored) + rows_by_sample(scored[:1])
    rows += baseline_scores(labelled)
    title = f"{name} on {benchmark_label(options.benchmark)} ({len(labelled)} items)"
    write_kappa_outputs(output, rows, title=title, notes=READING_NOTES + f"\n\nVerdicts (reused by reruns): `{cache}`.",
                        extra={"benchmark": options.benchmark, "settings": settings, "verdicts": str(cache)})
    exit_if_failed(sum(bool(record.get("error")) for record in records), len(records), "items",
                   "their calls failed (counted as unparsed above); run the same command again to retry them")


@meta_app.command("score")
@user_errors
def meta_eval_score(
    benchmark: BenchmarkOption = None,
    verdicts: VerdictsOption = None,
    paper_compat: PaperCompatOption = False,
    strategy: RawStrategyOption = None,
    scale: RawScaleOption = 10,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="report folder (default "
                                                "runs/meta-eval-score/BENCHMARK)")] = None,
) -> None:
    """Score recorded verdicts against the human labels, without any model call."""
    from tools.meta_eval.scores import align, baseline_scores, differences_from_best, rows_by_sample, score_evaluator

    benchmark = _require(benchmark, "--benchmark")
    paths = _require(verdicts, "--verdicts")
    items, files = read_benchmark_and_verdicts(benchmark, paths, paper_compat, strategy, scale)
    scored = []
    covered: set[str] = set()
    for verdict_file in files:
        pairs = align(verdict_file, items)
        covered |= {item.id for item, _ in pairs}
        scored.append((score_evaluator(verdict_file.name, pairs), pairs))
    rows = differences_from_best(scored) + rows_by_sample(scored)
    rows += baseline_scores([item for item in items if item.id in covered])
    output = output or Path("runs/meta-eval-score") / benchmark_label(benchmark)
    rules = "paper-compatible rules" if paper_compat else "default rules"
    write_kappa_outputs(
        output, rows, title=f"verdicts on {benchmark_label(benchmark)} ({rules})", notes=READING_NOTES,
        extra={"benchmark": benchmark, "paper_compat": paper_compat, "verdicts": [str(path) for path in paths]},
    )


def jury_search_command(
    benchmark: BenchmarkOption = None,
    verdicts: VerdictsOption = None,
    min_size: Annotated[int, typer.Option(min=1, help="smallest jury")] = 2,
    rule: Annotated[Literal["plurality", "mean"], typer.Option(help="jury aggregation rule")] = "plurality",
    paper_compat: PaperCompatOption = False,
    strategy: RawStrategyOption = None,
    scale: RawScaleOption = 10,
    top: Annotated[int, typer.Option(min=1, help="juries shown in the printed table")] = 10,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="report folder (default "
                                                "runs/jury-search/BENCHMARK)")] = None,
) -> None:
    """Rank every subset of single-model verdict files as a jury, without any model call."""
    from tools.meta_eval.reports import (
        JURY_COLUMNS,
        indistinguishable_line,
        jury_chart,
        jury_table_rows,
        markdown_table,
        write_report,
    )
    from tools.meta_eval.scores import jury_search

    benchmark = _require(benchmark, "--benchmark")
    paths = _require(verdicts, "--verdicts")
    items, files = read_benchmark_and_verdicts(benchmark, paths, paper_compat, strategy, scale)
    if len(files) < min_size:
        raise ConfigError(f"--verdicts: {len(files)} files cannot form a jury of --min-size {min_size}")
    ranking, n = jury_search(items, files, min_size=min_size, rule=rule)
    # Each evaluator alone: the yardstick for its juries (the same resamples: the same seed, the same items).
    singles = [jury for jury in jury_search(items, files, min_size=1, rule=rule)[0] if len(jury.members) == 1]
    output = output or Path("runs/jury-search") / benchmark_label(benchmark)
    output.mkdir(parents=True, exist_ok=True)
    title = f"{len(ranking)} juries on {benchmark_label(benchmark)} ({n} items, {rule} rule)"
    tied = indistinguishable_line(ranking)
    console.print(tied, markup=False, highlight=False)
    console.print(_table(title, JURY_COLUMNS, jury_table_rows(ranking[:top])))
    console.print(_table("each evaluator alone", JURY_COLUMNS, jury_table_rows(singles)))
    chart = jury_chart(ranking, output / "juries.png", title)
    rules = "paper-compatible rules" if paper_compat else "default rules"
    report = write_report(output / "report.md", title, [
        ("Every jury, best first",
         tied + ".\n\n" + markdown_table(JURY_COLUMNS, jury_table_rows(ranking)) + "\n\n![juries](juries.png)"),
        ("Each evaluator alone", markdown_table(JURY_COLUMNS, jury_table_rows(singles))),
        ("How to read this", f"Verdicts read with the {rules}. Plurality: each juror votes A, B or tie from its "
         "own verdict; the unique most frequent vote wins, a shared top count is a tie; unparsed jurors abstain. "
         "Mean: the winner of the jurors' mean scores. Juries are compared on the items every file covers. "
         "'vs best member' is the jury's kappa minus that of its member with the highest kappa alone, with a paired "
         "bootstrap interval (the same 1000 resamples of items for both); the jury beats its best member when the "
         "interval lies above 0. "
         + READING_NOTES.split(". ", 2)[0] + "."),
    ])
    (output / "juries.json").write_text(json.dumps(
        {"benchmark": benchmark, "rule": rule, "paper_compat": paper_compat, "n": n,
         "juries": [{**asdict(jury), "beats_best_member": jury.beats_best_member} for jury in ranking],
         "singles": [asdict(jury) for jury in singles]}, indent=2,
    ), encoding="utf-8")
    console.print(f"wrote {report}, {chart} and {output / 'juries.json'}")


def pairwise_judging(
    *, judge: str, strategy: str, scale: str, swap: bool, concurrency: int, workers: int, ray_address: str | None,
    ray_start: str, worker_timeout: float | None, adaptive: bool, max_tokens: int, output_format: str, scoring: str,
    trace: Path | None, criteria: Path | None = None, batch: bool = False, batch_size: int | None = None,
    batch_wait: float = 60.0,
) -> tuple[dict[str, Any], EvaluationOptions]:
    """The verdict-cache settings and the judge's run options of a command that judges pairs of answers.

    Used by winrate and rank: the settings are what shapes a verdict (they name the cache file).
    """
    settings = {"judge": judge, "strategy": strategy, "scale": int(scale), "swap": swap, "max_tokens": max_tokens,
                "output_format": output_format, **scoring_setting(scoring)}  # type: ignore[arg-type]
    options = EvaluationOptions.model_validate({
        "method": "judge", "strategy": strategy, "scale": int(scale), "model": [judge], "swap": swap,
        "concurrency": concurrency, "max_tokens": max_tokens, "output_format": output_format, "scoring": scoring,
        "trace": trace, "workers": workers, "ray_address": ray_address, "ray_start": ray_start,
        "worker_timeout": worker_timeout, "adaptive": adaptive, "criteria": criteria, "batch": batch,
        "batch_size": batch_size, "batch_wait": batch_wait,
    })
    settings |= criteria_setting(options.criteria_list())  # bad criteria stop the command here, before any call
    return settings, options


def winrate_command(
    a: Annotated[Path, typer.Option("--a", help="generate output folder, or a prompt/answer JSON(L) file")],
    b: Annotated[Path, typer.Option("--b", help="the baseline, in the same forms as --a")],
    judge: Annotated[str, typer.Option(help="judge model spec")] = "local:smollm2",
    swap: Annotated[bool, typer.Option(help="judge both orders; disagreement becomes a tie")] = False,
    answer: Annotated[
        Literal["final", "best", "first"],
        typer.Option(help="which answer of a generate output speaks for it: the loop's final answer, the "
                     "evaluator's pick, or the first draft"),
    ] = "final",
    strategy: StrategyOption = "combined",
    scale: ScaleOption = "10",
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N shared prompts")] = None,
    concurrency: ConcurrencyOption = 4,
    workers: WorkersOption = 1,
    ray_address: RayAddressOption = None,
    ray_start: RayStartOption = META_EVAL_DEFAULTS["ray_start"],
    worker_timeout: WorkerTimeoutOption = None,
    adaptive: AdaptiveOption = META_EVAL_DEFAULTS["adaptive"],
    batch: BatchOption = False,
    batch_size: BatchSizeOption = None,
    batch_wait: BatchWaitOption = 60.0,
    max_tokens: MaxTokensOption = 512,
    output_format: OutputFormatOption = "auto",
    scoring: ScoringOption = "auto",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="report folder (default "
                                                "runs/winrate/A-vs-B)")] = None,
    trace: TraceOption = None,
    criteria: CriteriaOption = None,
) -> None:
    """Compare two generation outputs on their shared prompts: wins, ties and losses of A against B."""
    from tools.inputs.items import EvalItem
    from tools.meta_eval.reports import (
        WINRATE_COLUMNS,
        WinRate,
        markdown_table,
        winrate_chart,
        winrate_table_rows,
        write_report,
    )

    side_a, side_b = load_side(a, answer), load_side(b, answer)
    check_evaluation_flags([], method="judge", strategy=strategy, models=[judge], swap=swap, source="", flag="--judge")
    announce_models([("judge", judge, "--judge")])
    shared = [key for key in side_a.answers if key in side_b.answers][:limit]
    if not shared:
        raise ConfigError(f"--a {a} and --b {b} share no prompt with an answer to compare")
    items = [EvalItem(id=key, prompt=side_a.answers[key][0], responses=[side_a.answers[key][1], side_b.answers[key][1]])
             for key in shared]
    name_a, name_b = _slug(a.name) or "a", _slug(b.name) or "b"
    output = output or Path("runs/winrate") / f"{name_a}-vs-{name_b}"
    settings, options = pairwise_judging(
        judge=judge, strategy=strategy, scale=scale, swap=swap, concurrency=concurrency, workers=workers,
        ray_address=ray_address, ray_start=ray_start, worker_timeout=worker_timeout, adaptive=adaptive,
        max_tokens=max_tokens, output_format=output_format, scoring=scoring, trace=trace, criteria=criteria,
        batch=batch, batch_size=batch_size, batch_wait=batch_wait)
    settings["answer"] = answer
    records = run_evaluation(items=items, output_path=output / f"verdicts-{settings_digest(settings)}.jsonl",
                             options=options, reuse_output=True)
    winners = [record["winner"] for record in records]
    result = WinRate(a=name_a, b=name_b, wins=winners.count("A"), ties=winners.count("tie"),
                     losses=winners.count("B"), unparsed=winners.count(None))
    title = f"{name_a} against {name_b}, judged by {judge}"
    table_rows = winrate_table_rows([result])
    console.print(_table(title, WINRATE_COLUMNS, table_rows))
    console.print(side_coverage(side_a, side_b, answer), markup=False)
    chart = winrate_chart([result], output / "winrate.png", title)
    report = write_report(output / "report.md", title, [
        ("Result", markdown_table(WINRATE_COLUMNS, table_rows) + "\n\n![win rate](winrate.png)"),
        ("How to read this", "Win rate = wins / n, ties and unparsed verdicts counted as non-wins (as the "
         "paper). (wins + ties/2) / n counts a tie or an unparsed verdict as half a win. A is shown first to the "
         f"judge{' and, with --swap, second too' if swap else ''}. Answer used for generate outputs: {answer}."),
    ])
    write_jsonl_atomic(output / "pairs.jsonl", [
        {"prompt_id": item.id, "a": item.responses[0], "b": item.responses[1], "winner": record["winner"]}
        for item, record in zip(items, records, strict=True)
    ])
    (output / "winrate.json").write_text(json.dumps(
        {**asdict(result), "n": result.n, "win_rate": result.win_rate,
         "win_rate_half_ties": result.win_rate_half_ties, "settings": settings}, indent=2), encoding="utf-8")
    console.print(f"wrote {report}, {chart} and {output / 'winrate.json'}")
    exit_if_failed(sum(bool(record.get("error")) for record in records), len(records), "prompts",
                   "their calls failed (counted as unparsed above); run the same command again to retry them")
