"""From canonical per-prompt records to TRL preference datasets (DPO and KTO) and a dataset card.

TRL's conversational format with an explicit prompt: `prompt` is a list of messages ending with the
user turn; `chosen`, `rejected` and `completion` each hold one assistant message; `label` is a bool.
A prompt whose top answers tie, whose evaluator gave no verdict, or whose answers are identical yields
no row with chosen equal to rejected: such prompts are counted, not exported as noise.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tools.outputs.jsonl import JsonlWriter
from tools.rules.pairing import PairingRules, rank_answers, rank_by_person, repetition_share

# Bytes of a JSONL file parsed at a time when the datasets are built from it: memory stays near this whatever the
# file's size. A longer row (a prompt with a long context) makes the block its length.
EXPORT_BLOCK_BYTES = 4 << 20


@dataclass
class ExportSummary:
    """Counts of an export: prompts, rows, and prompts per outcome."""
    prompts: int = 0
    dpo_rows: int = 0
    kto_rows: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    rows_by_outcome: Counter[str] = field(default_factory=Counter)
    first_dpo_row: dict[str, Any] | None = None
    # Prompts a person decided (`--review`), and the DPO rows they gave; labels written to human.jsonl.
    criteria: list[str] = field(default_factory=list)  # the criteria the rows' scores are broken down by
    decided_by_people: int = 0
    rows_decided_by_people: int = 0
    human_labels: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    cached_calls: int = 0
    rate_limited: int = 0
    rate_waited_s: float = 0.0
    batched_calls: int = 0
    cost_usd: float | None = 0.0

    def add(self, record: dict[str, Any], outcome: str, dpo: list[dict[str, Any]], kto: list[dict[str, Any]]) -> None:
        """Count one exported record: its outcome, rows and usage (cost unknown once a record's is)."""
        self.prompts += 1
        self.outcomes[outcome] += 1
        self.rows_by_outcome[outcome] += len(dpo)
        self.dpo_rows += len(dpo)
        self.kto_rows += len(kto)
        if self.first_dpo_row is None and dpo:
            self.first_dpo_row = dpo[0]
        if not self.criteria and dpo and "criteria_chosen" in dpo[0]:
            self.criteria = list(dpo[0]["criteria_chosen"])
        elif not self.criteria and kto and "criteria" in kto[0]:
            self.criteria = list(kto[0]["criteria"])
        if record.get("human") is not None:
            self.decided_by_people += 1
            self.rows_decided_by_people += len(dpo)
        usage = record.get("usage") or {}
        self.input_tokens += usage.get("input_tokens", 0)
        self.output_tokens += usage.get("output_tokens", 0)
        self.calls += usage.get("calls", 0)
        self.cached_calls += usage.get("cached_calls", 0)
        self.rate_limited += usage.get("rate_limited", 0)
        self.rate_waited_s += usage.get("rate_waited_s", 0.0)
        self.batched_calls += usage.get("batched_calls", 0)
        cost = usage.get("cost_usd", 0.0)
        self.cost_usd = None if self.cost_usd is None or cost is None else self.cost_usd + cost

    def usage(self) -> dict[str, Any]:
        """Tokens, calls and cost of every exported record, as the card and the summary show them."""
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens, "calls": self.calls,
                "cached_calls": self.cached_calls, "rate_limited": self.rate_limited,
                "rate_waited_s": self.rate_waited_s, "batched_calls": self.batched_calls, "cost_usd": self.cost_usd}


def headline_table(report: dict[str, Any] | None) -> list[str]:
    """The card's short table of the run report's headline figures (no lines without a report)."""
    if report is None:
        return []

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    trust, versus = report["trust"], report["final_vs_first"]
    rows = [
        ("the loop", report["headline"]),
        ("final answer beats the first (evaluator's scores)", share(versus["win_rate"])),
        ("prompts whose top answers tied", share(trust["tie_rate"])),
        ("rows whose chosen answer is the longer one", share(trust["chosen_longer_share"])),
        ("position consistency (with --swap)", share(trust["position_consistency"])),
        ("degenerate answers", f"{trust['degenerate_answers']} of {trust['answers']}"),
    ]
    return ["## What the run made", "", "| figure | value |", "|---|---|",
            *[f"| {name} | {value} |" for name, value in rows], "",
            "`report.html` shows every figure, chart and row.", ""]


def published_name(origin: str) -> str:
    """How the card names a prompt source: a prompt set by its name, a file or folder by its own name.

    The card is published with `--push-to-hub`: the path on the user's machine (`/home/ana/...`) is not for the
    world to read, and the sha256 beside the name identifies the prompts.
    """
    return Path(origin).name if ("/" in origin or "\\" in origin) else origin


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def annotate_repetition(record: dict[str, Any], rules: PairingRules) -> dict[str, Any]:
    """The record with each answer's repetition share and whether it counts as degenerate."""
    answers = []
    for answer in record["answers"]:
        share = repetition_share(answer["text"])
        answers.append({**answer, "repetition": round(share, 3), "degenerate": share >= rules.degenerate_share})
    return {**record, "answers": answers}


def preference_rows(
    record: dict[str, Any], rules: PairingRules | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """DPO and KTO rows of one record by the pairing rules (`tools.rules.pairing`), and the prompt's outcome."""
    rules = rules or PairingRules()
    answers = [answer["text"] for answer in record["answers"]]
    verdict = record.get("verdict") or {}
    scores = list(verdict.get("scores") or [])
    human = record.get("human")
    if human is not None:
        ranked = rank_by_person(answers, scores, None if human.get("none") else human.get("best"), human.get("worst"),
                                rules)
    else:
        degenerate = [bool(answer.get("degenerate", repetition_share(answer["text"]) >= rules.degenerate_share))
                      for answer in record["answers"]]
        ranked = rank_answers(answers, scores, verdict.get("winner"), rules, degenerate)
    if not ranked.dpo:
        return [], [], ranked.outcome
    score = (lambda index: scores[index]) if len(scores) == len(answers) else (lambda index: None)
    by_criterion = verdict.get("criteria_scores") or []
    if len(by_criterion) != len(answers):
        by_criterion = []
    common = {
        "prompt_id": record["prompt_id"],
        "generator": record["models"]["generator"],
        "evaluator": record["models"]["evaluator"],
    }
    dpo = [{
        "prompt": record["prompt"],
        "chosen": _assistant(answers[high]),
        "rejected": _assistant(answers[low]),
        "score_chosen": score(high),
        "score_rejected": score(low),
        "chosen_iteration": high + 1,
        "rejected_iteration": low + 1,
        **common,
        # With criteria (`--criteria`): both answers' scores by criterion; `score_*` are their weighted means.
        **({"criteria_chosen": by_criterion[high], "criteria_rejected": by_criterion[low]} if by_criterion else {}),
    } for high, low in ranked.dpo]
    kto = [{"prompt": record["prompt"], "completion": _assistant(answers[index]), "label": label,
            "score": score(index), "iteration": index + 1, **common,
            **({"criteria": by_criterion[index]} if by_criterion else {})} for index, label in ranked.kto]
    return dpo, kto, ranked.outcome


def human_label_line(record: dict[str, Any]) -> dict[str, Any] | None:
    """The `human.jsonl` line of a record a person decided: a benchmark item `meta-eval` reads (`load_plain`).

    `label` is the best answer's letter among all N answers; `sample` says how the prompt came to a person
    (`audit`: drawn at random and shown blind; `disputed`; `all`). None for a record without a decision, or whose
    person found no answer acceptable (there is no best answer to agree with).
    """
    human = record.get("human")
    if human is None or human.get("none") or not human.get("best"):
        return None
    return {
        "id": record["prompt_id"], "prompt": record["prompt"],
        "responses": [answer["text"] for answer in record["answers"]], "label": human["best"],
        "sample": human.get("sample"), "reviewer": human.get("reviewer", ""), "note": human.get("note", ""),
    }


def check_trl_rows(rows: Iterable[dict[str, Any]], kind: str) -> None:
    """Raise ValueError if a row breaks TRL's conversational preference format."""
    for number, row in enumerate(rows):
        prompt = row["prompt"]
        if not (isinstance(prompt, list) and prompt and prompt[-1]["role"] == "user"):
            raise ValueError(f"{kind} row {number}: prompt must be messages ending with a user turn")
        completions = ["chosen", "rejected"] if kind == "dpo" else ["completion"]
        for column in completions:
            value = row[column]
            if not (isinstance(value, list) and len(value) == 1 and value[0]["role"] == "assistant"):
                raise ValueError(f"{kind} row {number}: {column} must be one assistant message")
        if kind == "dpo" and row["chosen"][0]["content"] == row["rejected"][0]["content"]:
            raise ValueError(f"dpo row {number}: chosen equals rejected")
        if kind == "kto" and not isinstance(row["label"], bool):
            raise ValueError(f"kto row {number}: label must be a bool")


def dataset_features(kind: str, criteria: Sequence[str] = ()) -> dict[str, Any]:
    """The columns and types of the `dpo/` or `kto/` dataset, as `datasets` writes features in `dataset_info.json`.

    TRL's conversational columns, then ours; with `criteria` (a run scored by criteria), the scores by criterion
    too: one struct column per answer side. `datasets.Features.from_dict` reads it; `arrow_schema` gives its Arrow
    types.
    """

    def value(dtype: str) -> dict[str, str]:
        return {"dtype": dtype, "_type": "Value"}

    messages = {"feature": {"role": value("string"), "content": value("string")}, "_type": "List"}
    columns: dict[str, Any] = {"prompt": messages}
    if kind == "dpo":
        columns |= {"chosen": messages, "rejected": messages, "score_chosen": value("float64"),
                    "score_rejected": value("float64"), "chosen_iteration": value("int64"),
                    "rejected_iteration": value("int64")}
    else:
        columns |= {"completion": messages, "label": value("bool"), "score": value("float64"),
                    "iteration": value("int64")}
    columns |= {name: value("string") for name in ("prompt_id", "generator", "evaluator")}
    if criteria:
        by_criterion = {name: value("float64") for name in criteria}
        sides = ("criteria_chosen", "criteria_rejected") if kind == "dpo" else ("criteria",)
        columns |= {side: by_criterion for side in sides}
    return columns


def arrow_schema(features: dict[str, Any]) -> Any:
    """The Arrow schema of `dataset_features`' columns, carrying them as `datasets` does (schema metadata)."""
    import pyarrow

    scalars = {"string": pyarrow.string(), "float64": pyarrow.float64(), "int64": pyarrow.int64(),
               "bool": pyarrow.bool_()}

    def arrow_type(feature: dict[str, Any]) -> Any:
        if feature.get("_type") == "Value":
            return scalars[feature["dtype"]]
        if feature.get("_type") == "List":
            return pyarrow.list_(arrow_type(feature["feature"]))
        return pyarrow.struct([(name, arrow_type(inner)) for name, inner in feature.items()])

    metadata = {"huggingface": json.dumps({"info": {"features": features}})}
    return pyarrow.schema([(name, arrow_type(feature)) for name, feature in features.items()], metadata=metadata)


def preload_export_modules() -> threading.Thread:
    """Import what the export loads (pyarrow) on a thread of their own, now.

    Started once the run's first call is answered: it loads while the run's calls wait on the network (the event
    loop takes the interpreter back within its switch interval whenever a reply comes), so the end of the run only
    writes (`make bench`, fixed cost). A daemon thread: a run that fails exits without it.
    """

    def load() -> None:
        import pyarrow.ipc
        import pyarrow.json  # noqa: F401

    thread = threading.Thread(target=load, name="fellowship-preload", daemon=True)
    thread.start()
    return thread


def _save_dataset(rows_file: Path, rows: int, target: Path, kind: str, criteria: Sequence[str] = ()) -> None:
    """Write the `dpo/` or `kto/` dataset from its JSONL file (`rows` lines) as `Dataset.save_to_disk` lays it out.

    One Arrow stream file (`data-00000-of-00001.arrow`), `dataset_info.json` with the features and `state.json`,
    so `datasets.load_from_disk` (and TRL) read it. pyarrow alone parses the file a block of EXPORT_BLOCK_BYTES (or
    the longest row) at a time with the declared types, so memory stays flat whatever the number of rows; neither
    `datasets` nor pandas is imported (over a second of a short run's end, `make bench`, fixed cost); tests load
    every folder with `datasets`. A row with a column the features lack is an error, not dropped. The folder
    appears under its name only when complete.
    """
    import hashlib

    import pyarrow
    import pyarrow.ipc
    import pyarrow.json

    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    features = dataset_features(kind, criteria)
    schema = arrow_schema(features)
    shard = "data-00000-of-00001.arrow"
    digest = hashlib.blake2b(digest_size=8)  # the rows' fingerprint: the same rows give the same folder
    longest = 0
    with open(rows_file, "rb") as lines:
        for line in lines:
            digest.update(line)
            longest = max(longest, len(line))
    with pyarrow.OSFile(str(staging / shard), "wb") as sink, pyarrow.ipc.new_stream(sink, schema) as writer:
        if rows:  # Arrow's reader refuses an empty file; no rows is a stream of the schema alone
            # A row may not straddle two blocks: a block is at least the longest row.
            block = max(EXPORT_BLOCK_BYTES, longest + 1)
            reader = pyarrow.json.open_json(
                str(rows_file), read_options=pyarrow.json.ReadOptions(block_size=block),
                parse_options=pyarrow.json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error"))
            for batch in reader:
                writer.write_batch(batch)
    info = {"citation": "", "description": "", "features": features, "homepage": "", "license": ""}
    (staging / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    state: dict[str, Any] = {"_data_files": [{"filename": shard}], "_fingerprint": digest.hexdigest(),
                             "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
                             "_output_all_columns": False, "_split": None}
    (staging / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def export_records(
    records: Iterable[dict[str, Any]], output_dir: Path, rules: PairingRules | None = None
) -> ExportSummary:
    """Write records.jsonl, dpo.jsonl, kto.jsonl and the `dpo/`, `kto/` datasets; return the counts.

    Records stream through one at a time (from the run store, in prompt order), so memory stays flat however
    many prompts a run has. Each answer in records.jsonl carries its repetition share and whether it counts as
    degenerate, and each record its outcome and the iteration chosen (None without rows). Records a person decided
    also give `human.jsonl` (`human_label_line`). Every file appears under its final name only when complete.
    """
    rules = rules or PairingRules()
    summary = ExportSummary()
    with JsonlWriter(output_dir / "records.jsonl") as records_out, JsonlWriter(output_dir / "dpo.jsonl") as dpo_out, \
            JsonlWriter(output_dir / "kto.jsonl") as kto_out, JsonlWriter(output_dir / "human.jsonl") as human_out:
        for raw in records:
            record = annotate_repetition(raw, rules)
            dpo, kto, outcome = preference_rows(record, rules)
            # What the rules made of the prompt, for readers of records.jsonl (and the run's report).
            record["outcome"] = outcome
            record["chosen_iteration"] = dpo[0]["chosen_iteration"] if dpo else None
            check_trl_rows(dpo, "dpo")
            check_trl_rows(kto, "kto")
            summary.add(record, outcome, dpo, kto)
            records_out.write(record)
            for row in dpo:
                dpo_out.write(row)
            for row in kto:
                kto_out.write(row)
            label = human_label_line(record)
            if label is not None:
                human_out.write(label)
                summary.human_labels += 1
    if not summary.human_labels:
        (output_dir / "human.jsonl").unlink()  # no person decided anything: no benchmark to offer
    # Saved even when empty: a stale dataset from an earlier export must not survive, and loaders expect one.
    _save_dataset(output_dir / "dpo.jsonl", summary.dpo_rows, output_dir / "dpo", "dpo", summary.criteria)
    _save_dataset(output_dir / "kto.jsonl", summary.kto_rows, output_dir / "kto", "kto", summary.criteria)
    return summary


def _size_category(rows: int) -> str:
    """The Hub's size bucket for a number of rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "n>1M"


def dataset_card(
    *,
    settings: dict[str, Any],
    summary: ExportSummary,
    failures: list[tuple[str, str]],
    usage: dict[str, Any],
    prompt_sources: Sequence[Any] = (),
    license: str = "other",
    report: dict[str, Any] | None = None,
    waiting: int = 0,
    custom_prompts: dict[str, str] | None = None,
) -> str:
    """The README.md of an output directory: a Hugging Face dataset card.

    With `report` (the run report's figures, `report.json`), the card opens with their headline: did the loop
    help, and how far the labels can be trusted; `report.html` holds the rest.

    Its YAML front matter names the two configs (`dpo`, `kto`, each its JSONL file as the train split), the
    tags TRL's users search for, the licence and the size; the body gives the prompt sources, configuration,
    models, counts per outcome, tokens, cost and failures. `prompt_sources` are the run store's
    PromptSourceId entries.
    """
    front_matter = {
        "license": license,
        "tags": ["dpo", "kto", "trl", "synthetic", "preference", "fellowship"],
        "task_categories": ["text-generation"],
        "size_categories": [_size_category(summary.dpo_rows + summary.kto_rows)],
        "configs": [
            {"config_name": "dpo", "data_files": [{"split": "train", "path": "dpo.jsonl"}]},
            {"config_name": "kto", "data_files": [{"split": "train", "path": "kto.jsonl"}]},
        ],
    }
    lines = [
        "---",
        yaml.safe_dump(front_matter, sort_keys=False).rstrip(),
        "---",
        "# Preference dataset generated by fellowship",
        "",
        "LLM Feedback Loop answers ranked by an LLM evaluator (Arif et al. 2024, \"The Fellowship of the LLMs\").",
        "",
        *headline_table(report),
        "## Prompts",
        "",
        *[f"- `{published_name(source.origin)}`, field `{source.field}`: {source.prompts} prompts, sha256 "
          f"`{source.sha256}`" for source in prompt_sources],
        "",
        "## Configuration",
        "",
        *[f"- **{key}**: `{value}`" for key, value in sorted(settings.items()) if key != "criteria"],
        "",
        "## Counts",
        "",
        f"- prompts exported: {summary.prompts}",
        f"- DPO rows (`dpo/`, `dpo.jsonl`): {summary.dpo_rows}",
        f"- KTO rows (`kto/`, `kto.jsonl`): {summary.kto_rows}",
        *[f"- prompts with outcome `{name}`: {count} (DPO rows: {summary.rows_by_outcome[name]})"
          for name, count in sorted(summary.outcomes.items())],
        f"- prompts failed: {len(failures)}",
        *([f"- prompts decided by people (`--review`): {summary.decided_by_people} (DPO rows: "
           f"{summary.rows_decided_by_people}); their labels: `human.jsonl`"] if summary.decided_by_people else []),
        *([f"- prompts waiting for a person's decision (no rows yet): {waiting}; `fellowship review` on this "
           "directory decides them"] if waiting else []),
        "",
        "Rows follow the pairing rules in the configuration (`pairs`, `min_margin`, `top_tie`, `max_repetition`):",
        "`ok_tied_top_later` counts prompts whose evaluator tied the top answers and whose latest top answer was",
        "chosen. No rows come from prompts whose answers all tied (`tied_top`), differ by less than the margin",
        "(`below_margin`), have no answer fit to be chosen (`degenerate_top`: each repeats itself), are identical",
        "(`identical_answers`), got no verdict (`no_verdict`), or have one answer (`single_answer`).",
        "`decided_by_person` counts prompts whose rows follow a person's pick (`--review`); `none_acceptable` those a",
        "person found no acceptable answer for (no rows).",
        "",
        "## Tokens",
        "",
        f"- input tokens: {usage.get('input_tokens', 0)}",
        f"- output tokens: {usage.get('output_tokens', 0)}",
        f"- model calls: {usage.get('calls', 0)}",
        f"- calls answered from the call cache (not paid): {usage.get('cached_calls', 0)}",
        f"- answers 429 (rate limited) waited out: {usage.get('rate_limited', 0)}; seconds the calls waited for "
        f"the providers' rate limits, together: {usage.get('rate_waited_s', 0.0):.1f}",
    ]
    if usage.get("batched_calls"):
        lines.append(f"- calls answered by the providers' batch APIs (`--batch`, priced at their batch rates): "
                     f"{usage['batched_calls']} of {usage.get('calls', 0)}")
    if usage.get("cost_usd") is not None:
        lines.append(f"- estimated cost: ${usage['cost_usd']:.4f}")
    if settings.get("criteria"):
        lines += ["", "## Criteria", "",
                  "Each answer was scored on each criterion; its score (`score_chosen`, `score_rejected`, `score`) is "
                  "the weighted mean, and the rows keep the scores by criterion (`criteria_chosen`, "
                  "`criteria_rejected`, `criteria`).", ""]
        for criterion in settings["criteria"]:
            lines.append(f"- **{criterion['name']}** (weight {criterion['weight']:g}): {criterion['description']}")
            lines += [f"  - {band}: {meaning}" for band, meaning in (criterion.get("rubric") or {}).items()]
    if custom_prompts:
        lines += ["", "## Prompts of the run's own", "",
                  "These roles were sent the run's own templates (the answer format after each is the project's):"]
        for role, source in sorted(custom_prompts.items()):
            lines += ["", f"`{role}`:", "", "```jinja", source.strip(), "```"]
    if failures:
        lines += ["", "## Failures", "", *[f"- `{prompt_id}`: {reason}" for prompt_id, reason in failures]]
    lines += [
        "",
        "## Format",
        "",
        "TRL conversational format with an explicit prompt. DPO: `prompt`, `chosen`, `rejected`; KTO: `prompt`,",
        "`completion`, `label`. Extra columns: `prompt_id`, scores, iterations, model names.",
        "`records.jsonl` holds every answer, review, verdict and raw model text per prompt.",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'dpo = load_dataset("REPO_ID", "dpo", split="train")   # or a local folder: load_dataset("json", ...)',
        'kto = load_dataset("REPO_ID", "kto", split="train")',
        "```",
    ]
    return "\n".join(lines) + "\n"
