"""Qwen3-4B on Apple's MLX through mlx-lm (``backend="mlx"``): Apple GPU on a Mac, CPU on Linux.

Loading: a local directory (MLX format, e.g. written by ``qwen-backends export mlx``, or a plain
Hugging Face Qwen3 checkpoint, which mlx-lm converts while loading) or a hub repository
(default: the family's MLX 4-bit build, :data:`qwen_backends.family.FAMILIES`), fetched
with ``huggingface_hub.snapshot_download`` so offline use fails with one clear
:class:`~qwen_backends.errors.ModelNotFoundError`.

Prompts are always rendered by the project's own non-thinking renderer
(:func:`~qwen_backends.chat.render_prompt_ids`) with the Hugging Face tokenizer mlx-lm loaded,
never by mlx-lm's chat path (its server fixes template arguments at start-up). ``tools`` are
rendered by that template too, and the model's ``<tool_call>`` blocks are parsed from the
generated text (:mod:`qwen_backends.tools`), in streams too. ``response_format`` is the grammar
engine every in-process backend shares (:mod:`qwen_backends.grammar`) as the last of mlx-lm's
logits processors (a :class:`~qwen_backends.grammar.GrammarProcessor`: numpy and MLX, no torch),
so the sampler can only draw tokens that keep the answer schema-valid.

Every :class:`~qwen_backends.sampling.SamplingParams` field is mapped explicitly, with
transformers' semantics so the same values mean the same thing as on the hf backend:

- ``temperature`` / ``top_k`` / ``top_p`` / ``min_p``: :func:`make_sampler` -- temperature first,
  then top-k, top-p and min-p (transformers' and vLLM's order, built from mlx-lm's
  ``apply_top_k`` / ``apply_top_p`` / ``apply_min_p``; mlx-lm's own ``make_sampler`` applies the
  temperature after the filters), greedy (argmax) at temperature 0;
- ``seed``: a per-call ``mx.random.key`` split at every step, so MLX's global random state is
  neither used nor changed (no seed: a fresh random key);
- ``repetition_penalty``: mlx-lm's CTRL-style processor over the whole sequence (prompt and
  answer, as transformers does);
- ``presence_penalty``: :class:`PresencePenalty`, a flat amount per token already *generated*
  (mlx-lm's counts prompt tokens too);
- ``english_only``: an additive 0/-inf mask over the vocabulary, built once per instance
  (:class:`AdditiveMask`);
- ``stop``: :class:`~qwen_backends.thinking.TextPipeline` on the decoded text, generation ends at
  the token that completes a stop string;
- ``max_new_tokens``: mlx-lm's ``max_tokens``.

Generated ids are decoded with the Hugging Face tokenizer, incrementally (a trailing incomplete
UTF-8 character waits for the next token), and :meth:`MLXBackend._generate` joins exactly the
pieces :meth:`MLXBackend._stream` yields, so ``"".join(stream(...)) == generate(...).text`` for
the same seed. Counts follow the contract: ``completion_tokens`` includes the end-of-turn token.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen_backends.backends.base import Capabilities
from qwen_backends.backends.local import GenerationLock, LocalBackend, check_context
from qwen_backends.errors import (
    GenerationError,
    MissingDependencyError,
    ModelNotFoundError,
    QwenBackendsError,
    first_line,
)
from qwen_backends.models import hub_offline, looks_like_path
from qwen_backends.results import FinishReason, Generation, Request
from qwen_backends.sampling import SamplingParams
from qwen_backends.thinking import TextPipeline
from qwen_backends.tools import ToolCallFilter

if TYPE_CHECKING:
    import mlx.core as mx
    from transformers import PreTrainedTokenizerBase

    from qwen_backends.grammar import GrammarEngine, GrammarProcessor
    from qwen_backends.settings import Settings
    from qwen_backends.structured import ResponseFormat

__all__ = [
    "AdditiveMask",
    "IncrementalDecoder",
    "MLXBackend",
    "PresencePenalty",
    "make_sampler",
]

#: Files a hub snapshot needs (weights, config, tokenizer, template); mlx-lm fetches the same.
HUB_PATTERNS = (
    "*.json",
    "model*.safetensors",
    "*.py",
    "tokenizer.model",
    "*.tiktoken",
    "*.txt",
    "*.jsonl",
    "*.jinja",
)

#: A logits processor as mlx-lm calls it: ``(tokens so far, logits) -> logits``.
LogitsProcessor = Callable[["mx.array", "mx.array"], "mx.array"]


# -- sampling ---------------------------------------------------------------------------------


def make_sampler(sampling: SamplingParams, vocab_size: int) -> Callable[[mx.array], mx.array]:
    """A sampler for mlx-lm's ``generate_step`` that honours ``sampling`` like transformers.

    Temperature 0 is argmax. Otherwise the log-probabilities are divided by the temperature,
    then top-k (``0`` or ``>= vocab_size``: off), top-p (``1``: off) and min-p (``0``: off) are
    applied in that order, and a token is drawn with a key derived from ``sampling.seed`` (a
    fresh random seed when it is ``None``), split once per step.
    """
    import mlx.core as mx
    from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

    if sampling.is_greedy:
        return lambda logprobs: mx.argmax(logprobs, axis=-1)
    inverse_temperature = 1.0 / sampling.temperature
    top_k = sampling.top_k if 0 < sampling.top_k < vocab_size else 0
    top_p, min_p = sampling.top_p, sampling.min_p
    seed = sampling.seed if sampling.seed is not None else secrets.randbits(32)
    state = [mx.random.key(seed)]

    def sample(logprobs: mx.array) -> mx.array:
        scores = logprobs * inverse_temperature
        if top_k:
            scores = apply_top_k(scores, top_k)
        if top_p < 1.0:
            scores = apply_top_p(scores, top_p)
        if min_p > 0.0:
            scores = apply_min_p(scores, min_p)
        state[0], key = mx.random.split(state[0])
        return mx.random.categorical(scores, axis=-1, key=key)

    return sample


class PresencePenalty:
    """Subtract ``penalty`` once from the logit of every token already *generated*.

    OpenAI-style (a flat amount whatever the count), on the answer only, as the hf backend does.

    Parameters
    ----------
    penalty
        Amount to subtract, > 0.
    prompt_length
        Leading entries of mlx-lm's token history that are the prompt.
    """

    def __init__(self, penalty: float, prompt_length: int) -> None:
        self.penalty = penalty
        self.prompt_length = prompt_length

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        """Return the penalised logits."""
        generated = tokens[self.prompt_length :]
        if generated.size == 0:
            return logits
        # Indexed assignment writes each position once however often it repeats: a flat penalty.
        logits[:, generated] = logits[:, generated] - self.penalty
        return logits


class AdditiveMask:
    """Add a precomputed 0 / -inf vector to the logits (``english_only``): one add per step.

    Parameters
    ----------
    mask
        Float vector of the model's vocabulary size: 0 for allowed tokens, -inf for the others.
    """

    def __init__(self, mask: mx.array) -> None:
        self.mask = mask
        self._cast: dict[Any, mx.array] = {}

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        """Return ``logits + mask`` (the mask cast once to the logits' dtype)."""
        mask = self._cast.get(logits.dtype)
        if mask is None:
            mask = self._cast[logits.dtype] = self.mask.astype(logits.dtype)
        return logits + mask


# -- decoding ---------------------------------------------------------------------------------


class IncrementalDecoder:
    """Decode ids one at a time with a Hugging Face tokenizer; the pieces join to the whole decode.

    A window of ids since the last complete character is decoded at each step; text ending in
    an incomplete UTF-8 sequence (U+FFFD) waits for the next id.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.window: list[int] = []
        self.sent = 0

    def add(self, token: int) -> str:
        """Add one id; return the new complete text (may be empty)."""
        self.window.append(token)
        text = _decode(self.tokenizer, self.window)
        ready = text.rstrip("\ufffd")
        piece = ready[self.sent :]
        if ready == text:
            self.window, self.sent = [], 0
        else:
            self.sent = max(self.sent, len(ready))
        return piece

    def flush(self) -> str:
        """The end of the text: an answer cut inside a character ends at the last complete one
        (as on the hf backend, vLLM and Ollama), so this is normally empty."""
        text = (
            _decode(self.tokenizer, self.window).rstrip("\ufffd")[self.sent :]
            if self.window
            else ""
        )
        self.window, self.sent = [], 0
        return text


def _decode(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    text = tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return str(text)


# -- loading ----------------------------------------------------------------------------------


def resolve_model_dir(source: str, settings: Settings) -> Path:
    """The local directory of ``source``: the directory itself, or a hub snapshot.

    Raises
    ------
    ModelNotFoundError
        For a missing directory, an unknown repository, or a repository that is not cached
        while downloads are off (saying how to fix each).
    """
    options = settings.mlx
    if looks_like_path(source):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise ModelNotFoundError(
                f"model directory {source!r} does not exist; fix the path in QWEN_MODEL / "
                f"--model, or give a hub id such as {settings.default_model('mlx')}",
                backend="mlx",
            )
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - mlx-lm depends on it
        raise MissingDependencyError(
            "loading a hub model needs huggingface_hub; pip install 'qwen-backends[mlx]'"
        ) from exc
    try:
        folder = snapshot_download(
            source,
            revision=options.revision,
            allow_patterns=list(HUB_PATTERNS),
            local_files_only=options.local_files_only,
            token=options.token.get_secret_value() if options.token is not None else None,
        )
    except Exception as exc:
        if hub_offline(options.local_files_only):
            hint = (
                "downloads are off (HF_HUB_OFFLINE or QWEN_MLX__LOCAL_FILES_ONLY) and it is not in "
                "the local cache; point QWEN_MODEL / --model at a local directory holding it (or "
                f"convert one: qwen-backends export mlx MODEL_DIR --output DIR), or download it "
                f"once while online: hf download {source}"
            )
        else:
            hint = (
                "check the hub id (and QWEN_MLX__REVISION), the network, and QWEN_MLX__TOKEN / "
                "HF_TOKEN for gated or private models"
            )
        raise ModelNotFoundError(
            f"cannot fetch model {source!r} ({first_line(exc)}); {hint}", backend="mlx"
        ) from exc
    return Path(folder)


@contextlib.contextmanager
def _translating_load_errors(source: str) -> Iterator[None]:
    """The one place mlx-lm loading failures become :mod:`qwen_backends.errors` types."""
    try:
        yield
    except QwenBackendsError:
        raise
    except ImportError as exc:
        raise MissingDependencyError(
            f"loading {source!r} needs a package that is not installed ({first_line(exc)}); "
            "pip install 'qwen-backends[mlx]'"
        ) from exc
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelNotFoundError(
            f"mlx-lm cannot load {source!r} ({first_line(exc)}); point QWEN_MODEL at a Qwen3 "
            "directory in MLX or Hugging Face format (config.json, *.safetensors, tokenizer)",
            backend="mlx",
        ) from exc


# -- the backend --------------------------------------------------------------------------------


class MLXBackend(LocalBackend):
    """Qwen3-4B through mlx-lm, non-thinking: the Apple GPU on a Mac, the CPU on Linux.

    Build it with ``create_backend(backend="mlx", model=...)``; settings come from
    ``settings.mlx`` and the model from ``settings.model_name``.

    One generation at a time: a lock serialises calls on one instance (a stream holds it from
    its first piece until it is exhausted or closed); starting another generation on the thread
    that holds an open stream raises :class:`~qwen_backends.errors.GenerationError`.

    Parameters
    ----------
    settings
        Resolved settings.

    Attributes
    ----------
    model
        The loaded mlx-lm model.
    wrapper
        mlx-lm's ``TokenizerWrapper`` around :attr:`tokenizer`.
    tokenizer
        The Hugging Face tokenizer: prompts are rendered and answers decoded with it.
    """

    name = "mlx"
    capabilities = Capabilities(
        english_only=True, renders_locally=True, structured_output=True, tools=True
    )

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._guard = GenerationLock(self.name)
        self._english_mask: AdditiveMask | None = None
        self._grammar_engine: GrammarEngine | None = None
        self.model, self.wrapper = self._load()
        self.tokenizer: PreTrainedTokenizerBase = self.wrapper._tokenizer
        self._prepare()

    @classmethod
    def readiness(cls, settings: Settings) -> str:
        """Where MLX runs here: the Apple GPU on Apple silicon, the CPU build on Linux."""
        system, machine = platform.system(), platform.machine()
        if system == "Darwin":
            if machine != "arm64":
                return "cannot start: MLX needs Apple silicon (an M-series Mac)"
            return "ready (Apple silicon: MLX runs on the GPU through Metal)"
        import mlx.core as mx

        device = mx.default_device()
        if device.type == mx.DeviceType.gpu:
            return "ready (MLX on an NVIDIA GPU through its CUDA build)"
        return (
            "ready (MLX's Linux CPU build: runs on the CPU here, for tests and development; "
            "on Linux the hf or vllm backend is faster)"
        )

    @property
    def context_window(self) -> int:
        """Most tokens (prompt + new) one call may use: ``settings.mlx.max_context``."""
        return self.settings.mlx.max_context

    # -- loading ------------------------------------------------------------------------------

    def _load(self) -> tuple[Any, Any]:
        """Load ``(model, TokenizerWrapper)`` with mlx-lm from a directory or a hub snapshot."""
        source = self.model_name
        folder = resolve_model_dir(source, self.settings)
        with _translating_load_errors(source):
            from mlx_lm.utils import load

            loaded = load(str(folder))
        return loaded[0], loaded[1]

    def _prepare(self) -> None:
        """End-of-turn ids, vocabulary size; both Qwen3 end tokens end generation in mlx-lm."""
        ids = {}
        for token in ("<|im_end|>", "<|endoftext|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if not isinstance(token_id, int) or token_id == self.tokenizer.unk_token_id:
                raise ModelNotFoundError(
                    f"the tokenizer of {self.model_name!r} has no {token} token, so it is not a "
                    "Qwen3 tokenizer; load Qwen3-4B (or a fine-tune of it)",
                    backend=self.name,
                )
            ids[token] = token_id
            self.wrapper.add_eos_token(token)
        self.eos_token_ids: frozenset[int] = frozenset(ids.values())
        self.vocab_size = _vocab_rows(self.model)

    # -- hooks ----------------------------------------------------------------------------------

    def _generate(self, request: Request) -> Generation:
        pieces: list[str] = []
        final: Generation | None = None
        for item in self._stream(request):
            if isinstance(item, Generation):
                final = item
            else:
                pieces.append(item)
        if final is None:  # pragma: no cover - _run always ends with a Generation
            raise GenerationError("mlx-lm ended without a result", backend=self.name)
        return final

    def _stream(self, request: Request) -> Iterator[str | Generation]:
        # Checks (and the context error) happen now, not at the first next().
        prompt_ids = self._checked_prompt(request)
        return self._run(
            prompt_ids,
            request.sampling,
            tools=bool(request.tools),
            response_format=request.response_format,
        )

    async def _astream(self, request: Request) -> AsyncIterator[str | Generation]:
        """The sync stream on one dedicated thread, its items handed over through a queue.

        MLX's stream contexts must be entered and left on the same thread, so the generation
        cannot hop between worker threads the way the default hook's ``next()`` calls do.
        Closing the async stream stops the generation after the current token.
        """
        iterator = await asyncio.to_thread(self._stream, request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        done = object()

        def hand_over(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def produce() -> None:
            try:
                for item in iterator:
                    hand_over(item)
                    if stop.is_set():
                        break
            except BaseException as exc:  # re-raised on the consumer's side
                hand_over(_Failure(exc))
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
                hand_over(done)

        worker = threading.Thread(target=produce, name="qwen-mlx-astream", daemon=True)
        worker.start()
        try:
            while True:
                item = await queue.get()
                if item is done:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            stop.set()
            await asyncio.to_thread(worker.join)

    def close(self) -> None:
        """Drop the model and tokenizer (waits for a generation on another thread)."""
        if self._closed:
            return
        with self._guard.closing():
            super().close()
            self.model = None
            self.wrapper = None
            self._english_mask = None
            self._grammar_engine = None

    # -- internals ------------------------------------------------------------------------------

    def _checked_prompt(self, request: Request) -> list[int]:
        """Render the non-thinking prompt and check it fits with ``max_new_tokens``."""
        prompt_ids = self._prompt_ids(request.messages, request.tools)
        check_context(
            len(prompt_ids),
            request.sampling.max_new_tokens,
            self.context_window,
            backend=self.name,
            hint=" (the window is QWEN_MLX__MAX_CONTEXT)",
        )
        return prompt_ids

    def logits_processors(self, sampling: SamplingParams, prompt_length: int) -> list[Any]:
        """The per-call processors, in transformers' order: repetition, presence, vocabulary."""
        processors: list[Any] = []
        if sampling.repetition_penalty != 1.0:
            from mlx_lm.sample_utils import make_logits_processors

            processors += make_logits_processors(
                repetition_penalty=sampling.repetition_penalty,
                repetition_context_size=prompt_length + sampling.max_new_tokens,
            )
        if sampling.presence_penalty > 0:
            processors.append(PresencePenalty(sampling.presence_penalty, prompt_length))
        if sampling.english_only:
            processors.append(self.english_mask())
        return processors

    def _constrained(
        self, processors: list[Any], sampling: SamplingParams, response_format: ResponseFormat
    ) -> list[Any]:
        """``processors`` plus the grammar of ``response_format``, last; the grammar takes
        ``english_only`` into its own mask (as on the hf backend), in place of the plain one."""
        kept = [p for p in processors if not isinstance(p, AdditiveMask)]
        return [*kept, self._grammar_mask(response_format, sampling.english_only)]

    def _grammar_mask(
        self, response_format: ResponseFormat, english_only: bool
    ) -> GrammarProcessor:
        """A fresh grammar processor for one call (the engine is built on first use)."""
        import numpy as np

        from qwen_backends.grammar import GrammarEngine, GrammarProcessor

        if self._grammar_engine is None:
            self._grammar_engine = GrammarEngine(
                self.tokenizer,
                self.vocab_size,
                sorted(self.eos_token_ids),
                compile_timeout=self.settings.structured_compile_timeout,
                backend=self.name,
            )
        engine = self._grammar_engine
        blocked = np.isinf(np.array(self.english_mask().mask)) if english_only else None
        return GrammarProcessor(engine.matcher(engine.compile(response_format), blocked))

    def english_mask(self) -> AdditiveMask:
        """The ``english_only`` processor, built once per instance."""
        if self._english_mask is None:
            import mlx.core as mx
            import numpy as np

            from qwen_backends.vocab import allowed_token_ids

            allowed = [
                i for i in allowed_token_ids(self.tokenizer, tier="english") if i < self.vocab_size
            ]
            mask = np.full(self.vocab_size, -np.inf, dtype=np.float32)
            mask[np.asarray(allowed, dtype=np.int64)] = 0.0
            self._english_mask = AdditiveMask(mx.array(mask))
        return self._english_mask

    def _run(
        self,
        prompt_ids: list[int],
        sampling: SamplingParams,
        *,
        tools: bool = False,
        response_format: ResponseFormat | None = None,
    ) -> Iterator[str | Generation]:
        """Generate token by token; yield visible pieces, then the final :class:`Generation`.

        With ``tools``, ``<tool_call>`` blocks are taken out of the text as it streams
        (:class:`~qwen_backends.tools.ToolCallFilter`) and returned as ``tool_calls``.
        """
        import mlx.core as mx
        from mlx_lm.generate import stream_generate

        with self._guard.generation():
            self._check_open()
            start = time.perf_counter()
            pipeline = TextPipeline(sampling.stop)
            decoder = IncrementalDecoder(self.tokenizer)
            calls = ToolCallFilter() if tools else None
            produced: list[str] = []
            count, ended = 0, False
            processors = self.logits_processors(sampling, len(prompt_ids))
            if response_format is not None:
                processors = self._constrained(processors, sampling, response_format)
            responses = stream_generate(
                self.model,
                self.wrapper,
                mx.array(prompt_ids),
                max_tokens=sampling.max_new_tokens,
                sampler=make_sampler(sampling, self.vocab_size),
                logits_processors=processors,
            )
            try:
                for response in responses:
                    count += 1
                    if response.token in self.eos_token_ids:
                        ended = True
                        break
                    visible = pipeline.feed(decoder.add(response.token))
                    if calls is not None:
                        visible = calls.feed(visible)
                    if visible:
                        produced.append(visible)
                        yield visible
                    if pipeline.stopped:
                        break
                tail = pipeline.feed(decoder.flush()) + pipeline.flush()
                if calls is not None:
                    tail = calls.feed(tail) + calls.flush()
                if tail:
                    produced.append(tail)
                    yield tail
            except QwenBackendsError:
                raise
            except Exception as exc:
                raise GenerationError(
                    f"mlx-lm generation failed: {first_line(exc)}",
                    partial_text="".join(produced),
                    backend=self.name,
                ) from exc
            finally:
                responses.close()
            reason: FinishReason = "stop" if ended or pipeline.stopped else "length"
            found = tuple(calls.calls) if calls is not None else ()
            yield Generation(
                text="".join(produced),
                finish_reason="tool_calls" if found else reason,
                tool_calls=found,
                prompt_tokens=len(prompt_ids),
                completion_tokens=count,
                seconds=time.perf_counter() - start,
            )


class _Failure:
    """An exception raised on the producing thread, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _vocab_rows(model: Any) -> int:
    """Logit rows of the model (151,936 for Qwen3: more than the tokenizer's 151,669)."""
    args = getattr(model, "args", None)
    size = getattr(args, "vocab_size", None)
    if isinstance(size, int):
        return size
    return int(model.model.embed_tokens.weight.shape[0])
