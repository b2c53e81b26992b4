"""Generated token ids -> what a caller sees, written once for every in-process backend.

An in-process runtime (transformers, llama.cpp, MLX) produces token ids; everything between
those ids and a :class:`~qwen_backends.results.Generation` is the same everywhere and lives here:

- :func:`decode_ids` -- ids to text with the Hugging Face tokenizer (special tokens skipped);
- :class:`IncrementalDecoder` -- ids one at a time to text pieces whose concatenation equals the
  one-shot decode (a trailing incomplete UTF-8 character waits for the next id);
- :class:`Step` -- a generated id with its log-probabilities, when the call asked for them
  (a runtime's token iterator yields plain ids otherwise); :func:`numpy_step` computes one from
  a row of raw logits, and :class:`BackgroundSteps` does so on a worker thread beside the
  runtime's next decode (a :class:`PendingStep` until the answer is finished);
- :class:`AnswerAssembler` -- the visible-text pipeline of one answer: end-of-turn ids, the
  decoder, stop strings and thinking removal (:class:`~qwen_backends.thinking.TextPipeline`),
  the tool-call filter (:class:`~qwen_backends.tools.ToolCallFilter`), ``max_new_tokens``, and
  the counts, finish reason and log-probabilities of the final
  :class:`~qwen_backends.results.Generation`.

The same assembler serves a stream (fed as tokens arrive) and a finished batch row (fed the
row's ids), so a streamed answer and a generated one are built by the same code.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Container, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

from qwen_backends.results import FinishReason, Generation, TokenLogprob, TopLogprob
from qwen_backends.thinking import TextPipeline
from qwen_backends.tools import ToolCallFilter

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedTokenizerBase

    from qwen_backends.sampling import SamplingParams

__all__ = [
    "AnswerAssembler",
    "BackgroundSteps",
    "IncrementalDecoder",
    "PendingStep",
    "Step",
    "decode_ids",
    "numpy_step",
    "reported_logprobs",
    "steps_logprobs",
]

#: Raw-text spans the thinking filter removes: a block with the whitespace after it (or to the
#: end when unclosed), and an orphan closing tag with its whitespace.
_THINKING_SPANS = re.compile(r"<think>.*?(?:</think>\s*|\Z)|</think>\s*", re.DOTALL)


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


class Step(NamedTuple):
    """One generated id with the log-probabilities of its step (see
    :class:`~qwen_backends.results.TokenLogprob` for what the numbers are).

    Attributes
    ----------
    id
        The generated token id.
    logprob
        Its log-probability under the model's raw logits.
    top
        ``(id, logprob)`` of the most likely tokens at that step, most likely first.
    """

    id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


#: Rows are searched for their largest values in this many interleaved groups (Qwen3's 151,936
#: logits are 128 groups of 1,187): the groups' maxima are one vectorised pass over contiguous
#: memory, then only the best groups are read.
_GROUPS = 128


def numpy_step(logits: np.ndarray, token: int, top: int) -> Step:
    """The :class:`Step` of ``token`` from one step's raw float logits (a 1-D numpy row).

    The log-softmax is ``logits - logsumexp(logits)``, computed for the few values needed only.
    The ``top`` largest come from a group search: the row is read as ``_GROUPS`` rows of equal
    length, each column a group; the ``top`` largest values lie in the ``top`` columns with the
    largest maxima (a value outside them is beaten by ``top`` column maxima), so only those
    columns are partitioned.
    """
    import numpy as np

    row = np.asarray(logits, dtype=np.float32)
    peak = row.max()
    shifted = np.subtract(row, peak)
    total = float(peak) + float(np.log(np.exp(shifted, out=shifted).sum()))
    best: tuple[tuple[int, float], ...] = ()
    if top:
        size = row.shape[0]
        if size % _GROUPS == 0 and size // _GROUPS >= 4 * top:
            width = size // _GROUPS
            columns = np.argpartition(row.reshape(_GROUPS, width).max(axis=0), -top)[-top:]
            candidates = (columns[None, :] + width * np.arange(_GROUPS)[:, None]).ravel()
        else:
            candidates = np.arange(size)
        count = min(top, candidates.shape[0])
        picked = candidates[np.argpartition(row[candidates], -count)[-count:]].tolist()
        # Most likely first; equal values by id, as a stable sort of the row would give.
        ranked = sorted(picked, key=lambda i: (-float(row[i]), i))
        best = tuple((int(i), float(row[i]) - total) for i in ranked)
    return Step(int(token), float(row[token]) - total, best)


class PendingStep(NamedTuple):
    """A generated id whose :class:`Step` a :class:`BackgroundSteps` worker is computing."""

    id: int
    future: Future[Step]

    def result(self) -> Step:
        """The finished :class:`Step` (waits for the worker)."""
        return self.future.result()


class BackgroundSteps:
    """:func:`numpy_step` on one worker thread, beside the runtime's next decode.

    llama.cpp and MLX release the GIL while they compute a step, and numpy releases it in its
    loops, so the log-softmax and top-k of step *n* (~0.2 ms over 151,936 logits) run while the
    runtime decodes step *n + 1*; the token loop only copies the row. At most :attr:`backlog`
    rows wait (a slow worker then holds the loop back instead of piling up 600 KB rows). Use it
    as a context manager around one answer: leaving it waits for every step.
    """

    #: Rows queued before :meth:`submit` waits for the oldest.
    backlog = 8

    def __init__(self, top: int) -> None:
        self.top = top
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwen-logprobs")
        self._waiting: collections.deque[Future[Step]] = collections.deque()

    def submit(self, row: np.ndarray, token: int) -> PendingStep:
        """Queue the :class:`Step` of ``token`` from ``row``, a 1-D float array that nothing
        changes afterwards (a copy of the runtime's buffer)."""
        while self._waiting and self._waiting[0].done():
            self._waiting.popleft()
        if len(self._waiting) >= self.backlog:
            self._waiting.popleft().result()
        future = self._pool.submit(numpy_step, row, token, self.top)
        self._waiting.append(future)
        return PendingStep(int(token), future)

    def close(self) -> None:
        """Wait for every queued step and end the worker thread."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> BackgroundSteps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        self.tokenizer = tokenizer
        self.pieces: list[str] = []
        self.ids: list[int] = []  # every id fed, the end-of-turn one included
        self.count = 0
        self.ended = False
        # Per counted id: None when it came without one.
        self.steps: list[Step | PendingStep | None] = []
        self.raw: list[str] = []  # each counted id's decoded text, to place thinking spans

    @property
    def done(self) -> bool:
        """Whether the answer is complete (end of turn, stop string or ``max_new_tokens``)."""
        return self.ended or self.pipeline.stopped or self.count >= self.limit

    @property
    def text(self) -> str:
        """The visible text produced so far (the partial text of a failed generation)."""
        return "".join(self.pieces)

    def feed(self, token: int | Step | PendingStep) -> str:
        """Add one generated id (or :class:`Step`); return the text that can be shown now."""
        self.count += 1
        if isinstance(token, Step | PendingStep):
            self.steps.append(token)
            token = token.id
        else:
            self.steps.append(None)
        self.ids.append(token)
        if token in self.end_ids:
            self.ended = True
            self.raw.append("")
            return ""
        piece = self.decoder.add(token)
        self.raw.append(piece)
        return self._show(self.pipeline.feed(piece))

    def feed_all(self, ids: Sequence[int | Step | PendingStep]) -> None:
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

    def generation(self, prompt_tokens: int, seconds: float, cached_tokens: int = 0) -> Generation:
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
            logprobs=self._logprobs() if any(self.steps) else None,
            cached_tokens=cached_tokens,
        )

    def _logprobs(self) -> tuple[TokenLogprob, ...]:
        """One entry per counted id, less the ids of removed thinking."""
        return reported_logprobs(self.tokenizer, self.steps, self.raw)

    def _show(self, visible: str) -> str:
        if self.calls is not None:
            visible = self.calls.feed(visible)
        if visible:
            self.pieces.append(visible)
        return visible


def reported_logprobs(
    tokenizer: PreTrainedTokenizerBase,
    steps: Sequence[Step | PendingStep | None],
    raw: Sequence[str],
) -> tuple[TokenLogprob, ...]:
    """The :class:`~qwen_backends.results.TokenLogprob` entries of an answer.

    ``steps`` holds one entry per counted id (``None`` for an id that came without
    log-probabilities) and ``raw`` each id's decoded text (``""`` for an end-of-turn id); the ids
    whose text lies inside removed thinking are left out.
    """
    text = "".join(raw)
    removed = [match.span() for match in _THINKING_SPANS.finditer(text)]
    names: dict[int, str] = {}

    def name(token: int) -> str:
        if token not in names:
            names[token] = str(
                tokenizer.decode(
                    [token], skip_special_tokens=False, clean_up_tokenization_spaces=False
                )
            )
        return names[token]

    kept, start = [], 0
    for step, piece in zip(steps, raw, strict=False):
        end = start + len(piece)
        # An id whose text lies inside a removed span is thinking; an id with no text of its
        # own (a byte of a longer character) belongs where its character starts.
        inside = any(
            low <= start and (end <= high if piece else start < high) for low, high in removed
        )
        start = end
        if inside or step is None:
            continue
        if isinstance(step, PendingStep):
            step = step.result()
        top = tuple(TopLogprob(name(i), i, value) for i, value in step.top)
        kept.append(TokenLogprob(name(step.id), step.id, step.logprob, top))
    return tuple(kept)


def steps_logprobs(
    tokenizer: PreTrainedTokenizerBase, steps: Sequence[Step], end_ids: Container[int]
) -> tuple[TokenLogprob, ...]:
    """:func:`reported_logprobs` for an answer known only by its steps (a server's answer):
    the ids are decoded here, as :class:`AnswerAssembler` decodes them."""
    decoder = IncrementalDecoder(tokenizer)
    raw = ["" if step.id in end_ids else decoder.add(step.id) for step in steps]
    return reported_logprobs(tokenizer, steps, raw)
