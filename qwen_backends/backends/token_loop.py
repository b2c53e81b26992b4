"""Generated token ids -> what a caller sees, written once for every in-process backend.

An in-process runtime (transformers, llama.cpp, MLX) produces token ids; everything between
those ids and a :class:`~qwen_backends.results.Generation` is the same everywhere and lives here:

- :func:`decode_ids` -- ids to text with the Hugging Face tokenizer (special tokens skipped);
- :class:`IncrementalDecoder` -- ids one at a time to text pieces whose concatenation equals the
  one-shot decode (a trailing incomplete UTF-8 character waits for the next id);
- :class:`AnswerAssembler` -- the visible-text pipeline of one answer: end-of-turn ids, the
  decoder, stop strings and thinking removal (:class:`~qwen_backends.thinking.TextPipeline`),
  the tool-call filter (:class:`~qwen_backends.tools.ToolCallFilter`), ``max_new_tokens``, and
  the counts and finish reason of the final :class:`~qwen_backends.results.Generation`.

The same assembler serves a stream (fed as tokens arrive) and a finished batch row (fed the
row's ids), so a streamed answer and a generated one are built by the same code.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import TYPE_CHECKING

from qwen_backends.results import FinishReason, Generation
from qwen_backends.thinking import TextPipeline
from qwen_backends.tools import ToolCallFilter

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from qwen_backends.sampling import SamplingParams

__all__ = ["AnswerAssembler", "IncrementalDecoder", "decode_ids"]


def decode_ids(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """``ids`` as text: special tokens skipped, no clean-up of spaces (Qwen3's tokenizer)."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return str(text)


class IncrementalDecoder:
    """Decode ids one at a time; the pieces join to exactly the one-shot decode.

    A window of ids since the last complete character is decoded at each step; text ending in an
    incomplete UTF-8 sequence (U+FFFD) waits for the next id. An answer cut inside a character
    ends at the last complete one (as on vLLM and Ollama), so :meth:`flush` drops such a tail.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.window: list[int] = []
        self.sent = 0

    def add(self, token: int) -> str:
        """Add one id; return the new complete text (may be empty)."""
        self.window.append(token)
        text = decode_ids(self.tokenizer, self.window)
        ready = text.rstrip("\ufffd")
        piece = ready[self.sent :]
        if ready == text:
            self.window, self.sent = [], 0
        else:
            self.sent = max(self.sent, len(ready))
        return piece

    def flush(self) -> str:
        """The complete text still held back (normally empty); call once at the end."""
        if not self.window:
            return ""
        text = decode_ids(self.tokenizer, self.window).rstrip("\ufffd")[self.sent :]
        self.window, self.sent = [], 0
        return text


class AnswerAssembler:
    """Token ids of one answer -> visible text pieces -> the final :class:`Generation`.

    Feed ids with :meth:`feed` until :attr:`done`, then call :meth:`finish` once for the text
    held back and :meth:`generation` for the result. Counting follows the contract:
    ``completion_tokens`` includes the end-of-turn id that ended the answer and, for a stop
    string, the id that completed it; an answer that reaches ``max_new_tokens`` is ``"length"``.

    Parameters
    ----------
    tokenizer
        Decodes the ids.
    end_ids
        Ids that end the turn (Qwen3's ``<|im_end|>`` and ``<|endoftext|>``; a runtime may pass
        a larger set).
    sampling
        For ``stop`` and ``max_new_tokens``.
    tools
        Whether tools were given: ``<tool_call>`` blocks are then taken out of the text.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        end_ids: Container[int],
        sampling: SamplingParams,
        *,
        tools: bool = False,
    ) -> None:
        self.end_ids = end_ids
        self.limit = sampling.max_new_tokens
        self.decoder = IncrementalDecoder(tokenizer)
        self.pipeline = TextPipeline(sampling.stop)
        self.calls = ToolCallFilter() if tools else None
        self.pieces: list[str] = []
        self.count = 0
        self.ended = False

    @property
    def done(self) -> bool:
        """Whether the answer is complete (end of turn, stop string or ``max_new_tokens``)."""
        return self.ended or self.pipeline.stopped or self.count >= self.limit

    @property
    def text(self) -> str:
        """The visible text produced so far (the partial text of a failed generation)."""
        return "".join(self.pieces)

    def feed(self, token: int) -> str:
        """Add one generated id; return the text that can be shown now (may be empty)."""
        self.count += 1
        if token in self.end_ids:
            self.ended = True
            return ""
        return self._show(self.pipeline.feed(self.decoder.add(token)))

    def feed_all(self, ids: Sequence[int]) -> None:
        """Feed a finished row of ids (a batch answer) up to the end of the answer."""
        for token in ids:
            if self.done:
                break
            self.feed(token)

    def finish(self) -> str:
        """The visible text still held back; call once, after the last :meth:`feed`."""
        held = "" if self.pipeline.stopped else self.pipeline.feed(self.decoder.flush())
        tail = held + self.pipeline.flush()
        if self.calls is not None:
            tail = self.calls.feed(tail) + self.calls.flush()
        if tail:
            self.pieces.append(tail)
        return tail

    def generation(self, prompt_tokens: int, seconds: float) -> Generation:
        """The result, after :meth:`finish`."""
        reason: FinishReason = "stop" if self.ended or self.pipeline.stopped else "length"
        found = tuple(self.calls.calls) if self.calls is not None else ()
        return Generation(
            text=self.text,
            finish_reason="tool_calls" if found else reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=self.count,
            seconds=seconds,
            tool_calls=found,
        )

    def _show(self, visible: str) -> str:
        if self.calls is not None:
            visible = self.calls.feed(visible)
        if visible:
            self.pieces.append(visible)
        return visible
