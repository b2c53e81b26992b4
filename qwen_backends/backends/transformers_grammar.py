"""Grammar-constrained decoding for transformers (hf / unsloth) and mlx: JSON-schema output.

:class:`GrammarLogitsProcessor` is an ordinary transformers logits processor. Each step it asks a
grammar matcher (one per row) which tokens keep the output a valid prefix of a document matching
the schema, and sets every other logit to ``-inf``. It runs in the custom processor list, which
transformers applies *before* temperature, top-k, top-p and min-p, so whatever the sampler does
with the remaining logits it can only draw an allowed token. ``english_only`` is folded into the
same mask (:attr:`GrammarLogitsProcessor.blocked`): a token must be allowed by both; if the schema
itself requires a token outside the English tier (an ``enum`` value in another script), the
grammar wins for that step rather than leaving nothing to sample. The mask itself
(:meth:`GrammarLogitsProcessor.allowed_words`) is plain torch on the CPU, so the mlx backend
applies the very same mask to MLX logits.

The grammar library is xgrammar, chosen by measurement (``benchmarks/bench_structured.py``,
figures in ``docs/benchmarks.md``): cheapest per token and fastest to compile among xgrammar,
llguidance and outlines-core, and correct on every bounded schema tested. The library sits behind
the small :class:`GrammarEngine` protocol, so the benchmark can run the others through the very
same processor.

Compiled grammars are cached per schema (:meth:`XGrammarEngine.compile`); building an engine
scans the vocabulary once (under a second), so a backend keeps one engine.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from qwen_backends.errors import MissingDependencyError, UnsupportedFeatureError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from qwen_backends.structured import ResponseFormat

__all__ = [
    "GrammarEngine",
    "GrammarLogitsProcessor",
    "GrammarMatcher",
    "XGrammarEngine",
    "pack_bitmask",
    "unpack_bitmask",
]

logger = logging.getLogger(__name__)
#: xgrammar's C++ errors start with "[hh:mm:ss] /path/file.cc:LINE: ".
_LOG_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")


class GrammarMatcher(Protocol):
    """One row's grammar state."""

    def accept(self, token: int) -> bool:
        """Advance by ``token``; ``False`` if the grammar forbids it."""

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into row ``row`` of an int32 bitmask."""

    def finished(self) -> bool:
        """Whether the grammar is complete and its stop token was accepted."""


class GrammarEngine(Protocol):
    """A grammar library bound to one tokenizer: compiles schemas, makes matchers."""

    #: Logits per step (the model's vocabulary rows, which may exceed the tokenizer's size).
    vocab_size: int
    #: Tokens never to generate on top of the grammar (``None``: none), see :class:`XGrammarEngine`.
    blocked: torch.Tensor | None

    def compile(self, response_format: ResponseFormat) -> Any:
        """Compile (or fetch from the cache) the grammar of ``response_format``."""

    def matcher(self, compiled: Any) -> GrammarMatcher:
        """A fresh matcher at the start of ``compiled``."""


class _XGrammarMatcher:
    def __init__(self, matcher: Any) -> None:
        self._matcher = matcher

    def accept(self, token: int) -> bool:
        return bool(self._matcher.accept_token(token))

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def finished(self) -> bool:
        return bool(self._matcher.is_terminated())


class XGrammarEngine:
    """xgrammar bound to one tokenizer.

    Output is compact JSON (no free whitespace), which keeps the model from padding with
    whitespace, and properties not in the schema are not generated (``strict_mode``).

    Compact JSON never contains a raw control character (U+0000-U+001F: JSON strings must
    escape them, and there is no whitespace outside strings), but xgrammar 0.2's grammar for a
    string with ``maxLength`` lets a raw tab through, which no JSON parser accepts. So every
    regular token whose bytes hold a control character is in :attr:`blocked`, which the
    processor removes from the grammar's mask.

    Parameters
    ----------
    tokenizer
        The model's tokenizer.
    vocab_size
        Rows of the model's output embedding (151,936 for Qwen3-4B, above the tokenizer's
        151,669: the extra rows are always masked).
    stop_token_ids
        Tokens that end the turn once the document is complete (``<|im_end|>``, ``<|endoftext|>``).
    cache_size
        Compiled schemas kept (least recently used dropped first).
    backend
        The backend using it, for error messages and the install hint.

    Raises
    ------
    MissingDependencyError
        If xgrammar is not installed.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        vocab_size: int,
        stop_token_ids: Sequence[int],
        *,
        cache_size: int = 64,
        backend: str = "hf",
    ) -> None:
        try:
            import xgrammar
        except ImportError as exc:
            raise MissingDependencyError(
                f"structured output on the {backend} backend needs xgrammar; "
                f"pip install 'qwen-backends[{backend}]'"
            ) from exc
        self.backend = backend
        self._xgr = xgrammar
        self.vocab_size = vocab_size
        info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids)
        )
        # One thread: these machines are shared, and the cache makes compilation rare anyway.
        self._compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.blocked: torch.Tensor | None = _control_tokens(
            info.decoded_vocab, tokenizer, vocab_size
        )
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def compile(self, response_format: ResponseFormat) -> Any:
        """The compiled grammar of ``response_format``, from the cache when seen before.

        Raises
        ------
        UnsupportedFeatureError
            If xgrammar cannot compile the schema (the message names the reason).
        """
        with self._lock:
            compiled = self._cache.pop(response_format.key, None)
            if compiled is None:
                try:
                    compiled = self._compiler.compile_json_schema(
                        response_format.key, any_whitespace=False, strict_mode=True
                    )
                except (RuntimeError, ValueError) as exc:
                    reason = _LOG_PREFIX.sub("", str(exc).strip()).split("\n")[0] or "unknown"
                    raise UnsupportedFeatureError(
                        self.backend,
                        f"response_format {response_format.name}",
                        f"xgrammar cannot enforce this schema ({reason}); simplify it",
                    ) from exc
            self._cache[response_format.key] = compiled
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return compiled

    def matcher(self, compiled: Any) -> GrammarMatcher:
        """A fresh matcher for one row."""
        return _XGrammarMatcher(self._xgr.GrammarMatcher(compiled))


def _control_tokens(
    vocabulary: Sequence[bytes], tokenizer: PreTrainedTokenizerBase, vocab_size: int
) -> torch.Tensor:
    """Mask of the regular (not added) tokens whose bytes contain a control character."""
    import torch

    added = set(tokenizer.get_added_vocab().values())
    control = bytes(range(32))
    ids = [
        index
        for index, piece in enumerate(vocabulary[:vocab_size])
        if index not in added and piece.translate(None, control) != piece
    ]
    blocked = torch.zeros(vocab_size, dtype=torch.bool)
    blocked[torch.tensor(ids, dtype=torch.long)] = True
    return blocked


def pack_bitmask(mask: torch.Tensor) -> torch.Tensor:
    """The int32 words of a boolean vector: bit ``i % 32`` of word ``i // 32`` is ``mask[i]``
    (the inverse of :func:`unpack_bitmask`)."""
    import torch

    words = (mask.numel() + 31) // 32
    padded = torch.zeros(words * 32, dtype=torch.int64)
    padded[: mask.numel()] = mask.to(torch.int64)
    shifts = torch.arange(32, dtype=torch.int64)
    packed = (padded.view(words, 32) << shifts).sum(dim=1)
    # Bit 31 makes a word exceed int32; keep the low 32 bits as a signed value.
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Boolean ``[rows, vocab_size]`` tensor (``True`` = allowed) from an int32 bitmask whose
    bit ``i % 32`` of word ``i // 32`` says whether token ``i`` is allowed."""
    import torch

    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1
    return bits.view(bitmask.shape[0], -1)[:, :vocab_size].bool()


class GrammarLogitsProcessor:
    """Mask every token the schema's grammar forbids (a transformers logits processor).

    Build a new one for every decode call (it keeps per-row state); put it in
    ``logits_processor`` so it runs before the sampler.

    Parameters
    ----------
    engine
        The grammar library bound to the model's tokenizer.
    compiled
        ``engine.compile(response_format)``.
    blocked
        Optional boolean mask over the vocabulary, ``True`` for tokens that must not be sampled
        either (``english_only``).

    The mask of a step is the grammar's, minus the engine's own :attr:`GrammarEngine.blocked`
    tokens, minus ``blocked``; a subtraction that would leave a row with nothing to sample is
    skipped for that row (the grammar's requirement wins).

    Attributes
    ----------
    failed_rows
        Rows whose sampled token the grammar rejected (never expected: that would mean a
        sampler ignored the mask); they run unconstrained and their output is reported by
        validation.
    """

    def __init__(
        self, engine: GrammarEngine, compiled: Any, blocked: torch.Tensor | None = None
    ) -> None:
        self.engine = engine
        self.compiled = compiled
        self.blocked = blocked
        self._refinements: list[torch.Tensor] | None = None
        self.failed_rows: set[int] = set()
        self._matchers: list[GrammarMatcher] | None = None
        self._bitmask: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Return ``scores`` with disallowed tokens at ``-inf`` (a new tensor)."""
        rows = scores.shape[0]
        last = None if self._matchers is None else input_ids[:, -1].tolist()
        words = self.allowed_words(last, rows)
        allowed = unpack_bitmask(words.to(scores.device, non_blocking=True), scores.shape[1])
        return scores.masked_fill(~allowed, float("-inf"))  # type: ignore[return-value]

    def allowed_words(self, last: Sequence[int] | None, rows: int) -> torch.Tensor:
        """The packed int32 mask (see :func:`unpack_bitmask`) of each row's allowed next tokens.

        ``last``: each row's newest token, to advance the grammar by; ``None`` on the first step
        (the matchers start then). The runtime-independent part of :meth:`__call__`, for
        runtimes whose logits are not torch tensors (the mlx backend).
        """
        import torch

        if self._matchers is None:
            self._matchers = [self.engine.matcher(self.compiled) for _ in range(rows)]
            size = (self.engine.vocab_size + 31) // 32
            self._bitmask = torch.empty((rows, size), dtype=torch.int32)
        elif last is not None:
            for row, matcher in enumerate(self._matchers):
                if row in self.failed_rows or matcher.finished():
                    continue
                if not matcher.accept(int(last[row])):
                    logger.warning(
                        "row %d: the sampler drew token %d, which the grammar forbids; "
                        "the row continues unconstrained",
                        row,
                        last[row],
                    )
                    self.failed_rows.add(row)
        bitmask = self._bitmask
        assert bitmask is not None
        bitmask.fill_(-1)  # all allowed: rows that are done or failed stay unconstrained
        for row, matcher in enumerate(self._matchers):
            if row not in self.failed_rows and not matcher.finished():
                matcher.fill(bitmask, row)
        # Narrowing works on the packed words (32x fewer elements than the vocabulary).
        words = bitmask
        for blocked in self._blocked_words():
            narrower = words & ~blocked
            empty = (narrower == 0).all(dim=1, keepdim=True)
            words = torch.where(empty, words, narrower)
        return words

    def _blocked_words(self) -> list[torch.Tensor]:
        if self._refinements is None:
            masks = [getattr(self.engine, "blocked", None), self.blocked]
            self._refinements = [pack_bitmask(mask.cpu()) for mask in masks if mask is not None]
        return self._refinements
