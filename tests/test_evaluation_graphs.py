"""Judge, jury and debate graphs driven by scripted fake models: message sequences, verdicts, ties."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult
from langgraph.runtime import Runtime
from pydantic import Field

from agents.roles import DEFAULT_ROLES, RefereeRole
from graphs.context import EvaluationContext
from graphs.debate import build_debate_graph
from graphs.evaluation import evaluate_items, evaluation_graph
from graphs.judge import judge_in_one_step
from graphs.jury import route_jurors
from tests.fakes import FakeModelSource, ScriptedChatModel, last_user_text
from tools.inputs.items import EvalItem

ITEM = EvalItem(id="q1", prompt="What is 2+2?", responses=["It is 4.", "It is 5."])


def prefer_answer(correct: str, low: int = 3, high: int = 9) -> ScriptedChatModel:
    """A judge that scores whichever slot holds `correct` high, wherever it is shown."""

    def respond(messages: list[BaseMessage]) -> str:
        text = last_user_text(messages)
        blocks = dict(re.findall(r"Start of Assistant (\w+)'s Answer\]\n(.*?)\n\[The End", text, re.S))
        lines = [
            f"### Score Assistant {label}: {high if body == correct else low}/10" for label, body in blocks.items()
        ]
        return "### Evaluation Evidence: checked the sum.\n" + "\n".join(lines)

    return ScriptedChatModel(respond)


async def run(
    method: str, context: EvaluationContext, model_source: FakeModelSource, item: EvalItem = ITEM, **kwargs: object
) -> dict:
    [verdict] = await evaluate_items(
        [item], method=method, context=context, model_source=model_source, **kwargs  # type: ignore[arg-type]
    )
    return verdict


async def test_judge_combined_scores_and_winner() -> None:
    model = prefer_answer("It is 4.")
    source = FakeModelSource({"fake:judge": model})
    context = EvaluationContext(models=["fake:judge"])
    verdict = await run("judge", context, source)
    assert verdict["scores"] == [9.0, 3.0]
    assert verdict["winner"] == "A"
    assert verdict["parse_ok"] is True
    assert len(model.calls) == 1
    assert verdict["exchanges"][0]["text"].startswith("### Evaluation Evidence")
    assert verdict["usage"] == {"input_tokens": 10, "output_tokens": 5, "calls": 1, "cached_calls": 0,
                                "rate_limited": 0, "rate_waited_s": 0.0}


async def test_judge_follow_up_once_in_same_conversation() -> None:
    model = ScriptedChatModel(["I like the first.", "### Score Assistant A: 7/10\n### Score Assistant B: 2/10"])
    source = FakeModelSource({"m": model})
    context = EvaluationContext(models=["m"])
    verdict = await run("judge", context, source)
    assert verdict["winner"] == "A"
    second_call = model.calls[1]["messages"]
    assert [message.type for message in second_call] == ["system", "human", "ai", "human"]
    assert second_call[2].content == "I like the first."
    assert "### Score Assistant A: X/10" in second_call[3].content
    exchange = verdict["exchanges"][0]
    assert exchange["text"] == "I like the first." and exchange["followup_text"].startswith("### Score")


async def test_judge_unparsable_is_recorded_not_scored() -> None:
    model = ScriptedChatModel(["No idea.", "Still no idea."])
    source = FakeModelSource({"m": model})
    context = EvaluationContext(models=["m"])
    verdict = await run("judge", context, source)
    assert verdict["winner"] is None
    assert verdict["parse_ok"] is False
    assert verdict["scores"] == [None, None]
    assert verdict["exchanges"][0]["followup_text"] == "Still no idea."
    assert len(model.calls) == 2


async def test_judge_direct_strategy() -> None:
    model = ScriptedChatModel(["A is right.\n### Answer: A"])
    source = FakeModelSource({"m": model})
    context = EvaluationContext(models=["m"], strategy="direct")
    verdict = await run("judge", context, source)
    assert verdict["winner"] == "A"
    assert verdict["scale"] is None


async def test_judge_independent_scores_each_answer_alone() -> None:
    def respond(messages: list[BaseMessage]) -> str:
        text = last_user_text(messages)
        assert text.count("[The Start of the Assistant's Answer]") == 1
        return "### Overall Score: 8/10" if "It is 4." in text else "### Overall Score: 2/10"

    model = ScriptedChatModel(respond)
    source = FakeModelSource({"m": model})
    context = EvaluationContext(models=["m"], strategy="independent")
    verdict = await run("judge", context, source)
    assert verdict["scores"] == [8.0, 2.0]
    assert verdict["winner"] == "A"
    assert len(model.calls) == 2


async def test_swap_consistent_judge_keeps_verdict() -> None:
    model = prefer_answer("It is 4.")
    source = FakeModelSource({"m": model})
    context = EvaluationContext(models=["m"], swap=True)
    verdict = await run("judge", context, source)
    assert len(model.calls) == 2
    assert verdict["order_winners"] == ["A", "A"]
    assert verdict["winner"] == "A"
    assert verdict["swapped"] is True


async def test_swap_position_biased_judge_becomes_tie() -> None:
    model = ScriptedChatModel(lambda _: "### Score Assistant A: 9/10\n### Score Assistant B: 4/10")
    source = FakeModelSource({"m": model})
    context = EvaluationContext(models=["m"], swap=True)
    verdict = await run("judge", context, source)
    assert verdict["order_winners"] == ["A", "B"]
    assert verdict["winner"] == "tie"


def without_timing(verdict: dict) -> dict:
    """A verdict without what depends on the clock (latencies)."""
    kept = {key: value for key, value in verdict.items() if key not in ("latency_s", "exchanges")}
    kept["exchanges"] = [{key: value for key, value in exchange.items() if key != "latency_s"}
                         for exchange in verdict["exchanges"]]
    return kept


@pytest.mark.parametrize("strategy,swap", [("combined", False), ("combined", True), ("direct", True),
                                           ("independent", False)])
async def test_the_pipelines_one_step_judge_gives_the_judge_graphs_verdict(strategy: str, swap: bool) -> None:
    def respond(messages: list[BaseMessage]) -> str:
        text = last_user_text(messages)
        if strategy == "direct":
            return "### Answer: A" if text.index("It is 4.") < text.index("It is 5.") else "### Answer: B"
        if strategy == "independent":
            return "### Overall Score: 8/10" if "It is 4." in text else "### Overall Score: 2/10"
        return prefer_answer("It is 4.").responder(messages)

    context = EvaluationContext(models=["m"], strategy=strategy, swap=swap)  # type: ignore[arg-type]
    graph_model, step_model = ScriptedChatModel(respond), ScriptedChatModel(respond)
    from_graph = await run("judge", context, FakeModelSource({"m": graph_model}))
    update = await judge_in_one_step({"item": ITEM.model_dump()}, Runtime(context=context),
                                     FakeModelSource({"m": step_model}))
    assert without_timing(update["verdict"]) == without_timing(from_graph)
    assert len(step_model.calls) == len(graph_model.calls) == (2 if swap or strategy == "independent" else 1)
    assert from_graph["winner"] == "A"


class OneOrderFails(ScriptedChatModel):
    """A judge whose call on the reversed order fails at once, while the forward one waits until cancelled."""

    cancelled: list[bool] = Field(default_factory=list)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: object = None, **kwargs: object) -> ChatResult:
        text = last_user_text(messages)
        if text.index("It is 4.") > text.index("It is 5."):  # the reversed order
            raise ValueError("the judge's endpoint broke")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append(True)
            raise
        raise AssertionError("unreachable")


async def test_the_one_step_judge_cancels_the_other_order_when_one_fails_and_raises_its_error() -> None:
    model = OneOrderFails(lambda _: "")
    context = EvaluationContext(models=["m"], swap=True)
    with pytest.raises(ValueError, match="endpoint broke"):
        await judge_in_one_step({"item": ITEM.model_dump()}, Runtime(context=context), FakeModelSource({"m": model}))
    await asyncio.sleep(0)  # the cancelled call runs its handler
    assert model.cancelled == [True]


async def test_route_jurors_one_send_per_seat_and_order() -> None:
    context = EvaluationContext(models=["x", "y", "x"], swap=True)
    sends = await route_jurors({"item": ITEM.model_dump()}, Runtime(context=context))
    assert [(send.node, send.arg["seat"], send.arg["model"], send.arg["reversed"]) for send in sends] == [
        ("juror", 0, "x", False), ("juror", 0, "x", True),
        ("juror", 1, "y", False), ("juror", 1, "y", True),
        ("juror", 2, "x", False), ("juror", 2, "x", True),
    ]


async def test_jury_plurality_with_tie_rule() -> None:
    source = FakeModelSource({
        "good": prefer_answer("It is 4."),
        "bad": prefer_answer("It is 5."),
        "even": ScriptedChatModel(lambda _: "### Score Assistant A: 5/10\n### Score Assistant B: 5/10"),
    })
    verdict = await run("jury", EvaluationContext(models=["good", "good", "bad"]), source)
    assert verdict["juror_votes"] == ["A", "A", "B"]
    assert verdict["winner"] == "A"
    verdict = await run("jury", EvaluationContext(models=["good", "bad", "even"]), source)
    assert verdict["juror_votes"] == ["A", "B", "tie"]
    assert verdict["winner"] == "tie"


async def test_jury_mean_rule() -> None:
    source = FakeModelSource({
        "mild": ScriptedChatModel(lambda _: "### Score Assistant A: 6/10\n### Score Assistant B: 5/10"),
        "strong": ScriptedChatModel(lambda _: "### Score Assistant A: 1/10\n### Score Assistant B: 9/10"),
    })
    context = EvaluationContext(models=["mild", "mild", "strong"], jury_rule="mean")
    verdict = await run("jury", context, source)
    assert verdict["scores"] == pytest.approx([13 / 3, 19 / 3])
    assert verdict["winner"] == "B"  # plurality would say A: two mild votes against one


def debate_model(transcript: list[str]) -> ScriptedChatModel:
    """Speaks as whichever role it is asked to be; logs the speaking order; scores when asked."""

    def respond(messages: list[BaseMessage]) -> str:
        text = last_user_text(messages)
        role = re.search(r"\[Your role: (.+?)\]", text).group(1)  # type: ignore[union-attr]
        if "The discussion is over" in text:
            return "### Score Assistant 1: 8/10\n### Score Assistant 2: 4/10"
        round_number = re.search(r"in round (\d+) of", text).group(1)  # type: ignore[union-attr]
        transcript.append(f"{role}@{round_number}")
        return f"{role} thinks answer 1 is right."

    return ScriptedChatModel(respond)


async def test_debate_order_rounds_and_scores() -> None:
    spoken: list[str] = []
    source = FakeModelSource({"m": debate_model(spoken)})
    context = EvaluationContext(models=["m"])
    verdict = await run("debate", context, source)
    assert spoken == [
        "General Public@1", "Psychologist@1", "Critic@1",
        "General Public@2", "Psychologist@2", "Critic@2",
    ]
    assert [(turn["speaker"], turn["round"]) for turn in verdict["transcript"]] == [
        ("General Public", 1), ("Psychologist", 1), ("Critic", 1),
        ("General Public", 2), ("Psychologist", 2), ("Critic", 2),
    ]
    assert verdict["scores"] == [8.0, 4.0]
    assert verdict["winner"] == "A"


async def test_debate_later_speaker_sees_earlier_turns() -> None:
    model = debate_model([])
    source = FakeModelSource({"m": model})
    context = EvaluationContext(models=["m"], rounds=1)
    await run("debate", context, source)
    prompts_sent = [last_user_text(call["messages"]) for call in model.calls]
    critic_prompt = next(text for text in prompts_sent if "[Your role: Critic]" in text and "turn to speak" in text)
    assert "General Public (round 1): General Public thinks answer 1 is right." in critic_prompt
    assert "Psychologist (round 1): Psychologist thinks answer 1 is right." in critic_prompt


async def test_debate_fourth_role_speaks_every_round() -> None:
    spoken: list[str] = []
    # A new role is one registry entry plus its own description file.
    description_file = Path(__file__).parent / "data" / "debate_role_ethicist.j2"
    ethicist = RefereeRole("ethicist", "Ethicist", prompt_path=description_file)
    roles = (*DEFAULT_ROLES, ethicist)
    model = debate_model(spoken)
    source = FakeModelSource({"m": model})
    context = EvaluationContext(models=["m"], rounds=3)
    verdict = await run("debate", context, source, roles=roles)
    assert [entry for entry in spoken if entry.startswith("Ethicist")] == ["Ethicist@1", "Ethicist@2", "Ethicist@3"]
    ethicist_prompts = [last_user_text(call["messages"]) for call in model.calls
                        if "[Your role: Ethicist]" in last_user_text(call["messages"])]
    assert ethicist_prompts and all("honest, fair and safe" in text for text in ethicist_prompts)
    assert len(spoken) == 12
    assert len(verdict["referee_scores"]) == 4
    assert "ethicist" in build_debate_graph(roles=roles).compile().get_graph().nodes


async def test_debate_unparsed_referee_left_out_of_mean() -> None:
    def respond(messages: list[BaseMessage]) -> str:
        opening_prompt = str(messages[1].content)  # the follow-up keeps the original request second
        if "The discussion is over" not in opening_prompt:
            return "ok"
        if "[Your role: Critic]" in opening_prompt:
            return "no scores from me"
        return "### Score Assistant 1: 6/10\n### Score Assistant 2: 8/10"

    model = ScriptedChatModel(respond)
    source = FakeModelSource({"m": model})
    context = EvaluationContext(models=["m"], rounds=1)
    verdict = await run("debate", context, source)
    critic = next(entry for entry in verdict["referee_scores"] if entry["role"] == "critic")
    assert critic["scores"] == [None, None]
    assert verdict["scores"] == [6.0, 8.0]
    assert verdict["winner"] == "B"
    assert verdict["parse_ok"] is False


async def test_provider_failure_is_recorded_and_run_goes_on() -> None:
    def explode(_: list[BaseMessage]) -> str:
        raise RuntimeError("upstream 503 after retries")

    judge = prefer_answer("It is 4.")

    def fails_on_hello(messages: list[BaseMessage]) -> str:
        if "Say hi" in last_user_text(messages):
            raise RuntimeError("upstream 503 after retries")
        return judge.responder(messages)

    source = FakeModelSource({"flaky": ScriptedChatModel(fails_on_hello)})
    items = [EvalItem(id="q2", prompt="Say hi", responses=["hi", "bye"]), ITEM]
    context = EvaluationContext(models=["flaky"])
    verdicts = await evaluate_items(items, method="judge", context=context, model_source=source, concurrency=1)
    assert [verdict["id"] for verdict in verdicts] == ["q2", "q1"]
    # The first item failed with its reason, and the run went on: the next one has its verdict.
    assert verdicts[0]["winner"] is None and "upstream 503" in verdicts[0]["error"]
    assert verdicts[1]["winner"] == "A" and not verdicts[1].get("error") and verdicts[1]["scores"] == [9.0, 3.0]


def test_graph_topologies() -> None:
    def edges(name: str) -> set[tuple[str, str, bool]]:
        drawable = evaluation_graph(name).get_graph()  # type: ignore[arg-type]
        return {(edge.source, edge.target, edge.conditional) for edge in drawable.edges}

    assert edges("judge") == {
        ("__start__", "compare", True),
        ("__start__", "score_alone", True),
        ("compare", "decide", False),
        ("score_alone", "decide", False),
        ("decide", "__end__", False),
    }
    assert edges("jury") == {
        ("__start__", "juror", True),
        ("juror", "aggregate_votes", False),
        ("aggregate_votes", "__end__", False),
    }
    assert edges("debate") == {
        ("__start__", "open_debate", False),
        ("open_debate", "general_public", False),
        ("general_public", "psychologist", False),
        ("psychologist", "critic", False),
        ("critic", "close_round", False),
        ("close_round", "general_public", True),
        ("close_round", "final_score", True),
        ("final_score", "aggregate_scores", False),
        ("aggregate_scores", "__end__", False),
    }
