"""One grammar engine for every in-process backend: ``response_format`` as a token mask.

The hf, unsloth, mlx and llamacpp backends all constrain structured output the same way: before
each token is sampled, a grammar matcher says which tokens keep the answer a valid prefix of a
JSON document matching the schema, and every other logit is set to ``-inf``. One engine gives
one coverage, one set of bugs and one set of tests (see ``docs/structured_output.md``).

- :class:`GrammarEngine` -- built once per tokenizer (about a second: it scans the vocabulary);
  :meth:`GrammarEngine.compile` turns a :class:`~qwen_backends.structured.ResponseFormat` into a
  :class:`CompiledGrammar`, cached per schema and bounded by a time limit (the
  ``structured_compile_timeout`` setting), or refuses it with an
  :class:`~qwen_backends.errors.UnsupportedFeatureError` naming the keyword;
- :class:`GrammarMatcher` -- one answer's state: :meth:`~GrammarMatcher.allowed_words` (the
  packed mask of this step), :meth:`~GrammarMatcher.mask` (applied to numpy, torch or MLX
  logits), :meth:`~GrammarMatcher.accept` (advance by the sampled token),
  :attr:`~GrammarMatcher.finished`;
- :class:`GrammarProcessor` -- a matcher as a ``(tokens so far, logits) -> logits`` hook, the
  shape llama-cpp-python's ``logits_processor`` and mlx-lm's ``logits_processors`` call;
- :func:`apply_mask` / :func:`unpack_mask` / :func:`pack_mask` -- the packed-mask helpers, with
  thin adapters that import torch or MLX only when given their arrays.

The library is llguidance, chosen by measurement (``benchmarks/bench_structured.py`` on the
corpus ``tests/data/schemas.jsonl``, figures in ``docs/benchmarks.md``): the widest coverage,
millisecond compiles, a sub-millisecond mask over Qwen3's 151,936 tokens, and masks written into
numpy arrays, so mlx and llamacpp need no torch. Output is compact JSON (no free whitespace), so
a raw control character can never be part of an answer: JSON strings must escape them, and every
token holding one is blocked as well (:attr:`GrammarEngine.blocked`), as is every added token
but the stop tokens (``<tool_call>``, ``<think>``, ... are not JSON text).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from qwen_backends.errors import MissingDependencyError, UnsupportedFeatureError

if TYPE_CHECKING:
    import numpy as np

    from qwen_backends.structured import ResponseFormat

__all__ = [
    "DEFAULT_COMPILE_TIMEOUT",
    "CompiledGrammar",
    "GrammarEngine",
    "GrammarMatcher",
    "GrammarProcessor",
    "apply_mask",
    "pack_mask",
    "unpack_mask",
]

#: Seconds a schema may take to compile (the ``structured_compile_timeout`` setting's default).
DEFAULT_COMPILE_TIMEOUT = 10.0


class CompiledGrammar:
    """A schema compiled for one :class:`GrammarEngine` (make matchers from it).

    Attributes
    ----------
    response_format
        What it was compiled from.
    checked_after
        The schema's keywords no grammar enforces (``uniqueItems`` ...), checked on the answer
        only (see :mod:`qwen_backends.schema_support`).
    """

    __slots__ = ("_start", "checked_after", "response_format")

    def __init__(
        self, response_format: ResponseFormat, start: Any, checked_after: tuple[str, ...]
    ) -> None:
        self.response_format = response_format
        self._start = start
        self.checked_after = checked_after


class GrammarEngine:
    """llguidance bound to one tokenizer: compiles schemas, makes per-answer matchers.

    Parameters
    ----------
    tokenizer
        The model's tokenizer: a Hugging Face fast tokenizer or a ``tokenizers.Tokenizer``.
    vocab_size
        Logits per step (the model's output rows: 151,936 for Qwen3-4B, above the tokenizer's
        151,669; the extra rows are always masked).
    stop_token_ids
        Tokens that end the answer once the document is complete (``<|im_end|>`` ...).
    compile_timeout
        Seconds :meth:`compile` may take (the ``structured_compile_timeout`` setting).
    cache_size
        Compiled schemas kept (least recently used dropped first).
    backend
        The backend using it, for error messages and the install hint.

    Raises
    ------
    MissingDependencyError
        If llguidance (or numpy) is not installed.
    """

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        stop_token_ids: Sequence[int],
        *,
        compile_timeout: float = DEFAULT_COMPILE_TIMEOUT,
        cache_size: int = 64,
        backend: str = "hf",
    ) -> None:
        try:
            import llguidance
            import numpy  # noqa: F401  (the masks are numpy arrays)
        except ImportError as exc:
            raise MissingDependencyError(
                f"structured output on the {backend} backend needs llguidance and numpy; "
                f"pip install 'qwen-backends[{backend}]'"
            ) from exc
        self._llg = llguidance
        self.backend = backend
        self.vocab_size = vocab_size
        self.stop_token_ids = tuple(stop_token_ids)
        self.compile_timeout = compile_timeout
        #: int32 words per mask: bit ``i % 32`` of word ``i // 32`` is token ``i``.
        self.words = (vocab_size + 31) // 32
        # Shared, not copied: a copy of a Rust tokenizer costs 170 MB (it goes through JSON),
        # and the project never sets padding or truncation on it.
        backend_tokenizer = getattr(tokenizer, "backend_tokenizer", tokenizer)
        view = _VocabularyView(backend_tokenizer, vocab_size, self.stop_token_ids)
        # From token bytes, not from the tokenizer's JSON: llguidance would build a second
        # Rust tokenizer from the JSON, 230 MB instead of 60 MB (docs/benchmarks.md).
        self._tokenizer = llguidance.LLTokenizer(
            llguidance.TokenizerWrapper(view),
            n_vocab=vocab_size,
            eos_token=list(self.stop_token_ids),
        )
        #: Tokens never allowed in an answer: bytes with a raw control character, added tokens
        #: other than the stop tokens, rows past the tokenizer's vocabulary.
        self.blocked: np.ndarray = view.blocked
        del view.tokens
        self.blocked_words = pack_mask(self.blocked)
        self._cache: OrderedDict[str, CompiledGrammar] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def compile(self, response_format: ResponseFormat) -> CompiledGrammar:
        """The compiled grammar of ``response_format``, from the cache when seen before.

        Raises
        ------
        UnsupportedFeatureError
            If the schema uses what the engine cannot enforce (the message names the keyword),
            or compiling takes longer than :attr:`compile_timeout`.
        """
        with self._lock:
            compiled = self._cache.pop(response_format.key, None)
            if compiled is None:
                compiled = self._compile(response_format)
            self._cache[response_format.key] = compiled
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return compiled

    def matcher(
        self, compiled: CompiledGrammar, blocked: np.ndarray | None = None
    ) -> GrammarMatcher:
        """A fresh matcher at the start of ``compiled`` for one answer.

        Parameters
        ----------
        blocked
            Optional boolean mask over the vocabulary, ``True`` for tokens not to sample either
            (``english_only``); where it would leave nothing the grammar allows, the grammar
            wins for that step.
        """
        extra = None if blocked is None else pack_mask(blocked, self.vocab_size)
        return GrammarMatcher(self, compiled._start.deep_copy(), extra)

    def _compile(self, response_format: ResponseFormat) -> CompiledGrammar:
        from qwen_backends.schema_support import UnenforceableSchema, prepare

        option = f"response_format {response_format.name}"
        try:
            prepared = prepare(response_format.schema)
        except UnenforceableSchema as exc:
            raise UnsupportedFeatureError(self.backend, option, str(exc)) from exc
        options: Any = {"whitespace_flexible": False, "coerce_one_of": True}
        try:
            grammar = self._llg.LLMatcher.grammar_from_json_schema(
                prepared.schema, defaults=options
            )
        except (ValueError, TypeError) as exc:
            raise UnsupportedFeatureError(self.backend, option, _reason(str(exc))) from exc
        outcome: list[Any] = []
        # Building the matcher compiles the grammar (without the GIL); a thread bounds it.
        worker = threading.Thread(
            target=lambda: outcome.append(
                self._llg.LLMatcher(self._tokenizer, grammar, log_level=0)
            ),
            name="grammar-compile",
            daemon=True,
        )
        worker.start()
        worker.join(self.compile_timeout)
        if not outcome:
            raise UnsupportedFeatureError(
                self.backend,
                option,
                f"compiling its grammar took more than {self.compile_timeout:g} s; simplify the "
                "schema or raise the structured_compile_timeout setting "
                "(QWEN_STRUCTURED_COMPILE_TIMEOUT)",
            )
        start = outcome[0]
        if start.is_error():
            raise UnsupportedFeatureError(self.backend, option, _reason(start.get_error()))
        return CompiledGrammar(response_format, start, prepared.checked_after)


class GrammarMatcher:
    """One answer's grammar state (make it with :meth:`GrammarEngine.matcher`).

    Each step: :meth:`mask` the logits (or read :meth:`allowed_words`), sample, then
    :meth:`accept` the sampled token. After a stop token :attr:`finished` is true and the mask
    allows everything (a finished row of a batch only pads).

    Attributes
    ----------
    failed
        The sampler drew a token the grammar forbids (never expected: it would mean a sampler
        ignored the mask); from then on the grammar no longer constrains this answer, and its
        validation reports the result.
    """

    def __init__(self, engine: GrammarEngine, matcher: Any, blocked_words: Any) -> None:
        import numpy as np

        self.engine = engine
        self._matcher = matcher
        self._extra = blocked_words
        self._words = np.empty(engine.words, dtype=np.int32)
        self._fresh = False
        self.failed = False
        self.finished = False

    def accept(self, token: int) -> bool:
        """Advance by the sampled ``token``; ``False`` (and :attr:`failed`) if the grammar
        forbids it. A stop token after a complete document sets :attr:`finished`."""
        self._fresh = False
        if self.finished or self.failed:
            return not self.failed
        if token in self.engine.stop_token_ids and self._matcher.is_accepting():
            self.finished = True
            return True
        if not self._matcher.consume_token(int(token)):
            self.failed = True
            return False
        return True

    def allowed_words(self) -> np.ndarray:
        """This step's packed mask (int32 words, see :func:`unpack_mask`): the grammar's
        tokens, minus :attr:`GrammarEngine.blocked`, minus the matcher's ``blocked`` unless
        that would leave nothing. Computed once per step (cached until :meth:`accept`)."""
        import numpy as np

        if self._fresh:
            return self._words
        words = self._words
        if self.finished or self.failed:
            words.fill(-1)
        else:
            self._matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
        for blocked in (self.engine.blocked_words, self._extra):
            if blocked is None:
                continue
            narrower = words & ~blocked
            if narrower.any():
                np.copyto(words, narrower)
        self._fresh = True
        return words

    def allowed(self) -> np.ndarray:
        """This step's mask as a boolean vector over the vocabulary (``True`` = allowed)."""
        return unpack_mask(self.allowed_words(), self.engine.vocab_size)

    def mask(self, logits: Any) -> Any:
        """``logits`` with every token this step forbids at ``-inf`` (see :func:`apply_mask`:
        numpy arrays in place, torch and MLX arrays as new arrays)."""
        return apply_mask(logits, self.allowed_words())


class GrammarProcessor:
    """A :class:`GrammarMatcher` as a ``(tokens so far, logits) -> logits`` hook.

    Runtimes such as llama-cpp-python (``logits_processor``) and mlx-lm (``logits_processors``)
    call such a hook once per step with every token so far (the prompt first, then each drawn
    token appended): from the second call on, the newest token advances the matcher; then the
    step's mask is applied (:meth:`GrammarMatcher.mask`). Build one per call.

    Parameters
    ----------
    matcher
        A fresh matcher for this call.
    """

    def __init__(self, matcher: GrammarMatcher) -> None:
        self.matcher = matcher
        self._started = False

    def __call__(self, tokens: Any, logits: Any) -> Any:
        """Return ``logits`` with every token the grammar forbids at ``-inf``."""
        import numpy as np

        if self._started:
            self.matcher.accept(int(np.asarray(tokens[-1:]).reshape(-1)[0]))
        self._started = True
        return self.matcher.mask(logits)


def pack_mask(mask: Any, size: int | None = None) -> np.ndarray:
    """The int32 words of a boolean vector (padded with ``False`` to ``size`` entries): bit
    ``i % 32`` of word ``i // 32`` is ``mask[i]`` (the inverse of :func:`unpack_mask`)."""
    import numpy as np

    flags = np.asarray(mask, dtype=bool).reshape(-1)
    size = flags.size if size is None else size
    padded = np.zeros(((size + 31) // 32) * 32, dtype=bool)
    padded[: min(size, flags.size)] = flags[:size]
    return np.packbits(padded, bitorder="little").view(np.int32).copy()


def unpack_mask(words: Any, size: int) -> np.ndarray:
    """Boolean vector of ``size`` entries (``True`` = allowed) from int32 words whose bit
    ``i % 32`` of word ``i // 32`` is token ``i`` (rows of words give rows of flags)."""
    import numpy as np

    words = np.ascontiguousarray(words, dtype=np.int32)
    count = min(size, words.shape[-1] * 32)
    bits = np.unpackbits(words.view(np.uint8), axis=-1, count=count, bitorder="little")
    return bits.view(bool)


def apply_mask(logits: Any, words: Any) -> Any:
    """Set every logit whose bit in ``words`` is 0 to ``-inf``.

    ``logits`` is ``[vocab]`` or ``[rows, vocab]`` (then ``words`` is ``[rows, words]`` or one
    row for all): a numpy array is changed in place and returned; a torch tensor or an MLX
    array gives a new one (their runtime is imported only for their own arrays). Logits past
    the mask's width are masked too.
    """
    module = type(logits).__module__.split(".")[0]
    size = logits.shape[-1]
    allowed = unpack_mask(words, size)
    if allowed.shape[-1] < size:
        import numpy as np

        pad = np.zeros((*allowed.shape[:-1], size - allowed.shape[-1]), dtype=bool)
        allowed = np.concatenate([allowed, pad], axis=-1)
    if module == "torch":
        import torch

        flags = torch.from_numpy(allowed).to(logits.device, non_blocking=True)
        return logits.masked_fill(~flags, float("-inf"))
    if module == "mlx":
        import mlx.core as mx

        return mx.where(mx.array(allowed), logits, mx.array(float("-inf"), dtype=logits.dtype))
    import numpy as np

    np.putmask(logits, ~np.broadcast_to(allowed, logits.shape), -np.inf)
    return logits


class _VocabularyView:
    """A ``tokenizers.Tokenizer`` in the shape ``llguidance.TokenizerWrapper`` reads: every
    token's bytes (added tokens marked with a leading 0xFF byte, as llguidance expects), the
    special ids and a ``text -> ids`` call; it also works out :attr:`GrammarEngine.blocked`."""

    bos_token_id = None

    def __init__(self, tokenizer: Any, vocab_size: int, stops: Sequence[int]) -> None:
        import numpy as np

        from qwen_backends.tokenizer import byte_decoder

        self._tokenizer = tokenizer
        self.eos_token_id = stops[0] if stops else None
        to_byte = byte_decoder()
        control = {char for char, byte in to_byte.items() if byte < 0x20}
        added = {
            index: token
            for index, token in tokenizer.get_added_tokens_decoder().items()
            if index < vocab_size
        }
        self.special_token_ids = sorted(added)
        self.tokens: list[bytes] = [b""] * vocab_size
        self.blocked = np.ones(vocab_size, dtype=bool)
        for piece, index in tokenizer.get_vocab(with_added_tokens=False).items():
            if index < vocab_size and index not in added:
                self.tokens[index] = bytes(to_byte[char] for char in piece)
                self.blocked[index] = not control.isdisjoint(piece)
        for index, token in added.items():
            # Every added token counts as special, as in llguidance's own tokenizer loader:
            # ``<tool_call>`` or ``<think>`` never stand for their letters in JSON text.
            self.tokens[index] = b"\xff" + token.content.encode("utf-8")
            self.blocked[index] = index not in stops

    def __call__(self, text: str) -> list[int]:
        """The ids of ``text`` (plain text: added tokens are not parsed from it)."""
        if not isinstance(text, str):
            raise TypeError("text only")  # TokenizerWrapper probes with bytes first
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)


def _reason(message: str) -> str:
    """An llguidance error on one line: its lines joined, a regex error's caret line dropped."""
    lines = [line.strip() for line in message.strip().splitlines()]
    text = "; ".join(line for line in lines if line and set(line) != {"^"})
    text = text.replace(":;", ":") or "the grammar could not be built"
    return text if len(text) <= 300 else text[:297] + "..."
