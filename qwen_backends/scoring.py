"""Scoring given text, written once for every backend that can: the shared half of ``score()``.

:meth:`~qwen_backends.backends.base.ModelBackend.score` and its batched and raw-text forms turn
each call into :class:`ScoreRequest` objects. A backend that scores in this process hands them to
:func:`score_locally` with one runtime function, :data:`RowsFunction`, which runs the model over
token sequences (:class:`Span`) and yields the log-softmax of its raw logits at the positions
asked for, a few rows at a time. Everything else is here:

- tokenising the continuation after the non-thinking prompt (chat form) or after a raw context
  split as lm-evaluation-harness splits it (trailing whitespace of the context moves to the
  continuation; the pair is encoded whole);
- rolling windows for a document longer than the context (:func:`rolling_windows`: each window
  predicts new tokens given the tokens before them, as lm-eval's ``loglikelihood_rolling``);
- the checks (an empty continuation, one that does not fit the context window, control-token
  text), each a one-line error before the model runs;
- the greedy check, the top alternatives and the :class:`~qwen_backends.results.Score`.

No runtime needs memory proportional to context x vocabulary: rows come in chunks of at most
:data:`CHUNK_ROWS` positions, and only the positions of the scored tokens are computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from qwen_backends.chat import find_control_token
from qwen_backends.errors import ConfigurationError, ContextLengthError
from qwen_backends.results import Score, ScoredToken, TopLogprob

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedTokenizerBase

    from qwen_backends.backends.local import LocalBackend
    from qwen_backends.chat import Message

__all__ = [
    "CHUNK_ROWS",
    "MAX_TOP_LOGPROBS",
    "Continuation",
    "RowsFunction",
    "ScoreRequest",
    "ScoringTarget",
    "Span",
    "SpanScores",
    "assemble",
    "check_top",
    "plan_spans",
    "reduce_rows",
    "rolling_windows",
    "score_locally",
    "split_pair",
]

#: Most positions whose vocabulary-wide rows exist at once (256 x 151,936 float32 = 156 MB):
#: big enough that the output layer's weight is read a few times, not once per 64 rows.
CHUNK_ROWS = 256
#: Most alternatives reported per position (OpenAI's and vLLM's limit).
MAX_TOP_LOGPROBS = 20

#: A continuation: text, or token ids.
Continuation = str | Sequence[int]


@dataclass(frozen=True)
class ScoreRequest:
    """One thing to score, as the hook :meth:`ModelBackend._score` receives it.

    Exactly one of ``messages`` and ``context`` is set, or neither for a whole document.

    Attributes
    ----------
    messages
        The validated conversation (chat form): ``continuation`` is the assistant's answer to its
        non-thinking prompt.
    context
        Raw context (text with no chat template, or token ids).
    continuation
        What is scored: text or token ids; with neither messages nor context, the document.
    top
        Alternatives to report per scored token (0-20).
    following
        Alternatives to report for the position after the continuation (0 for none).
    window
        Tokens per rolling window for a whole document (default: the context window).
    """

    continuation: Continuation
    messages: list[Message] | None = None
    context: str | Sequence[int] | None = None
    top: int = 0
    following: int = 0
    window: int | None = None

    @property
    def rolling(self) -> bool:
        """Whether this is a whole document scored in rolling windows."""
        return self.messages is None and self.context is None


@dataclass(frozen=True)
class Span:
    """One model input: score ``ids[start:]`` given what comes before them.

    Attributes
    ----------
    ids
        Context then continuation (token ids).
    start
        Index of the first scored token (at least 1).
    top
        Alternatives to keep per scored token.
    following
        Alternatives to keep for the position after the last id (0: that row is not computed).
    """

    ids: tuple[int, ...]
    start: int
    top: int = 0
    following: int = 0

    @property
    def first_row(self) -> int:
        """Position of the first logits row needed (it predicts ``ids[start]``)."""
        return self.start - 1

    @property
    def stop_row(self) -> int:
        """One past the last logits row needed."""
        return len(self.ids) if self.following else len(self.ids) - 1

    @property
    def rows(self) -> int:
        """How many rows this span needs."""
        return self.stop_row - self.first_row


class ScoringTarget(Protocol):
    """What :func:`plan_spans` needs of a backend: its tokenizer, settings, window and prompts."""

    tokenizer: Any
    settings: Any

    @property
    def context_window(self) -> int:
        """Most tokens one model input may hold."""

    @property
    def context_hint(self) -> str:
        """How the window can grow (appended to the context error)."""

    def _prompt_ids(self, messages: list[Message], tools: tuple[dict[str, Any], ...]) -> list[int]:
        """The non-thinking prompt's ids."""


#: The runtime's part: for each span, the log-softmax (float32, natural log) of the model's raw
#: logits at positions ``first_row .. stop_row - 1``, as ``(span index, rows)`` chunks of at most
#: :data:`CHUNK_ROWS` rows, each span's chunks in order.
RowsFunction = Callable[[list[Span]], Iterator[tuple[int, "np.ndarray"]]]


def check_top(top: int, what: str = "top_logprobs") -> int:
    """``top`` if it is an int in 0-20, else a one-line :class:`ConfigurationError`."""
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ConfigurationError(
            f"{what}={top!r} is out of range; give an integer from 0 to {MAX_TOP_LOGPROBS}"
        )
    return top


def rolling_windows(n_tokens: int, window: int) -> list[tuple[int, int, int]]:
    """Windows that score every token of a document of ``n_tokens`` tokens once.

    The model sees ``[prefix] + tokens``; a window ``(lo, first, stop)`` feeds positions
    ``lo .. stop`` of that sequence (at most ``window`` inputs) and scores tokens
    ``first .. stop - 1``. The first window starts at the prefix; each next one scores the
    ``window`` tokens after it given the token before them, and the last (shorter) one is
    given as much preceding text as fits -- the windows of lm-eval's ``loglikelihood_rolling``.
    """
    if window < 1:
        raise ConfigurationError(f"window={window} must be at least 1 token")
    spans = []
    first = 0
    while first < n_tokens:
        stop = min(first + window, n_tokens)
        # Sequence index of token t is t + 1 (the prefix is index 0); predicting token stop - 1
        # needs inputs up to sequence index stop - 1.
        lo = max(0, stop - window)
        spans.append((lo, first, stop))
        first = stop
    return spans


def split_pair(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str
) -> tuple[list[int], list[int]]:
    """Token ids of a raw ``context`` and its ``continuation``, split as lm-eval splits them.

    Whitespace at the end of the context belongs to the continuation, and the two are encoded
    together (so a merge across the boundary is tokenised as the model saw it in training).
    """
    stripped = context.rstrip()
    moved = context[len(stripped) :]
    whole = _encode(tokenizer, stripped + moved + continuation)
    head = _encode(tokenizer, stripped)
    return head, whole[len(head) :]


def reduce_rows(
    rows: np.ndarray, targets: np.ndarray | None, top: int
) -> tuple[list[float], list[bool], list[list[tuple[int, float]]]]:
    """Per row: the target's log-probability, whether it is the argmax, and the ``top`` best.

    ``targets`` may be shorter than ``rows`` (a final row with no target: only its top).
    """
    import numpy as np

    n_targets = 0 if targets is None else len(targets)
    best = rows.argmax(axis=1)
    logprobs: list[float] = []
    greedy: list[bool] = []
    if n_targets:
        assert targets is not None
        index = np.arange(n_targets)
        logprobs = rows[index, targets].astype(np.float64).tolist()
        greedy = (best[:n_targets] == targets).tolist()
    tops: list[list[tuple[int, float]]] = []
    if top == 1:
        tops = [[(int(b), float(rows[i, b]))] for i, b in enumerate(best)]
    elif top > 1:
        candidates = np.argpartition(rows, -top, axis=1)[:, -top:]
        for i, ids in enumerate(candidates):
            ordered = ids[np.argsort(-rows[i, ids], kind="stable")]
            tops.append([(int(t), float(rows[i, t])) for t in ordered])
    return logprobs, greedy, tops


def score_locally(
    backend: LocalBackend, requests: list[ScoreRequest], rows: RowsFunction
) -> list[Score]:
    """Score ``requests`` on an in-process backend whose runtime gives ``rows``.

    Prompts are rendered and checked first (nothing runs if one is refused); the model runs
    with the backend's generation lock held.
    """
    planned = [plan_spans(backend, request) for request in requests]
    spans = [span for request_spans in planned for span in request_spans]
    with backend._guard.generation():
        backend._check_open()
        per_span = _collect(spans, rows)
    return assemble(backend.tokenizer, planned, per_span)


def assemble(
    tokenizer: PreTrainedTokenizerBase, planned: list[list[Span]], per_span: list[SpanScores]
) -> list[Score]:
    """One :class:`Score` per request from its spans' values (``planned``: each request's
    spans, ``per_span``: the values of every span, in the same order)."""
    results = []
    cursor = 0
    for request_spans in planned:
        tokens: list[ScoredToken] = []
        following: tuple[TopLogprob, ...] = ()
        for span in request_spans:
            reduced = per_span[cursor]
            cursor += 1
            for position, token in enumerate(span.ids[span.start :]):
                tokens.append(
                    ScoredToken(
                        _token_text(tokenizer, token),
                        token,
                        reduced.logprobs[position],
                        reduced.greedy[position],
                        _tops(tokenizer, reduced.tops[position]) if span.top else (),
                    )
                )
            if span.following:
                following = _tops(tokenizer, reduced.following)
        results.append(Score(tuple(tokens), following))
    return results


# -- planning --------------------------------------------------------------------------------


def plan_spans(backend: ScoringTarget, request: ScoreRequest) -> list[Span]:
    """The spans of one request (its ids tokenised, windows cut), checked against the context
    window; one-line errors for what cannot be scored."""
    tokenizer = backend.tokenizer
    allow = backend.settings.allow_control_tokens
    if request.rolling:
        document = _ids(tokenizer, request.continuation, "text", allow)
        window = request.window or backend.context_window
        if request.window is not None and window > backend.context_window:
            raise ContextLengthError(
                f"window={window:,} exceeds the context window of {backend.context_window:,} "
                f"tokens; use a window of at most {backend.context_window:,}"
            )
        sequence = [_prefix_id(tokenizer), *document]
        spans = [
            Span(tuple(sequence[lo : stop + 1]), first + 1 - lo, request.top)
            for lo, first, stop in rolling_windows(len(document), window)
        ]
        if request.following:
            last = spans[-1]
            spans[-1] = Span(last.ids, last.start, last.top, request.following)
        return spans
    if request.messages is not None:
        context = backend._prompt_ids(request.messages, ())
        continuation = _ids(tokenizer, request.continuation, "continuation", allow)
    elif isinstance(request.context, str) and isinstance(request.continuation, str):
        _refuse_control_tokens(request.context, "context", allow)
        _refuse_control_tokens(request.continuation, "continuation", allow)
        context, continuation = split_pair(tokenizer, request.context, request.continuation)
    else:
        context = _ids(tokenizer, request.context or [], "context", allow, empty_ok=True)
        continuation = _ids(tokenizer, request.continuation, "continuation", allow)
    if not continuation:
        raise ConfigurationError(
            "the continuation is empty; give at least one token of text to score"
        )
    if not context:
        context = [_prefix_id(tokenizer)]
    ids = (*context, *continuation)
    inputs = len(ids) - (0 if request.following else 1)
    if inputs > backend.context_window:
        raise ContextLengthError(
            f"the context ({len(context):,} tokens) and continuation ({len(continuation):,}) "
            f"need {inputs:,} positions: more than the context window of "
            f"{backend.context_window:,} tokens; shorten them (score_text scores a long "
            f"document in windows){backend.context_hint}"
        )
    return [Span(ids, len(context), request.top, request.following)]


def _ids(
    tokenizer: PreTrainedTokenizerBase,
    value: str | Sequence[int],
    what: str,
    allow_control_tokens: bool,
    *,
    empty_ok: bool = False,
) -> list[int]:
    if isinstance(value, str):
        _refuse_control_tokens(value, what, allow_control_tokens)
        ids = _encode(tokenizer, value)
    elif isinstance(value, Sequence) and all(
        isinstance(token, int) and not isinstance(token, bool) for token in value
    ):
        ids = [int(token) for token in value]
        limit = len(tokenizer)
        bad = next((token for token in ids if not 0 <= token < limit), None)
        if bad is not None:
            raise ConfigurationError(
                f"the {what} has token id {bad}, outside the vocabulary (0-{limit - 1})"
            )
    else:
        raise ConfigurationError(
            f"the {what} must be text or a list of token ids, not {type(value).__name__}"
        )
    if not ids and not empty_ok:
        raise ConfigurationError(f"the {what} is empty; give at least one token of text to score")
    return ids


def _refuse_control_tokens(text: str, what: str, allow: bool) -> None:
    token = None if allow else find_control_token(text)
    if token is not None:
        raise ConfigurationError(
            f"the {what} contains the control token {token}; remove it, or set "
            "QWEN_ALLOW_CONTROL_TOKENS=true to score it as that token"
        )


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _prefix_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token a context-free text is scored after: BOS, else EOS (lm-eval's choice)."""
    token = getattr(tokenizer, "bos_token_id", None)  # the GGUF tokenizer has no BOS at all
    return int(token if token is not None else tokenizer.eos_token_id)


# -- running and assembling ----------------------------------------------------------------------


def _collect(spans: list[Span], rows: RowsFunction) -> list[SpanScores]:
    """Run the runtime over ``spans`` and reduce each chunk as it arrives."""
    import numpy as np

    results = [SpanScores() for _ in spans]
    for index, chunk in rows(spans):
        span, reduced = spans[index], results[index]
        first = span.first_row + reduced.rows
        reduced.rows += len(chunk)
        targets = np.asarray(span.ids[first + 1 : first + 1 + len(chunk)], dtype=np.int64)
        if len(targets):
            logprobs, greedy, tops = reduce_rows(chunk[: len(targets)], targets, span.top)
            reduced.logprobs += logprobs
            reduced.greedy += greedy
            reduced.tops += tops
        if len(targets) < len(chunk):  # the row after the last id
            reduced.following = reduce_rows(chunk[len(targets) :], None, span.following)[2][0]
    for span, reduced in zip(spans, results, strict=True):
        if reduced.rows != span.rows:  # pragma: no cover - a runtime bug, not a user's mistake
            raise RuntimeError(f"the runtime gave {reduced.rows} rows for a span of {span.rows}")
    return results


@dataclass
class SpanScores:
    """What is kept of one span's rows: per scored token its log-probability, whether it is the
    most likely token and the ``top`` best ``(id, logprob)``; the best after the span."""

    rows: int = 0
    logprobs: list[float] = field(default_factory=list)
    greedy: list[bool] = field(default_factory=list)
    tops: list[list[tuple[int, float]]] = field(default_factory=list)
    following: list[tuple[int, float]] = field(default_factory=list)


def _tops(
    tokenizer: PreTrainedTokenizerBase, best: list[tuple[int, float]]
) -> tuple[TopLogprob, ...]:
    return tuple(TopLogprob(_token_text(tokenizer, token), token, lp) for token, lp in best)


def _token_text(tokenizer: PreTrainedTokenizerBase, token: int) -> str:
    return str(tokenizer.decode([token], skip_special_tokens=False))
