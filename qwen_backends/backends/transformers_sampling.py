"""How :class:`~qwen_backends.sampling.SamplingParams` map onto transformers generation.

Every value reaches the decode call (the hf backend's own loop,
:func:`~qwen_backends.backends.transformers_decode.decode`, or ``model.generate`` on the Unsloth
path; both take the same arguments) explicitly, so the thinking-mode defaults in Qwen3-4B's
``generation_config.json`` never apply:

- ``max_new_tokens`` and ``repetition_penalty`` go into a :class:`~transformers.GenerationConfig`
  built from scratch (:func:`generation_config_for`);
- ``temperature``, ``top_k``, ``top_p`` and ``min_p`` are one :class:`TokenSampler`: it draws the
  next token from exactly the distribution transformers' warpers define (temperature, then top-k,
  top-p, min-p) but works on the top-k candidates instead of the whole 151,936-token vocabulary
  (found by :func:`top_logits`), and its draw is the next token (see :class:`TokenSampler`);
  temperature 0 is plain greedy decoding with no sampler;
- ``presence_penalty`` and ``english_only`` have no ``GenerationConfig`` field and are small
  vectorised logits processors (:class:`PresencePenaltyLogitsProcessor`,
  :class:`AllowedTokensLogitsProcessor`), run before the sampler;
- ``stop`` is a :class:`StopStringCriterion` that matches the decoded text of the newest tokens
  (nothing to build per string), and ``seed`` an RNG scope kept by the backend
  (:class:`~qwen_backends.backends.hf.HFBackend`);
- :class:`CancelCriterion` ends a stream's generation when its consumer goes away.

transformers and torch are imported inside the functions that need them, so importing this module
stays light.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import GenerationConfig

    from qwen_backends.backends.token_loop import Step
    from qwen_backends.sampling import SamplingParams

__all__ = [
    "AllowedTokensLogitsProcessor",
    "CancelCriterion",
    "PresencePenaltyLogitsProcessor",
    "StopStringCriterion",
    "TokenSampler",
    "english_bias",
    "generation_config_for",
    "greedy_tokens",
    "top_logits",
]

#: Without top-k, the nucleus (top-p) is first looked for among this many most likely tokens; only
#: when they hold less than ``top_p`` of the probability is the whole vocabulary sorted.
NUCLEUS_PROBE = 256

#: Logits are searched in blocks of this many (Qwen3's 151,936 rows are 1,187 of them): the
#: maximum of every block is one vectorised pass, after which only a few blocks are looked at.
BLOCK = 128


def top_logits(scores: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(scores, count)`` on ``(batch, vocab)`` logits, several times faster.

    ``torch.topk`` sorts (value, index) pairs of the whole row into a scratch buffer (about
    140 us on Qwen3's vocabulary on a CPU core). Here one vectorised pass takes the maximum of
    every :data:`BLOCK`-sized block (about 8 us); the ``count`` largest values all lie in the
    ``count`` blocks with the largest maxima (a value outside them is beaten by ``count`` block
    maxima), so the final ``topk`` runs on ``count * BLOCK`` values. The values returned are
    exactly ``torch.topk``'s, in descending order; among equal values the index order may
    differ, as it may between ``torch.topk`` calls. Rows whose length is not a multiple of
    :data:`BLOCK` (or too short to gain) use ``torch.topk`` itself.
    """
    import torch

    rows, vocab = scores.shape
    blocks = vocab // BLOCK
    if vocab % BLOCK or blocks < 4 * count:
        return torch.topk(scores, count)
    tiled = scores.reshape(rows, blocks, BLOCK)
    best_blocks = torch.topk(tiled.amax(dim=-1), count).indices
    gathered = tiled.gather(1, best_blocks[:, :, None].expand(-1, -1, BLOCK)).view(rows, -1)
    values, where = torch.topk(gathered, count)
    indices = best_blocks.gather(1, where // BLOCK) * BLOCK + where % BLOCK
    return values, indices


def logprob_steps(logits: torch.Tensor, chosen: torch.Tensor, top: int) -> list[Step]:
    """One :class:`~qwen_backends.backends.token_loop.Step` per row: the log-softmax of the raw
    ``(batch, vocab)`` ``logits`` at each row's ``chosen`` token, and the ``top`` most likely
    tokens (by :func:`top_logits`)."""
    import torch

    from qwen_backends.backends.token_loop import Step

    total = torch.logsumexp(logits, dim=-1)
    picked = (logits.gather(1, chosen[:, None])[:, 0] - total).tolist()
    if top:
        values, indices = top_logits(logits, top)
        best = (values - total[:, None]).tolist()
        ids = indices.tolist()
    steps = []
    for row, token in enumerate(chosen.tolist()):
        alternatives = tuple(zip(ids[row], best[row], strict=True)) if top else ()
        steps.append(Step(int(token), float(picked[row]), alternatives))
    return steps


def greedy_tokens(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(dim=-1)`` for ``(batch, vocab)`` logits, by blocks (see :func:`top_logits`).

    The same token as ``argmax``, ties included: the first block holding the maximum, then the
    first position of the maximum in it, is the first position of the maximum in the row.
    """
    import torch

    rows, vocab = scores.shape
    if vocab % BLOCK:
        return scores.argmax(dim=-1)
    tiled = scores.reshape(rows, vocab // BLOCK, BLOCK)
    block = tiled.amax(dim=-1).argmax(dim=-1)
    inside = tiled[torch.arange(rows, device=scores.device), block].argmax(dim=-1)
    return block * BLOCK + inside


def generation_config_for(
    sampling: SamplingParams,
    *,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    native_sampling: bool = True,
) -> GenerationConfig:
    """A ``GenerationConfig`` carrying every value of ``sampling`` explicitly.

    ``presence_penalty``, ``seed``, ``stop`` and ``english_only`` have no field here: they are
    logits processors, an RNG scope and a stopping criterion (see
    :meth:`~qwen_backends.backends.hf.HFBackend._generate_kwargs`).
    Temperature 0 is greedy decoding (``do_sample=False``); the sampling-only fields are then set
    to transformers' neutral values so the model's own (thinking-mode) values cannot fill them.

    Parameters
    ----------
    sampling
        The call's sampling values.
    eos_token_ids, pad_token_id
        Token ids that end a turn, and the one that pads finished rows.
    native_sampling
        ``True`` (the default): the config transformers samples with by itself (``do_sample`` and
        its warpers), the reference the benchmarks and tests compare with. ``False``: the config
        the hf backend uses with a :class:`TokenSampler` as the last logits processor, i.e.
        greedy decoding over the sampler's choice.
    """
    from transformers import GenerationConfig

    if sampling.is_greedy or not native_sampling:
        mode: dict[str, Any] = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50}
    else:
        mode = {
            "do_sample": True,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "min_p": sampling.min_p,
        }
    return GenerationConfig(
        **mode,
        max_new_tokens=sampling.max_new_tokens,
        repetition_penalty=sampling.repetition_penalty,
        num_beams=1,
        num_return_sequences=1,
        eos_token_id=list(eos_token_ids),
        pad_token_id=pad_token_id,
    )


class TokenSampler:
    """Draw each row's next token the way transformers' warpers define it, on few candidates.

    The distribution is transformers' ``TemperatureLogitsWarper``, ``TopKLogitsWarper``,
    ``TopPLogitsWarper`` and ``MinPLogitsWarper`` applied in that order, followed by a
    multinomial draw. What differs is the work per step:

    - with ``top_k > 0`` only the ``top_k`` largest logits are used: temperature, top-p, min-p and
      the draw all run on ``top_k`` values (one block search over the vocabulary, no sort). When the
      k-th and (k+1)-th values tie, transformers keeps every tied token, so that step takes the
      whole-vocabulary path instead;
    - with ``top_k = 0`` and ``top_p < 1`` the nucleus is first looked for among the
      :data:`NUCLEUS_PROBE` most likely tokens, and the vocabulary is sorted only when they hold
      less than ``top_p``; the draw then runs on the nucleus only;
    - neutral values cost nothing (temperature 1, top_p 1, min_p 0 are skipped), and min-p needs
      no sort (the most likely token always passes it);
    - the draw is one uniform number against the cumulative probabilities (in float64 where the
      device has it) instead of one exponential number per vocabulary entry.

    Random numbers come from torch's global generator of the scores' device, so the backend's
    per-call seed scope makes draws reproducible; the tokens a seed produces differ from
    transformers' own sampling (the draws are made differently), not their distribution.

    The hf backend's decode loop calls :meth:`sample`. As a logits processor (the last one, for
    ``model.generate`` on the Unsloth path), it returns scores that are ``-inf`` everywhere
    except the chosen token, so ``generate`` running greedy decoding picks exactly that token.

    Parameters
    ----------
    temperature
        > 0; 1 leaves the logits as they are.
    top_k
        Candidates kept, >= 0; 0 keeps the whole vocabulary.
    top_p
        Nucleus mass, 0 < top_p <= 1; 1 is off.
    min_p
        0 <= min_p <= 1, relative to the most likely token's probability; 0 is off.
    """

    def __init__(self, temperature: float, top_k: int, top_p: float, min_p: float) -> None:
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.min_p = min_p

    @classmethod
    def for_sampling(cls, sampling: SamplingParams) -> TokenSampler | None:
        """The sampler for ``sampling``, or ``None`` for greedy decoding (temperature 0)."""
        if sampling.is_greedy:
            return None
        return cls(sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Draw one token per row; return scores that are finite only at the drawn tokens."""
        import torch

        chosen = self.sample(scores)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, chosen[:, None], 0.0)  # type: ignore[return-value]

    def sample(self, scores: torch.Tensor) -> torch.Tensor:
        """One drawn token id per row of ``scores`` (``(batch, vocab)`` logits)."""
        indices, weights = self.candidates(scores)
        picked = _draw(weights)
        return picked if indices is None else indices.gather(1, picked[:, None])[:, 0]

    def candidates(self, scores: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The tokens that can be drawn and their (unnormalised) probabilities.

        Returns ``(indices, weights)``: ``weights[b, j]`` is proportional to the probability
        transformers' warpers give token ``indices[b, j]`` in row ``b`` (0 for filtered-out
        candidates). ``indices`` is ``None`` when ``weights`` covers the whole vocabulary in
        order.
        """
        import torch

        vocab = scores.shape[-1]
        if 0 < self.top_k < vocab:
            values, indices = top_logits(scores, self.top_k + 1)
            values = self._scaled(values)
            boundary = values[:, self.top_k - 1]
            # transformers keeps every token tied with the k-th; -inf ties have no probability
            tied = (values[:, self.top_k] == boundary) & torch.isfinite(boundary)
            if not bool(tied.any()):
                probs = torch.softmax(values[:, : self.top_k], dim=-1)
                return indices[:, : self.top_k], self._filtered(probs)
        return self._whole_vocabulary(self._scaled(scores))

    def _scaled(self, values: torch.Tensor) -> torch.Tensor:
        return values if self.temperature == 1.0 else values / self.temperature

    def _whole_vocabulary(self, scaled: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        import torch

        vocab = scaled.shape[-1]
        if 0 < self.top_k < vocab:  # only reached on a tie at the k-th value
            kth = torch.topk(scaled, self.top_k).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        if self.top_p >= 1.0:
            if self.min_p > 0.0:
                floor = self.min_p * probs.amax(dim=-1, keepdim=True)
                probs = probs.masked_fill(probs < floor, 0.0)
            return None, probs
        probe = min(NUCLEUS_PROBE, vocab)
        top, indices = top_logits(probs, probe)
        # Tokens outside the probe are outside the nucleus when the probe holds more than top_p
        # (a margin well above float32 rounding of the sums).
        if probe == vocab or not bool((top.sum(dim=-1) <= self.top_p + 1e-4).any()):
            return indices, self._filtered(top)
        top, indices = torch.sort(probs, dim=-1, descending=True)
        kept = int(self._nucleus(top).sum(dim=-1).max())
        return indices[:, :kept], self._filtered(top[:, :kept])

    def _nucleus(self, probs: torch.Tensor) -> torch.Tensor:
        """Which of the descending ``probs`` top-p keeps: those with less than ``top_p`` before
        them (transformers drops a token whose ascending cumulative mass is <= 1 - top_p)."""
        before = probs.cumsum(dim=-1) - probs
        return before < self.top_p

    def _filtered(self, probs: torch.Tensor) -> torch.Tensor:
        """Top-p then min-p on candidate probabilities sorted in descending order."""
        keep = None
        if self.top_p < 1.0:
            keep = self._nucleus(probs)
        if self.min_p > 0.0:
            # min-p compares probabilities renormalised over what top-p kept; the ratio to the
            # most likely token (always kept, first here) is the same before renormalising.
            above = probs >= self.min_p * probs[:, :1]
            keep = above if keep is None else keep & above
        return probs if keep is None else probs.masked_fill(~keep, 0.0)


def _draw(weights: torch.Tensor) -> torch.Tensor:
    """One index per row, with probability proportional to ``weights`` (non-negative)."""
    import torch

    dtype = torch.float32 if weights.device.type == "mps" else torch.float64
    cumulative = weights.to(dtype).cumsum(dim=-1)
    total = cumulative[:, -1:]
    point = torch.rand(total.shape, dtype=dtype, device=weights.device) * total
    # rand() < 1, but the product can round up to the total; stay below it so a zero-weight
    # entry at the end can never be picked.
    point = torch.minimum(point, total * (1.0 - torch.finfo(dtype).eps))
    return torch.searchsorted(cumulative, point, right=True)[:, 0]


class PresencePenaltyLogitsProcessor:
    """Subtract ``penalty`` from the logit of every token already *generated* (not the prompt).

    OpenAI-style presence penalty: a flat amount per token that occurred at least once, whatever
    the count. One gather and one scatter over the generated tokens per step, no pass over the
    vocabulary besides the copy.

    Parameters
    ----------
    penalty
        Amount to subtract, > 0.
    prompt_length
        Columns of ``input_ids`` that belong to the (padded) prompt.
    """

    def __init__(self, penalty: float, prompt_length: int) -> None:
        self.penalty = penalty
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Return the penalised scores (a new tensor)."""
        generated = input_ids[:, self.prompt_length :]
        if generated.shape[1] == 0:
            return scores
        # Repeated ids all write the same value (read from the unpenalised scores): once each.
        penalised = scores.gather(1, generated) - self.penalty
        return scores.scatter(1, generated, penalised)  # type: ignore[return-value]


def english_bias(blocked: torch.Tensor) -> torch.Tensor:
    """The additive bias for :class:`AllowedTokensLogitsProcessor`: 0 where allowed, ``-inf``
    where ``blocked`` (a boolean vocabulary mask) is ``True``; float32 on the mask's device."""
    import torch

    bias = torch.zeros(blocked.shape, dtype=torch.float32, device=blocked.device)
    return bias.masked_fill_(blocked, float("-inf"))


class AllowedTokensLogitsProcessor:
    """Keep only the allowed tokens (``english_only``): one addition of a precomputed bias a step.

    Adding a 0 / ``-inf`` float vector is several times cheaper than ``masked_fill`` with a
    boolean mask of the same size.

    Parameters
    ----------
    bias
        Float tensor of the model's vocabulary size (on the model's device, the scores' dtype):
        0 for allowed tokens, ``-inf`` for every token that must never be sampled (see
        :func:`english_bias`). A boolean mask (``True`` = blocked) is turned into that bias once.
    """

    def __init__(self, bias: torch.Tensor) -> None:
        import torch

        self.bias = english_bias(bias) if bias.dtype == torch.bool else bias

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Return scores with every blocked token at ``-inf`` (a new tensor)."""
        return scores + self.bias  # type: ignore[return-value]


class StopStringCriterion:
    """End a row once the decoded text of its newest tokens contains a stop string.

    Costs nothing to build, whatever the number of strings (transformers' ``StopStringCriteria``
    precomputes tables over the whole vocabulary for each string, about a second apiece). At each
    step it decodes only the last few tokens of each row, enough to hold the longest stop string
    (its UTF-8 length plus a margin for tokens that decode to nothing), and looks for the strings
    whose last character occurs in that text. A stop string found earlier ended its row then, so
    looking at the tail is enough. The backend's text pipeline cuts the text at the same place.

    Parameters
    ----------
    decode
        Token ids -> text, as the backend decodes them.
    stops
        The stop strings (non-empty).
    prompt_length
        Columns of ``input_ids`` that belong to the (padded) prompt.
    """

    #: Extra tokens decoded beyond the longest stop string's byte count (special tokens that
    #: decode to nothing could otherwise push part of a stop string out of the window).
    MARGIN = 8

    def __init__(
        self, decode: Callable[[list[int]], str], stops: Sequence[str], prompt_length: int
    ) -> None:
        self.decode = decode
        self.prompt_length = prompt_length
        self.window = max(len(stop.encode("utf-8")) for stop in stops) + self.MARGIN
        self.by_last_char: dict[str, tuple[str, ...]] = {}
        for stop in dict.fromkeys(stops):
            self.by_last_char[stop[-1]] = (*self.by_last_char.get(stop[-1], ()), stop)

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        """One flag per row: ``True`` where the newest text contains a stop string."""
        import torch

        generated = input_ids[:, self.prompt_length :]
        done = [False] * input_ids.shape[0]
        if generated.shape[1]:
            for row, ids in enumerate(generated[:, -self.window :].tolist()):
                done[row] = self.matches(self.decode(ids))
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]

    def matches(self, text: str) -> bool:
        """Whether ``text`` contains one of the stop strings."""
        for char in set(text).intersection(self.by_last_char):
            if any(stop in text for stop in self.by_last_char[char]):
                return True
        return False


class CancelCriterion:
    """Stop every row once ``event`` is set (the stream's consumer went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        import torch

        done = self.event.is_set()
        return torch.full(  # type: ignore[return-value]
            (input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device
        )
