"""The LLM Feedback Loop as a graph (SPEC.md section 3).

The generator answers; each reviewer (one, or several in parallel branches) scores the answer and gives
feedback; the generator rewrites from all feedback in its own running conversation; repeat until N
answers exist or, with a stop score, every reviewer is satisfied. Every answer and review is kept.

    START -> generate -(route_after_answer)-> END | review x reviewers -> gather_feedback
    gather_feedback -(route_after_feedback)-> generate | END
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from agents.writers import opening_messages, review_answer, revision_request, write_answer
from graphs.context import GenerationContext
from tools.items import prompt_text


class LoopState(TypedDict, total=False):
    prompt_id: str
    prompt: Any
    # The generator's own conversation, as {role, content} dicts; replaced whole by each node.
    conversation: list[dict[str, str]]
    answers: Annotated[list[dict[str, Any]], operator.add]
    reviews: Annotated[list[dict[str, Any]], operator.add]


class LoopInput(TypedDict):
    prompt_id: str
    prompt: Any


class ReviewTask(TypedDict):
    prompt_id: str
    prompt: Any
    iteration: int
    answer: str
    seat: int


_KINDS = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def _to_messages(conversation: list[dict[str, str]]) -> list[BaseMessage]:
    return [_KINDS[message["role"]](content=message["content"]) for message in conversation]


def _to_dicts(messages: list[BaseMessage]) -> list[dict[str, str]]:
    return [{"role": _ROLES[message.type], "content": str(message.content)} for message in messages]


async def generate(state: LoopState, runtime: Runtime[GenerationContext]) -> dict[str, Any]:
    context = runtime.context
    conversation = state.get("conversation") or _to_dicts(opening_messages(state["prompt"]))
    iteration = len(state.get("answers", [])) + 1
    exchange = await write_answer(
        context.model_source.chat_model(context.generator),
        model_spec=context.generator,
        conversation=_to_messages(conversation),
        iteration=iteration,
        metadata={"item_id": state["prompt_id"], "role": "Generator", "round": iteration},
    )
    answer = {"iteration": iteration, "text": exchange.text, "exchange": exchange.model_dump()}
    return {
        "answers": [answer],
        "conversation": [*conversation, {"role": "assistant", "content": exchange.text}],
    }


def _latest_reviews(state: LoopState) -> list[dict[str, Any]]:
    iteration = len(state.get("answers", []))
    return [review for review in state.get("reviews", []) if review["iteration"] == iteration]


def route_after_answer(state: LoopState, runtime: Runtime[GenerationContext]) -> str | list[Send]:
    """Stop at N answers; otherwise one review branch per reviewer seat."""
    answers = state.get("answers", [])
    if len(answers) >= runtime.context.iterations:
        return END
    latest = answers[-1]
    return [
        Send("review", ReviewTask(
            prompt_id=state["prompt_id"], prompt=state["prompt"], iteration=latest["iteration"],
            answer=latest["text"], seat=seat,
        ))
        for seat in range(len(runtime.context.reviewers))
    ]


async def review(task: ReviewTask, runtime: Runtime[GenerationContext]) -> dict[str, Any]:
    context = runtime.context
    spec = context.reviewers[task["seat"]]
    score, feedback, exchange = await review_answer(
        context.model_source.chat_model(spec),
        model_spec=spec,
        question=prompt_text(task["prompt"]),
        answer=task["answer"],
        json_mode=context.model_source.json_mode(spec),
        role=f"reviewer-{task['seat'] + 1}/iteration-{task['iteration']}",
        metadata={"item_id": task["prompt_id"], "role": f"Reviewer {task['seat'] + 1}", "round": task["iteration"]},
    )
    entry = {
        "iteration": task["iteration"],
        "seat": task["seat"],
        "model": spec,
        "score": score,
        "feedback": feedback,
        "exchange": exchange.model_dump(),
    }
    return {"reviews": [entry]}


def gather_feedback(state: LoopState, runtime: Runtime[GenerationContext]) -> dict[str, Any]:
    """Hand every reviewer's feedback to the generator as its next turn (labelled if several)."""
    latest = sorted(_latest_reviews(state), key=lambda entry: entry["seat"])
    several = len(latest) > 1
    feedbacks = [
        {"label": f"Reviewer {entry['seat'] + 1}" if several else "the reviewer", "text": entry["feedback"]}
        for entry in latest
    ]
    request = revision_request(feedbacks)
    return {"conversation": [*state["conversation"], {"role": "user", "content": str(request.content)}]}


def route_after_feedback(state: LoopState, runtime: Runtime[GenerationContext]) -> str:
    """With a stop score, end once every reviewer's parsed score of the latest answer reaches it."""
    threshold = runtime.context.stop_score
    latest = _latest_reviews(state)
    if threshold is not None and latest and all(
        entry["score"] is not None and entry["score"] >= threshold for entry in latest
    ):
        return END
    return "generate"


def build_feedback_loop_graph() -> StateGraph[Any, Any, Any, Any]:
    builder = StateGraph(LoopState, context_schema=GenerationContext, input_schema=LoopInput)
    builder.add_node("generate", generate)
    builder.add_node("review", review)
    builder.add_node("gather_feedback", gather_feedback)
    builder.add_edge(START, "generate")
    builder.add_conditional_edges("generate", route_after_answer, ["review", END])
    builder.add_edge("review", "gather_feedback")
    builder.add_conditional_edges("gather_feedback", route_after_feedback, ["generate", END])
    return builder


graph = build_feedback_loop_graph().compile(name="feedback_loop")
