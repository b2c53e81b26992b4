"""The one place that turns a conversation into a Qwen3 NON-THINKING prompt.

Data path: ``messages`` --:func:`validate_messages`--> clean list --:func:`render_prompt`-->
non-thinking prompt --backend--> raw text --:mod:`qwen_backends.thinking`--> what the caller sees.

The tokenizer's own chat template does the rendering (never a hand-written copy of Qwen3's
template); this module only guarantees that it is called with ``enable_thinking=False`` and that
the template is one of the two non-thinking kinds (:func:`qwen_backends.thinking.template_mode`):
the hybrid Qwen3-4B's prompt ends with the empty think block, Qwen3-4B-Instruct-2507's at
``<|im_start|>assistant\n``; a thinking-only template is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from qwen_backends.errors import InvalidMessagesError
from qwen_backends.thinking import (
    check_generation_prompt,
    reject_thinking,
    strip_thinking,
    template_mode,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "Conversation",
    "Message",
    "render_prompt",
    "render_prompt_ids",
    "validate_messages",
]

ROLES = ("system", "user", "assistant", "tool")
_ALLOWED_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})
#: Reasoning kept by some clients in history; Qwen3 must not see its own thinking again.
_THINKING_KEYS = frozenset({"thinking", "reasoning_content", "reasoning"})

Message = dict[str, Any]
#: A conversation: a list of ``{"role", "content"}`` dicts, or a bare string (one user turn).
Conversation = str | Sequence[Mapping[str, Any]]


def validate_messages(messages: Conversation) -> list[Message]:
    """Check a conversation and return a clean copy ready for a chat template.

    Rules: at least one message; each a mapping with ``role`` in system/user/assistant/tool and
    non-empty string ``content``; the last turn from ``user`` or ``tool``. Thinking is removed
    from assistant history (``<think>`` blocks and ``thinking``/``reasoning_content`` fields).

    Raises
    ------
    InvalidMessagesError
        With the index of the offending message and how to fix it.
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if isinstance(messages, Mapping) or not isinstance(messages, Sequence):
        raise InvalidMessagesError(
            f"messages must be a list of {{'role', 'content'}} dicts or a string, "
            f"got {type(messages).__name__}"
        )
    if not messages:
        raise InvalidMessagesError("messages is empty; pass at least one user message")
    clean: list[Message] = []
    for index, message in enumerate(messages):
        where = f"message {index}"
        if not isinstance(message, Mapping):
            raise InvalidMessagesError(
                f"{where} is a {type(message).__name__}; each message must be a dict "
                "with 'role' and 'content'"
            )
        role = message.get("role")
        if role not in ROLES:
            raise InvalidMessagesError(f"{where} has role {role!r}; use one of {', '.join(ROLES)}")
        content = message.get("content")
        if not isinstance(content, str):
            raise InvalidMessagesError(
                f"{where} ({role}) has content of type {type(content).__name__}; "
                "content must be a string"
            )
        unknown = message.keys() - _ALLOWED_KEYS - _THINKING_KEYS
        if unknown:
            raise InvalidMessagesError(
                f"{where} has unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
                f"allowed: {', '.join(sorted(_ALLOWED_KEYS))}"
            )
        if role == "assistant":
            content = strip_thinking(content)
        if not content.strip() and not (role == "assistant" and message.get("tool_calls")):
            raise InvalidMessagesError(f"{where} ({role}) has empty content; write something")
        clean.append(
            {key: value for key, value in message.items() if key in _ALLOWED_KEYS}
            | {"content": content}
        )
    if clean[-1]["role"] not in ("user", "tool"):
        raise InvalidMessagesError(
            f"the last message is from {clean[-1]['role']}; the conversation must end with a "
            "user (or tool) message for the model to answer"
        )
    return clean


def render_prompt(
    tokenizer: PreTrainedTokenizerBase, messages: Conversation, **template_kwargs: Any
) -> str:
    """Render ``messages`` with the tokenizer's chat template in NON-THINKING mode.

    ``enable_thinking=False`` is always passed; passing ``enable_thinking=True`` (or any other
    thinking switch) raises :class:`~qwen_backends.errors.ThinkingModeError`. Extra keyword
    arguments (``tools=...``) reach the template unchanged.

    Raises
    ------
    ThinkingModeError
        For a thinking-only template (Qwen3-4B-Thinking-2507), naming the model to use instead.
    ChatTemplateError
        If the template is not a Qwen3 non-thinking one, or the rendered prompt does not end the
        way its mode promises (the model would think).
    """
    reject_thinking(template_kwargs, "render_prompt")
    for key in ("enable_thinking", "tokenize", "add_generation_prompt"):
        template_kwargs.pop(key, None)
    clean = validate_messages(messages)
    mode = template_mode(tokenizer)
    prompt = tokenizer.apply_chat_template(
        clean,
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
        **template_kwargs,
    )
    check_generation_prompt(str(prompt), mode, getattr(tokenizer, "name_or_path", "?"))
    return str(prompt)


def render_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, messages: Conversation, **template_kwargs: Any
) -> list[int]:
    """Token ids of :func:`render_prompt` (no BOS is added: Qwen3 has none)."""
    prompt = render_prompt(tokenizer, messages, **template_kwargs)
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
