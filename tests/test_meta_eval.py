"""Meta-evaluation: verdict files and the paper's rules, bias figures, jury search, and the commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from typer.testing import CliRunner

from tools.cli import app
from tools.dev.stub_server import StubServer, _score
from tools.errors import ConfigError, InputError
from tools.inputs.benchmarks import LabelledItem, load_benchmark
from tools.inputs.verdict_files import ItemVerdict, VerdictFile, read_verdict_file
from tools.meta_eval.scores import (
    align,
    baseline_scores,
    bias_figures,
    differences_from_best,
    jury_search,
    score_evaluator,
)

runner = CliRunner()


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def item(item_id: str, label: str, responses: tuple[str, str] = ("short", "a longer answer")) -> LabelledItem:
    return LabelledItem(id=item_id, prompt="Q", responses=list(responses), votes=[label], label=label)


# --- reading raw judge text, default and paper rules ---------------------------------------------------

COMBINED_MISSING_A = "### Evaluation Evidence: ...\n### Score Assistant B: 6/10"
FOLLOWUP_BOTH = "### Score Assistant A: 9/10\n### Score Assistant B: 7/10"


def test_raw_combined_text_default_and_paper_rules(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "judge.jsonl", [
        {"id": "1", "strategy": "combined", "scale": 10, "text": "### Score Assistant A: **8.5 / 10**\n"
                                                                "### Score Assistant B: 8/10"},
        {"id": "2", "strategy": "combined", "scale": 10, "text": COMBINED_MISSING_A},
        {"id": "3", "strategy": "combined", "scale": 10, "text": COMBINED_MISSING_A, "followup_text": FOLLOWUP_BOTH},
        {"id": "4", "strategy": "combined", "scale": 10, "text": "no scores at all"},
        # The published parser failed on this first reply (a follow-up was asked) although ours reads it.
        {"id": "5", "strategy": "combined", "scale": 10, "text": "Score Assistant A: 6\nScore Assistant B: 5",
         "followup_text": "### Score Assistant A: 6/10\n### Score Assistant B: 7/10"},
        {"id": "6", "strategy": "combined", "scale": 10,
         "text": "### Score Assistant A:\n10/10\n### Score Assistant B: 9.5/10\n### Score Assistant A: 1/10"},
    ])
    default = read_verdict_file(path)
    assert [default.by_id[key].winner for key in "123456"] == ["A", None, "A", None, "A", "B"]
    assert default.by_id["3"].scores == [9.0, 7.0]
    paper = read_verdict_file(path, paper_compat=True)
    # The published code's strict lines: `**8.5 / 10**` is not read, so A counts as -1 and loses; after a
    # follow-up it read B from the whole exchange and never re-read A; the first of repeated lines counts.
    assert [paper.by_id[key].winner for key in "123456"] == ["B", "B", "B", "tie", "B", "A"]
    assert paper.by_id["1"].scores == [-1.0, 8.0]
    assert paper.by_id["3"].scores == [-1.0, 6.0]  # B: the first readable B line of the exchange
    assert paper.by_id["5"].scores == [-1.0, 7.0]
    assert paper.by_id["6"].scores == [10.0, 9.5]


FOLLOWUP_REPLY = "### Score Assistant A:\n9/10\n\n### Score Assistant B:\n6/10"


def test_published_records_joined_replies_and_turns(tmp_path: Path) -> None:
    """Lines as the published code wrote them: every reply joined in `response`, and `turns_to_answer`."""
    path = write_lines(tmp_path / "published.jsonl", [
        # First reply: B readable, A not (spaced) -> a follow-up; A was never read again: -1.
        {"id": "1", "response": "### Score Assistant A: 9 / 10\n### Score Assistant B: 6/10\n\n" + FOLLOWUP_REPLY,
         "turns_to_answer": 2},
        # First reply: A readable, B missing -> follow-up; A kept from the first reply.
        {"id": "2", "response": "### Score Assistant A: 4/10\nB is fine.\n\n" + FOLLOWUP_REPLY,
         "turns_to_answer": 2},
        # First reply: nothing readable -> follow-up; A still -1 although the follow-up gives it.
        {"id": "3", "response": "Both are good.\n\n" + FOLLOWUP_REPLY, "turns_to_answer": 2},
        # One call: both read from it.
        {"id": "4", "response": FOLLOWUP_REPLY, "turns_to_answer": 1},
        # The published code's own scores win over re-reading its text.
        {"id": "5", "response": FOLLOWUP_REPLY, "score_1": -1, "score_2": 3, "turns_to_answer": 2},
    ])
    paper = read_verdict_file(path, paper_compat=True, default_strategy="combined")
    assert [paper.by_id[key].scores for key in "12345"] == [
        [-1.0, 6.0], [4.0, 6.0], [-1.0, 6.0], [9.0, 6.0], [-1.0, 3.0]]
    default = read_verdict_file(path, default_strategy="combined")
    # The project's parsers read the final (follow-up) lines; the recorded -1 is an unparsed score.
    assert [default.by_id[key].winner for key in "12345"] == ["A", "A", "A", "A", "A"]


def test_raw_direct_and_independent_text(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "direct.jsonl", [
        {"id": "a", "text": "Both fine.\n### Answer: C"},
        {"id": "b", "text": "I cannot decide", "followup_text": "### answer: **B**"},
        {"id": "c", "text": "I cannot decide"},
        {"id": "d", "text": "A is better.\n### Answer:\nA"},
    ])
    default = read_verdict_file(path, default_strategy="direct")
    assert [default.by_id[key].winner for key in "abcd"] == ["tie", "B", None, "A"]
    # The published code wanted the letter on the line after `### answer:`; anything else was a tie.
    paper = read_verdict_file(path, default_strategy="direct", paper_compat=True)
    assert [paper.by_id[key].winner for key in "abcd"] == ["tie", "tie", "tie", "A"]
    picks = write_lines(tmp_path / "picks.jsonl", [{"id": "p", "response": "### Answer: B", "pick": "model_a"}])
    assert read_verdict_file(picks, default_strategy="direct", paper_compat=True).by_id["p"].winner == "A"
    assert read_verdict_file(picks, default_strategy="direct").by_id["p"].winner == "B"
    independent = write_lines(tmp_path / "independent.jsonl", [
        {"id": "x", "strategy": "independent", "texts": ["### Overall Score: 7/10", "### Overall Score: 8.5/10"]},
        {"id": "y", "strategy": "independent", "texts": ["### Overall Score: 7/10", "no score"]},
        {"id": "z", "strategy": "independent", "response_1": "### Overall Score: 7/10",
         "response_2": "### Overall Score: 7 / 10"},
    ])
    assert read_verdict_file(independent).by_id["x"].winner == "B"
    assert read_verdict_file(independent).by_id["y"].winner is None
    assert read_verdict_file(independent, paper_compat=True).by_id["y"].winner == "A"
    assert read_verdict_file(independent).by_id["z"].winner == "tie"
    assert read_verdict_file(independent, paper_compat=True).by_id["z"].winner == "A"


def test_evaluate_records_are_parsed_again_from_their_exchanges(tmp_path: Path) -> None:
    record = {
        "id": "7", "method": "judge", "strategy": "combined", "scale": 10, "models": ["local:smollm2"],
        "scores": [None, None], "winner": None, "parse_ok": False, "swapped": True,
        "exchanges": [
            {"model": "m", "role": "judge/combined/forward", "text": "### Score Assistant A: 9/10\n"
                                                                   "### Score Assistant B: 4/10"},
            # Reversed order: presented A is original B. Presented B wins -> original A wins: consistent.
            {"model": "m", "role": "judge/combined/reversed", "text": "### Score Assistant A: 3/10\n"
                                                                    "### Score Assistant B: 8/10"},
        ],
    }
    verdict = read_verdict_file(write_lines(tmp_path / "v.jsonl", [record])).by_id["7"]
    assert verdict.winner == "A" and verdict.order_winners == ["A", "A"]
    assert verdict.scores == [8.5, 3.5]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"id": "1", "winner": "D"}, r"v\.jsonl:2: winner 'D' is not A, B, C, tie or null"),
        ({"id": "1", "text": "x"}, r"v\.jsonl:2: raw text needs 'strategy'"),
        ({"id": "1", "scores": [1]}, r"v\.jsonl:2: 'scores' must be a list of two or more"),
        ({"id": "0", "winner": "A"}, r"v\.jsonl:2: id '0' appears twice \(first on line 1\)"),
        ({"id": "1", "verdict": "A"}, r"v\.jsonl:2: a verdict line needs"),
    ],
)
def test_bad_verdict_lines_name_file_and_line(tmp_path: Path, row: dict, message: str) -> None:
    path = write_lines(tmp_path / "v.jsonl", [{"id": "0", "winner": "A"}, row])
    with pytest.raises(InputError, match=message):
        read_verdict_file(path)


def test_lines_without_id_follow_benchmark_order_and_unknown_ids_fail(tmp_path: Path) -> None:
    items = [item("10", "A"), item("11", "B")]
    positional = read_verdict_file(write_lines(tmp_path / "p.jsonl", [{"winner": "A"}, {"winner": "tie"}]))
    assert [(labelled.id, verdict.winner) for labelled, verdict in align(positional, items)] == [
        ("10", "A"), ("11", "tie")]
    unknown = read_verdict_file(write_lines(tmp_path / "u.jsonl", [{"id": "10", "winner": "A"},
                                                                   {"id": "99", "winner": "B"}]))
    with pytest.raises(InputError, match=r"u\.jsonl:2: id '99' is not in the benchmark"):
        align(unknown, items)


# --- figures --------------------------------------------------------------------------------------------

def test_bias_figures_hand_computed() -> None:
    items = [item("1", "A"), item("2", "B"), item("3", "A"), item("4", "A", ("same", "same"))]
    verdicts = [
        ItemVerdict(winner="A", order_winners=["A", "A"]),  # consistent; first shown in forward, second in reversed
        ItemVerdict(winner="tie", order_winners=["A", "B"]),  # inconsistent; picked the first shown both times
        ItemVerdict(winner="B", order_winners=["B", None]),  # reversed unparsed: not counted for consistency
        ItemVerdict(winner="A", order_winners=["A", "A"]),  # equal lengths: not counted for P(longer)
    ]
    consistency, p_first, p_longer = bias_figures(list(zip(items, verdicts, strict=True)))
    assert consistency == pytest.approx(2 / 3)
    # Decisive order verdicts: A(first) A(second) | A(first) B(first) | B(second) | A(first) A(second).
    assert p_first == pytest.approx(4 / 7)
    # Decisive final verdicts with differing lengths: item 1 -> A (shorter), item 3 -> B (longer).
    assert p_longer == pytest.approx(1 / 2)


def test_score_evaluator_counts_unparsed_as_tie_and_baselines() -> None:
    items = [item("1", "A"), item("2", "B"), item("3", "tie"), item("4", "B")]
    verdicts = [ItemVerdict(winner="A"), ItemVerdict(winner="B"), ItemVerdict(winner=None), ItemVerdict(winner="A")]
    row = score_evaluator("e", list(zip(items, verdicts, strict=True)))
    expected = cohen_kappa_score(["A", "B", "tie", "B"], ["A", "B", "tie", "A"], labels=["A", "B", "tie"])
    assert row.kappa == pytest.approx(expected)
    assert row.unparsed_rate == pytest.approx(0.25) and row.agreement == pytest.approx(0.75)
    longer, always_a = baseline_scores(items)
    # The longer answer is always B here.
    assert longer.agreement == pytest.approx(0.5) and always_a.agreement == pytest.approx(0.25)
    assert longer.baseline and always_a.baseline


# --- jury search ----------------------------------------------------------------------------------------

def synthetic_files(labels: list[str]) -> list[VerdictFile]:
    """Three evaluators each wrong on a different third of the items (so any two of them outvote the third)
    and three noisy ones; the best jury is the first three."""
    wrong = {"A": "B", "B": "A", "tie": "A"}
    thirds = len(labels) // 3
    files = []
    for index in range(3):
        verdicts = {
            str(position): ItemVerdict(winner=wrong[label] if position // thirds == index else label)
            for position, label in enumerate(labels)
        }
        files.append(VerdictFile(name=f"good{index}", path=Path(f"good{index}.jsonl"), by_id=verdicts))
    for index, constant in enumerate(["A", "B", "tie"]):
        verdicts = {str(position): ItemVerdict(winner=constant) for position in range(len(labels))}
        files.append(VerdictFile(name=f"always-{constant}", path=Path(f"c{index}.jsonl"), by_id=verdicts))
    return files


def test_jury_search_finds_known_best_jury() -> None:
    labels = (["A", "B", "tie"] * 10)[:30]
    items = [item(str(position), label) for position, label in enumerate(labels)]
    ranking, n = jury_search(items, synthetic_files(labels), min_size=2)
    assert n == 30
    assert len(ranking) == 57  # every subset of 6 with at least 2 members
    assert ranking[0].members == ("good0", "good1", "good2")
    assert ranking[0].kappa == pytest.approx(1.0) and ranking[0].agreement == pytest.approx(1.0)
    assert ranking[0].kappa_low == pytest.approx(1.0)
    # Any two good evaluators disagree on two thirds of the items: those become ties under plurality.
    pair = next(jury for jury in ranking if jury.members == ("good0", "good1"))
    predicted = ["tie" if position // 10 in (0, 1) else label for position, label in enumerate(labels)]
    assert pair.kappa == pytest.approx(cohen_kappa_score(labels, predicted, labels=["A", "B", "tie"]))


def hand_paired_interval(predicted: list[str], other: list[str], labels: list[str], seed: int = 0) -> list[float]:
    """The paired bootstrap of kappa(predicted) - kappa(other), one resample at a time with scikit-learn."""
    picks = np.random.default_rng(seed).integers(0, len(labels), size=(1000, len(labels)))
    differences = []
    for pick in picks:
        human = [labels[index] for index in pick]
        scores = [cohen_kappa_score(human, [answers[index] for index in pick], labels=["A", "B", "tie"])
                  for answers in (predicted, other)]
        differences.append(np.nan_to_num(scores[0]) - np.nan_to_num(scores[1]))
    return list(np.percentile(differences, [2.5, 97.5]))


def test_each_jury_is_compared_with_its_best_member_by_a_paired_bootstrap() -> None:
    labels = (["A", "B", "tie"] * 10)[:30]
    items = [item(str(position), label) for position, label in enumerate(labels)]
    files = synthetic_files(labels)
    ranking, _ = jury_search(items, files, min_size=2)
    best = ranking[0]
    assert best.members == ("good0", "good1", "good2") and best.best_member == "good0"
    member = [files[0].by_id[str(position)].winner or "tie" for position in range(30)]
    low, high = hand_paired_interval(labels, member, labels)
    assert best.vs_best_member == pytest.approx(1.0 - cohen_kappa_score(labels, member, labels=["A", "B", "tie"]))
    assert (best.vs_best_member_low, best.vs_best_member_high) == (pytest.approx(low), pytest.approx(high))
    assert best.beats_best_member is True and best.tied_with_first is True
    # A jury of one good evaluator and two constant ones is its good member, outvoted: no better than it.
    weak = next(jury for jury in ranking if jury.members == ("good0", "always-A", "always-B"))
    assert weak.beats_best_member is False and weak.tied_with_first is False
    assert sum(bool(jury.tied_with_first) for jury in ranking) >= 1


def test_meta_eval_score_gives_each_evaluator_its_paired_difference_from_the_best() -> None:
    labels = (["A", "B", "tie"] * 10)[:30]
    items = [item(str(position), label) for position, label in enumerate(labels)]
    files = synthetic_files(labels)
    scored = [(score_evaluator(file.name, align(file, items)), align(file, items)) for file in files[:2] + files[3:4]]
    rows = differences_from_best(scored)
    assert rows[0].vs_best is None  # good0 is first among equals: the best
    assert rows[1].vs_best == pytest.approx(0.0)
    always_a = ["A"] * 30
    good0 = [files[0].by_id[str(position)].winner or "tie" for position in range(30)]
    low, high = hand_paired_interval(always_a, good0, labels)
    assert rows[2].vs_best == pytest.approx(0.0 - rows[0].kappa)
    assert (rows[2].vs_best_low, rows[2].vs_best_high) == (pytest.approx(low), pytest.approx(high))
    assert rows[2].vs_best_high is not None and rows[2].vs_best_high < 0


def test_jury_mean_rule_needs_scores() -> None:
    labels = ["A", "B", "A"]
    items = [item(str(position), label) for position, label in enumerate(labels)]
    with pytest.raises(ConfigError, match="--rule mean needs scores"):
        jury_search(items, synthetic_files(labels)[:2], rule="mean")


# --- commands -------------------------------------------------------------------------------------------

def test_meta_eval_score_and_jury_search_commands(tmp_path: Path, benchmarks_dir: Path) -> None:
    items = load_benchmark("faireval")
    flip = {"A": "B", "B": "A", "tie": "A"}
    paths = []
    for index in range(3):
        rows = [{"id": labelled.id, "winner": flip[labelled.label] if position % 3 == index else labelled.label}
                for position, labelled in enumerate(items)]
        paths.append(write_lines(tmp_path / f"judge{index}.jsonl", rows))
    output = tmp_path / "score"
    result = runner.invoke(app, ["meta-eval", "score", "--benchmark", "faireval", "--output", str(output),
                                 *[arg for path in paths for arg in ("--verdicts", str(path))]])
    assert result.exit_code == 0, result.output
    scores = json.loads((output / "scores.json").read_text())
    first = scores["rows"][0]
    predicted = [flip[labelled.label] if position % 3 == 0 else labelled.label
                 for position, labelled in enumerate(items)]
    assert first["name"] == "judge0" and first["n"] == 80
    assert first["kappa"] == pytest.approx(cohen_kappa_score([i.label for i in items], predicted))
    assert [row["name"] for row in scores["rows"]][-2:] == ["baseline: always the longer answer", "baseline: always A"]
    assert (output / "kappa.png").stat().st_size > 1000 and "| judge0 | 80 |" in (output / "report.md").read_text()
    assert "judge0" in result.output
    # The same report as one page: its table, its chart inline, nothing fetched from anywhere.
    page = (output / "report.html").read_text()
    assert "<td>judge0</td><td>80</td>" in page and 'src="data:image/png;base64,' in page
    assert "http://" not in page and "https://" not in page

    juries = tmp_path / "juries"
    result = runner.invoke(app, ["jury-search", "--benchmark", "faireval", "--output", str(juries),
                                 *[arg for path in paths for arg in ("--verdicts", str(path))]])
    assert result.exit_code == 0, result.output
    ranking = json.loads((juries / "juries.json").read_text())
    assert len(ranking["juries"]) == 4  # three pairs and the trio
    assert sorted(single["members"][0] for single in ranking["singles"]) == ["judge0", "judge1", "judge2"]
    assert ranking["juries"][0]["members"] == ["judge0", "judge1", "judge2"]
    assert ranking["juries"][0]["kappa"] == pytest.approx(1.0)
    assert (juries / "juries.png").exists() and (juries / "report.md").exists()
    assert "<td>judge0 + judge1 + judge2</td>" in (juries / "report.html").read_text()


def test_meta_eval_score_bad_file_is_one_line(tmp_path: Path, benchmarks_dir: Path) -> None:
    bad = write_lines(tmp_path / "bad.jsonl", [{"id": "1", "winner": "A"}, {"id": "2", "winner": "maybe"}])
    result = runner.invoke(app, ["meta-eval", "score", "--benchmark", "faireval", "--verdicts", str(bad),
                                 "--output", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: {bad}:2: winner 'maybe' is not A, B, C, tie or null"]
    assert not (tmp_path / "out").exists()


def stub_winner(first: str, second: str) -> str:
    """What the stub judge decides in combined scoring: it scores each answer text by a hash."""
    a, b = _score(first), _score(second)
    return "tie" if a == b else ("A" if a > b else "B")


def test_meta_eval_run_reports_and_reuses_verdicts(tmp_path: Path, stub: StubServer) -> None:
    rows = [{"id": f"q{index}", "prompt": f"Question {index}?", "responses": [f"answer {index}", f"other {index * 7}"],
             "label": ["A", "B", "tie"][index % 3]} for index in range(9)]
    benchmark = write_lines(tmp_path / "bench.jsonl", rows)
    output = tmp_path / "report"
    args = ["meta-eval", "--benchmark", str(benchmark), "--model", f"compat:stub@{stub.base_url}",
            "--output", str(output), "--limit", "6"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert stub.stats.completions == 6
    scores = json.loads((output / "scores.json").read_text())
    predicted = [stub_winner(*row["responses"]) for row in rows[:6]]
    assert scores["rows"][0]["kappa"] == pytest.approx(
        cohen_kappa_score([row["label"] for row in rows[:6]], predicted, labels=["A", "B", "tie"]))
    assert scores["rows"][0]["n"] == 6 and (output / "kappa.png").exists()

    again = runner.invoke(app, [arg if arg != "6" else "9" for arg in args])
    assert again.exit_code == 0, again.output
    assert stub.stats.completions == 9  # only the three new items were judged
    assert json.loads((output / "scores.json").read_text())["rows"][0]["n"] == 9


def write_generate_output(folder: Path, answers: dict[str, list[str]]) -> Path:
    folder.mkdir()
    from tools.inputs.prompt_sets import prompt_id_for

    records = []
    for prompt, texts in answers.items():
        messages = [{"role": "user", "content": prompt}]
        records.append({"prompt_id": prompt_id_for(messages), "prompt": messages,
                        "answers": [{"iteration": i + 1, "text": text} for i, text in enumerate(texts)],
                        "verdict": {"winner": "A"}})
    write_lines(folder / "records.jsonl", records)
    return folder


def test_winrate_compares_final_answers_on_shared_prompts(tmp_path: Path, stub: StubServer) -> None:
    prompts = [f"Prompt {index}?" for index in range(8)]
    a = write_generate_output(tmp_path / "loop", {p: [f"draft {p}", f"final loop answer to {p}"] for p in prompts})
    baseline = write_lines(tmp_path / "single.jsonl", [{"instruction": p, "output": f"single answer to {p}"}
                                                       for p in prompts[:6]])
    output = tmp_path / "winrate"
    # The scores as written, which `stub_winner` computes (with expected scores, no two answers tie).
    result = runner.invoke(app, ["winrate", "--a", str(a), "--b", str(baseline), "--judge",
                                 f"compat:stub@{stub.base_url}", "--output", str(output), "--scoring", "parsed"])
    assert result.exit_code == 0, result.output
    figures = json.loads((output / "winrate.json").read_text())
    expected = [stub_winner(f"final loop answer to {p}", f"single answer to {p}") for p in prompts[:6]]
    assert figures["n"] == 6
    assert (figures["wins"], figures["ties"], figures["losses"]) == (
        expected.count("A"), expected.count("tie"), expected.count("B"))
    assert figures["win_rate"] == pytest.approx(expected.count("A") / 6)
    assert figures["win_rate_half_ties"] == pytest.approx((expected.count("A") + expected.count("tie") / 2) / 6)
    assert (output / "winrate.png").exists() and "win rate" in (output / "report.md").read_text()
    assert "<h2>Result</h2><table>" in (output / "report.html").read_text()
    assert "only in A: 2" in result.output


def test_chart_draws_an_interval_that_misses_its_point(tmp_path: Path) -> None:
    from tools.meta_eval.reports import interval_bars, kappa_chart
    from tools.meta_eval.scores import EvaluatorScore

    # Seen on two items: the bootstrap interval [0, 0] lies above a point estimate of -0.5.
    row = EvaluatorScore(name="tiny", n=2, kappa=-0.5, kappa_low=0.0, kappa_high=0.0, agreement=0.0,
                         unparsed_rate=0.0, position_consistency=None, p_first=None, p_longer=None)
    assert interval_bars([(-0.5, 0.0, 0.0), (0.2, 0.1, 0.4)]) == [[0.0, pytest.approx(0.1)],
                                                                  [0.5, pytest.approx(0.2)]]
    assert kappa_chart([row], tmp_path / "k.png", "tiny").stat().st_size > 1000
