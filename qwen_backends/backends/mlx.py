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

- ``temperature`` / ``top_k`` / ``top_p`` / ``min_p``:
  :func:`~qwen_backends.backends.mlx_sampling.make_sampler` -- temperature first,
  then top-k, top-p and min-p (transformers' and vLLM's order, built from mlx-lm's
  ``apply_top_k`` / ``apply_top_p`` / ``apply_min_p``; mlx-lm's own ``make_sampler`` applies the
  temperature after the filters), greedy (argmax) at temperature 0;
- ``seed``: a per-call ``mx.random.key`` split at every step, so MLX's global random state is
  neither used nor changed (no seed: a fresh random key);
- ``repetition_penalty``: mlx-lm's CTRL-style processor over the whole sequence (prompt and
  answer, as transformers does);
- ``presence_penalty``: :class:`~qwen_backends.backends.mlx_sampling.PresencePenalty`, a flat
  amount per token already *generated*
  (mlx-lm's counts prompt tokens too);
- ``english_only``: an additive 0/-inf mask over the vocabulary, built once per instance
  (:class:`~qwen_backends.backends.mlx_sampling.AdditiveMask`);
- ``stop``: :class:`~qwen_backends.thinking.TextPipeline` on the decoded text, generation ends at
  the token that completes a stop string;
- ``max_new_tokens``: mlx-lm's ``max_tokens``.

The generated ids (:meth:`MLXBackend._tokens`, mlx-lm's ``stream_generate``) go through the
in-process backends' one token loop (:class:`~qwen_backends.backends.local.LocalBackend`):
decoded with the Hugging Face tokenizer, stop strings, thinking and tool calls removed the same
however the text is cut, so ``"".join(stream(...)) == generate(...).text`` for the same seed.

Prompt caching (mlx-lm's cache objects, by prefix): :mod:`~qwen_backends.backends.mlx_cache`.
"""

from __future__ import annotations

import collections
import contextlib
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen_backends.backends.base import Capabilities
from qwen_backends.backends.local import END_TOKENS, LocalBackend
from qwen_backends.backends.mlx_cache import MLXPromptCache, WithPrefix
from qwen_backends.backends.mlx_sampling import (
    AdditiveMask,
    PresencePenalty,
    RawLogits,
    make_sampler,
)
from qwen_backends.backends.token_loop import BackgroundSteps, PendingStep, Step
from qwen_backends.errors import (
    MissingDependencyError,
    ModelNotFoundError,
    QwenBackendsError,
    first_line,
)
from qwen_backends.models import hub_hint, hub_offline, looks_like_path
from qwen_backends.results import Request
from qwen_backends.sampling import SamplingParams

if TYPE_CHECKING:
    import mlx.core as mx

    from qwen_backends.grammar import GrammarEngine, GrammarProcessor
    from qwen_backends.results import Score
    from qwen_backends.scoring import ScoreRequest
    from qwen_backends.settings import Settings

__all__ = [
    "AdditiveMask",
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
        hint = hub_hint(
            source,
            "QWEN_MLX",
            offline=hub_offline(options.local_files_only),
            local="a local directory holding it (or convert one: qwen-backends export mlx "
            "MODEL_DIR --output DIR)",
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
    runtime = "mlx-lm"
    context_hint = " (the window is QWEN_MLX__MAX_CONTEXT)"
    capabilities = Capabilities(
        english_only=True,
        renders_locally=True,
        structured_output=True,
        tools=True,
        logprobs=True,
        scoring=True,
        prompt_cache=True,
    )

    def __init__(self, settings: Settings) -> None:
        self._english_mask: AdditiveMask | None = None
        self._grammar_engine: GrammarEngine | None = None
        #: Whether the model's logits are float32 (seen on the first call with logprobs).
        self._float32_logits = False
        super().__init__(settings)

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

    def _load(self) -> None:
        """Load the model and mlx-lm's ``TokenizerWrapper`` from a directory or a hub snapshot."""
        source = self.model_name
        folder = resolve_model_dir(source, self.settings)
        with _translating_load_errors(source):
            from mlx_lm.utils import load

            loaded = load(str(folder))
        self.model: Any = loaded[0]
        self.wrapper: Any = loaded[1]
        self.tokenizer = self.wrapper._tokenizer
        self.vocab_rows = _vocab_rows(self.model)

    def _prepare(self) -> None:
        """Both Qwen3 end tokens end generation in mlx-lm too."""
        for token in END_TOKENS:
            self.wrapper.add_eos_token(token)
        #: mlx-lm cache objects of recent calls.
        self.prompt_cache = MLXPromptCache(self.model, self.settings.mlx.prompt_cache_mb * 2**20)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """The ids that end an answer."""
        return self.end_ids

    @property
    def vocab_size(self) -> int:
        """Logit rows of the model (:attr:`vocab_rows`)."""
        return self.vocab_rows

    # -- the token step -------------------------------------------------------------------------

    def _tokens(
        self, prompt_ids: list[int], request: Request, compiled: Any
    ) -> Iterator[int | Step | PendingStep]:
        """mlx-lm's ``stream_generate`` with every sampling value mapped (see the module docs),
        on the cached prefix sharing most with the prompt; with ``logprobs``, a first processor
        keeps each step's raw logits."""
        import mlx.core as mx
        import numpy as np
        from mlx_lm.generate import stream_generate

        sampling = request.sampling
        cache, reused = self.prompt_cache.take(prompt_ids)
        self._cached_tokens = reused
        processors = self.logits_processors(sampling, len(prompt_ids))
        if reused:  # the penalties look back over the whole sequence, the mask does not
            processors = [
                p if isinstance(p, AdditiveMask) else WithPrefix(prompt_ids[:reused], p)
                for p in processors
            ]
        if compiled is not None:
            # The grammar takes english_only into its own mask (as on the hf backend), in
            # place of the plain one, and runs last.
            processors = [p for p in processors if not isinstance(p, AdditiveMask)]
            processors.append(self._grammar_mask(compiled, sampling.english_only))
        raw: collections.deque[mx.array] = collections.deque()
        # With no processor the log-probabilities mlx-lm computes for its sampler are the raw
        # log-softmax already; used once the model's logits are known to be float32 (half
        # precision ones are kept and upcast first).
        own = sampling.logprobs and not processors and self._float32_logits
        keeper = RawLogits(raw) if sampling.logprobs and not own else None
        if keeper is not None:
            processors.insert(0, keeper)
        responses = stream_generate(
            self.model,
            self.wrapper,
            mx.array(prompt_ids[reused:]),
            max_tokens=sampling.max_new_tokens,
            sampler=make_sampler(sampling, self.vocab_rows),
            logits_processors=processors,
            prompt_cache=cache,
        )
        seen = list(prompt_ids)
        steps = BackgroundSteps(sampling.top_logprobs) if sampling.logprobs else None
        # Only a call that ended cleanly (or was closed by its reader) leaves a cache to keep.
        clean = False
        try:
            for response in responses:
                seen.append(response.token)
                if steps is not None:
                    # mlx-lm computes the next step before handing over this one: oldest first.
                    row = np.array(response.logprobs if own else raw.popleft()[0])
                    yield steps.submit(row, response.token)
                else:
                    yield response.token
            clean = True
        except GeneratorExit:
            clean = True
            raise
        finally:
            responses.close()
            if steps is not None:
                steps.close()
            if keeper is not None and keeper.dtype is not None:
                self._float32_logits = keeper.dtype == mx.float32
            if clean:
                self.prompt_cache.keep(cache, seen)

    def _prepares_next_turn(self) -> bool:
        """With the prompt cache on and ``mlx.prompt_cache_next_turn``."""
        return self.prompt_cache.enabled and self.settings.mlx.prompt_cache_next_turn

    def _extend_cache(self, ids: list[int]) -> None:
        """Run the model over ``ids`` past the longest cached prefix and keep the cache list."""
        import mlx.core as mx
        from mlx_lm.generate import generation_stream

        cache, reused = self.prompt_cache.take(ids, counted=False)
        with mx.stream(generation_stream):  # the stream mlx-lm computes prompts on
            self.model(mx.array(ids[reused:])[None], cache=cache)
            mx.eval([layer.state for layer in cache])
        self.prompt_cache.lru.record_ahead(len(ids) - reused)
        self.prompt_cache.keep(cache, ids)

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

    def _compile(self, request: Request) -> Any:
        """The grammar of ``response_format``, compiled (the engine is built on first use)."""
        if request.response_format is None:
            return None
        from qwen_backends.grammar import GrammarEngine

        if self._grammar_engine is None:
            self._grammar_engine = GrammarEngine(
                self.tokenizer,
                self.vocab_rows,
                sorted(self.end_ids),
                compile_timeout=self.settings.structured_compile_timeout,
                backend=self.name,
            )
        return self._grammar_engine.compile(request.response_format)

    def _grammar_mask(self, compiled: Any, english_only: bool) -> GrammarProcessor:
        """A fresh grammar processor for one call of a compiled grammar (``english_only``
        folded into its mask)."""
        from qwen_backends.grammar import GrammarProcessor

        assert self._grammar_engine is not None  # built by _compile
        blocked = self.english_blocked() if english_only else None
        return GrammarProcessor(self._grammar_engine.matcher(compiled, blocked))

    def english_mask(self) -> AdditiveMask:
        """The ``english_only`` processor, built once per instance."""
        if self._english_mask is None:
            import mlx.core as mx

            self._english_mask = AdditiveMask(mx.array(self.english_bias()))
        return self._english_mask

    def _score(self, requests: list[ScoreRequest]) -> list[Score]:
        """Score through the model's body and its output layer at the scored positions only."""
        from qwen_backends.backends.scoring_rows import mlx_rows
        from qwen_backends.scoring import score_locally

        return score_locally(self, requests, mlx_rows(self.model))

    def _release(self, *, same_thread: bool) -> None:
        """Drop the model, tokenizer and prompt cache."""
        if hasattr(self, "prompt_cache"):  # a failed load releases before it exists
            self.prompt_cache.clear()
        self.model = None
        self.wrapper = None
        self._english_mask = None
        self._grammar_engine = None


def _vocab_rows(model: Any) -> int:
    """Logit rows of the model (151,936 for Qwen3: more than the tokenizer's 151,669)."""
    args = getattr(model, "args", None)
    size = getattr(args, "vocab_size", None)
    if isinstance(size, int):
        return size
    return int(model.model.embed_tokens.weight.shape[0])
