"""The public entry points: :func:`extract_english_tokens` and :func:`allowed_token_ids`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qwen_backends.vocab.categories import (
    CATEGORIES,
    CATEGORY_DESCRIPTIONS,
    CRITERIA_VERSION,
    LEXICON_SIZE,
    TIER_NAMES,
    TIERS,
    TokenTable,
    check_tier,
    token_table,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["TURN_END_TOKENS", "EnglishVocab", "allowed_token_ids", "extract_english_tokens"]

#: Tokens a model needs to end its turn; always allowed in English-only generation.
TURN_END_TOKENS: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")

_ALLOWED: dict[tuple[int, str], list[int]] = {}


def allowed_token_ids(tokenizer: PreTrainedTokenizerBase, tier: str = "english") -> list[int]:
    """Sorted ids a backend may sample with ``english_only``: ``tier`` plus the turn enders.

    The result is computed once per tokenizer and tier (about 0.3 s for Qwen3's 151,669
    tokens) and cached, so later calls are instant. Needs no lexicon and loads no weights.

    Parameters
    ----------
    tokenizer
        A loaded tokenizer (:func:`qwen_backends.load_tokenizer`).
    tier
        ``"strict"``, ``"ascii"`` or ``"english"``.

    Raises
    ------
    ConfigurationError
        For an unknown tier.
    """
    check_tier(tier)
    table = token_table(tokenizer)
    key = (id(table), tier)
    if key not in _ALLOWED:
        ids = set(table.tier_ids(tier))
        for token in TURN_END_TOKENS:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
                ids.add(token_id)
        _ALLOWED[key] = sorted(ids)
    return list(_ALLOWED[key])


@dataclass(frozen=True)
class EnglishVocab:
    """One tier of a tokenizer's vocabulary, with the make-up of the whole vocabulary.

    Attributes
    ----------
    tier
        The tier extracted (``strict`` / ``ascii`` / ``english``).
    token_ids
        Sorted ids in the tier.
    tokens
        The vocabulary strings of those ids (byte-level form, ``"Ġworld"``).
    texts
        Their exact decoded text (``" world"``).
    category_counts
        Tokens per category over the whole vocabulary (sums to :attr:`vocab_size`).
    tier_counts
        Tokens per tier over the whole vocabulary.
    vocab_size
        ``len(tokenizer)``, added tokens included.
    tokenizer_name, tokenizer_sha256
        Where the tokenizer came from and a hash of all its tokens' bytes.
    criteria_version
        :data:`~qwen_backends.vocab.categories.CRITERIA_VERSION` of the rules used.
    categories
        The category of every token of the vocabulary, indexed by id.
    """

    tier: str
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    texts: tuple[str, ...]
    category_counts: dict[str, int]
    tier_counts: dict[str, int]
    vocab_size: int
    tokenizer_name: str
    tokenizer_sha256: str
    criteria_version: str = CRITERIA_VERSION
    categories: tuple[str, ...] = field(default=(), repr=False)

    def __len__(self) -> int:
        return len(self.token_ids)

    def __contains__(self, token_id: object) -> bool:
        return token_id in self._id_set

    @property
    def _id_set(self) -> frozenset[int]:
        cached: frozenset[int] | None = self.__dict__.get("_ids")
        if cached is None:
            cached = frozenset(self.token_ids)
            object.__setattr__(self, "_ids", cached)
        return cached

    def summary(self) -> dict[str, Any]:
        """Counts and percentages per category and tier, plus what produced them (JSON-ready)."""

        def share(count: int) -> float:
            return round(100.0 * count / self.vocab_size, 3) if self.vocab_size else 0.0

        return {
            "tokenizer": self.tokenizer_name,
            "tokenizer_sha256": self.tokenizer_sha256,
            "criteria_version": self.criteria_version,
            "lexicon": f"wordfreq top {LEXICON_SIZE} English words (ASCII letters)",
            "vocab_size": self.vocab_size,
            "tier": self.tier,
            "tier_size": len(self.token_ids),
            "categories": {
                name: {
                    "count": self.category_counts[name],
                    "percent": share(self.category_counts[name]),
                    "tiers": [tier for tier in TIER_NAMES if name in TIERS[tier]],
                    "description": CATEGORY_DESCRIPTIONS[name],
                }
                for name in CATEGORIES
            },
            "tiers": {
                name: {"count": self.tier_counts[name], "percent": share(self.tier_counts[name])}
                for name in TIER_NAMES
            },
        }


def extract_english_tokens(
    tokenizer: PreTrainedTokenizerBase, tier: str = "english"
) -> EnglishVocab:
    """Classify every token of ``tokenizer`` and return the ``tier`` as an :class:`EnglishVocab`.

    Tokenizer only: no weights are loaded. Takes well under a second for Qwen3-4B's 151,669
    tokens once the tokenizer is loaded (the work is cached per tokenizer).

    Raises
    ------
    ConfigurationError
        For an unknown tier.
    MissingDependencyError
        When ``wordfreq`` (the ``vocab`` extra) is missing: it tells words from word pieces.
    """
    check_tier(tier)
    table = token_table(tokenizer)
    table.resolve_words()
    return _vocab_from_table(table, tier)


def _vocab_from_table(table: TokenTable, tier: str) -> EnglishVocab:
    tally = Counter(table.categories)
    counts = {category: tally[category] for category in CATEGORIES}
    ids = table.tier_ids(tier)
    return EnglishVocab(
        tier=tier,
        token_ids=tuple(ids),
        tokens=tuple(table.tokens[i] for i in ids),
        texts=_texts(table, ids),
        category_counts=counts,
        tier_counts={
            name: sum(counts[category] for category in TIERS[name]) for name in TIER_NAMES
        },
        vocab_size=len(table),
        tokenizer_name=table.name,
        tokenizer_sha256=table.sha256,
        categories=tuple(table.categories),
    )


def _texts(table: TokenTable, ids: list[int]) -> tuple[str, ...]:
    """Decoded texts of in-tier tokens (valid UTF-8), in one decode when no token holds NUL."""
    data = [table.data[i] for i in ids]
    joined = b"\x00".join(data)
    if joined.count(b"\x00") == max(len(data) - 1, 0):
        return tuple(joined.decode("utf-8").split("\x00")) if data else ()
    return tuple(raw.decode("utf-8") for raw in data)
