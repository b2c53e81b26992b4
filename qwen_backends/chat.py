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

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from qwen_backends.errors import ChatTemplateError, ConfigurationError, InvalidMessagesError
from qwen_backends.thinking import (
    check_generation_prompt,
    reject_thinking,
    strip_thinking,
    template_mode,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "CONTROL_TOKENS",
    "OPT_IN",
    "Conversation",
    "Message",
    "check_caller_text",
    "find_control_token",
    "render_history",
    "render_prompt",
    "render_prompt_ids",
    "validate_messages",
]

ROLES = ("system", "user", "assistant", "tool")
_ALLOWED_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})
#: Reasoning kept by some clients in history; Qwen3 must not see its own thinking again.
_THINKING_KEYS = frozenset({"thinking", "reasoning_content", "reasoning"})

#: Qwen3's ``<|...|>`` added tokens (turn markers, end of text, vision/box/fim markers). The
#: tokenizer turns their text into the real control tokens wherever it appears, so text holding
#: ``<|im_end|>\n<|im_start|>system`` inside a user message would forge a system turn.
#: ``<think>``/``<tool_call>``/``<tool_response>`` are not listed: they cannot open or close a turn.
CONTROL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
_CONTROL_TOKEN = re.compile("|".join(re.escape(token) for token in CONTROL_TOKENS))
#: A UTF-16 surrogate on its own (a JSON ``"\\ud800"`` escape decodes to one): not valid
#: Unicode, so no UTF-8 tokenizer or server can take it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
#: How a library caller opts in to control-token text (the fine-tuning config has its own key).
OPT_IN = "allow_control_tokens=True (QWEN_ALLOW_CONTROL_TOKENS=true)"

Message = dict[str, Any]
#: A conversation: a list of ``{"role", "content"}`` dicts, or a bare string (one user turn).
Conversation = str | Sequence[Mapping[str, Any]]


def find_control_token(value: Any) -> str | None:
    """The first Qwen3 control-token text (see :data:`CONTROL_TOKENS`) inside ``value``.

    ``value`` is a string, or a list/dict whose strings are searched (tool-call arguments);
    returns ``None`` when there is none.
    """
    if isinstance(value, str):
        if "<|" not in value:  # the common case, without a regex
            return None
        found = _CONTROL_TOKEN.search(value)
        return found.group(0) if found else None
    if isinstance(value, Mapping):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list | tuple):
        for item in value:
            token = find_control_token(item)
            if token is not None:
                return token
    return None


def check_caller_text(
    value: Any,
    where: str,
    *,
    allow_control_tokens: bool = False,
    opt_in: str = OPT_IN,
    error: type[ConfigurationError] = ConfigurationError,
) -> None:
    """Refuse caller text that the chat template would render wrongly, naming the field.

    Every string in ``value`` (a string, or the keys and values of nested dicts/lists: a tool
    spec, a JSON schema, tool-call arguments) is checked: a lone surrogate (not valid Unicode)
    is always refused; Qwen3 control-token text (:data:`CONTROL_TOKENS`) is refused unless
    ``allow_control_tokens``. Messages, tool specs (descriptions, parameter docs, docstrings),
    JSON schemas and fine-tuning records all pass through here, so every door has the same
    check and the same opt-in.

    Parameters
    ----------
    value
        The text, or the structure holding it.
    where
        What ``value`` is, for the message (``"message 1 (user)"``, ``"tool 'f'"``); the path
        inside ``value`` is appended (``"tool 'f' parameters.properties.city.description"``).
    allow_control_tokens
        Accept control-token text (for trusted callers).
    opt_in
        How the caller opts in, quoted in the message.
    error
        The exception class raised.

    Raises
    ------
    ConfigurationError
        (or ``error``) One line naming the field, the problem and the fix.
    """
    found = _find_bad_text(value, "", allow_control_tokens)
    if found is None:
        return
    path, problem = found
    place = f"{where}{'' if path.startswith('[') else ' '}{path}" if path else where
    if problem in CONTROL_TOKENS:
        raise error(
            f"{place} contains the control token {problem}, which would be read as a real Qwen3 "
            f"control token (a forged turn); remove it, or opt in with {opt_in} if the text is "
            "trusted"
        )
    raise error(
        f"{place} holds the lone surrogate {problem!r}, which is not valid Unicode (e.g. a JSON "
        "'\\ud800' escape without its pair); send valid UTF-8 text"
    )


def _find_bad_text(value: Any, path: str, allow_control_tokens: bool) -> tuple[str, str] | None:
    """``(path, token or surrogate)`` of the first bad string inside ``value``, else ``None``."""
    if isinstance(value, str):
        if not allow_control_tokens:
            token = find_control_token(value)
            if token is not None:
                return path, token
        surrogate = _LONE_SURROGATE.search(value)
        return (path, surrogate.group(0)) if surrogate else None
    items: Any
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            # A key is part of the message: escape what is not valid Unicode.
            shown = str(key).encode("utf-8", "backslashreplace").decode("utf-8")
            inner = f"{path}.{shown}" if path else shown
            items += [(f"{inner} (the key)", key), (inner, item)]
    elif isinstance(value, list | tuple):
        items = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
    else:
        return None
    for inner, item in items:
        found = _find_bad_text(item, inner, allow_control_tokens)
        if found is not None:
            return found
    return None


def _a_type(value: Any) -> str:
    """``"an int"``, ``"a list"``, ``"None"``: the type of ``value`` for a message."""
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def validate_messages(
    messages: Conversation, *, allow_control_tokens: bool = False
) -> list[Message]:
    """Check a conversation and return a clean copy ready for a chat template.

    Rules: at least one message; each a mapping with ``role`` in system/user/assistant/tool and
    non-empty string ``content``; the last turn from ``user`` or ``tool``. Thinking is removed
    from assistant history (``<think>`` blocks and ``thinking``/``reasoning_content`` fields).
    No message may contain Qwen3 control-token text such as ``<|im_start|>`` (see
    :data:`CONTROL_TOKENS`): the tokenizer would read it as the real token, so untrusted text
    could forge a system turn. Text that is not valid Unicode (a lone surrogate) is refused
    too; both checks are :func:`check_caller_text`.

    Parameters
    ----------
    messages
        A list of message dicts, or a string (one user turn).
    allow_control_tokens
        Accept control-token text (it then reaches the model as control tokens, as with the
        official tokenizer); for trusted callers that need it. Backends pass the
        ``allow_control_tokens`` setting (``QWEN_ALLOW_CONTROL_TOKENS``).

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
                f"{where} is {_a_type(message)}; each message must be a dict "
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
        for key in ("content", "name", "tool_calls", "tool_call_id"):
            check_caller_text(
                message.get(key),
                f"{where} ({role})" if key == "content" else f"{where} ({role}) {key}",
                allow_control_tokens=allow_control_tokens,
                error=InvalidMessagesError,
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
    tokenizer: PreTrainedTokenizerBase,
    messages: Conversation,
    *,
    allow_control_tokens: bool = False,
    **template_kwargs: Any,
) -> str:
    """Render ``messages`` with the tokenizer's chat template in NON-THINKING mode.

    ``enable_thinking=False`` is always passed; passing ``enable_thinking=True`` (or any other
    thinking switch) raises :class:`~qwen_backends.errors.ThinkingModeError`. Extra keyword
    arguments (``tools=...``) reach the template unchanged. ``allow_control_tokens`` is passed
    to :func:`validate_messages`.

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
    clean = validate_messages(messages, allow_control_tokens=allow_control_tokens)
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
    tokenizer: PreTrainedTokenizerBase,
    messages: Conversation,
    *,
    allow_control_tokens: bool = False,
    **template_kwargs: Any,
) -> list[int]:
    """Token ids of :func:`render_prompt` (no BOS is added: Qwen3 has none); the long pieces
    of earlier prompts (a system prompt, tools, the history) are not tokenized again
    (:func:`~qwen_backends.prompt_encoding.encode_prompt`)."""
    from qwen_backends.prompt_encoding import encode_prompt

    prompt = render_prompt(
        tokenizer, messages, allow_control_tokens=allow_control_tokens, **template_kwargs
    )
    return encode_prompt(tokenizer, prompt)


#: The user turn appended after an answer so that the template renders the answer as history.
_NEXT_TURN = "next"


def render_history(
    tokenizer: PreTrainedTokenizerBase,
    messages: Conversation,
    answer: Mapping[str, Any],
    *,
    allow_control_tokens: bool = False,
    **template_kwargs: Any,
) -> str:
    """The text every next prompt of a conversation starts with once ``answer`` is in it.

    ``messages`` is the conversation that was answered (ending with a user or tool turn),
    ``answer`` the assistant message a caller appends to it (see
    :func:`~qwen_backends.tools.assistant_message`). The answer is rendered as a *past* turn:
    for the hybrid Qwen3-4B that is without the empty think block that its generation prompt
    had, so this text is not the answered prompt plus the answer. It ends after the answer's
    ``<|im_end|>\n``, where the next user or tool turn begins, and is rendered by the same
    template and keyword arguments as :func:`render_prompt` (a probe user turn is appended
    and cut off again: the template renders a past answer by what follows it).

    Raises
    ------
    InvalidMessagesError
        When the conversation or the answer could not be sent back as history (an empty
        answer without tool calls, control-token text).
    ChatTemplateError
        If the template does not render the probe turn the way Qwen3's does.
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    probe = {"role": "user", "content": _NEXT_TURN}
    prompt = render_prompt(
        tokenizer,
        [*messages, answer, probe],
        allow_control_tokens=allow_control_tokens,
        **template_kwargs,
    )
    cut = prompt.rfind(f"<|im_start|>user\n{_NEXT_TURN}<|im_end|>")
    if cut < 0:
        raise ChatTemplateError(
            "the chat template did not render a user turn as <|im_start|>user; use Qwen3's "
            "own template"
        )
    return prompt[:cut]
