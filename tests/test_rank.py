"""`fellowship rank`: Bradley-Terry ratings with bootstrap intervals and a length control (tools/meta_eval/ratings.py),
and the command against the stub judge: battles cached by what they compare.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tools.cli import app
from tools.dev.stub_server import StubServer
from tools.meta_eval.ratings import ELO_PER_LOGIT, PRIOR_C, Battle, fit_coefficients, rate

runner = CliRunner()
STRENGTHS = {"weak": -0.5, "plain": 0.0, "good": 0.7, "best": 1.5}


def simulated_battles(prompts: int, seed: int = 1) -> list[Battle]:
    generator = np.random.default_rng(seed)
    battles = []
    for prompt in range(prompts):
        for first, second in itertools.combinations(STRENGTHS, 2):
            p_first = 1 / (1 + np.exp(-(STRENGTHS[first] - STRENGTHS[second])))
            roll = generator.random()
            winner = "tie" if abs(roll - p_first) < 0.03 else ("A" if roll < p_first else "B")
            battles.append(Battle(first, second, winner, f"p{prompt}"))
    return battles


def newton_fit(battles: list[Battle], sides: list[str]) -> np.ndarray:
    """The same objective fitted by hand: ||beta||^2 / 2 + C * weighted log-loss, a tie two rows of weight 1/2."""
    rows, outcomes, weights = [], [], []
    for battle in battles:
        row = np.zeros(len(sides))
        row[sides.index(battle.first)], row[sides.index(battle.second)] = 1.0, -1.0
        for outcome, weight in ([(1, 0.5), (0, 0.5)] if battle.winner == "tie"
                                else [(int(battle.winner == "A"), 1.0)]):
            rows.append(row)
            outcomes.append(outcome)
            weights.append(weight)
    x, y, w = np.array(rows), np.array(outcomes), np.array(weights)
    beta = np.zeros(len(sides))
    for _ in range(50):
        p = 1 / (1 + np.exp(-x @ beta))
        gradient = beta + PRIOR_C * x.T @ (w * (p - y))
        hessian = np.eye(len(sides)) + PRIOR_C * (x.T * (w * p * (1 - p))) @ x
        beta -= np.linalg.solve(hessian, gradient)
    return beta


def test_ratings_recover_the_strengths_order_and_equal_a_hand_fitted_regression() -> None:
    battles = simulated_battles(300)
    sides = sorted(STRENGTHS)
    assert np.allclose(fit_coefficients(battles, sides), newton_fit(battles, sides), atol=1e-6)
    ratings = rate(battles, rounds=30)
    assert [row.side for row in ratings.sides] == sorted(STRENGTHS, key=lambda side: -STRENGTHS[side])
    assert np.mean([row.rating for row in ratings.sides]) == pytest.approx(1000)
    for row in ratings.sides:
        assert row.low <= row.rating <= row.high
        assert row.battles == 900 and row.wins + row.ties + row.losses == 900
    best, weak = ratings.sides[0], ratings.sides[-1]
    assert best.rating - weak.rating == pytest.approx(2.0 * ELO_PER_LOGIT, rel=0.15)


def test_a_baseline_sits_at_1000_and_one_sided_records_stay_finite() -> None:
    battles = [Battle("champion", "base", "A", f"p{index}") for index in range(20)]
    ratings = rate(battles, baseline="base", rounds=10)
    by_side = {row.side: row for row in ratings.sides}
    assert by_side["base"].rating == pytest.approx(1000)
    assert 1000 < by_side["champion"].rating < 1000 + 12 * ELO_PER_LOGIT


def test_style_control_takes_away_wins_that_came_from_length_alone() -> None:
    # Two sides of equal quality whose battles the longer answer wins, and a verbose side that is always longer.
    generator = np.random.default_rng(3)
    battles = []
    for prompt in range(200):
        first_length, second_length = (int(value) for value in generator.integers(50, 400, size=2))
        winner = "A" if first_length > second_length else "B"
        battles.append(Battle("left", "right", winner, f"p{prompt}", first_length, second_length))
        for other in ("left", "right"):
            verbose_wins = generator.random() < 0.8
            battles.append(Battle("verbose", other, "A" if verbose_wins else "B", f"p{prompt}", 900, 200))
    plain = {row.side: row.rating for row in rate(battles, rounds=10).sides}
    controlled = rate(battles, style=True, rounds=10)
    adjusted = {row.side: row.rating for row in controlled.sides}
    assert plain["verbose"] - plain["left"] > 150
    assert adjusted["verbose"] - adjusted["left"] < (plain["verbose"] - plain["left"]) / 2
    assert controlled.style_coefficient is not None and controlled.style_coefficient > 0
    assert controlled.style_low is not None and controlled.style_low > 0


def write_side(path: Path, style: str, prompts: int = 12) -> Path:
    path.write_text("".join(json.dumps({"instruction": f"Prompt {index}?", "output": style.format(index=index)}) + "\n"
                            for index in range(prompts)))
    return path


def test_rank_on_the_stub_judge_and_a_rerun_with_one_more_side_pays_only_for_its_battles(
    tmp_path: Path, stub: StubServer
) -> None:
    sides = [f"{name}={write_side(tmp_path / f'{name}.jsonl', style)}" for name, style in
             (("terse", "Answer {index}."), ("plain", "The answer to prompt {index} is this."),
              ("rich", "For prompt {index}: the answer, a reason and an example."))]
    judge = ["--judge", f"compat:stub@{stub.base_url}", "--output", str(tmp_path / "rank"), "--rounds", "20"]
    first = runner.invoke(app, ["rank", *[arg for side in sides[:2] for arg in ("--side", side)], *judge])
    assert first.exit_code == 0, first.output
    calls_two_sides = stub.stats.completions
    assert calls_two_sides == 12  # one pair, twelve prompts, one combined-scoring call each
    second = runner.invoke(app, ["rank", *[arg for side in sides for arg in ("--side", side)], *judge])
    assert second.exit_code == 0, second.output
    assert stub.stats.completions - calls_two_sides == 24  # only the two new pairs' battles
    figures = json.loads((tmp_path / "rank" / "ratings.json").read_text())
    assert sorted(row["side"] for row in figures["sides"]) == ["plain", "rich", "terse"]
    assert all(row["battles"] == 24 for row in figures["sides"])
    assert "rank" in second.output and "95% CI" in second.output
    assert (tmp_path / "rank" / "ratings.png").exists() and (tmp_path / "rank" / "report.html").exists()
    baseline = runner.invoke(app, ["rank", *[arg for side in sides for arg in ("--side", side)], *judge,
                                   "--baseline", "terse"])
    assert baseline.exit_code == 0, baseline.output
    assert stub.stats.completions - calls_two_sides == 24  # every battle against the baseline was judged already
    rows = {row["side"]: row for row in json.loads((tmp_path / "rank" / "ratings.json").read_text())["sides"]}
    assert rows["terse"]["rating"] == pytest.approx(1000) and rows["terse"]["battles"] == 24


@pytest.mark.parametrize(("args", "message"), [
    (["--side", "only=x.jsonl"], "--side: give at least two sides to rank"),
    (["--side", "a=x.jsonl", "--side", "b"], "--side 'b': expected NAME=PATH"),
    (["--side", "a=x.jsonl", "--side", "a=y.jsonl"], "--side 'a=y.jsonl': the name 'a' is given twice"),
    (["--side", "a=x.jsonl", "--side", "b=y.jsonl", "--baseline", "c"], "--baseline 'c': not one of the sides (a, b)"),
])
def test_bad_sides_are_refused_in_one_line(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["rank", *args])
    assert result.exit_code == 1
    assert message in result.output


def test_rank_judges_its_battles_by_criteria_in_a_cache_of_their_own(tmp_path: Path, stub: StubServer) -> None:
    criteria = tmp_path / "criteria.yaml"
    criteria.write_text("- {name: clarity, description: easy to follow, weight: 2}\n"
                        "- {name: accuracy, description: correct}\n")
    sides = [f"{name}={write_side(tmp_path / f'{name}.jsonl', style)}" for name, style in
             (("terse", "Answer {index}."), ("plain", "The answer to prompt {index} is this."))]
    args = ["rank", *[arg for side in sides for arg in ("--side", side)], "--judge", f"compat:stub@{stub.base_url}",
            "--output", str(tmp_path / "rank"), "--rounds", "20"]
    plain = runner.invoke(app, args)
    assert plain.exit_code == 0, plain.output
    by_criteria = runner.invoke(app, [*args, "--criteria", str(criteria)])
    assert by_criteria.exit_code == 0, by_criteria.output
    caches = sorted((tmp_path / "rank").glob("battles-*.jsonl"))
    assert len(caches) == 2  # the criteria are part of what names the cache
    scored = [[json.loads(line) for line in cache.read_text().splitlines()] for cache in caches]
    assert sorted(all("criteria_scores" in verdict for verdict in verdicts) for verdicts in scored) == [False, True]
