"""The hf backend's own decode loop: ``model.generate``'s greedy path without its per-step work.

:func:`decode` takes the keyword arguments the hf backend would give ``model.generate``
(``input_ids``, ``attention_mask``, ``generation_config``, ``logits_processor``,
``stopping_criteria``, ``streamer``) and returns the same tensor: the prompt columns followed by
the new tokens, finished rows padded with ``pad_token_id``, as long as the longest row. The model
sees the same inputs as under ``generate`` (a ``DynamicCache``, positions from the attention
mask, ``logits_to_keep=1``), so greedy decoding gives the same tokens.

What it leaves out is what a non-thinking chat call never needs: ``generate``'s configuration
merging and validation, its processor and stopping-criteria lists built per call, its output
bookkeeping and per-step input preparation (0.5-1.5 ms a step on two CPU cores, 2-6 % of a
decoding step on the benchmark checkpoint; see docs/benchmarks.md). When the last logits
processor is the :class:`~qwen_backends.backends.transformers_sampling.TokenSampler`, its drawn
token is taken as is instead of being turned into a one-hot score row for ``argmax``; greedy
steps use :func:`~qwen_backends.backends.transformers_sampling.greedy_tokens` (``argmax`` by
blocks, the same token).

The steps, per token: the model's logits for the newest position (as float32), transformers'
``RepetitionPenaltyLogitsProcessor`` when ``repetition_penalty != 1`` (first, as ``generate``
orders it), the caller's processors in order, then the sampler's draw or the ``argmax``; rows that
ended get the pad token; a row ends at an end-of-turn token or when a stopping criterion says so,
and the loop ends when every row has ended or ``max_new_tokens`` are made.

:class:`IdStreamer` is the streamer both loops feed: the new ids for the hf backend's token
loop, with their log-probabilities when asked (see its docs).

torch and transformers are imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import functools
import inspect
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from qwen_backends.backends.token_loop import PendingStep, Step
from qwen_backends.backends.transformers_sampling import TokenSampler, greedy_tokens, logprob_steps
from qwen_backends.errors import GenerationError

if TYPE_CHECKING:
    import torch
    from transformers import GenerationConfig

    from qwen_backends.backends.prompt_cache import PromptCache

__all__ = [
    "DecodeSteps",
    "IdStreamer",
    "cache_bytes",
    "crop_cache",
    "decode",
    "extend_cache",
    "reused_cache",
]


class DecodeSteps:
    """What one decoding step does to the logits, from a ``generate``-style configuration.

    Parameters
    ----------
    generation_config
        Read for ``repetition_penalty``; must be greedy (``do_sample=False``): drawing is the
        sampler's job, as the last of ``logits_processor``.
    logits_processor
        The caller's processors, in order; a trailing :class:`TokenSampler` becomes
        :attr:`sampler`.

    Attributes
    ----------
    processors
        Callables ``(input_ids, scores) -> scores`` run in order every step.
    sampler
        The sampler that draws the token, or ``None`` for ``argmax`` (greedy decoding).
    """

    def __init__(
        self, generation_config: GenerationConfig, logits_processor: Sequence[Any] = ()
    ) -> None:
        if generation_config.do_sample:
            raise ValueError(
                "decode() draws through a TokenSampler (the last logits processor); give it a "
                "greedy GenerationConfig (generation_config_for(..., native_sampling=False))"
            )
        processors = list(logits_processor)
        self.sampler: TokenSampler | None = None
        if processors and isinstance(processors[-1], TokenSampler):
            self.sampler = processors.pop()
        penalty = generation_config.repetition_penalty
        if penalty is not None and penalty != 1.0:
            from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

            processors.insert(0, RepetitionPenaltyLogitsProcessor(penalty))
        self.processors: list[Any] = processors

    def names(self) -> list[str]:
        """The type names of what runs each step, in order (the sampler last, if any)."""
        steps = [*self.processors, *([self.sampler] if self.sampler is not None else [])]
        return [type(step).__name__ for step in steps]

    def next_tokens(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """One token id per row, chosen from the newest ``logits`` ``(batch, vocab)``."""
        scores = logits
        for processor in self.processors:
            scores = processor(input_ids, scores)
        if self.sampler is not None:
            return self.sampler.sample(scores)
        return greedy_tokens(scores)


def decode(
    model: Any,
    *,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    generation_config: GenerationConfig,
    logits_processor: Sequence[Any] = (),
    stopping_criteria: Sequence[Any] = (),
    streamer: Any = None,
    record: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    past_key_values: Any = None,
) -> torch.Tensor:
    """Decode up to ``generation_config.max_new_tokens`` tokens after each row of ``input_ids``.

    Call it under ``torch.inference_mode`` (or ``no_grad``). Random draws come from torch's
    global generator, through the sampler, exactly as under ``generate``.

    Parameters
    ----------
    model
        A causal language model (``PreTrainedModel``) taking ``past_key_values``.
    input_ids, attention_mask
        ``(batch, width)`` prompts, left-padded (mask 0 on padding), on the model's device.
    generation_config
        Greedy; read for ``max_new_tokens``, ``repetition_penalty``, ``eos_token_id`` and
        ``pad_token_id``.
    logits_processor
        Processors run after the repetition penalty, the last one optionally the sampler.
    stopping_criteria
        Callables ``(input_ids, scores) -> bool tensor (batch,)``; a row ends where one is true.
    streamer
        Gets the prompt, then each step's tokens (``put``), then ``end()``, as from ``generate``.
    record
        Called every step, before the streamer, with the model's raw ``(batch, vocab)`` float
        logits (before any processor) and the chosen tokens: log-probabilities are taken there.
    past_key_values
        A ``DynamicCache`` already holding the first ``get_seq_length()`` ids of a single,
        unpadded prompt (a prompt-cache hit): only the rest of the prompt is computed. It is
        extended in place, so the caller can keep it for the next call. ``None``: a new cache.

    Returns
    -------
    torch.Tensor
        ``(batch, width + steps)``: the prompts and the new tokens (pad after a row's end).
    """
    import torch
    from transformers import DynamicCache

    steps = DecodeSteps(generation_config, logits_processor)
    limit = generation_config.max_new_tokens
    if limit is None or limit < 1:
        raise ValueError("decode() needs max_new_tokens >= 1 in the generation config")
    eos = _token_ids(generation_config.eos_token_id)
    pad = generation_config.pad_token_id
    if pad is None or not eos:
        raise ValueError("decode() needs eos_token_id and pad_token_id in the generation config")
    batch, width = input_ids.shape
    device = input_ids.device
    # One buffer for prompt + answer: each step writes a column instead of concatenating.
    tokens = torch.full((batch, width + limit), pad, dtype=torch.long, device=device)
    tokens[:, :width] = input_ids
    end_ids = torch.tensor(eos, dtype=torch.long, device=device)
    pad_id = torch.tensor(pad, dtype=torch.long, device=device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    # Positions as generate derives them: counted over real tokens, 0 on left padding.
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    if past_key_values is not None:
        cache = past_key_values
    else:
        try:
            cache = DynamicCache(config=model.config)
        except TypeError:  # older transformers take no config here
            cache = DynamicCache()
    reused = cache.get_seq_length() if past_key_values is not None else 0
    if reused and (batch != 1 or not bool(attention_mask.all()) or reused >= width):
        raise ValueError("a reused cache needs one unpadded prompt longer than what it holds")
    extra = {"logits_to_keep": 1} if _keeps_last_logits(model.__class__) else {}
    if streamer is not None:
        streamer.put(input_ids.cpu())
    # Without padding the mask says nothing the causal mask does not: leaving it out spares the
    # model building and checking it every step (same attention, same tokens).
    padded = not bool(attention_mask.all())
    inputs, mask, length = input_ids[:, reused:], (attention_mask if padded else None), width
    positions = positions[:, reused:]
    while True:
        output = model(
            input_ids=inputs,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            return_dict=True,
            **extra,
        )
        logits = output.logits[:, -1, :].float()
        del output
        # Processors may change the logits in place; the record is of the model's own.
        raw = logits.clone() if record is not None else None
        chosen = steps.next_tokens(tokens[:, :length], logits)
        chosen = torch.where(unfinished, chosen, pad_id)
        if record is not None and raw is not None:
            record(raw, chosen)
        tokens[:, length] = chosen
        length += 1
        if streamer is not None:
            streamer.put(chosen.cpu())
        unfinished &= ~torch.isin(chosen, end_ids)
        for criterion in stopping_criteria:
            unfinished &= ~criterion(tokens[:, :length], logits)
        if length - width >= limit or not bool(unfinished.any()):
            break
        inputs = chosen[:, None]
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=-1)
        positions = positions[:, -1:] + 1
    if streamer is not None:
        streamer.end()
    return tokens[:, :length]


def _token_ids(value: int | Sequence[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


@functools.cache
def _keeps_last_logits(model_type: Any) -> bool:
    """Whether the model's ``forward`` takes ``logits_to_keep`` (Qwen3 does): the lm_head then
    runs on the newest position only, as under ``generate``."""
    return "logits_to_keep" in inspect.signature(model_type.forward).parameters


# -- the prompt cache's KV states ------------------------------------------------------------


def reused_cache(
    prompt_cache: PromptCache[Any], prompt_ids: list[int], config: Any, *, counted: bool = True
) -> tuple[Any, int]:
    """``(cache, reused)``: a ``DynamicCache`` for this prompt -- the prompt cache's entry
    sharing the longest prefix, cut to that prefix, or a new one -- and how many prompt tokens
    it already holds (the last prompt token is always computed, for its logits). ``counted``:
    whether the lookup counts in the cache's stats (not for work done ahead)."""
    from transformers import DynamicCache

    cache, reused = prompt_cache.take(prompt_ids, len(prompt_ids) - 1, counted=counted)
    if cache is None or not crop_cache(cache, reused):
        try:
            return DynamicCache(config=config), 0
        except TypeError:  # older transformers take no config here
            return DynamicCache(), 0
    return cache, reused


def extend_cache(model: Any, input_ids: torch.Tensor, cache: Any) -> None:
    """Compute the ids of ``input_ids`` (one unpadded row) that ``cache`` does not hold yet
    into it, as :func:`decode` computes a prompt (same positions, no mask, the last position's
    logits only), choosing no token: a next turn's history prepared ahead."""
    import torch

    reused = cache.get_seq_length()
    width = input_ids.shape[1]
    positions = torch.arange(reused, width, dtype=torch.long, device=input_ids.device)[None, :]
    extra = {"logits_to_keep": 1} if _keeps_last_logits(model.__class__) else {}
    model(
        input_ids=input_ids[:, reused:],
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        return_dict=True,
        **extra,
    )


def crop_cache(cache: Any, length: int) -> bool:
    """Cut a ``DynamicCache`` to its first ``length`` positions; ``False`` if its layout is not
    one this version knows (the entry is then not reused)."""
    layers = getattr(cache, "layers", None)
    if not layers or length < 1:
        return False
    for layer in layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is None or values is None:
            return False
        layer.keys, layer.values = keys[..., :length, :], values[..., :length, :]
    return True


def cache_bytes(cache: Any) -> int:
    """Bytes of the keys and values a ``DynamicCache`` holds."""
    total = 0
    for layer in getattr(cache, "layers", ()):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    return total


class IdStreamer:
    """The streamer protocol of ``generate``/``decode``: skips the prompt, queues each new id,
    as a :class:`Step` when :meth:`recorder` took the step's log-probabilities, or (``late``)
    as a :class:`PendingStep` that :meth:`settle` completes from ``generate``'s logits."""

    def __init__(self, ids: queue.SimpleQueue[Any]) -> None:
        """Queue the new ids on ``ids``."""
        self.ids = ids
        self.prompt_seen = False
        self.recorded: list[Step] = []
        self.late = False
        self.pending: list[tuple[int, Future[Step]]] = []

    def recorder(self, top: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
        """``decode``'s ``record``: the log-probabilities of the step about to be put."""

        def record(logits: torch.Tensor, chosen: torch.Tensor) -> None:
            self.recorded = logprob_steps(logits, chosen, top)

        return record

    def put(self, value: torch.Tensor) -> None:
        """The streamer call: the prompt first (skipped), then each step's new ids."""
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        if self.recorded:
            for step in self.recorded:
                self.ids.put(step)
            self.recorded = []
            return
        for token in value.reshape(-1).tolist():
            if self.late:
                future: Future[Step] = Future()
                self.pending.append((token, future))
                self.ids.put(PendingStep(token, future))
            else:
                self.ids.put(token)

    def end(self) -> None:
        """Nothing to do: the worker marks the end itself."""

    def settle(self, logits: Sequence[torch.Tensor], top: int) -> None:
        """Complete the pending steps from ``generate``'s raw logits (one row per step)."""
        import torch

        for (token, future), row in zip(self.pending, logits, strict=False):
            chosen = torch.tensor([token], device=row.device)
            future.set_result(logprob_steps(row[:1].float(), chosen, top)[0])

    def abandon(self) -> None:
        """Fail the steps :meth:`settle` did not complete (generation failed or was cut)."""
        for _, future in self.pending:
            if not future.done():
                future.set_exception(GenerationError("generate returned no logits for this token"))
