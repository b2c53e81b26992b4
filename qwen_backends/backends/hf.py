"""Qwen3-4B on Hugging Face transformers (``backend="hf"``): CPU, CUDA or Apple MPS.

Loading (:meth:`HFBackend._load`, the one step a subclass such as the Unsloth backend replaces):
:func:`~qwen_backends.backends.transformers_loading.load_model` (hub id or local directory,
device, dtype, quantization, YaRN; every failure translated there).

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
- the generated ids go through the in-process backends' one token loop
  (:class:`~qwen_backends.backends.local.LocalBackend`): stop strings, thinking removal and
  tool calls the same however the text is cut, so ``"".join(stream(...)) == generate(...).text``
  for the same seed; :meth:`HFBackend._generate_batch` decodes a whole batch in one loop and
  builds each answer with the same assembler;
- ``response_format`` is a grammar-constrained logits processor (the engine of
  :mod:`qwen_backends.grammar`, see :mod:`qwen_backends.backends.transformers_grammar`): the
  sampler can only draw tokens that keep the answer a valid prefix of a schema-valid JSON
  document; the base class validates the result;
- ``tools`` are rendered by the chat template (Qwen3's ``<tools>`` system block) and the model's
  ``<tool_call>`` blocks are parsed locally (:mod:`qwen_backends.tools`), also while streaming.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from qwen_backends.backends.base import Capabilities
from qwen_backends.backends.local import LocalBackend
from qwen_backends.backends.prompt_cache import MIN_REUSE, PromptCache
from qwen_backends.backends.token_loop import AnswerAssembler, PendingStep, Step, decode_ids
from qwen_backends.backends.torch_devices import DeviceProbes
from qwen_backends.backends.transformers_decode import (
    IdStreamer,
    cache_bytes,
    decode,
    extend_cache,
    reused_cache,
)
from qwen_backends.backends.transformers_grammar import GrammarLogitsProcessor
from qwen_backends.backends.transformers_loading import load_model, vocab_rows
from qwen_backends.backends.transformers_sampling import (
    AllowedTokensLogitsProcessor,
    CancelCriterion,
    PresencePenaltyLogitsProcessor,
    StopStringCriterion,
    TokenSampler,
    generation_config_for,
    logprob_steps,
)
from qwen_backends.errors import GenerationError, QwenBackendsError, first_line
from qwen_backends.memory import release_free_heap
from qwen_backends.settings import NATIVE_CONTEXT, YARN_FACTOR

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from qwen_backends.grammar import GrammarEngine
    from qwen_backends.results import Generation, Request, Score
    from qwen_backends.sampling import SamplingParams
    from qwen_backends.scoring import ScoreRequest
    from qwen_backends.settings import Settings

__all__ = ["HFBackend"]


class HFBackend(LocalBackend):
    """Qwen3-4B through Hugging Face transformers, non-thinking, on CUDA, MPS or CPU.

    Build it with ``create_backend(backend="hf", model=...)``; settings come from
    ``settings.hf`` and the model from ``settings.model_name``.

    One generation at a time per instance (see :class:`~qwen_backends.backends.local.LocalBackend`);
    use :meth:`generate_batch` for throughput.

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
    runtime = "transformers"
    #: Decode with :func:`~qwen_backends.backends.transformers_decode.decode` (``True``) or with
    #: ``model.generate`` (``False``: the Unsloth backend, whose patched model brings its own).
    own_decode_loop: ClassVar[bool] = True
    capabilities = Capabilities(
        english_only=True,
        native_batching=True,
        renders_locally=True,
        structured_output=True,
        tools=True,
        logprobs=True,
        scoring=True,
        prompt_cache=True,
    )

    model: PreTrainedModel

    def __init__(self, settings: Settings, *, probes: DeviceProbes | None = None) -> None:
        self._probes = probes
        self._english_tensor: torch.Tensor | None = None
        self._grammar_engine: GrammarEngine | None = None
        super().__init__(settings)
        budget = settings.hf.prompt_cache_mb if self.own_decode_loop else 0
        #: The KV state of recent calls (see :mod:`~qwen_backends.backends.prompt_cache`).
        self.prompt_cache: PromptCache[Any] = PromptCache(budget * 2**20, MIN_REUSE)

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

    @property
    def context_hint(self) -> str:  # type: ignore[override]
        """Raise the window with YaRN, unless it is already on."""
        if self.context_window > NATIVE_CONTEXT:
            return ""
        return f", or set QWEN_HF__YARN=true for {int(NATIVE_CONTEXT * YARN_FACTOR):,} tokens"

    def _load(self) -> None:
        """Load ``model`` and ``tokenizer``: the one step a subclass replaces."""
        self.model, self.tokenizer = load_model(self.settings, self.probes)

    def _prepare(self) -> None:
        import torch

        self.model.eval()
        self.vocab_rows = vocab_rows(self.model)
        self.eos_token_ids: tuple[int, ...] = (self.im_end_id, self.end_of_text_id)
        self.pad_token_id: int = self.end_of_text_id
        try:
            self.device: torch.device = next(self.model.parameters()).device
        except StopIteration:  # pragma: no cover - a model always has parameters
            self.device = torch.device("cpu")

    # -- generation -----------------------------------------------------------------------

    def _generate_batch(self, requests: list[Request]) -> list[Generation]:
        """All conversations in one decode call (left padding, one forward per step); each
        answer is built by the token loop's assembler. Each :class:`Generation` reports the wall
        time of the whole batch."""
        import torch

        prompts = [self._checked_prompt(request) for request in requests]
        # The public API gives every request of a batch the same sampling, format and tools.
        request = requests[0]
        compiled = self._compile(request)
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
        kwargs = self._generate_kwargs(request.sampling, width, compiled)
        steps: list[list[Step]] = [[] for _ in prompts]
        top = request.sampling.top_logprobs

        def record(logits: torch.Tensor, chosen: torch.Tensor) -> None:
            for row, step in enumerate(logprob_steps(logits.float(), chosen, top)):
                steps[row].append(step)

        late = request.sampling.logprobs and not self.own_decode_loop
        if late:  # a model's own generate: the raw logits come back with the answer
            kwargs.update(output_logits=True, return_dict_in_generate=True)
        elif request.sampling.logprobs:
            kwargs["record"] = record
        with self._guard.generation(), self._attributed():
            self._check_open()
            with self._rng_scope(request.sampling):
                output: Any = self._model_generate(input_ids, attention_mask, **kwargs)
        if late:
            for column, logits in enumerate(output.logits):
                record(logits, output.sequences[:, width + column])
            output = output.sequences
        rows: list[list[Any]] = steps if request.sampling.logprobs else output[:, width:].tolist()
        seconds = time.perf_counter() - start
        results = []
        for row, ids in zip(rows, prompts, strict=True):
            answer = AnswerAssembler(
                self.tokenizer, self.end_ids, request.sampling, tools=bool(request.tools)
            )
            answer.feed_all(row)
            answer.finish()
            results.append(answer.generation(len(ids), seconds))
        return results

    def _tokens(
        self, prompt_ids: list[int], request: Request, compiled: Any
    ) -> Iterator[int | Step | PendingStep]:
        """Decode on a worker thread; its ids (:class:`Step` with ``logprobs``) arrive through a
        queue as they are chosen."""
        import torch

        cancel = threading.Event()
        ids: queue.SimpleQueue[Any] = queue.SimpleQueue()
        finished = object()
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        kwargs = self._generate_kwargs(request.sampling, len(prompt_ids), compiled)
        criteria = [*kwargs.get("stopping_criteria", []), CancelCriterion(cancel)]
        kwargs["stopping_criteria"] = criteria
        streamer = IdStreamer(ids)
        top = request.sampling.top_logprobs
        if request.sampling.logprobs and self.own_decode_loop:
            kwargs["record"] = streamer.recorder(top)
        elif request.sampling.logprobs:
            # A model's own generate hands out the raw logits only at the end: the ids stream
            # out as PendingSteps that are settled from output.logits once it returns.
            kwargs.update(output_logits=True, return_dict_in_generate=True)
            streamer.late = True
        cache = None
        if self.prompt_cache.enabled:
            cache, self._cached_tokens = reused_cache(
                self.prompt_cache, prompt_ids, self.model.config
            )
        if cache is not None:
            kwargs["past_key_values"] = cache

        def work() -> None:
            try:
                with self._rng_scope(request.sampling):
                    output: Any = self._model_generate(
                        input_ids, torch.ones_like(input_ids), streamer=streamer, **kwargs
                    )
                if streamer.late:  # a GenerateDecoderOnlyOutput
                    streamer.settle(output.logits, top)
                    output = output.sequences
                if cache is not None:
                    held = cache.get_seq_length()
                    self.prompt_cache.put(output[0, :held].tolist(), cache, cache_bytes(cache))
            except BaseException as exc:  # re-raised on the consumer's thread
                ids.put(_Raised(exc))
            finally:
                streamer.abandon()
                release_free_heap()  # this thread's arena would keep the call's memory resident
                ids.put(finished)

        worker = threading.Thread(target=work, name="qwen-hf-decode", daemon=True)
        worker.start()
        try:
            while (item := ids.get()) is not finished:
                if isinstance(item, _Raised):
                    raise item.error
                yield item
        finally:
            cancel.set()
            worker.join()

    def _compile(self, request: Request) -> Any:
        """The grammar of ``response_format``, compiled (cached per schema by the engine)."""
        if request.response_format is None:
            return None
        engine = self._grammar()
        return engine, engine.compile(request.response_format)

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

    def _generate_kwargs(
        self, sampling: SamplingParams, prompt_length: int, compiled: Any = None
    ) -> dict[str, Any]:
        """Keyword arguments for the decode call (``model.generate``'s) besides the inputs."""
        from transformers import LogitsProcessorList

        processors = self._logits_processors(sampling, prompt_length)
        if compiled is not None:
            # Before the sampler, which draws from whatever logits are left finite. The grammar
            # applies english_only in its own mask: intersected in one mask, the two can never
            # leave a step with nothing to sample.
            engine, grammar = compiled
            blocked = self._english_bias().isinf() if sampling.english_only else None
            processors = [p for p in processors if not isinstance(p, AllowedTokensLogitsProcessor)]
            processors.append(GrammarLogitsProcessor(engine, grammar, blocked=blocked))
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
                    functools.partial(decode_ids, self.tokenizer), sampling.stop, prompt_length
                )
            ]
        return kwargs

    def _grammar(self) -> GrammarEngine:
        """The grammar engine for this tokenizer, built on first use (about a second)."""
        if self._grammar_engine is None:
            from qwen_backends.grammar import GrammarEngine

            self._grammar_engine = GrammarEngine(
                self.tokenizer,
                self.vocab_rows,
                self.eos_token_ids,
                compile_timeout=self.settings.structured_compile_timeout,
                backend=self.name,
            )
        return self._grammar_engine

    def _english_bias(self) -> torch.Tensor:
        """:meth:`english_bias` as a tensor on the model's device, built once per instance."""
        if self._english_tensor is None:
            import torch

            self._english_tensor = torch.from_numpy(self.english_bias()).to(self.device)
        return self._english_tensor

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

    def _score(self, requests: list[ScoreRequest]) -> list[Score]:
        """Score through the decoder and the output embedding at the scored positions only
        (see :func:`~qwen_backends.backends.scoring_rows.transformers_rows`)."""
        from qwen_backends.backends.scoring_rows import transformers_rows
        from qwen_backends.scoring import score_locally

        rows = transformers_rows(self.model, self.device, self.pad_token_id)
        return score_locally(self, requests, rows)

    def _prepares_next_turn(self) -> bool:
        """With the prompt cache on and ``hf.prompt_cache_next_turn``."""
        return self.prompt_cache.enabled and self.settings.hf.prompt_cache_next_turn

    def _extend_cache(self, ids: list[int]) -> None:
        """Compute ``ids`` past the longest cached prefix (:func:`extend_cache`) and keep them."""
        import torch

        cache, reused = reused_cache(self.prompt_cache, ids, self.model.config, counted=False)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            extend_cache(self.model, input_ids, cache)
        self.prompt_cache.record_ahead(len(ids) - reused)
        self.prompt_cache.put(ids, cache, cache_bytes(cache))

    def _release(self, *, same_thread: bool) -> None:
        """Drop the model, tokenizer and prompt cache and free accelerator memory."""
        device_type = getattr(getattr(self, "device", None), "type", "cpu")
        if hasattr(self, "prompt_cache"):  # a failed load releases before it exists
            self.prompt_cache.clear()
        self.model = None  # type: ignore[assignment]
        self.tokenizer = None  # type: ignore[assignment]
        self._english_tensor = None
        self._grammar_engine = None
        if device_type == "cuda":
            import torch

            torch.cuda.empty_cache()


class _Raised:
    """An exception raised on the decoding thread, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
