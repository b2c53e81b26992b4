"""Byte-exact decoding, exactly-one-category classification, tiers and allowed ids."""

from __future__ import annotations

from typing import Any

import pytest

from qwen_backends.errors import ConfigurationError
from qwen_backends.vocab import (
    CATEGORIES,
    TIERS,
    allowed_token_ids,
    extract_english_tokens,
)
from qwen_backends.vocab.categories import classify_all, classify_bytes, token_table


@pytest.fixture(scope="module")
def english(offline_tokenizer: Any) -> Any:
    return extract_english_tokens(offline_tokenizer, "english")


def _id(tokenizer: Any, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    assert isinstance(token_id, int)
    return token_id


def test_every_token_has_exactly_one_known_category(offline_tokenizer: Any, english: Any) -> None:
    assert english.vocab_size == len(offline_tokenizer) == 151_669
    assert len(english.categories) == english.vocab_size
    assert set(english.categories) <= set(CATEGORIES)
    assert sum(english.category_counts.values()) == english.vocab_size
    assert english.category_counts == {c: english.categories.count(c) for c in CATEGORIES}
    assert english.category_counts["special"] == 26


@pytest.mark.parametrize(
    ("token", "category"),
    [
        ("Hello", "ascii_word"),
        ("Ġworld", "ascii_word"),
        ("ization", "ascii_word_piece"),
        ("ä½łå¥½", "cjk"),  # 你好
        ("Ã©", "latin1_letters"),  # é
        ("âĢĻs", "english_typographic"),  # ’s
        ("Ã", "partial_utf8"),  # the lone byte 0xC3, first half of é
        ("ĠÐŁÑĢ", "other_script"),  # " Пр"
        ("<|im_end|>", "special"),
        ("<think>", "special"),
        ("7", "digits"),
        ("...", "ascii_punct"),
        ("ĊĊ", "whitespace"),
        ("_id", "ascii_mixed"),
        ("Ā", "control"),  # the byte 0x00
    ],
)
def test_known_tokens_land_in_their_category(
    offline_tokenizer: Any, english: Any, token: str, category: str
) -> None:
    assert english.categories[_id(offline_tokenizer, token)] == category


@pytest.mark.parametrize(
    ("data", "category"),
    [
        (b" world", "_letters"),
        (b"\tworld", "ascii_mixed"),  # only a space may lead a word
        (b" 123", "digits"),
        (b");\n", "ascii_punct"),
        (b" \t\n", "whitespace"),
        (b"x\x1b", "control"),
        ("“".encode(), "english_typographic"),
        (" café".encode(), "latin1_letters"),
        ("é—".encode(), "latin1_letters"),  # a Latin-1 letter wins over typography
        ("«".encode(), "other_symbol"),  # French quotes are not English typography
        ("😂".encode(), "other_symbol"),
        ("ł".encode(), "other_script"),  # Latin, but outside Latin-1
        ("٣".encode(), "other_script"),  # an Arabic-Indic digit
        ("カ".encode(), "cjk"),
        ("，".encode(), "cjk"),  # full-width comma
        ("é".encode()[:1], "partial_utf8"),
        ("你".encode()[1:], "partial_utf8"),
    ],
)
def test_criteria_on_raw_bytes(data: bytes, category: str) -> None:
    assert classify_bytes(data) == category


def test_token_bytes_are_exact(offline_tokenizer: Any) -> None:
    table = token_table(offline_tokenizer)
    text = "Hello, wörld! 你好 — “quoted” Привет 😂\n\tend"
    ids = offline_tokenizer.encode(text)
    assert b"".join(table.data[i] for i in ids) == text.encode("utf-8")
    for token_id in range(0, 151_643, 997):
        raw = table.data[token_id]
        decoded = offline_tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
        if table.categories[token_id] != "partial_utf8":
            assert raw.decode("utf-8") == decoded


def test_tiers_are_nested_and_made_of_their_categories(
    english: Any, offline_tokenizer: Any
) -> None:
    ids = {tier: set(extract_english_tokens(offline_tokenizer, tier).token_ids) for tier in TIERS}
    assert ids["strict"] < ids["ascii"] < ids["english"]
    for tier, members in ids.items():
        expected = {i for i, c in enumerate(english.categories) if c in TIERS[tier]}
        assert members == expected, tier
        assert english.tier_counts[tier] == len(members)
    assert list(english.token_ids) == sorted(english.token_ids)
    assert english.texts[english.token_ids.index(1879)] == " world"
    assert english.tokens[english.token_ids.index(1879)] == "Ġworld"
    assert 1879 in english and 108386 not in english


def test_allowed_ids_are_the_tier_plus_turn_enders(offline_tokenizer: Any, english: Any) -> None:
    allowed = allowed_token_ids(offline_tokenizer)
    assert allowed == sorted({*english.token_ids, 151643, 151645})
    allowed.clear()  # the caller's copy; the cache must not change
    assert len(allowed_token_ids(offline_tokenizer)) == len(english) + 2
    strict = allowed_token_ids(offline_tokenizer, "strict")
    assert 151645 in strict and 11 not in strict  # "," is punctuation, not a word


def test_summary_reports_counts_and_percentages(english: Any) -> None:
    summary = english.summary()
    assert summary["vocab_size"] == 151_669
    assert summary["tier"] == "english" and summary["tier_size"] == len(english)
    assert len(summary["tokenizer_sha256"]) == 64
    assert sum(entry["count"] for entry in summary["categories"].values()) == 151_669
    assert sum(e["percent"] for e in summary["categories"].values()) == pytest.approx(100, abs=0.01)
    assert summary["categories"]["cjk"]["tiers"] == []
    assert summary["tiers"]["ascii"]["count"] == summary["tiers"]["english"]["count"] - (
        english.category_counts["english_typographic"] + english.category_counts["latin1_letters"]
    )


def test_unknown_tier_is_a_clear_error(offline_tokenizer: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown vocabulary tier 'englsh'.*strict"):
        extract_english_tokens(offline_tokenizer, "englsh")
    with pytest.raises(ConfigurationError, match="unknown vocabulary tier"):
        allowed_token_ids(offline_tokenizer, "latin")


def test_vectorised_classification_equals_the_per_token_criteria(offline_tokenizer: Any) -> None:
    table = token_table(offline_tokenizer)
    reference = [
        "special" if index in table.added else classify_bytes(raw)
        for index, raw in enumerate(table.data)
    ]
    assert classify_all(table.data, table.added) == reference
    # odd inputs: the NUL separator inside a non-ASCII token, an empty token, all added
    tricky = [b"\x00\xc3\xa9", b"", "—".encode(), b"\xe4\xbd", b"ab"]
    assert classify_all(tricky, frozenset({1})) == [
        classify_bytes(tricky[0]),
        "special",
        "english_typographic",
        "partial_utf8",
        "_letters",
    ]
    assert classify_all([b"x"], frozenset({0})) == ["special"]


def test_byte_level_table_is_inverted_exactly() -> None:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from qwen_backends.vocab.categories import _byte_level_blob

    stand_ins = bytes_to_unicode()
    assert _byte_level_blob("".join(stand_ins[b] for b in range(256))) == bytes(range(256))
    assert _byte_level_blob("") == b""
    # text that is not byte-level BPE (a CJK character, a non-BMP emoji) is refused
    assert _byte_level_blob("Ġworld你") is None
    assert _byte_level_blob("Ġ😂") is None
