"""People where the evaluators disagree: dispute rules, the audit sample, pausing, deciding and applying decisions,
and the labels measuring the run's own evaluator."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tools.cli import app
from tools.dev.stub_server import StubServer
from tools.rules.disputes import dispute_reasons, in_audit_sample, review_sample
from tools.rules.pairing import PairingRules, rank_by_person

runner = CliRunner()


def judge_verdict(scores: list[float | None], *, winner: str | None = "from scores", scale: int = 10,
                  orders: list[str | None] | None = None) -> dict[str, Any]:
    if winner == "from scores":
        values = [score for score in scores if score is not None]
        top = [index for index, score in enumerate(scores) if score == max(values)] if values else []
        winner = "ABCDEFGHIJ"[top[0]] if len(top) == 1 else ("tie" if top else None)
    return {"method": "judge", "strategy": "combined", "scale": scale, "scores": scores, "winner": winner,
            "swapped": orders is not None, "order_winners": orders or []}


# --- the dispute rules, one by one --------------------------------------------------------------------------

def test_a_judge_whose_two_orders_pick_different_answers_is_disputed() -> None:
    verdict = judge_verdict([6, 6], winner="tie", orders=["A", "B"])
    assert any("two answer orders" in reason for reason in dispute_reasons(verdict))
    agreeing = judge_verdict([9, 2], orders=["A", "A"])
    assert dispute_reasons(agreeing) == []


def test_a_judge_without_swap_is_disputed_when_its_top_two_scores_are_within_the_margin() -> None:
    assert dispute_reasons(judge_verdict([7, 8, 3])) == ["the top two scores are within 1 points"]
    assert dispute_reasons(judge_verdict([6, 8, 3])) == []
    assert dispute_reasons(judge_verdict([6, 8, 3]), margin=2) == ["the top two scores are within 2 points"]
    assert dispute_reasons(judge_verdict([8, 8, 3])) == ["the evaluator tied the top answers"]


def test_the_dispute_margin_scales_with_the_score_scale() -> None:
    # One point on 10 is half a point on 5 and ten points on 100.
    assert dispute_reasons(judge_verdict([4, 4.5], scale=5)) != []
    assert dispute_reasons(judge_verdict([4, 5], scale=5)) == []
    assert dispute_reasons(judge_verdict([80, 90], scale=100)) != []
    assert dispute_reasons(judge_verdict([79, 90], scale=100)) == []


def test_a_verdict_without_a_winner_is_disputed() -> None:
    assert dispute_reasons(judge_verdict([None, 7], winner=None)) == ["the evaluator gave no verdict"]


def test_a_jury_without_a_strict_majority_is_disputed() -> None:
    def jury(votes: list[str | None]) -> dict[str, Any]:
        return {"method": "jury", "scale": 10, "scores": [6, 5, 4], "winner": "A", "juror_votes": votes}

    assert dispute_reasons(jury(["A", "B"])) != []
    assert dispute_reasons(jury(["A", "B", "C"])) != []
    assert dispute_reasons(jury(["A", "A", None, "B"])) != []  # 2 of 4 is no strict majority
    assert dispute_reasons(jury(["A", "A", "B"])) == []
    assert dispute_reasons(jury(["B", "B"])) == []


def test_a_debate_is_disputed_when_its_referees_best_answers_differ_or_its_top_two_are_close() -> None:
    def debate(rows: list[list[float]], scores: list[float], winner: str) -> dict[str, Any]:
        return {"method": "debate", "scale": 10, "scores": scores, "winner": winner,
                "referee_scores": [{"seat": seat, "role": f"r{seat}", "scores": row} for seat, row in enumerate(rows)]}

    differ = debate([[9, 3], [4, 8], [9, 2]], [7.3, 4.3], "A")
    assert dispute_reasons(differ) == ["the referees' own best answers differ (A, B, A)"]
    close = debate([[8, 7], [8, 7], [9, 8]], [8.3, 7.3], "A")
    assert dispute_reasons(close) == ["the referees' mean scores of the top two are within 1 points"]
    tied_referee = debate([[8, 8], [9, 2], [9, 2]], [8.7, 4], "A")
    assert dispute_reasons(tied_referee) == ["the referees' own best answers differ (none, A, A)"]
    clear = debate([[9, 2], [8, 3], [9, 4]], [8.7, 3], "A")
    assert dispute_reasons(clear) == []


def test_one_answer_is_never_reviewed() -> None:
    single = {"method": "none", "scores": [None], "winner": "A"}
    assert review_sample("p", single, mode="all", audit_share=1.0) == (None, [])


# --- the audit sample ---------------------------------------------------------------------------------------

def test_the_audit_sample_is_drawn_by_prompt_id_alone_at_about_its_share() -> None:
    ids = [f"prompt-{number}" for number in range(4000)]
    drawn = [prompt_id for prompt_id in ids if in_audit_sample(prompt_id, 0.05)]
    assert 140 <= len(drawn) <= 260  # 200 expected; binomial sd about 14
    # The same ids, in any order and any number of times: the same draw.
    assert [prompt_id for prompt_id in reversed(ids) if in_audit_sample(prompt_id, 0.05)] == drawn[::-1]
    # A larger share keeps every prompt a smaller one drew (an extended audit grows, it does not reshuffle).
    assert set(drawn) <= {prompt_id for prompt_id in ids if in_audit_sample(prompt_id, 0.1)}


def test_an_audit_prompt_is_sampled_as_audit_even_when_disputed_and_without_review() -> None:
    audit_id = next(f"p{number}" for number in range(1000) if in_audit_sample(f"p{number}", 0.1))
    disputed = judge_verdict([8, 8])
    assert review_sample(audit_id, disputed, mode="disputed", audit_share=0.1)[0] == "audit"
    assert review_sample(audit_id, judge_verdict([9, 1]), mode="none", audit_share=0.1)[0] == "audit"
    other = next(f"p{number}" for number in range(1000) if not in_audit_sample(f"p{number}", 0.1))
    assert review_sample(other, disputed, mode="disputed", audit_share=0.1)[0] == "disputed"
    assert review_sample(other, judge_verdict([9, 1]), mode="disputed", audit_share=0.1)[0] is None
    assert review_sample(other, judge_verdict([9, 1]), mode="all", audit_share=0.1)[0] == "all"
    assert review_sample(other, disputed, mode="none")[0] is None


def split_by_audit(texts: list[str], share: float, audit: int, others: int) -> tuple[list[str], list[str]]:
    """`audit` prompts of `texts` that the audit draw at `share` takes, and `others` it leaves (for page tests)."""
    from tools.inputs.prompt_sets import prompt_id_for

    drawn = [text for text in texts if in_audit_sample(prompt_id_for(text), share)]
    left = [text for text in texts if not in_audit_sample(prompt_id_for(text), share)]
    return drawn[:audit], left[:others]


# --- rows from a person's decision -----------------------------------------------------------------------------

def test_a_persons_pick_makes_the_rows_whatever_the_scores_margin_and_pairing() -> None:
    texts = ["first", "second", "third"]
    scores = [9.0, 2.0, 5.0]  # the evaluator preferred A; the person B
    rest = rank_by_person(texts, scores, "B", None, PairingRules(min_margin=5))
    assert (rest.outcome, rest.chosen, rest.dpo) == ("decided_by_person", 1, [(1, 0), (1, 2)])
    assert rest.kto == [(1, True), (0, False), (2, False)]
    worst = rank_by_person(texts, scores, "B", "A", PairingRules(pairs="best-vs-worst"))
    assert worst.dpo == [(1, 0)] and worst.kto == [(1, True), (0, False)]
    # No worst given: the evaluator's lowest-scored other answer.
    assert rank_by_person(texts, scores, "A", None, PairingRules(pairs="best-vs-worst")).dpo == [(0, 1)]
    every = rank_by_person(texts, scores, "C", "A", PairingRules(pairs="all-pairs"))
    assert every.dpo == [(2, 0), (2, 1), (1, 0)]
    assert rank_by_person(texts, scores, None, None, PairingRules()).outcome == "none_acceptable"
    assert rank_by_person(["same", "same"], [1, 2], "A", None, PairingRules()).outcome == "identical_answers"


# --- the whole loop on the stub: pause, export, import, apply, measure --------------------------------------

def write_prompts(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Question number {index}: why is the sky blue?"}) + "\n"
                            for index in range(count)))
    return path


def generate_args(prompts: Path, output: Path, spec: str, *extra: str) -> list[str]:
    return ["generate", "--prompts", str(prompts), "--output", str(output), "--generator", spec, "--reviewer", spec,
            "--judge", spec, "--iterations", "3", "--scoring", "parsed", *extra]


def waiting_ids(output: Path) -> dict[str, str]:
    with sqlite3.connect(output / "review.sqlite") as database:
        return dict(database.execute("SELECT prompt_id, sample FROM waiting WHERE applied_at IS NULL"))


def done_records(output: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(output / "progress.sqlite") as database:
        rows = database.execute("SELECT prompt_id, record FROM prompts WHERE status = 'done'").fetchall()
    return {prompt_id: json.loads(record) for prompt_id, record in rows}


def test_a_run_pauses_exactly_the_disputed_and_audit_prompts_then_applies_decisions_without_a_call(
    tmp_path: Path, stub: StubServer,
) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 30)
    output = tmp_path / "run"
    args = generate_args(prompts, output, f"compat:stub@{stub.base_url}", "--review", "disputed",
                         "--audit-share", "0.1")
    first = runner.invoke(app, args)
    assert first.exit_code == 4, first.output
    waiting = waiting_ids(output)
    assert f"{len(waiting)} prompts wait for review: fellowship review {output}" in first.output

    # Which prompts should pause, by the rules written out here: a top-two gap of at most 1 point (ties included),
    # or the audit draw. The paused prompts' verdicts are in the review store, the others' in the run store.
    with sqlite3.connect(output / "review.sqlite") as database:
        paused_verdicts = {pid: json.loads(record)["verdict"] for pid, record in
                           database.execute("SELECT prompt_id, record FROM waiting")}
    verdicts = {**{pid: record["verdict"] for pid, record in done_records(output).items()}, **paused_verdicts}
    assert len(verdicts) == 30

    def close_top(scores: list[float]) -> bool:
        top = sorted(scores, reverse=True)
        return top[0] - top[1] <= 1

    expected = {pid for pid, verdict in verdicts.items()
                if close_top(verdict["scores"]) or in_audit_sample(pid, 0.1)}
    assert set(waiting) == expected and 0 < len(expected) < 30
    assert {sample for pid, sample in waiting.items() if in_audit_sample(pid, 0.1)} <= {"audit"}
    rows_before = (output / "dpo.jsonl").read_text().count("\n")
    card = (output / "README.md").read_text()
    assert f"prompts waiting for a person's decision (no rows yet): {len(waiting)}" in card

    # Export, decide by file (best the last answer, worst the first; one prompt with no acceptable answer).
    exported = tmp_path / "waiting.jsonl"
    assert runner.invoke(app, ["review", str(output), "--export", str(exported)]).exit_code == 0
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert {line["prompt_id"] for line in lines} == set(waiting)
    assert all(len(line["answers"]) == 3 and line["sample"] in ("audit", "disputed") for line in lines)
    none_id = lines[0]["prompt_id"]
    decisions = [{"prompt_id": none_id, "none": True, "reviewer": "ana"}] + [
        {"prompt_id": line["prompt_id"], "best": "C", "worst": "A", "reviewer": "ana", "note": "more complete"}
        for line in lines[1:]]
    decisions_file = tmp_path / "decisions.jsonl"
    decisions_file.write_text("".join(json.dumps(line) + "\n" for line in decisions))
    imported = runner.invoke(app, ["review", str(output), "--import", str(decisions_file)])
    assert imported.exit_code == 0, imported.output
    assert f"{len(decisions)} decisions taken" in imported.output

    requests_before = stub.stats.requests
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert stub.stats.requests == requests_before  # applying decisions makes no model call
    assert f"applied {len(waiting)} people's decisions without a model call" in second.output
    assert waiting_ids(output) == {}

    records = done_records(output)
    assert len(records) == 30
    for line in lines[1:]:
        record = records[line["prompt_id"]]
        assert record["human"]["best"] == "C" and record["human"]["reviewer"] == "ana"
        assert record["verdict"]["scores"] == verdicts[line["prompt_id"]]["scores"]  # the evaluator's, kept
    dpo = [json.loads(line) for line in (output / "dpo.jsonl").read_text().splitlines()]
    decided_rows = [row for row in dpo if row["prompt_id"] in {line["prompt_id"] for line in lines[1:]}]
    # The person's best against each other answer (best-vs-rest), the evaluator's scores overruled.
    assert all(row["chosen_iteration"] == 3 for row in decided_rows)
    assert len(decided_rows) == 2 * (len(lines) - 1)
    assert not [row for row in dpo if row["prompt_id"] == none_id]
    assert len(dpo) == rows_before + len(decided_rows)
    kto = [json.loads(line) for line in (output / "kto.jsonl").read_text().splitlines()]
    assert {(row["iteration"], row["label"]) for row in kto if row["prompt_id"] == lines[1]["prompt_id"]} == {
        (3, True), (1, False), (2, False)}
    assert f"prompts decided by people (`--review`): {len(waiting)}" in (output / "README.md").read_text()

    # human.jsonl: one benchmark item per decided prompt with a best answer, in the form meta-eval reads.
    human = [json.loads(line) for line in (output / "human.jsonl").read_text().splitlines()]
    assert len(human) == len(lines) - 1 and all(item["label"] == "C" for item in human)
    assert {item["sample"] for item in human} <= {"audit", "disputed"}

    # A decision on a prompt already applied is refused, naming the file and line.
    again = runner.invoke(app, ["review", str(output), "--import", str(decisions_file)])
    assert again.exit_code == 1
    assert again.output.strip() == (f"error: {decisions_file}:1: prompt_id {none_id!r} was already applied: its rows "
                                    "are made")


def test_the_runs_own_evaluator_is_scored_against_its_people_with_kappa_over_the_answer_letters(
    tmp_path: Path,
) -> None:
    """A fixed case computed by hand: six 3-answer prompts, the evaluator right on four."""
    human_labels = ["A", "B", "C", "C", "A", "B"]
    evaluator = ["A", "B", "C", "A", "A", "C"]
    samples = ["audit", "audit", "audit", "disputed", "disputed", "disputed"]
    human_path = tmp_path / "human.jsonl"
    human_path.write_text("".join(json.dumps({
        "id": f"p{index}", "prompt": [{"role": "user", "content": f"Q{index}"}], "responses": ["x", "yy", "zzz"],
        "label": label, "sample": sample}) + "\n" for index, (label, sample) in enumerate(zip(human_labels, samples,
                                                                                             strict=True))))
    records_path = tmp_path / "records.jsonl"
    records_path.write_text("".join(json.dumps({
        "prompt_id": f"p{index}", "prompt": [], "answers": [{"text": "x"}, {"text": "yy"}, {"text": "zzz"}],
        "verdict": {"id": f"p{index}", "method": "jury", "strategy": "combined/plurality", "scale": 10,
                    "models": ["m1", "m2"], "scores": [5, 5, 5], "winner": winner, "juror_votes": [winner, winner]},
    }) + "\n" for index, winner in enumerate(evaluator)))
    output = tmp_path / "scored"
    result = runner.invoke(app, ["meta-eval", "score", "--benchmark", str(human_path), "--verdicts",
                                 str(records_path), "--output", str(output)])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads((output / "scores.json").read_text())["rows"]}
    # By hand: agreement 4/6; human marginals A 2, B 2, C 2; evaluator A 3, B 1, C 2:
    # pe = (2*3 + 2*1 + 2*2) / 36 = 1/3; kappa = (2/3 - 1/3) / (1 - 1/3) = 0.5.
    overall = rows["jury combined/plurality m1 + m2"]
    assert overall["n"] == 6 and overall["agreement"] == pytest.approx(4 / 6)
    assert overall["kappa"] == pytest.approx(0.5)
    # Audit sample alone: all three right, kappa 1. Disputed: one of three right (A), human C, A, B vs A, A, C:
    # po = 1/3; pe = (1*2 + 1*0 + 1*1) / 9 = 1/3; kappa 0.
    assert rows["audit sample: jury combined/plurality m1 + m2"]["kappa"] == pytest.approx(1.0)
    assert rows["disputed sample: jury combined/plurality m1 + m2"]["kappa"] == pytest.approx(0.0)
    assert rows["audit sample: jury combined/plurality m1 + m2"]["n"] == 3


def decide_all(output: Path, tmp_path: Path, best: str = "B") -> None:
    exported = tmp_path / f"{output.name}-waiting.jsonl"
    assert runner.invoke(app, ["review", str(output), "--export", str(exported)]).exit_code == 0
    decisions = tmp_path / f"{output.name}-decisions.jsonl"
    decisions.write_text("".join(json.dumps({"prompt_id": json.loads(line)["prompt_id"], "best": best}) + "\n"
                                 for line in exported.read_text().splitlines()))
    result = runner.invoke(app, ["review", str(output), "--import", str(decisions)])
    assert result.exit_code == 0, result.output


def test_paused_prompts_survive_sigkill_with_the_same_audit_sample_and_are_not_paid_twice(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from tools.dev.stub_server import StubSettings

    server = StubServer(StubSettings(latency_s=0.1, max_concurrent=4)).start_in_thread()
    try:
        prompts = write_prompts(tmp_path / "prompts.jsonl", 14)
        spec = f"compat:stub@{server.base_url}"
        args = generate_args(prompts, tmp_path / "reference", spec, "--review", "all", "--audit-share", "0.3",
                             "-c", "2")
        assert runner.invoke(app, args).exit_code == 4
        reference_waiting = waiting_ids(tmp_path / "reference")
        uninterrupted_calls = server.stats.completions
        assert len(reference_waiting) == 14 and "audit" in reference_waiting.values()

        killed = tmp_path / "killed"
        command = [sys.executable, "-m", "tools.cli",
                   *generate_args(prompts, killed, spec, "--review", "all", "--audit-share", "0.3", "-c", "2")]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        paused = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and paused < 4:
            time.sleep(0.05)
            try:
                paused = len(waiting_ids(killed))
            except sqlite3.Error:
                continue
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        assert 4 <= paused < 14, f"the kill landed at {paused} paused prompts"
        before_resume = server.stats.completions
        resumed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert resumed.returncode == 4, resumed.stderr
        # The same prompts wait, in the same samples, as in the run that was never killed.
        assert waiting_ids(killed) == reference_waiting
        # Prompts paused before the kill were not run again: the resumed run cost what the rest needed.
        assert server.stats.completions - before_resume < uninterrupted_calls * (14 - paused + 2) / 14

        for output in (tmp_path / "reference", killed):
            decide_all(output, tmp_path)
            requests = server.stats.requests
            applied = runner.invoke(app, generate_args(prompts, output, spec, "--review", "all", "--audit-share",
                                                       "0.3", "-c", "2"))
            assert applied.exit_code == 0, applied.output
            assert server.stats.requests == requests
        for name in ("dpo.jsonl", "kto.jsonl", "human.jsonl"):
            assert (killed / name).read_text() == (tmp_path / "reference" / name).read_text()
    finally:
        server.stop()
