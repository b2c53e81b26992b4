"""Qwen3-4B as a GGUF file on llama.cpp, in process (``backend="llamacpp"``): CPU, Metal or CUDA.

Loading: ``settings.model_name`` is a local ``.gguf`` file
(:func:`~qwen_backends.models.looks_like_path`) or a hub repo of GGUFs, from which
``Llama.from_pretrained`` picks ``settings.gguf_filename`` (a glob such as ``*Q4_K_M.gguf``).
The file must start with the GGUF magic bytes and carry Qwen3's vocabulary (checked by
tokenizing a probe with both tokenizers).

Prompts are always the project's own non-thinking rendering
(:func:`~qwen_backends.chat.render_prompt_ids`), never llama-cpp-python's chat handler (which
renders the GGUF's template without ``enable_thinking=False``, i.e. THINKING prompts). The
tokenizer used for that, and for decoding:

- a Hugging Face tokenizer folder beside the GGUF (``tokenizer.json`` +
  ``tokenizer_config.json`` in the same folder), used as is; else
- by default (``settings.llamacpp.tokenizer = "gguf"``) the tokenizer embedded in the GGUF
  itself (:func:`~qwen_backends.gguf_tokenizer.tokenizer_from_gguf`: its vocabulary, merges and
  chat template, byte-exact with Hugging Face's, without transformers or torch); else
- the ``settings.llamacpp.tokenizer`` vocabulary (``"offline"``, a hub id or a folder) with the
  chat template embedded in the GGUF (``tokenizer.chat_template``), so the prompt is exactly
  what that template renders non-thinking. Its mode is checked with
  :func:`~qwen_backends.thinking.template_mode` (a thinking-only template is refused).

Generated ids are decoded with that tokenizer, not ``Llama.detokenize``: detokenize has a
32-byte buffer per token and returns the 240 longer tokens (runs of spaces, dashes ...) empty.

Sampling: every :class:`~qwen_backends.sampling.SamplingParams` field reaches ``Llama.generate``
explicitly (llama-cpp-python's defaults are top_k 40, top_p 0.95, min_p 0.05, temperature 0.8):
temperature (0 = greedy), top_p, top_k (0 disables), min_p, presence_penalty, repetition_penalty
(``repeat_penalty``), the seed (a fresh one when ``None``), stop strings (cut by
:class:`~qwen_backends.thinking.TextPipeline`), max_new_tokens, and ``english_only`` as a
precomputed additive numpy mask in a logits processor (~0.3 ms a token; a 54k-entry
``logit_bias`` costs ~11 ms). Typical-p, TFS and mirostat are switched off.

Differences from the hf backend, by construction of llama.cpp's sampler: the penalties look at
the last ``settings.llamacpp.last_n_tokens`` GENERATED tokens (default: all of them; prompt tokens
never count, whereas transformers' repetition_penalty also counts the prompt), and temperature is
applied after top-k/top-p/min-p, so sampled (not greedy) output follows a slightly different
distribution. Greedy output matches transformers on the same weights (f16/q8_0).

``response_format`` is the grammar engine every in-process backend shares
(:mod:`qwen_backends.grammar`) as a numpy ``logits_processor`` (a
:class:`~qwen_backends.grammar.GrammarProcessor`, ``english_only`` folded into its mask), not
llama.cpp's GBNF grammars: llama-cpp-python's schema converter hands llama.cpp grammar text it
never parsed (rejected text kills the process), lets raw control characters into strings and
ignores numeric bounds.
``tools`` are rendered by the chat template and the ``<tool_call>`` blocks are parsed from
the generated text (:mod:`qwen_backends.tools`), in streams too.

Prompt caching (live context, saved states): :mod:`~qwen_backends.backends.llamacpp_cache`.

Counting follows the contract: ``completion_tokens`` includes the end-of-turn token (llama.cpp's
own ``usage`` leaves it out); ``prompt_tokens`` is the length of the rendered prompt.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen_backends.backends.base import Capabilities
from qwen_backends.backends.llamacpp_cache import LlamaPromptCache
from qwen_backends.backends.llamacpp_files import check_context, check_gguf_file
from qwen_backends.backends.local import LocalBackend
from qwen_backends.backends.token_loop import BackgroundSteps, PendingStep, Step
from qwen_backends.errors import (
    GenerationError,
    MissingDependencyError,
    ModelNotFoundError,
    QwenBackendsError,
    first_line,
)
from qwen_backends.models import hub_hint, hub_offline, looks_like_path
from qwen_backends.results import Request
from qwen_backends.sampling import SamplingParams
from qwen_backends.thinking import template_mode

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedTokenizerBase

    from qwen_backends.grammar import CompiledGrammar, GrammarEngine
    from qwen_backends.results import Score
    from qwen_backends.scoring import ScoreRequest
    from qwen_backends.settings import Settings

__all__ = ["LlamaCppBackend", "gguf_tokenizer"]

logger = logging.getLogger(__name__)

#: A string whose ids must agree between llama.cpp and the tokenizer (Qwen3 vocabulary check).
_VOCAB_PROBE = "<|im_start|>user\nHello, world! Schöne Grüße 😀<|im_end|>\n<think>\n\n</think>\n\n"


def gguf_tokenizer(template: str | None, vocabulary: str = "offline") -> PreTrainedTokenizerBase:
    """A Hugging Face tokenizer with ``vocabulary``'s ids and a GGUF's embedded chat template.

    Parameters
    ----------
    template
        ``tokenizer.chat_template`` from the GGUF; ``None`` keeps the vocabulary's own template
        (a warning is logged: the GGUF carries none).
    vocabulary
        ``"offline"`` (the byte-exact Qwen3 tokenizer), a hub id or a tokenizer folder.
    """
    from qwen_backends.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(vocabulary)
    if template:
        tokenizer.chat_template = template
    else:
        logger.warning(
            "the GGUF carries no chat template; rendering with the template of %r", vocabulary
        )
    return tokenizer


class LlamaCppBackend(LocalBackend):
    """Qwen3-4B from a GGUF file through llama-cpp-python, non-thinking.

    Build it with ``create_backend(backend="llamacpp", model="path/to/model.gguf")``; settings
    come from ``settings.llamacpp``. One generation at a time per instance (a lock serialises
    calls; another thread waits). :meth:`generate_batch` answers the conversations one after
    another (``capabilities.native_batching`` is ``False``); async calls run on a worker thread.

    Parameters
    ----------
    settings
        Resolved settings.

    Attributes
    ----------
    llama
        The ``llama_cpp.Llama`` instance.
    tokenizer
        The tokenizer that renders prompts and decodes answers (see the module docs).
    tokenizer_source
        ``"directory"`` (a tokenizer folder beside the GGUF) or ``"embedded"`` (the GGUF's chat
        template on the configured vocabulary).
    embedded_template
        The chat template stored in the GGUF (``None`` if it has none).
    model_path
        The GGUF file loaded.
    """

    name = "llamacpp"
    runtime = "llama.cpp"
    context_hint = ", or raise QWEN_LLAMACPP__N_CTX (at most the model's 40,960)"
    capabilities = Capabilities(
        english_only=True,
        native_batching=False,
        renders_locally=True,
        seeded=True,
        structured_output=True,
        tools=True,
        logprobs=True,
        scoring=True,
        prompt_cache=True,
    )

    def __init__(self, settings: Settings) -> None:
        self._english_mask: np.ndarray | None = None
        self._grammar_engine: GrammarEngine | None = None
        self._mask_mismatch = 0
        self.llama: Any = None
        super().__init__(settings)

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def readiness(cls, settings: Settings) -> str:
        """Ready when the GGUF file exists (local) or can be downloaded (hub repo)."""
        # QWEN_MODEL only applies to the selected backend.
        source = (
            settings.model_name
            if settings.backend == cls.name
            else settings.default_model(cls.name)
        )
        if looks_like_path(source):
            path = Path(source).expanduser()
            return "ready" if path.is_file() else f"cannot start: no GGUF file at {source}"
        if hub_offline():
            return f"needs {source} ({settings.gguf_filename}) in the hub cache (offline)"
        return f"ready (downloads {source} {settings.gguf_filename} on first use)"

    def _llama_options(self) -> dict[str, Any]:
        options = self.settings.llamacpp
        return {
            "n_ctx": options.n_ctx,
            "n_threads": options.n_threads,
            "n_threads_batch": options.n_threads_batch,
            "n_gpu_layers": options.n_gpu_layers,
            "use_mmap": options.use_mmap,
            "seed": options.seed,
            "verbose": options.verbose,
            "logits_all": False,
        }

    def _load(self) -> None:
        """The ``Llama`` for ``settings.model_name`` (a local GGUF or a hub repo + pattern), then
        the tokenizer that renders prompts for it (see the module docs)."""
        self.llama = self._load_llama()
        try:
            self.model_path = Path(self.llama.model_path)
            meta = dict(self.llama.metadata or {})
            self.embedded_template: str | None = meta.get("tokenizer.chat_template") or None
            self.tokenizer, self.tokenizer_source = self._load_tokenizer()
        except BaseException:
            self.llama.close()
            raise

    def _load_llama(self) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise MissingDependencyError(
                f"the llamacpp backend needs llama-cpp-python ({first_line(exc)}); pip install "
                "'qwen-backends[llamacpp]' (it compiles llama.cpp; scripts/setup.sh builds the "
                "wheel once and caches it, see README: llama.cpp)"
            ) from exc
        source = self.model_name
        options = self._llama_options()
        if looks_like_path(source):
            path = Path(source).expanduser()
            check_gguf_file(path, source)
            check_context(path, self.settings.llamacpp.n_ctx)
            return self._construct(lambda: Llama(model_path=str(path), **options), source)
        pattern = self.settings.gguf_filename
        return self._construct(
            lambda: Llama.from_pretrained(repo_id=source, filename=pattern, **options),
            f"{source} ({pattern})",
        )

    def _construct(self, build: Any, source: str) -> Any:
        try:
            return build()
        except QwenBackendsError:
            raise
        except ImportError as exc:  # huggingface_hub for from_pretrained
            raise MissingDependencyError(
                f"downloading {source} needs huggingface_hub ({first_line(exc)}); pip install "
                "huggingface_hub, or give a local .gguf file"
            ) from exc
        except Exception as exc:  # llama.cpp and the hub client raise many types
            detail = first_line(exc)
            if not looks_like_path(self.model_name):
                repo, pattern = self.model_name, self.settings.gguf_filename
                hint = hub_hint(repo, None, offline=hub_offline(), local="a local .gguf file")
                hint += f" (QWEN_LLAMACPP__FILENAME picks the file in the repo, now {pattern!r})"
            else:
                hint = (
                    "the file may be truncated or from a newer llama.cpp than llama-cpp-python "
                    "0.3.36 supports; convert it again with qwen-backends export gguf"
                )
            raise ModelNotFoundError(f"cannot load GGUF {source} ({detail}); {hint}") from exc

    def _load_tokenizer(self) -> tuple[PreTrainedTokenizerBase, str]:
        folder = self.model_path.parent
        if (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file():
            from qwen_backends.tokenizer import load_tokenizer

            tokenizer, source = load_tokenizer(str(folder)), "directory"
        elif self.settings.llamacpp.tokenizer == "gguf":
            from qwen_backends.gguf_tokenizer import tokenizer_from_gguf

            # No transformers (nor torch): the GGUF's own vocabulary, merges and template.
            light: Any = tokenizer_from_gguf(self.model_path, self.embedded_template)
            tokenizer, source = light, "embedded"
        else:
            tokenizer = gguf_tokenizer(self.embedded_template, self.settings.llamacpp.tokenizer)
            source = "embedded"
        template_mode(tokenizer)  # refuses thinking-only and non-Qwen3 templates now
        return tokenizer, source

    def _prepare(self) -> None:
        """Check the vocabulary agrees; add llama.cpp's own end of generation to the end ids."""
        import llama_cpp

        expected = list(self.tokenizer(_VOCAB_PROBE, add_special_tokens=False)["input_ids"])
        got = self.llama.tokenize(_VOCAB_PROBE.encode(), add_bos=False, special=True)
        if got != expected:
            raise ModelNotFoundError(
                f"the vocabulary of {self.model_path.name} does not match the Qwen3 tokenizer "
                f"({self.tokenizer_source}); this backend runs Qwen3 GGUFs only"
            )
        self._vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
        end = {*self.end_ids, int(self.llama.token_eos())}
        self.end_ids = frozenset(token for token in end if self.is_end_of_generation(token)) | {
            self.im_end_id
        }
        self.n_vocab: int = int(self.llama.n_vocab())
        self.vocab_rows = self.n_vocab
        #: The live context and saved states of recent calls.
        self.prompt_cache = LlamaPromptCache(
            self.llama, self.settings.llamacpp.prompt_cache_mb * 2**20
        )

    def is_end_of_generation(self, token: int) -> bool:
        """Whether llama.cpp itself treats ``token`` as end of generation (its EOG set)."""
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    # -- hooks --------------------------------------------------------------------------------

    @property
    def context_window(self) -> int:
        """Most tokens (prompt + new) one call may use: ``settings.llamacpp.n_ctx``.

        (llama.cpp may round its context up; the setting is what is promised and checked.)
        """
        return min(self.settings.llamacpp.n_ctx, int(self.llama.n_ctx()))

    def _compile(self, request: Request) -> CompiledGrammar | None:
        """The grammar of ``response_format`` (``None`` without one), compiled by the engine
        every in-process backend shares (built on first use, cached per schema)."""
        if request.response_format is None:
            return None
        from qwen_backends.grammar import GrammarEngine

        if self._grammar_engine is None:
            self._grammar_engine = GrammarEngine(
                self.tokenizer,
                self.n_vocab,
                (self.im_end_id, *sorted(self.end_ids - {self.im_end_id})),
                compile_timeout=self.settings.structured_compile_timeout,
                backend=self.name,
            )
        return self._grammar_engine.compile(request.response_format)

    def generate_kwargs(
        self, sampling: SamplingParams, compiled: CompiledGrammar | None = None
    ) -> dict[str, Any]:
        """Every argument ``Llama.generate`` receives for ``sampling`` (nothing left default).

        ``compiled`` (see :meth:`_compile`) becomes a fresh numpy grammar processor that holds
        the ``english_only`` mask itself; llama.cpp's own grammars are never used. Also sets the
        sampler's seed and penalty window on :attr:`llama` (llama-cpp-python reads both from
        the instance when it builds the sampler chain).
        """
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(32)
        self.llama.set_seed(seed)
        processors: list[Any] = []
        if compiled is not None:
            from qwen_backends.grammar import GrammarProcessor

            assert self._grammar_engine is not None  # built by _compile
            blocked = self.english_blocked() if sampling.english_only else None
            processors.append(GrammarProcessor(self._grammar_engine.matcher(compiled, blocked)))
        elif sampling.english_only:
            self._english()  # built once, before any token
            processors.append(self._english_processor)
        window = self.settings.llamacpp.last_n_tokens
        self.llama.last_n_tokens_size = window if window is not None else self.context_window
        return {
            "temp": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
            "min_p": sampling.min_p,
            "typical_p": 1.0,
            "tfs_z": 1.0,
            "mirostat_mode": 0,
            "repeat_penalty": sampling.repetition_penalty,
            "presence_penalty": sampling.presence_penalty,
            "frequency_penalty": 0.0,
            "penalize_nl": True,
            "logits_processor": processors or None,
            "grammar": None,
            "reset": True,
        }

    def _english_processor(self, input_ids: Any, scores: np.ndarray) -> np.ndarray:
        """Add the precomputed mask (0 allowed, -inf blocked) to the logits, in place."""
        import numpy as np

        mask = self._english()
        if scores.shape[0] != mask.shape[0]:
            # The mask is by token id and needs every logit. An exception raised here would be
            # swallowed by the ctypes callback, so _tokens raises it after the token.
            self._mask_mismatch = scores.shape[0]
            return scores
        np.add(scores, mask, out=scores)
        return scores

    def _english(self) -> np.ndarray:
        if self._english_mask is None:
            self._english_mask = self.english_bias()
        return self._english_mask

    def _tokens(
        self, prompt_ids: list[int], request: Request, compiled: Any
    ) -> Iterator[int | Step | PendingStep]:
        """``Llama.generate`` with every sampling value mapped (see the module docs). With
        ``logprobs``, each step's raw logits are read from the context after the token is drawn:
        llama.cpp's samplers work on a copy, so the context still holds the model's own."""
        import llama_cpp
        import numpy as np

        sampling = request.sampling
        self._cached_tokens = self.prompt_cache.prepare(prompt_ids)
        tokens = self.llama.generate(prompt_ids, **self.generate_kwargs(sampling, compiled))
        steps = BackgroundSteps(sampling.top_logprobs) if sampling.logprobs else None
        try:
            for token in tokens:
                if self._mask_mismatch:
                    raise GenerationError(
                        f"english_only got {self._mask_mismatch} candidate logits instead of the "
                        f"{self.n_vocab} of the vocabulary; this llama-cpp-python version is not "
                        "supported (use 0.3.36)"
                    )
                if steps is not None:
                    pointer = llama_cpp.llama_get_logits_ith(self.llama.ctx, -1)
                    # A copy: the next decode writes the same buffer.
                    row = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()
                    yield steps.submit(row, token)
                else:
                    yield token
        finally:
            tokens.close()
            if steps is not None:
                steps.close()

    def _prepares_next_turn(self) -> bool:
        """With the prompt cache on and ``llamacpp.prompt_cache_next_turn``."""
        return self.prompt_cache.enabled and self.settings.llamacpp.prompt_cache_next_turn

    def _extend_cache(self, ids: list[int]) -> None:
        """Leave ``ids`` in llama.cpp's live context (:meth:`LlamaPromptCache.extend`)."""
        self.prompt_cache.extend(ids)

    def _score(self, requests: list[ScoreRequest]) -> list[Score]:
        """Score with llama.cpp's batch API, logits only at the scored positions (``logits_all``
        stays off; see :func:`~qwen_backends.backends.scoring_rows.llamacpp_rows`)."""
        from qwen_backends.backends.scoring_rows import llamacpp_rows
        from qwen_backends.scoring import score_locally

        return score_locally(self, requests, llamacpp_rows(self.llama))

    def _release(self, *, same_thread: bool) -> None:
        """Free the llama.cpp model and context (after an open stream of this thread ends)."""
        if hasattr(self, "prompt_cache"):  # a failed load releases before it exists
            self.prompt_cache.clear(live=False)
        llama, self.llama = self.llama, None
        if llama is not None and not same_thread:
            llama.close()
        self._english_mask = None
