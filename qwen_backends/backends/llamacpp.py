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

Counting follows the contract: ``completion_tokens`` includes the end-of-turn token (llama.cpp's
own ``usage`` leaves it out); ``prompt_tokens`` is the length of the rendered prompt.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Iterator, Sequence
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
from qwen_backends.thinking import TextPipeline, template_mode
from qwen_backends.tools import ToolCallFilter

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedTokenizerBase

    from qwen_backends.grammar import GrammarEngine, GrammarProcessor
    from qwen_backends.settings import Settings
    from qwen_backends.structured import ResponseFormat

__all__ = ["GGUF_MAGIC", "LlamaCppBackend", "gguf_tokenizer"]

logger = logging.getLogger(__name__)

#: The first four bytes of every GGUF file.
GGUF_MAGIC = b"GGUF"
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
    capabilities = Capabilities(
        english_only=True,
        native_batching=False,
        renders_locally=True,
        seeded=True,
        structured_output=True,
        tools=True,
    )

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._guard = GenerationLock(self.name)
        self._english_mask: np.ndarray | None = None
        self._grammar_engine: GrammarEngine | None = None
        self._mask_mismatch = 0
        self.llama = self._load()
        try:
            self.model_path = Path(self.llama.model_path)
            meta = dict(self.llama.metadata or {})
            self.embedded_template: str | None = meta.get("tokenizer.chat_template") or None
            self.tokenizer, self.tokenizer_source = self._load_tokenizer()
            self._prepare()
        except BaseException:
            self.llama.close()
            raise

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
            "seed": options.seed,
            "verbose": options.verbose,
            "logits_all": False,
        }

    def _load(self) -> Any:
        """The ``Llama`` for ``settings.model_name`` (a local GGUF or a hub repo + pattern)."""
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
            self._check_gguf_file(path, source)
            return self._construct(lambda: Llama(model_path=str(path), **options), source)
        pattern = self.settings.gguf_filename
        return self._construct(
            lambda: Llama.from_pretrained(repo_id=source, filename=pattern, **options),
            f"{source} ({pattern})",
        )

    @staticmethod
    def _check_gguf_file(path: Path, source: str) -> None:
        if path.is_dir():
            found = sorted(path.glob("*.gguf"))
            hint = f" such as {found[0]}" if found else ""
            raise ModelNotFoundError(
                f"{source!r} is a folder; the llamacpp backend loads one .gguf file{hint}: point "
                "QWEN_MODEL / --model at it (convert a checkpoint folder with qwen-backends "
                "export gguf)"
            )
        if not path.is_file():
            raise ModelNotFoundError(
                f"GGUF file {source!r} does not exist; fix the path in QWEN_MODEL / --model, or "
                "write one with: qwen-backends export gguf MODEL_DIR --output FILE"
            )
        with path.open("rb") as handle:
            magic = handle.read(4)
        if magic != GGUF_MAGIC:
            raise ModelNotFoundError(
                f"{source!r} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); convert "
                "a Hugging Face checkpoint with: qwen-backends export gguf MODEL_DIR --output FILE"
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
                hint = (
                    "downloads are off (HF_HUB_OFFLINE) and the file is not in the hub cache; "
                    "point QWEN_MODEL at a local .gguf file, or download it once while online"
                    if hub_offline()
                    else "check the repo id, QWEN_LLAMACPP__FILENAME, the network and HF_TOKEN"
                )
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
        """Check the vocabulary agrees, and derive the end-of-turn ids."""
        import llama_cpp

        expected = list(self.tokenizer(_VOCAB_PROBE, add_special_tokens=False)["input_ids"])
        got = self.llama.tokenize(_VOCAB_PROBE.encode(), add_bos=False, special=True)
        if got != expected:
            raise ModelNotFoundError(
                f"the vocabulary of {self.model_path.name} does not match the Qwen3 tokenizer "
                f"({self.tokenizer_source}); this backend runs Qwen3 GGUFs only"
            )
        ids: dict[str, int] = {}
        for token in ("<|im_end|>", "<|endoftext|>"):
            found = self.tokenizer.convert_tokens_to_ids(token)
            if not isinstance(found, int):
                raise ModelNotFoundError(f"the tokenizer has no {token} token; it is not Qwen3's")
            ids[token] = found
        self.im_end_id: int = int(ids["<|im_end|>"])
        vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
        self._vocab = vocab
        end = {self.im_end_id, int(ids["<|endoftext|>"]), int(self.llama.token_eos())}
        self.end_ids: frozenset[int] = frozenset(
            token for token in end if self.is_end_of_generation(token)
        ) | {self.im_end_id}
        self.n_vocab: int = int(self.llama.n_vocab())

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

    def _generate(self, request: Request) -> Generation:
        final: Generation | None = None
        for item in self._stream(request):
            if isinstance(item, Generation):
                final = item
        assert final is not None  # _run always ends with the Generation
        return final

    def _stream(self, request: Request) -> Iterator[str | Generation]:
        # The prompt and the context check run now, not at the first next().
        prompt_ids = self._checked_prompt(request)
        grammar = self._grammar(request.response_format, request.sampling.english_only)
        return self._run(prompt_ids, request.sampling, grammar, bool(request.tools))

    # -- internals ----------------------------------------------------------------------------

    def _checked_prompt(self, request: Request) -> list[int]:
        prompt_ids = self._prompt_ids(request.messages, request.tools)
        check_context(
            len(prompt_ids),
            request.sampling.max_new_tokens,
            self.context_window,
            backend=self.name,
            hint=", or raise QWEN_LLAMACPP__N_CTX (at most the model's 40,960)",
        )
        return prompt_ids

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._guard.generation():
            self._check_open()
            yield

    def _grammar(
        self, response_format: ResponseFormat | None, english_only: bool = False
    ) -> GrammarProcessor | None:
        """A fresh grammar processor for one call (``None`` without ``response_format``); the
        engine is built on first use and compiles each schema once."""
        if response_format is None:
            return None
        import numpy as np

        from qwen_backends.grammar import GrammarEngine, GrammarProcessor

        if self._grammar_engine is None:
            self._grammar_engine = GrammarEngine(
                self.tokenizer,
                self.n_vocab,
                (self.im_end_id, *sorted(self.end_ids - {self.im_end_id})),
                compile_timeout=self.settings.structured_compile_timeout,
                backend=self.name,
            )
        engine = self._grammar_engine
        blocked = np.isinf(self._english()) if english_only else None
        return GrammarProcessor(engine.matcher(engine.compile(response_format), blocked))

    def generate_kwargs(
        self, sampling: SamplingParams, grammar: GrammarProcessor | None = None
    ) -> dict[str, Any]:
        """Every argument ``Llama.generate`` receives for ``sampling`` (nothing left default).

        ``grammar`` (see :meth:`_grammar`) is the logits processor of ``response_format``; it
        holds the ``english_only`` mask itself. Also sets the sampler's seed and penalty window
        on :attr:`llama` (llama-cpp-python reads both from the instance when it builds the
        sampler chain).
        """
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(32)
        self.llama.set_seed(seed)
        processors: list[Any] = []
        if grammar is not None:
            processors.append(grammar)
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
            # swallowed by the ctypes callback, so _run raises it after the token.
            self._mask_mismatch = scores.shape[0]
            return scores
        np.add(scores, mask, out=scores)
        return scores

    def _english(self) -> np.ndarray:
        if self._english_mask is None:
            import numpy as np

            from qwen_backends.vocab import allowed_token_ids

            mask = np.full(self.n_vocab, -np.inf, dtype=np.float32)
            allowed = [
                i for i in allowed_token_ids(self.tokenizer, tier="english") if i < self.n_vocab
            ]
            mask[np.asarray(allowed, dtype=np.int64)] = 0.0
            self._english_mask = mask
        return self._english_mask

    def _run(
        self,
        prompt_ids: list[int],
        sampling: SamplingParams,
        grammar: GrammarProcessor | None = None,
        tools: bool = False,
    ) -> Iterator[str | Generation]:
        """Generate token by token; yield visible text, then the final :class:`Generation`."""
        with self._exclusive():
            start = time.perf_counter()
            pipeline = TextPipeline(sampling.stop)
            calls = ToolCallFilter() if tools else None
            decoder = _IncrementalDecoder(self.tokenizer)
            produced: list[str] = []
            count = 0
            reason: FinishReason = "length"
            tokens = self.llama.generate(prompt_ids, **self.generate_kwargs(sampling, grammar))
            try:
                for token in tokens:
                    count += 1
                    if self._mask_mismatch:
                        raise GenerationError(
                            f"english_only got {self._mask_mismatch} candidate logits instead of "
                            f"the {self.n_vocab} of the vocabulary; this llama-cpp-python "
                            "version is not supported (use 0.3.36)",
                            partial_text="".join(produced),
                            backend=self.name,
                        )
                    # A finished grammar allows only llama.cpp's end-of-generation set, which
                    # holds more than Qwen3's turn enders (<|fim_pad|> ...): any of them ends.
                    if token in self.end_ids or (
                        grammar is not None and self.is_end_of_generation(token)
                    ):
                        reason = "stop"
                        break
                    visible = pipeline.feed(decoder.feed(token))
                    if calls is not None:
                        visible = calls.feed(visible)
                    if visible:
                        produced.append(visible)
                        yield visible
                    if pipeline.stopped:
                        reason = "stop"
                        break
                    if count >= sampling.max_new_tokens:
                        break
            except QwenBackendsError:
                raise
            except Exception as exc:
                raise GenerationError(
                    f"llama.cpp failed while generating: {first_line(exc)}",
                    partial_text="".join(produced),
                    backend=self.name,
                ) from exc
            finally:
                tokens.close()
            tail = ("" if pipeline.stopped else pipeline.feed(decoder.flush())) + pipeline.flush()
            if calls is not None:
                tail = calls.feed(tail) + calls.flush()
            if tail:
                produced.append(tail)
                yield tail
            found = tuple(calls.calls) if calls is not None else ()
            yield Generation(
                text="".join(produced),
                finish_reason="tool_calls" if found else reason,
                prompt_tokens=len(prompt_ids),
                completion_tokens=count,
                seconds=time.perf_counter() - start,
                tool_calls=found,
            )

    def close(self) -> None:
        """Free the llama.cpp model and context. Safe to call twice; waits for a running call."""
        if self._closed:
            return
        same_thread = self._guard.held_here
        with self._guard.closing():
            super().close()
            llama, self.llama = self.llama, None
            if llama is not None and not same_thread:
                llama.close()
            self._english_mask = None


class _IncrementalDecoder:
    """Token ids -> text pieces whose concatenation equals decoding all ids at once.

    Decodes the ids since the last complete character; a trailing incomplete UTF-8 sequence
    (U+FFFD) waits for the next token, and is dropped if none completes it (as the hf backend,
    vLLM and Ollama do). Special tokens are skipped.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.window: list[int] = []
        self.sent = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return str(
            self.tokenizer.decode(
                list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
        )

    def feed(self, token: int) -> str:
        self.window.append(token)
        text = self._decode(self.window)
        ready = text.rstrip("\ufffd")
        piece = ready[self.sent :]
        if ready == text:
            self.window, self.sent = [], 0
        else:
            self.sent = max(self.sent, len(ready))
        return piece

    def flush(self) -> str:
        """What is left; an answer cut inside a character ends at the last complete one."""
        if not self.window:
            return ""
        text = self._decode(self.window)[self.sent :].rstrip("\ufffd")
        self.window, self.sent = [], 0
        return text
