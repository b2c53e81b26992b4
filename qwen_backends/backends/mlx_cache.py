"""Prompt caching for the mlx backend: mlx-lm's own prompt-cache objects in the shared LRU.

mlx-lm keeps a generation's keys and values in a list of per-layer cache objects
(``mlx_lm.models.cache.make_prompt_cache``) that ``stream_generate(..., prompt_cache=...)``
fills in place. After a call that list holds the prompt and the answer's tokens (mlx-lm feeds each
token before handing it over, so every token the caller saw is in it, the last one included
unless ``max_tokens`` ended the answer). :class:`MLXPromptCache` keeps such lists in the shared
:class:`~qwen_backends.backends.prompt_cache.PromptCache`, keyed by the ids they hold; a new call
takes the one sharing the longest prefix out of the LRU (so no two generations share one), cuts
it to that prefix with ``trim_prompt_cache`` and passes only the rest of the prompt to mlx-lm.

Logits processors that look back over the sequence (the repetition and presence penalties) see
only the ids mlx-lm was given, so with a reused prefix they are wrapped in :class:`WithPrefix`,
which puts the reused ids in front: the same history, and the same answer, as a cold start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qwen_backends.backends.prompt_cache import RuntimeCache

if TYPE_CHECKING:
    import mlx.core as mx

__all__ = ["MLXPromptCache", "WithPrefix"]


class WithPrefix:
    """A logits processor called with the reused prefix in front of mlx-lm's token history.

    Parameters
    ----------
    prefix
        The prompt ids served from the cache (mlx-lm never sees them).
    processor
        The wrapped ``(tokens, logits) -> logits`` processor.
    """

    def __init__(self, prefix: list[int], processor: Callable[[Any, Any], Any]) -> None:
        import mlx.core as mx

        self.prefix = mx.array(prefix, dtype=mx.uint32)
        self.processor = processor

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        """Return the wrapped processor's logits for the whole history."""
        import mlx.core as mx

        return self.processor(mx.concatenate([self.prefix, tokens.astype(mx.uint32)]), logits)


class MLXPromptCache(RuntimeCache[list[Any]]):
    """The mlx backend's prompt cache: lists of mlx-lm cache objects in an LRU.

    Parameters
    ----------
    model
        The loaded mlx-lm model (for ``make_prompt_cache``).
    budget_bytes
        Most bytes of keys and values kept (``0``: off; every call gets a fresh list).

    Attributes
    ----------
    lru
        The kept lists, keyed by the ids each holds.
    """

    def __init__(self, model: Any, budget_bytes: int) -> None:
        self.model = model
        super().__init__(budget_bytes)

    def take(self, prompt_ids: list[int], *, counted: bool = True) -> tuple[list[Any], int]:
        """A cache list for ``prompt_ids`` and how many of its first ids it already holds.

        The entry sharing the longest prefix, trimmed to it, or a fresh list (reused ``0``).
        At least the last prompt id is always left to compute (its logits pick the first token).
        ``counted``: whether the lookup counts in :attr:`stats` (not for work done ahead).
        """
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

        cache, reused = self.lru.take(prompt_ids, len(prompt_ids) - 1, counted=counted)
        if cache is not None and can_trim_prompt_cache(cache):
            held = held_tokens(cache)
            if trim_prompt_cache(cache, held - reused) == held - reused:
                return cache, reused
        return make_prompt_cache(self.model), 0

    def keep(self, cache: list[Any], ids: list[int]) -> None:
        """Keep ``cache`` after a call; ``ids`` are the prompt and every token handed over."""
        held = held_tokens(cache)
        if self.enabled and 0 < held <= len(ids):
            self.lru.put(ids[:held], cache, sum(layer.nbytes for layer in cache))

    def clear(self) -> None:
        """Drop every entry."""
        self.lru.clear()


def held_tokens(cache: list[Any]) -> int:
    """Positions an mlx-lm cache list holds (its first layer's offset)."""
    return int(getattr(cache[0], "offset", 0)) if cache else 0
