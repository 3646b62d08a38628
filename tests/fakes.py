"""Scripted fake chat models for unit tests: each reply is computed from the messages it is sent."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

Responder = Callable[[list[BaseMessage]], str]


class ScriptedChatModel(BaseChatModel):
    """Answers with `responder(messages)`; records every call (messages and bound kwargs)."""

    responder: Any
    name_in_trace: str = "scripted"
    calls: list[dict[str, Any]] = Field(default_factory=list)

    def __init__(self, responder: Responder | Sequence[str], **kwargs: Any) -> None:
        if not callable(responder):
            replies = list(responder)
            position = {"next": 0}

            def replay(_: list[BaseMessage]) -> str:
                reply = replies[min(position["next"], len(replies) - 1)]
                position["next"] += 1
                return reply

            responder = replay
        super().__init__(responder=responder, **kwargs)

    @property
    def _llm_type(self) -> str:
        return "scripted-fake"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls.append({"messages": list(messages), "kwargs": kwargs})
        text = self.responder(list(messages))
        message = AIMessage(
            content=text,
            usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._generate(messages, stop, None, **kwargs)

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


class FakeModelSource:
    """A ModelSource that hands out scripted models by spec."""

    def __init__(self, models: dict[str, BaseChatModel], *, json_mode: bool = False) -> None:
        self.models = models
        self._json_mode = json_mode

    def chat_model(self, spec: str) -> BaseChatModel:
        return self.models[spec]

    def json_mode(self, spec: str) -> bool:
        return self._json_mode

    def expected_scores(self, spec: str) -> bool:
        return False  # scripted replies carry no token probabilities


def last_user_text(messages: list[BaseMessage]) -> str:
    return str(messages[-1].content)
