"""mlx-lm's sampler and logits processors with transformers' semantics (the mlx backend's
sampling; see :mod:`qwen_backends.backends.mlx` for how each ``SamplingParams`` field maps).

MLX is imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import collections
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import mlx.core as mx

    from qwen_backends.sampling import SamplingParams

__all__ = ["AdditiveMask", "LogitsProcessor", "PresencePenalty", "RawLogits", "make_sampler"]

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


class RawLogits:
    """Logits processor that keeps each step's raw logits (it runs first) and changes nothing."""

    def __init__(self, kept: collections.deque[mx.array]) -> None:
        self.kept = kept
        #: The dtype of the model's logits, once seen.
        self.dtype: Any = None

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        import mlx.core as mx

        self.dtype = logits.dtype
        # A new array: later processors assign into ``logits`` in place (mlx-lm's penalties).
        self.kept.append(logits.astype(mx.float32))
        return logits
