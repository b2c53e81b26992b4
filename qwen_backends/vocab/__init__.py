"""Qwen3-4B's English vocabulary, from the tokenizer alone (never loads model weights).

- :func:`allowed_token_ids` -- the ids a backend may sample with ``english_only=True``;
- :func:`extract_english_tokens` -- a tier of the vocabulary as an :class:`EnglishVocab`;
- :mod:`qwen_backends.vocab.categories` -- the byte-exact decoding and the documented criteria;
- :mod:`qwen_backends.vocab.validation` / :mod:`qwen_backends.vocab.output` -- the checks and
  the output directory (``qwen-backends vocab english``).
"""

from qwen_backends.vocab.categories import (
    CATEGORIES,
    CATEGORY_DESCRIPTIONS,
    CRITERIA_VERSION,
    TIER_NAMES,
    TIERS,
)
from qwen_backends.vocab.extract import (
    TURN_END_TOKENS,
    EnglishVocab,
    allowed_token_ids,
    extract_english_tokens,
)

__all__ = [
    "CATEGORIES",
    "CATEGORY_DESCRIPTIONS",
    "CRITERIA_VERSION",
    "TIERS",
    "TIER_NAMES",
    "TURN_END_TOKENS",
    "EnglishVocab",
    "allowed_token_ids",
    "extract_english_tokens",
]
