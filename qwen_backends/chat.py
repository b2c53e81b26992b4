"""The one place that turns a conversation into a Qwen3 NON-THINKING prompt.

Data path: ``messages`` --:func:`validate_messages`--> clean list --:func:`render_prompt`-->
prompt text ending in the empty think block --backend--> raw text --:func:`strip_thinking`-->
what the caller sees.

The tokenizer's own chat template does the rendering (never a hand-written copy of Qwen3's
template); this module only guarantees that it is called with ``enable_thinking=False`` and that
the template honoured the switch.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import regex

from qwen_backends.errors import ChatTemplateError, InvalidMessagesError
from qwen_backends.sampling import reject_thinking

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "EMPTY_THINK_BLOCK",
    "Conversation",
    "Message",
    "ThinkingStreamFilter",
    "longest_partial_suffix",
    "render_prompt",
    "render_prompt_ids",
    "strip_thinking",
    "validate_messages",
]

#: What Qwen3's template appends after ``<|im_start|>assistant\n`` when thinking is off.
EMPTY_THINK_BLOCK = "<think>\n\n</think>\n\n"

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
    ChatTemplateError
        If the rendered prompt does not end with the empty think block, i.e. the template
        ignores ``enable_thinking`` and the model would think.
    """
    reject_thinking(template_kwargs, "render_prompt")
    for key in ("enable_thinking", "tokenize", "add_generation_prompt"):
        template_kwargs.pop(key, None)
    clean = validate_messages(messages)
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; "
            "load Qwen3-4B's tokenizer (or load_tokenizer('offline'))"
        )
    prompt = tokenizer.apply_chat_template(
        clean,
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
        **template_kwargs,
    )
    if not isinstance(prompt, str) or not prompt.endswith(EMPTY_THINK_BLOCK):
        raise ChatTemplateError(
            f"the chat template of {getattr(tokenizer, 'name_or_path', '?')!r} ignores "
            "enable_thinking=False (the prompt does not end with the empty think block), so the "
            "model would think; use Qwen3-4B's official template"
        )
    return prompt


def render_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, messages: Conversation, **template_kwargs: Any
) -> list[int]:
    """Token ids of :func:`render_prompt` (no BOS is added: Qwen3 has none)."""
    prompt = render_prompt(tokenizer, messages, **template_kwargs)
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


# A complete block, a leading unclosed block (thinking that never ended), a stray closing tag
# with everything before it (output that starts mid-thought), then any orphan tag.
_THINK_PATTERNS = (
    regex.compile(r"<think>.*?</think>\s*", regex.DOTALL),
    regex.compile(r"\A\s*<think>.*\Z", regex.DOTALL),
    regex.compile(r"\A.*?</think>\s*", regex.DOTALL),
    regex.compile(r"</?think>"),
)


def strip_thinking(text: str) -> str:
    """Remove every trace of Qwen3 thinking from ``text``.

    Removes ``<think>...</think>`` blocks with the whitespace after them, an unclosed leading
    ``<think>`` block, text before a stray ``</think>``, and any orphan tag. Idempotent, and
    the result never contains ``<think>`` or ``</think>``.
    """
    while True:
        stripped = text
        for pattern in _THINK_PATTERNS:
            stripped = pattern.sub("", stripped)
        if stripped == text:
            return stripped
        text = stripped


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_TAGS = (THINK_OPEN, THINK_CLOSE)


class ThinkingStreamFilter:
    """Remove thinking from text that arrives in pieces, with the same result however it is cut.

    A ``<think>`` block is dropped up to its ``</think>`` (or to the end if it never closes) with
    the whitespace after it; an orphan ``</think>`` is dropped with the whitespace after it; and
    tag text that only forms once a block is gone (``<th<think>..</think>ink>``) is removed too.
    Text is held back only while it could still be the start of a tag. Every streaming backend
    uses it, so ``"".join`` of a stream never contains a tag, however the runtime cuts the text.

    Attributes
    ----------
    removed
        Whether any thinking (a tag or a block) was removed so far; backends log a warning.
    """

    def __init__(self) -> None:
        self.state = "out"  # "out", "in" (inside a block) or "gap" (whitespace after a block)
        self.pending = ""
        self.guard = ""  # output not yet released (see _release)
        self.removed = False

    def feed(self, text: str) -> str:
        """Add raw text; return the clean text that can be shown now."""
        return self._release(self._blocks(text), final=False)

    def flush(self) -> str:
        """Return the clean text still held back; call once at the end of the stream."""
        tail = self.pending if self.state == "out" else ""
        self.pending = ""
        return self._release(tail, final=True)

    def _blocks(self, text: str) -> str:
        buffer, self.pending = self.pending + text, ""
        out: list[str] = []
        index = 0
        while index < len(buffer):
            if self.state == "gap":
                while index < len(buffer) and buffer[index].isspace():
                    index += 1
                if index < len(buffer):
                    self.state = "out"
                continue
            if self.state == "in":
                end = buffer.find(THINK_CLOSE, index)
                if end < 0:
                    keep = longest_partial_suffix(buffer[index:], (THINK_CLOSE,))
                    self.pending = buffer[len(buffer) - keep :] if keep else ""
                    return "".join(out)
                index, self.state = end + len(THINK_CLOSE), "gap"
                continue
            start = buffer.find("<", index)
            while start >= 0:
                rest = buffer[start:]
                if rest.startswith(THINK_OPEN) or rest.startswith(THINK_CLOSE):
                    break
                if any(tag.startswith(rest) for tag in _TAGS):
                    out.append(buffer[index:start])
                    self.pending = rest
                    return "".join(out)
                start = buffer.find("<", start + 1)
            if start < 0:
                out.append(buffer[index:])
                break
            out.append(buffer[index:start])
            self.removed = True
            if buffer.startswith(THINK_OPEN, start):
                index, self.state = start + len(THINK_OPEN), "in"
            else:
                index, self.state = start + len(THINK_CLOSE), "gap"
        return "".join(out)

    def _release(self, text: str, *, final: bool) -> str:
        # Tags are deleted until none is left; output never ends in the start of a tag, so no
        # tag can form across what was already released and what comes later.
        buffer = self.guard + text
        while True:
            cleaned = buffer.replace(THINK_OPEN, "").replace(THINK_CLOSE, "")
            if cleaned == buffer:
                break
            buffer, self.removed = cleaned, True
        if final:
            self.guard = ""
            return buffer
        cut = len(buffer)
        while cut > 0:
            keep = longest_partial_suffix(buffer[:cut], _TAGS)
            if not keep:
                break
            cut -= keep
        self.guard = buffer[cut:]
        return buffer[:cut]


def longest_partial_suffix(text: str, patterns: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``patterns``.

    Only positions within reach of the longest pattern whose character starts some pattern are
    tried, so the cost follows the text's tail, not the number of patterns (thousands of stop
    strings are fed a piece at a time when streaming).
    """
    reach, heads = _partial_index(tuple(patterns))
    for start in range(max(0, len(text) - reach), len(text)):
        if text[start] in heads:
            tail = text[start:]
            if any(len(pattern) > len(tail) and pattern.startswith(tail) for pattern in patterns):
                return len(tail)
    return 0


@functools.lru_cache(maxsize=64)
def _partial_index(patterns: tuple[str, ...]) -> tuple[int, frozenset[str]]:
    """(longest proper prefix length, first characters) of ``patterns``, computed once."""
    reach = max((len(pattern) for pattern in patterns), default=1) - 1
    return reach, frozenset(pattern[0] for pattern in patterns if len(pattern) > 1)
