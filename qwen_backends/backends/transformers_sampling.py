"""How :class:`~qwen_backends.sampling.SamplingParams` map onto transformers generation.

Every value reaches ``model.generate`` explicitly, so the thinking-mode defaults in Qwen3-4B's
``generation_config.json`` never apply:

- ``temperature``, ``top_p``, ``top_k``, ``min_p``, ``max_new_tokens`` and
  ``repetition_penalty`` go into a :class:`~transformers.GenerationConfig` built from scratch
  (:func:`generation_config_for`); temperature 0 is greedy decoding with the sampling-only fields
  at transformers' neutral values;
- ``presence_penalty`` and ``english_only`` have no ``GenerationConfig`` field and are small
  vectorised logits processors (:class:`PresencePenaltyLogitsProcessor`,
  :class:`AllowedTokensLogitsProcessor`);
- ``seed`` is an RNG scope and ``stop`` a cached ``StopStringCriteria``, both kept by the backend
  (:class:`~qwen_backends.backends.hf.HFBackend`);
- :class:`CancelCriterion` ends a stream's generation when its consumer goes away.

transformers and torch are imported inside the functions that need them, so importing this module
stays light.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import GenerationConfig

    from qwen_backends.sampling import SamplingParams

__all__ = [
    "AllowedTokensLogitsProcessor",
    "CancelCriterion",
    "PresencePenaltyLogitsProcessor",
    "generation_config_for",
]


def generation_config_for(
    sampling: SamplingParams, *, eos_token_ids: Sequence[int], pad_token_id: int
) -> GenerationConfig:
    """A ``GenerationConfig`` carrying every value of ``sampling`` explicitly.

    ``presence_penalty``, ``seed``, ``stop`` and ``english_only`` have no field here: they are
    logits processors, an RNG scope and a cached ``StopStringCriteria`` (see
    :meth:`~qwen_backends.backends.hf.HFBackend._generate_kwargs`).
    Temperature 0 is greedy decoding (``do_sample=False``); the sampling-only fields are then set
    to transformers' neutral values so the model's own (thinking-mode) values cannot fill them.
    """
    from transformers import GenerationConfig

    if sampling.is_greedy:
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


class PresencePenaltyLogitsProcessor:
    """Subtract ``penalty`` from the logit of every token already *generated* (not the prompt).

    OpenAI-style presence penalty: a flat amount per token that occurred at least once, whatever
    the count. One scatter and one subtraction per step, no Python loop over tokens.

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
        seen = scores.new_zeros(scores.shape).scatter_(1, generated, 1.0)
        return scores - self.penalty * seen  # type: ignore[return-value]


class AllowedTokensLogitsProcessor:
    """Keep only the tokens of a precomputed mask (``english_only``): one ``masked_fill`` a step.

    Parameters
    ----------
    blocked
        Boolean tensor of the model's vocabulary size (on the model's device), ``True`` for every
        token that must never be sampled.
    """

    def __init__(self, blocked: torch.Tensor) -> None:
        self.blocked = blocked

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Return scores with every blocked token at ``-inf``."""
        return scores.masked_fill(self.blocked, float("-inf"))  # type: ignore[return-value]


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
