"""The LLM Feedback Loop as a graph (SPEC.md section 3).

The generator answers; each reviewer (one, or several in parallel branches) scores the answer and gives
feedback; the generator rewrites from all feedback in its own running conversation; repeat until N
answers exist or, with a stop score, every reviewer is satisfied. Every answer and review is kept.

    START -> generate -(route_after_answer)-> END | review x reviewers;  review -> generate

`generate` hands the reviewers' feedback to the generator itself (no superstep of its own: each step costs a
checkpoint and the loop's bookkeeping), and writes nothing when a stop score is reached, which
`route_after_answer` then ends on.

`add_feedback_loop` adds these nodes and edges to a graph under construction: this module's graph, where the
loop ends at END, and the pipeline's, where it goes on to the evaluator in the same graph (a subgraph there
cost a second graph loop and its checkpoints for every prompt).
"""

from __future__ import annotations

import operator
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Literal

from langchain_core.messages import AIMessage, AnyMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.runtime import Runtime
from langgraph.types import Send
from typing_extensions import TypedDict

from agents.models import ModelSource
from agents.writers import opening_messages, review_answer, revision_request, write_answer
from graphs.binding import bind_models, resolve_model_source
from graphs.context import GenerationContext
from graphs.state import Answer, Review
from tools.inputs.items import prompt_text


class LoopState(TypedDict, total=False):
    """What the feedback loop holds for one prompt."""

    prompt_id: str
    """The prompt's content-derived id."""
    prompt: Any
    """The prompt: a string, or a list of {role, content} messages ending with the user turn."""
    conversation: Annotated[list[AnyMessage], add_messages]
    """The generator's own conversation as LangChain messages; nodes return only the messages they add."""
    answers: Annotated[list[Answer], operator.add]
    """Every answer written, in order (r1, r2, ... rN)."""
    reviews: Annotated[list[Review], operator.add]
    """Every review of every answer; parallel reviewers each append their own."""


class LoopInput(TypedDict):
    """What the feedback loop (and the pipeline) is invoked with."""

    prompt_id: str
    prompt: Any


class ReviewTask(TypedDict):
    """A `review` branch: one reviewer seat reviewing the latest answer."""

    prompt_id: str
    prompt: Any
    iteration: int
    answer: str
    seat: int


async def generate(state: LoopState, runtime: Runtime[GenerationContext], models: ModelSource) -> dict[str, Any]:
    """The generator's next answer: to the request, or rewritten from the reviewers' feedback on its last one.

    With a stop score that every reviewer's score of the last answer reaches, it writes nothing: the loop ends.
    """
    context = runtime.context
    if state.get("answers") and reviewers_satisfied(state, context.stop_score):
        return {}
    # The first turn is the request; each later one is the reviewers' feedback on the last answer.
    turn = [feedback_request(state)] if state.get("conversation") else opening_messages(
        state["prompt"], context.prompt_templates.get("generator_system"))
    conversation = [*state.get("conversation", []), *turn]
    iteration = len(state.get("answers", [])) + 1
    exchange = await write_answer(
        models.chat_model(context.generator),
        model_spec=context.generator,
        conversation=conversation,
        iteration=iteration,
        metadata={"item_id": state["prompt_id"], "role": "Generator", "round": iteration},
    )
    answer: Answer = {"iteration": iteration, "text": exchange.text, "exchange": exchange.model_dump()}
    return {
        "answers": [answer],
        "conversation": [*turn, AIMessage(content=exchange.text)],
    }


def _latest_reviews(state: LoopState) -> list[Review]:
    iteration = len(state.get("answers", []))
    return [review for review in state.get("reviews", []) if review["iteration"] == iteration]


# LangGraph's END, as the type a router returns it as.
EndOfGraph = Literal["__end__"]
END_OF_GRAPH: EndOfGraph = "__end__"
assert END == END_OF_GRAPH
# Where a graph goes once its feedback loop is done: END, or the next node sent its item (the pipeline's evaluator).
LoopExit = Callable[[Any, Runtime[GenerationContext]], Awaitable[EndOfGraph | Send]]


async def end_loop(state: LoopState, runtime: Runtime[GenerationContext]) -> EndOfGraph:
    """The feedback loop graph's exit: END."""
    return END_OF_GRAPH


def loop_done(state: LoopState, context: GenerationContext) -> bool:
    """Whether the loop has N answers, or the reviewers are satisfied with the latest one."""
    return len(state.get("answers", [])) >= context.iterations or reviewers_satisfied(state, context.stop_score)


def review_branches(state: LoopState, context: GenerationContext) -> list[Send]:
    """One review branch per reviewer seat, on the latest answer."""
    latest = state["answers"][-1]
    return [
        Send("review", ReviewTask(
            prompt_id=state["prompt_id"], prompt=state["prompt"], iteration=latest["iteration"],
            answer=latest["text"], seat=seat,
        ))
        for seat in range(len(context.reviewers))
    ]


def router_after_answer(exit_loop: LoopExit) -> Callable[..., Awaitable[EndOfGraph | Send | list[Send]]]:
    """The conditional edge after `generate`: `exit_loop` once the loop is done, else the review branches."""

    async def route_after_answer(
        state: LoopState, runtime: Runtime[GenerationContext]
    ) -> EndOfGraph | Send | list[Send]:
        """Stop at N answers or once the reviewers are satisfied; otherwise one review branch per reviewer seat."""
        if loop_done(state, runtime.context):
            return await exit_loop(state, runtime)
        return review_branches(state, runtime.context)

    return route_after_answer


async def review(task: ReviewTask, runtime: Runtime[GenerationContext], models: ModelSource) -> dict[str, Any]:
    """One reviewer's score and feedback on the latest answer, in a fresh conversation."""
    context = runtime.context
    spec = context.reviewers[task["seat"]]
    score, feedback, exchange, by_criterion = await review_answer(
        models.chat_model(spec),
        model_spec=spec,
        question=prompt_text(task["prompt"]),
        answer=task["answer"],
        json_mode=models.json_mode(spec),
        expected=models.expected_scores(spec),
        run_name=f"reviewer-{task['seat'] + 1}/iteration-{task['iteration']}",
        metadata={"item_id": task["prompt_id"], "role": f"Reviewer {task['seat'] + 1}", "round": task["iteration"]},
        template=context.prompt_templates.get("reviewer"),
        criteria=context.criteria,
    )
    entry: Review = {
        "iteration": task["iteration"],
        "seat": task["seat"],
        "model": spec,
        "score": score,
        "feedback": feedback,
        "exchange": exchange.model_dump(),
    }
    if by_criterion is not None:
        entry["criteria_scores"] = by_criterion
    return {"reviews": [entry]}


def feedback_request(state: LoopState) -> AnyMessage:
    """Every reviewer's feedback on the latest answer as one user turn for the generator (labelled if several)."""
    latest = sorted(_latest_reviews(state), key=lambda entry: entry["seat"])
    several = len(latest) > 1
    feedbacks = [
        {"label": f"Reviewer {entry['seat'] + 1}" if several else "the reviewer", "text": entry["feedback"]}
        for entry in latest
    ]
    return revision_request(feedbacks)


def reviewers_satisfied(state: LoopState, threshold: float | None) -> bool:
    """With a stop score, whether every reviewer's parsed score of the latest answer reaches it."""
    latest = _latest_reviews(state)
    return threshold is not None and bool(latest) and all(
        entry["score"] is not None and entry["score"] >= threshold for entry in latest
    )


def add_feedback_loop(
    builder: StateGraph[Any, Any, Any, Any], models: ModelSource, *, exit_loop: LoopExit, exits: Sequence[str]
) -> None:
    """Add the loop's `generate` and `review` nodes to `builder`, entered from START.

    Once the loop is done, `exit_loop` says where the graph goes: one of `exits` (node names, or END).
    The builder's state must hold `LoopState`'s keys.
    """
    builder.add_node("generate", bind_models(generate, models))
    builder.add_node("review", bind_models(review, models), input_schema=ReviewTask)
    builder.add_edge(START, "generate")
    builder.add_conditional_edges("generate", router_after_answer(exit_loop), ["review", *exits])
    builder.add_edge("review", "generate")


def build_feedback_loop_graph(*, model_source: ModelSource | None = None) -> StateGraph[Any, Any, Any, Any]:
    """The uncompiled feedback loop; `model_source` as for `build_judge_graph`."""
    builder = StateGraph(LoopState, context_schema=GenerationContext, input_schema=LoopInput)
    add_feedback_loop(builder, resolve_model_source(model_source), exit_loop=end_loop, exits=[END])
    return builder


graph = build_feedback_loop_graph().compile(name="feedback_loop")
