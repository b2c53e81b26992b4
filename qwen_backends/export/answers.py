"""Asking an exported model a trained question the way it was trained, and comparing answers.

A fine-tuning conversation (:class:`~qwen_backends.finetune.data.Chat`) carries its ``tools``;
training rendered them into the prompt, so the export checks (GGUF in llama.cpp, MLX) ask with
them too, and compare the answer's text *and* its tool calls: a trained ``<tool_call>`` answer
comes back as :attr:`~qwen_backends.backends.base.Generation.tool_calls`, not as text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qwen_backends.backends.base import ModelBackend
    from qwen_backends.results import Generation, ToolCall

__all__ = ["Answer", "ask", "conversation_tools"]


def conversation_tools(conversation: Sequence[Any]) -> list[dict[str, Any]] | None:
    """The tools a fine-tuning conversation was trained with, or ``None`` (a plain list)."""
    tools = list(getattr(conversation, "tools", ()))
    return tools or None


@dataclass(frozen=True)
class Answer:
    """An answer reduced to what a check compares: text, tool calls, and whether it ended.

    Attributes
    ----------
    text
        The visible text, stripped.
    calls
        ``(name, arguments as sorted JSON)`` per tool call, in order.
    finished
        Whether the turn ended (end-of-turn token or tool calls), not ``max_new_tokens``.
    """

    text: str
    calls: tuple[tuple[str, str], ...] = ()
    finished: bool = True

    @classmethod
    def of(cls, generation: Generation) -> Answer:
        """What ``generation`` answered."""
        return cls(
            generation.text.strip(),
            _calls(generation.tool_calls),
            generation.finish_reason in ("stop", "tool_calls"),
        )

    @classmethod
    def trained(cls, answer: str, *, tools: bool) -> Answer:
        """The trained ``answer`` text (with ``<tool_call>`` blocks when ``tools``) as an Answer."""
        if not tools:
            return cls(answer.strip())
        from qwen_backends.tools import parse_tool_calls

        text, calls = parse_tool_calls(answer)
        return cls(text.strip(), _calls(calls))

    def matches(self, expected: Answer) -> bool:
        """The same text and calls as ``expected``, and a finished turn."""
        return self.finished and (self.text, self.calls) == (expected.text, expected.calls)

    def shown(self) -> str:
        """One readable line: the text, then each call as ``name(arguments)``."""
        parts = [self.text] if self.text else []
        parts += [f"{name}({arguments})" for name, arguments in self.calls]
        return " ".join(parts)


def ask(backend: ModelBackend, conversation: Sequence[Any], max_new_tokens: int) -> Answer:
    """Ask ``conversation`` greedily with its trained tools (see :func:`conversation_tools`)."""
    from qwen_backends.sampling import SamplingParams

    greedy = SamplingParams.preset("greedy", max_new_tokens=max_new_tokens)
    generation = backend.generate(
        list(conversation), greedy, tools=conversation_tools(conversation)
    )
    return Answer.of(generation)


def _calls(calls: Sequence[ToolCall]) -> tuple[tuple[str, str], ...]:
    return tuple((call.name, json.dumps(call.arguments, sort_keys=True)) for call in calls)
