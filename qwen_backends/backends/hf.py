"""Qwen3-4B on Hugging Face transformers (``backend="hf"``): CPU, CUDA or Apple MPS.

Loading (:meth:`HFBackend._load`, the one step a subclass such as the Unsloth backend replaces):
``AutoTokenizer`` / ``AutoModelForCausalLM`` from ``settings.model_name`` (a hub id or a local
directory) with the revision, ``local_files_only``, the token, safetensors-only weights unless
``trust_remote_code``, the resolved device and dtype
(:func:`~qwen_backends.backends.torch_devices.resolve_device`,
:func:`~qwen_backends.backends.torch_devices.resolve_dtype`), the attention kernel, optional
bitsandbytes 4/8-bit weights (CUDA only) and YaRN rope scaling. Every loading failure is
translated in :func:`_translating_load_errors`.

Generation works on ``self.model`` / ``self.tokenizer`` whatever loaded them, through the
backend's own decode loop (:func:`~qwen_backends.backends.transformers_decode.decode`: the tokens
``model.generate`` would give for the same arguments, without its per-step overhead; the Unsloth
subclass keeps Unsloth's ``generate``):

- every :class:`~qwen_backends.sampling.SamplingParams` value reaches the loop explicitly, in a
  :class:`~transformers.GenerationConfig` built from scratch
  (:func:`~qwen_backends.backends.transformers_sampling.generation_config_for`) and a list of
  logits processors, so the thinking-mode defaults in Qwen3-4B's ``generation_config.json``
  never apply;
- temperature, top-k, top-p and min-p are one
  :class:`~qwen_backends.backends.transformers_sampling.TokenSampler` (transformers' distribution,
  drawn among the top-k candidates), the last logits processor, whose draw is the next token;
  ``presence_penalty`` and ``english_only`` (a precomputed additive bias) are
  small vectorised logits processors before it, and stop strings a text-level stopping criterion
  (see :mod:`qwen_backends.backends.transformers_sampling`);
- a per-call seed runs inside :func:`torch.random.fork_rng`, so the caller's global RNG state is
  the same after the call as before it (a call without a seed draws a fresh one the same way);
- text goes through one pipeline (stop strings, then thinking removal, then
  :func:`~qwen_backends.chat.strip_thinking`) that gives the same result however the text is cut
  into pieces, which is why ``"".join(stream(...)) == generate(...).text`` for the same seed;
- ``response_format`` is a grammar-constrained logits processor (the engine of
  :mod:`qwen_backends.grammar`, see :mod:`qwen_backends.backends.transformers_grammar`): the
  sampler can only draw tokens that keep the answer a valid prefix of a schema-valid JSON
  document; the base class validates the result;
- ``tools`` are rendered by the chat template (Qwen3's ``<tools>`` system block) and the model's
  ``<tool_call>`` blocks are parsed locally (:mod:`qwen_backends.tools`), also while streaming.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from qwen_backends.backends.base import Capabilities
from qwen_backends.backends.local import GenerationLock, LocalBackend, check_context
from qwen_backends.backends.torch_devices import (
    DeviceProbes,
    LowMemoryWarning,
    bitsandbytes_config,
    check_load_options,
    count_parameters,
    memory_warning,
    resolve_device,
    resolve_dtype,
)
from qwen_backends.backends.transformers_decode import decode
from qwen_backends.backends.transformers_grammar import GrammarLogitsProcessor
from qwen_backends.backends.transformers_sampling import (
    AllowedTokensLogitsProcessor,
    CancelCriterion,
    PresencePenaltyLogitsProcessor,
    StopStringCriterion,
    TokenSampler,
    english_bias,
    generation_config_for,
)
from qwen_backends.errors import (
    BackendUnavailableError,
    GenerationError,
    MissingDependencyError,
    ModelNotFoundError,
    QwenBackendsError,
    first_line,
)
from qwen_backends.family import FAMILIES
from qwen_backends.models import hub_offline, looks_like_path
from qwen_backends.results import FinishReason, Generation, Request
from qwen_backends.sampling import SamplingParams
from qwen_backends.settings import NATIVE_CONTEXT, YARN_FACTOR, HFSettings
from qwen_backends.thinking import TemplateMode, TextPipeline, template_mode
from qwen_backends.tools import ToolCallFilter, parse_tool_calls

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from qwen_backends.grammar import GrammarEngine
    from qwen_backends.settings import Settings
    from qwen_backends.structured import ResponseFormat

__all__ = ["HFBackend"]


def _streamer_class() -> type:
    """A ``TextIteratorStreamer`` whose pieces concatenate to exactly the one-shot decode."""
    from transformers import TextIteratorStreamer

    class _ExactStreamer(TextIteratorStreamer):
        """Decodes a window of tokens since the last complete character and emits the new text;
        a trailing incomplete UTF-8 sequence (U+FFFD) waits for the next token."""

        def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
            super().__init__(tokenizer, skip_prompt=True)
            self.window: list[int] = []
            self.sent = 0
            self.ended = False

        def put(self, value: torch.Tensor) -> None:
            if self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            if value.dim() > 1:
                if value.shape[0] > 1:
                    raise ValueError("the stream handles one sequence at a time")
                value = value[0]
            self.window.extend(value.tolist())
            text = _decode(self.tokenizer, self.window)
            ready = text.rstrip("\ufffd")
            if len(ready) > self.sent:
                self.on_finalized_text(ready[self.sent :])
            if ready == text:
                self.window, self.sent = [], 0
            else:
                self.sent = max(self.sent, len(ready))

        def end(self) -> None:
            if self.ended:
                return
            self.ended = True
            text = _complete(_decode(self.tokenizer, self.window)) if self.window else ""
            self.window, self.sent, tail = [], 0, text[self.sent :]
            self.on_finalized_text(tail, stream_end=True)

    return _ExactStreamer


def _decode(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    text = tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return str(text)


def _complete(text: str) -> str:
    """``text`` without a trailing incomplete UTF-8 sequence (decoded as U+FFFD).

    An answer can end half-way through a character (``max_new_tokens`` reached after the first
    byte of a multi-byte character); like vLLM and Ollama, the caller gets complete characters.
    """
    return text.rstrip("\ufffd")


# -- loading -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _translating_load_errors(source: str, hf: HFSettings) -> Iterator[None]:
    """The one place loading failures become :mod:`qwen_backends.errors` types."""
    try:
        yield
    except QwenBackendsError:
        raise
    except ImportError as exc:
        raise MissingDependencyError(
            f"loading {source!r} needs a package that is not installed ({first_line(exc)}); "
            "pip install 'qwen-backends[hf]' (and bitsandbytes / flash-attn if you enabled them)"
        ) from exc
    except (OSError, ValueError, KeyError) as exc:
        detail = first_line(exc)
        if Path(source).is_dir():  # a local checkpoint: hub, network and cache hints are wrong
            raise _local_load_error(Path(source), exc) from exc
        offline = hub_offline(hf.local_files_only)
        if isinstance(exc, KeyError) or "does not recognize this architecture" in detail:
            raise ModelNotFoundError(
                f"transformers cannot build {source!r} ({detail}); Qwen3 needs transformers "
                ">= 4.51: pip install -U 'qwen-backends[hf]'"
            ) from exc
        if "safetensors" in detail and not hf.trust_remote_code:
            hint = (
                "only safetensors weights are loaded by default; convert the checkpoint to "
                "safetensors, or set QWEN_HF__TRUST_REMOTE_CODE=true if you trust its files"
            )
        elif offline:
            hint = (
                "downloads are off (HF_HUB_OFFLINE or QWEN_HF__LOCAL_FILES_ONLY) and the model is "
                "not in the local cache; point QWEN_MODEL / --model at a local directory holding "
                f"it, or download it once while online: hf download {source}"
            )
        else:
            hint = (
                "check the hub id or local path (and QWEN_HF__REVISION), the network, and "
                "QWEN_HF__TOKEN / HF_TOKEN for gated or private models; without network use a "
                "local directory and QWEN_HF__LOCAL_FILES_ONLY=true"
            )
        raise ModelNotFoundError(f"cannot load model {source!r} ({detail}); {hint}") from exc
    except RuntimeError as exc:
        if "out of memory" not in str(exc).lower() and Path(source).is_dir():
            raise _local_load_error(Path(source), exc) from exc
        if "out of memory" in str(exc).lower():
            raise BackendUnavailableError(
                f"ran out of memory loading {source!r}; use a smaller dtype "
                "(QWEN_HF__DTYPE=bfloat16), QWEN_HF__QUANTIZATION=4bit on CUDA, or another device",
                retryable=False,
            ) from exc
        raise ModelNotFoundError(
            f"cannot load model {source!r} ({first_line(exc)}); check that it is a Qwen3 "
            "checkpoint that transformers can read"
        ) from exc
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":  # safetensors' own error is no OSError
            raise
        if Path(source).is_dir():
            raise _local_load_error(Path(source), exc) from exc
        raise ModelNotFoundError(
            f"the weights of {source!r} are damaged ({first_line(exc)}); delete its folder from "
            "the Hugging Face cache (~/.cache/huggingface/hub) and download it again"
        ) from exc


def _local_load_error(directory: Path, exc: BaseException) -> ModelNotFoundError:
    """Say what is wrong with a local checkpoint directory that failed to load."""
    detail = first_line(exc)
    fix = "copy or download the checkpoint again"
    if isinstance(exc, PermissionError):
        name = getattr(exc, "filename", None) or directory
        return ModelNotFoundError(
            f"cannot read {name} ({exc.strerror}); check the permissions of the model directory "
            f"{directory}"
        )
    config = directory / "config.json"
    if not config.is_file():
        return ModelNotFoundError(
            f"{directory} holds no model (no config.json); point QWEN_MODEL / --model at a Qwen3 "
            "checkpoint directory (config.json, tokenizer files, *.safetensors), or give a hub id"
        )
    try:
        json.loads(config.read_bytes())
    except (OSError, ValueError) as problem:
        return ModelNotFoundError(
            f"{config} is damaged or truncated ({first_line(problem)}); {fix}"
        )
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    if not any((directory / name).is_file() for name in tokenizer_files):
        return ModelNotFoundError(
            f"{directory} holds no tokenizer (no tokenizer.json or tokenizer_config.json); copy "
            "Qwen3-4B's tokenizer files into it"
        )
    lowered = detail.lower()
    if "tokenizer" in lowered:
        return ModelNotFoundError(
            f"the tokenizer files in {directory} cannot be loaded ({detail}); {fix}"
        )
    weights = [path for pattern in ("*.safetensors", "*.bin") for path in directory.glob(pattern)]
    if not any(path.is_file() for path in weights):
        return ModelNotFoundError(f"{directory} has no weight files (*.safetensors); {fix}")
    if "permission denied" in lowered:
        return ModelNotFoundError(
            f"cannot read the weights in {directory} ({detail}); check the files' permissions"
        )
    if any(word in lowered for word in ("safetensor", "deserializ", "header", "incomplete")):
        return ModelNotFoundError(
            f"the weights in {directory} are damaged or truncated ({detail}); {fix}"
        )
    return ModelNotFoundError(
        f"cannot load the model in {directory} ({detail}); check that it is a complete Qwen3 "
        f"checkpoint, or {fix}"
    )


# -- the backend -----------------------------------------------------------------------------------


class HFBackend(LocalBackend):
    """Qwen3-4B through Hugging Face transformers, non-thinking, on CUDA, MPS or CPU.

    Build it with ``create_backend(backend="hf", model=...)``; settings come from
    ``settings.hf`` and the model from ``settings.model_name``.

    One generation at a time: a lock serialises :meth:`generate`, :meth:`generate_batch` and
    :meth:`stream` on one instance (other threads wait; a stream holds the lock from its first
    piece until it is exhausted or closed). Starting another generation on the same thread while
    one of its streams is still open raises :class:`~qwen_backends.errors.GenerationError`
    instead of deadlocking. Use :meth:`generate_batch` for throughput.

    Sampling calls fork torch's global RNG for their duration (seeded with ``sampling.seed`` or a
    fresh random seed) and restore it afterwards, so results do not depend on, and do not change,
    the caller's RNG state.

    Subclasses that load the model differently (the Unsloth backend) override :meth:`_load` and,
    if their context differs, :attr:`context_window`; everything else works on
    :attr:`model` / :attr:`tokenizer`.

    Parameters
    ----------
    settings
        Resolved settings.
    probes
        Hardware probes for device/dtype/memory decisions (tests inject fakes); default: torch.

    Attributes
    ----------
    model
        The loaded ``PreTrainedModel`` (in eval mode).
    tokenizer
        Its tokenizer.
    device
        The ``torch.device`` inputs are placed on.
    """

    name = "hf"
    #: Decode with :func:`~qwen_backends.backends.transformers_decode.decode` (``True``) or with
    #: ``model.generate`` (``False``: the Unsloth backend, whose patched model brings its own).
    own_decode_loop: ClassVar[bool] = True
    capabilities = Capabilities(
        english_only=True,
        native_batching=True,
        renders_locally=True,
        structured_output=True,
        tools=True,
    )

    def __init__(self, settings: Settings, *, probes: DeviceProbes | None = None) -> None:
        super().__init__(settings)
        self._probes = probes
        self._guard = GenerationLock(self.name)
        self._english_bias_tensor: torch.Tensor | None = None
        self._grammar_engine: GrammarEngine | None = None
        self.model, self.tokenizer = self._load()
        self._prepare()

    # -- loading ----------------------------------------------------------------------------

    @property
    def probes(self) -> DeviceProbes:
        """The hardware probes in use (detected from torch unless injected)."""
        if self._probes is None:
            self._probes = DeviceProbes.detect()
        return self._probes

    @property
    def context_window(self) -> int:
        """Most tokens (prompt + new) one call may use: ``settings.hf.context_window``."""
        return self.settings.hf.context_window

    def _load(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """Load ``(model, tokenizer)``; the one step a subclass replaces to load differently."""
        hf = self.settings.hf
        source = self.model_name
        if looks_like_path(source):
            if not Path(source).expanduser().is_dir():
                raise ModelNotFoundError(
                    f"model directory {source!r} does not exist; fix the path in QWEN_MODEL / "
                    f"--model, or give a hub id such as {FAMILIES[self.settings.family].hf}"
                )
            source = str(Path(source).expanduser())
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        device = resolve_device(hf.device, self.probes)
        dtype = resolve_dtype(hf.dtype, device, self.probes)
        check_load_options(hf, device, self.probes)
        common: dict[str, Any] = {
            "revision": hf.revision,
            "local_files_only": hf.local_files_only,
            "token": hf.token.get_secret_value() if hf.token is not None else None,
            "trust_remote_code": hf.trust_remote_code,
        }
        with _translating_load_errors(source, hf):
            tokenizer = AutoTokenizer.from_pretrained(source, **common)
            # A thinking-only or foreign template is refused before gigabytes of weights load.
            template_mode(tokenizer)
            config = AutoConfig.from_pretrained(source, **common)
            if hf.yarn:
                _apply_yarn(config, hf.max_context)
            weight_format = dtype if hf.quantization == "none" else hf.quantization
            message = memory_warning(
                count_parameters(config, hf.trust_remote_code),
                weight_format,
                device,
                self.probes.free_memory(device),
            )
            if message:
                warnings.warn(message, LowMemoryWarning, stacklevel=3)
            options: dict[str, Any] = {
                "config": config,
                "dtype": getattr(torch, dtype),
                "attn_implementation": hf.attn_implementation,
                # safetensors only, unless the user trusts the repository's code anyway
                "use_safetensors": None if hf.trust_remote_code else True,
            }
            if hf.quantization != "none":
                options["quantization_config"] = bitsandbytes_config(hf.quantization, dtype)
            if device.startswith("cuda"):
                options["device_map"] = {"": device}
            model = AutoModelForCausalLM.from_pretrained(source, **common, **options)
            if "device_map" not in options:
                model.to(torch.device(device))  # type: ignore[arg-type]
        return model, tokenizer

    def _prepare(self) -> None:
        """Derive what generation needs from the loaded model and tokenizer."""
        import torch

        # Subclasses that load model and tokenizer together (Unsloth) are checked here.
        self._template_mode = template_mode(self.tokenizer)
        self.model.eval()
        ids = {}
        for token in ("<|im_end|>", "<|endoftext|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if not isinstance(token_id, int) or token_id == self.tokenizer.unk_token_id:
                raise ModelNotFoundError(
                    f"the tokenizer of {self.model_name!r} has no {token} token, so it is not a "
                    "Qwen3 tokenizer; load Qwen3-4B (or a fine-tune of it)"
                )
            ids[token] = token_id
        self.eos_token_ids: tuple[int, ...] = (ids["<|im_end|>"], ids["<|endoftext|>"])
        self.pad_token_id: int = ids["<|endoftext|>"]
        try:
            self.device: torch.device = next(self.model.parameters()).device
        except StopIteration:  # pragma: no cover - a model always has parameters
            self.device = torch.device("cpu")

    # -- generation hooks ---------------------------------------------------------------------

    def _generate(self, request: Request) -> Generation:
        return self._run_batch([self._checked_prompt(request)], request)[0]

    def _generate_batch(self, requests: list[Request]) -> list[Generation]:
        """All conversations in one decode call (left padding, one forward per step).

        Each :class:`Generation` reports the wall time of the whole batch.
        """
        prompts = [self._checked_prompt(request) for request in requests]
        # The public API gives every request of a batch the same sampling, format and tools.
        return self._run_batch(prompts, requests[0])

    def _stream(self, request: Request) -> Iterator[str | Generation]:
        # Checks (and the context error) happen now, not at the first next().
        prompt_ids = self._checked_prompt(request)
        return self._stream_tokens(prompt_ids, request)

    def template_mode(self) -> TemplateMode:
        """The loaded tokenizer's template mode (hybrid or non-thinking)."""
        return self._template_mode

    # -- internals -------------------------------------------------------------------------

    def _checked_prompt(self, request: Request) -> list[int]:
        """Render the non-thinking prompt and check it fits with ``max_new_tokens``."""
        prompt_ids = self._prompt_ids(request.messages, request.tools)
        window = self.context_window
        yarn = (
            ""
            if window > NATIVE_CONTEXT
            else f", or set QWEN_HF__YARN=true for {int(NATIVE_CONTEXT * YARN_FACTOR):,} tokens"
        )
        check_context(
            len(prompt_ids), request.sampling.max_new_tokens, window, backend=self.name, hint=yarn
        )
        return prompt_ids

    def _logits_processors(self, sampling: SamplingParams, prompt_length: int) -> list[Any]:
        """Processors for what ``GenerationConfig`` cannot express, run after transformers'
        repetition penalty and before the :class:`TokenSampler` (temperature, top-k, top-p,
        min-p), which :meth:`_generate_kwargs` appends last."""
        processors: list[Any] = []
        if sampling.presence_penalty > 0:
            processors.append(
                PresencePenaltyLogitsProcessor(sampling.presence_penalty, prompt_length)
            )
        if sampling.english_only:
            processors.append(AllowedTokensLogitsProcessor(self._english_bias()))
        return processors

    def _constrained(
        self, processors: list[Any], sampling: SamplingParams, response_format: ResponseFormat
    ) -> list[Any]:
        """``processors`` plus the grammar processor, last.

        The grammar processor also applies ``english_only`` (see
        :class:`GrammarLogitsProcessor`), in place of the plain English mask: intersected in
        one mask, the two can never leave a step with nothing to sample.
        """
        import torch

        engine = self._grammar()
        blocked = torch.isinf(self._english_bias()) if sampling.english_only else None
        kept = [p for p in processors if not isinstance(p, AllowedTokensLogitsProcessor)]
        grammar = GrammarLogitsProcessor(engine, engine.compile(response_format), blocked=blocked)
        return [*kept, grammar]

    def _grammar(self) -> GrammarEngine:
        """The grammar engine for this tokenizer, built on first use (about a second)."""
        if self._grammar_engine is None:
            from qwen_backends.grammar import GrammarEngine

            self._grammar_engine = GrammarEngine(
                self.tokenizer,
                _vocab_rows(self.model),
                self.eos_token_ids,
                compile_timeout=self.settings.structured_compile_timeout,
                backend=self.name,
            )
        return self._grammar_engine

    def _generate_kwargs(
        self,
        sampling: SamplingParams,
        prompt_length: int,
        response_format: ResponseFormat | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments for the decode call (``model.generate``'s) besides the inputs."""
        from transformers import LogitsProcessorList

        processors = self._logits_processors(sampling, prompt_length)
        if response_format is not None:
            # Before the sampler, which draws from whatever logits are left finite.
            processors = self._constrained(processors, sampling, response_format)
        sampler = TokenSampler.for_sampling(sampling)
        if sampler is not None:
            processors.append(sampler)
        kwargs: dict[str, Any] = {
            "generation_config": generation_config_for(
                sampling,
                eos_token_ids=self.eos_token_ids,
                pad_token_id=self.pad_token_id,
                native_sampling=False,
            ),
            "logits_processor": LogitsProcessorList(processors),
        }
        if sampling.stop:
            kwargs["stopping_criteria"] = [
                StopStringCriterion(
                    functools.partial(_decode, self.tokenizer), sampling.stop, prompt_length
                )
            ]
        return kwargs

    def _english_bias(self) -> torch.Tensor:
        """Additive 0 / -inf bias for ``english_only``, built once per instance."""
        if self._english_bias_tensor is None:
            import torch

            from qwen_backends.vocab import allowed_token_ids

            size = _vocab_rows(self.model)  # 151,936 logits: more than the tokenizer's 151,669
            allowed = [i for i in allowed_token_ids(self.tokenizer, tier="english") if i < size]
            blocked = torch.ones(size, dtype=torch.bool)
            blocked[torch.tensor(allowed, dtype=torch.long)] = False
            self._english_bias_tensor = english_bias(blocked.to(self.device))
        return self._english_bias_tensor

    @contextlib.contextmanager
    def _rng_scope(self, sampling: SamplingParams) -> Iterator[None]:
        """Seed sampling for this call only; the global RNG state is restored afterwards."""
        if sampling.is_greedy:
            yield
            return
        import torch

        seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
        kind = self.device.type
        devices = [self.device.index or 0] if kind in ("cuda", "mps") else []
        with torch.random.fork_rng(devices=devices, device_type=kind if devices else None):
            torch.random.default_generator.manual_seed(seed)
            if kind == "cuda":
                with torch.cuda.device(self.device):
                    torch.cuda.manual_seed(seed)
            elif kind == "mps":
                torch.mps.manual_seed(seed)
            yield

    def _model_generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        """Decode with ``kwargs`` (``model.generate``'s) and translate runtime failures: the
        generation choke point.

        The hf backend runs its own loop
        (:func:`~qwen_backends.backends.transformers_decode.decode`: the same tokens as
        ``model.generate`` without its per-step overhead); a subclass whose
        model brings its own ``generate`` sets :attr:`own_decode_loop` to ``False``. Runs under
        ``torch.inference_mode``: no version counters or autograd bookkeeping per operation.
        """
        import torch

        try:
            generate: Callable[..., torch.Tensor] = (
                functools.partial(decode, self.model)
                if self.own_decode_loop
                else getattr(self.model, "generate")  # noqa: B009
            )
            with torch.inference_mode():
                output = generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        except QwenBackendsError:
            raise
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                raise GenerationError(
                    f"out of memory while generating on {self.device}; lower max_new_tokens, "
                    "send fewer conversations per batch, or use a smaller dtype / quantization",
                ) from exc
            raise GenerationError(f"generation failed: {first_line(exc)}") from exc
        return output

    def _run_batch(self, prompts: list[list[int]], request: Request) -> list[Generation]:
        import torch

        sampling = request.sampling
        start = time.perf_counter()
        width = max(len(ids) for ids in prompts)
        # Left padding: every prompt ends at the same column, so one forward per step serves all.
        input_ids = torch.tensor(
            [[self.pad_token_id] * (width - len(ids)) + ids for ids in prompts],
            dtype=torch.long,
            device=self.device,
        )
        attention_mask = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts],
            dtype=torch.long,
            device=self.device,
        )
        with self._guard.generation(), self._rng_scope(sampling):
            output = self._model_generate(
                input_ids,
                attention_mask,
                **self._generate_kwargs(sampling, width, request.response_format),
            )
        rows = output[:, width:].tolist()
        seconds = time.perf_counter() - start
        return [
            _with_tool_calls(self._finish(row, len(ids), sampling, seconds), request)
            for row, ids in zip(rows, prompts, strict=True)
        ]

    def _finish(
        self,
        new_ids: list[int],
        prompt_tokens: int,
        sampling: SamplingParams,
        seconds: float,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> Generation:
        """Turn one row of generated ids into a :class:`Generation` (counts include the
        end-of-turn token; for a stop string, up to the token that completed it).

        ``tokenizer`` defaults to :attr:`tokenizer`; a stream passes the one it started with,
        since :meth:`close` may drop the attribute while the stream finishes.
        """
        tokenizer = self.tokenizer if tokenizer is None else tokenizer
        eos = set(self.eos_token_ids)
        ended = next((i for i, token in enumerate(new_ids) if token in eos), None)
        ids = new_ids if ended is None else new_ids[: ended + 1]
        text, stopped = TextPipeline.whole(_complete(_decode(tokenizer, ids)), sampling.stop)
        count = len(ids)
        if stopped:
            count = self._tokens_to_stop(tokenizer, ids, sampling.stop)
        reason: FinishReason = "stop" if stopped or ended is not None else "length"
        return Generation(
            text=text,
            finish_reason=reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=count,
            seconds=seconds,
        )

    @staticmethod
    def _tokens_to_stop(
        tokenizer: PreTrainedTokenizerBase, ids: list[int], stops: Sequence[str]
    ) -> int:
        """Fewest leading tokens whose text contains a stop string (binary search)."""
        low, high = 1, len(ids)
        while low < high:
            middle = (low + high) // 2
            text = _decode(tokenizer, ids[:middle])
            if any(stop in text for stop in stops):
                high = middle
            else:
                low = middle + 1
        return high

    def _stream_tokens(self, prompt_ids: list[int], request: Request) -> Iterator[str | Generation]:
        import torch

        sampling = request.sampling
        with self._guard.generation():
            start = time.perf_counter()
            cancel = threading.Event()
            tokenizer = self.tokenizer  # close() on this thread drops the attribute
            streamer = _streamer_class()(tokenizer)
            failure: list[BaseException] = []
            outputs: list[torch.Tensor] = []
            input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
            kwargs = self._generate_kwargs(sampling, len(prompt_ids), request.response_format)

            def work() -> None:
                try:
                    with self._rng_scope(sampling):
                        output = self._model_generate(
                            input_ids,
                            torch.ones_like(input_ids),
                            streamer=streamer,
                            **{
                                **kwargs,
                                "stopping_criteria": [
                                    *kwargs.get("stopping_criteria", []),
                                    CancelCriterion(cancel),
                                ],
                            },
                        )
                    outputs.append(output)
                except BaseException as exc:  # re-raised on the consumer's thread
                    failure.append(exc)
                finally:
                    streamer.end()

            worker = threading.Thread(target=work, name="qwen-hf-stream", daemon=True)
            worker.start()
            pipeline = TextPipeline(sampling.stop)
            calls = ToolCallFilter() if request.tools else None
            produced: list[str] = []
            try:
                for piece in streamer:
                    visible = pipeline.feed(piece)
                    if calls is not None:
                        visible = calls.feed(visible)
                    if visible:
                        produced.append(visible)
                        yield visible
                    if pipeline.stopped:
                        break
                tail = pipeline.flush()
                if calls is not None:
                    tail = calls.feed(tail) + calls.flush()
                if tail:
                    produced.append(tail)
                    yield tail
            finally:
                cancel.set()
                worker.join()
            if failure:
                error = failure[0]
                if isinstance(error, GenerationError):
                    error.partial_text = "".join(produced)
                    raise error
                raise GenerationError(
                    f"generation failed: {first_line(error)}", partial_text="".join(produced)
                ) from error
            if outputs:
                row = outputs[0][0, len(prompt_ids) :].tolist()
                result = self._finish(
                    row, len(prompt_ids), sampling, time.perf_counter() - start, tokenizer
                )
                result = dataclasses.replace(result, text="".join(produced))
                if calls is not None and calls.calls:
                    result = dataclasses.replace(
                        result, tool_calls=tuple(calls.calls), finish_reason="tool_calls"
                    )
                yield result

    def close(self) -> None:
        """Drop the model and tokenizer and free accelerator memory. Safe to call twice.

        Waits for a generation running on another thread. A stream still open on *this* thread
        keeps its own references and finishes normally (the memory is freed after it).
        """
        if self._closed:
            return
        with self._guard.closing():
            super().close()
            device_type = getattr(getattr(self, "device", None), "type", "cpu")
            self.model = None  # type: ignore[assignment]
            self.tokenizer = None  # type: ignore[assignment]
            self._english_bias_tensor = None
            self._grammar_engine = None
        if device_type == "cuda":
            import torch

            torch.cuda.empty_cache()


def _apply_yarn(config: Any, native: int) -> None:
    """Turn on YaRN (factor 4) on a loaded config, keeping its rope_theta."""
    yarn = {
        "rope_type": "yarn",
        "factor": YARN_FACTOR,
        "original_max_position_embeddings": native,
    }
    if hasattr(config, "rope_parameters"):
        config.rope_parameters = {**(config.rope_parameters or {}), **yarn}
    else:  # transformers < 5 keeps rope_theta outside the scaling dict
        config.rope_scaling = yarn


def _vocab_rows(model: Any) -> int:
    embeddings = model.get_output_embeddings()
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return int(embeddings.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def _with_tool_calls(generation: Generation, request: Request) -> Generation:
    """Take the model's tool calls out of the text when tools were given."""
    if not request.tools:
        return generation
    text, calls = parse_tool_calls(generation.text)
    if not calls:
        return dataclasses.replace(generation, text=text)
    return dataclasses.replace(
        generation, text=text, tool_calls=tuple(calls), finish_reason="tool_calls"
    )
