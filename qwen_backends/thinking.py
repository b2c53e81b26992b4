"""The non-thinking policy in one module: Qwen3 never thinks here, and no thinking reaches a caller.

Every backend and path calls into this module; none re-implements it:

- :func:`reject_thinking` -- any switch that asks for thinking (``enable_thinking=True``,
  ``think``, ``reasoning_effort`` ...) is a :class:`~qwen_backends.errors.ThinkingModeError`;
- :func:`template_mode` -- what a chat template does with ``enable_thinking=False``: the hybrid
  Qwen3-4B pre-fills the empty think block, Qwen3-4B-Instruct-2507 cannot think, and a
  thinking-only template (Qwen3-4B-Thinking-2507) is refused;
- :func:`strip_thinking` -- removes every trace of thinking from a finished text;
- :class:`ThinkingStreamFilter` -- the same for text that arrives in pieces;
- :class:`TextPipeline` -- raw generated text to what a caller sees: stop strings cut first, then
  thinking removed; in-process backends (hf, unsloth, llama.cpp, MLX) share it.
"""

from __future__ import annotations

import enum
import functools
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import regex

from qwen_backends.errors import ChatTemplateError, ThinkingModeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "EMPTY_THINK_BLOCK",
    "GENERATION_PROMPT",
    "THINKING_KEYS",
    "StopTrimmer",
    "TemplateMode",
    "TextPipeline",
    "ThinkingStreamFilter",
    "check_generation_prompt",
    "longest_partial_suffix",
    "prompt_mode",
    "reject_thinking",
    "strip_thinking",
    "template_mode",
]

#: What Qwen3's hybrid template appends after ``<|im_start|>assistant\n`` when thinking is off.
EMPTY_THINK_BLOCK = "<think>\n\n</think>\n\n"
#: Where every Qwen3 generation prompt hands over to the model.
GENERATION_PROMPT = "<|im_start|>assistant\n"

#: Keys that would switch Qwen3 into thinking mode in one runtime or another.
THINKING_KEYS = frozenset({"enable_thinking", "thinking", "think", "reasoning", "reasoning_effort"})


def reject_thinking(options: dict[str, Any], where: str) -> None:
    """Raise :class:`ThinkingModeError` if ``options`` asks for thinking mode.

    A key from :data:`THINKING_KEYS` set to anything but ``False``/``None`` is an error; the
    key set to ``False`` is accepted (it agrees with the policy) and removed by the caller.
    """
    for key in THINKING_KEYS & options.keys():
        if options[key] not in (False, None, "false", "False", 0):
            raise ThinkingModeError(
                f"{where}: {key}={options[key]!r} asks for Qwen3's thinking mode, which "
                "qwen-backends never enables; remove it (every backend runs non-thinking)"
            )


class TemplateMode(str, enum.Enum):
    """What a chat template does with ``enable_thinking=False``.

    Attributes
    ----------
    HYBRID
        Honours the switch: the prompt ends with the empty think block (Qwen/Qwen3-4B).
    NON_THINKING
        Has no switch and never opens a think block: the prompt ends at
        ``<|im_start|>assistant\\n`` (Qwen/Qwen3-4B-Instruct-2507).
    THINKING_ONLY
        Opens ``<think>`` in the generation prompt whatever the switch (Qwen3-4B-Thinking-2507):
        refused everywhere.
    """

    HYBRID = "hybrid"
    NON_THINKING = "non-thinking"
    THINKING_ONLY = "thinking-only"


_PROBE = [{"role": "user", "content": "hi"}]
_modes: dict[str, TemplateMode] = {}
_modes_lock = threading.Lock()


def template_mode(tokenizer: PreTrainedTokenizerBase) -> TemplateMode:
    """Detect what ``tokenizer``'s chat template does, by rendering a probe (cached per template).

    Raises
    ------
    ThinkingModeError
        For a thinking-only template, naming the model to use instead.
    ChatTemplateError
        For a missing template, or one that is none of the three Qwen3 kinds (saying what the
        generation prompt ends with).
    """
    template = getattr(tokenizer, "chat_template", None)
    name = getattr(tokenizer, "name_or_path", "?")
    if not isinstance(template, str) or not template:
        raise ChatTemplateError(
            f"tokenizer {name!r} has no chat template; load Qwen3-4B's tokenizer "
            "(or load_tokenizer('offline'))"
        )
    mode = _modes.get(template)
    if mode is None:
        prompt = tokenizer.apply_chat_template(
            _PROBE, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        mode = _mode_of(str(prompt), switchable="enable_thinking" in template, source=name)
        with _modes_lock:
            _modes[template] = mode
    return _refuse_thinking_only(mode, name)


def check_generation_prompt(prompt: str, mode: TemplateMode, source: str) -> None:
    """Check that a rendered ``prompt`` ends the way ``mode`` promises.

    Raises
    ------
    ChatTemplateError
        When it does not (e.g. a template that ignored ``enable_thinking=False`` for this
        conversation), so the model would think.
    """
    expected = GENERATION_PROMPT + (EMPTY_THINK_BLOCK if mode is TemplateMode.HYBRID else "")
    if not prompt.endswith(expected):
        raise ChatTemplateError(
            f"the chat template of {source!r} rendered a prompt that does not end with "
            f"{expected!r} (it ends with {prompt[-40:]!r}), so the model could think; use "
            "Qwen3-4B's official template"
        )


def prompt_mode(prompt: str, *, switchable: bool, source: str) -> TemplateMode:
    """The template mode a rendered probe ``prompt`` shows (for templates rendered elsewhere).

    ``prompt`` is a one-user-turn conversation rendered with ``add_generation_prompt`` and
    ``enable_thinking=False`` (e.g. by a vLLM server's ``/tokenize``); ``switchable`` says
    whether the template has an ``enable_thinking`` switch (a hybrid that ignored it would
    otherwise look like Instruct-2507). Same rules and errors as :func:`template_mode`.
    """
    return _refuse_thinking_only(_mode_of(prompt, switchable=switchable, source=source), source)


def _mode_of(prompt: str, *, switchable: bool, source: str) -> TemplateMode:
    _, found, tail = prompt.rpartition(GENERATION_PROMPT)
    if found and tail == EMPTY_THINK_BLOCK:
        return TemplateMode.HYBRID
    if found and tail.lstrip().startswith("<think>"):
        return TemplateMode.THINKING_ONLY
    if found and tail == "" and not switchable:
        return TemplateMode.NON_THINKING
    if found and tail == "":
        raise ChatTemplateError(
            f"the chat template of {source!r} has an enable_thinking switch but ignores "
            "enable_thinking=False (the prompt does not end with the empty think block), so the "
            "model would think; use Qwen3-4B's official template"
        )
    raise ChatTemplateError(
        f"the chat template of {source!r} is not a Qwen3 template: its generation prompt ends "
        f"with {prompt[-40:]!r} instead of {GENERATION_PROMPT!r} (plus the empty think block "
        "for the hybrid Qwen3-4B); use the model's official template"
    )


def _refuse_thinking_only(mode: TemplateMode, source: str) -> TemplateMode:
    if mode is TemplateMode.THINKING_ONLY:
        from qwen_backends.family import DEFAULT_FAMILY, FAMILIES

        instruct = FAMILIES["qwen3-4b-instruct-2507"]
        raise ThinkingModeError(
            f"{source!r} is a thinking-only model (its template opens <think> whatever "
            "enable_thinking says), and qwen-backends runs non-thinking only; use "
            f"{instruct.hf} (QWEN_FAMILY={instruct.name}) or the hybrid "
            f"{FAMILIES[DEFAULT_FAMILY].hf}"
        )
    return mode


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


# -- raw text -> what the caller sees ------------------------------------------------------------


class StopTrimmer:
    """Pass text through until the earliest stop string; hold back what could start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        """Start with nothing held back; ``stops`` may be empty (text then passes through)."""
        self.stops = tuple(stops)
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add text; return what can be shown now (nothing once a stop string was seen)."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buffer = self.pending + text
        hits = [index for index in (buffer.find(stop) for stop in self.stops) if index >= 0]
        if hits:
            self.stopped = True
            self.pending = ""
            return buffer[: min(hits)]
        keep = longest_partial_suffix(buffer, self.stops)
        self.pending = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """The text still held back (call once at the end)."""
        text, self.pending = self.pending, ""
        return "" if self.stopped else text


class TextPipeline:
    """Raw decoded text -> what the caller sees: stop strings cut first, then thinking removed."""

    def __init__(self, stops: Sequence[str]) -> None:
        """A pipeline cutting at ``stops``."""
        self.stopper = StopTrimmer(stops)
        self.thinking = ThinkingStreamFilter()

    @property
    def stopped(self) -> bool:
        """Whether a stop string was found (everything after it is dropped)."""
        return self.stopper.stopped

    def feed(self, text: str) -> str:
        """Add raw text; return the visible text that can be shown now."""
        return self.thinking.feed(self.stopper.feed(text))

    def flush(self) -> str:
        """The visible text still held back (call once at the end)."""
        return self.thinking.feed(self.stopper.flush()) + self.thinking.flush()

    @classmethod
    def whole(cls, text: str, stops: Sequence[str]) -> tuple[str, bool]:
        """Run the pipeline over one complete text; returns ``(visible, stopped)``."""
        pipeline = cls(stops)
        visible = pipeline.feed(text) + pipeline.flush()
        return strip_thinking(visible), pipeline.stopped
