"""Validation on real text: coverage, round trip, representability, recall, rejection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qwen_backends.vocab import extract_english_tokens
from qwen_backends.vocab.validation import (
    LICENSES_DIR,
    coverage,
    english_corpora,
    lexicon_recall,
    rejection,
    representability,
    tier_alphabet,
)

GPL = LICENSES_DIR / "GPL-3"


@pytest.mark.skipif(not GPL.is_file(), reason=f"{GPL} is absent on this machine")
def test_gpl_tokens_all_lie_in_ascii_and_round_trip(offline_tokenizer: Any) -> None:
    text = GPL.read_text(encoding="utf-8")
    ids = offline_tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    assert len(ids) > 5000
    ascii_ids = set(extract_english_tokens(offline_tokenizer, "ascii").token_ids)
    assert set(ids) <= ascii_ids
    assert offline_tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text


def test_coverage_of_english_prose(offline_tokenizer: Any) -> None:
    corpora = english_corpora()
    assert corpora["python-docstrings"], "the stdlib sources should be readable"
    result = coverage(offline_tokenizer, corpora)
    for source, entry in result.items():
        if not entry["available"]:
            continue
        assert entry["roundtrip_ok"] == entry["documents"], entry["roundtrip_failures"]
        assert entry["in_tier"]["english"] >= entry["in_tier"]["ascii"] > 99.9, source
        assert entry["in_tier"]["strict"] < entry["in_tier"]["ascii"]


def test_missing_sources_are_reported_not_fatal(offline_tokenizer: Any, tmp_path: Path) -> None:
    corpora = english_corpora(licenses_dir=tmp_path / "absent", modules=("no_such_module_x",))
    assert corpora == {"common-licenses": {}, "python-docstrings": {}}
    result = coverage(offline_tokenizer, corpora)
    assert result["common-licenses"] == {
        "available": False,
        "documents": 0,
        "characters": 0,
        "tokens": 0,
        "in_tier": {"strict": 0.0, "ascii": 0.0, "english": 0.0},
        "roundtrip_ok": 0,
        "roundtrip_failures": [],
    }


def test_lexicon_recall_meets_the_goal(offline_tokenizer: Any) -> None:
    result = lexicon_recall(offline_tokenizer, "english")
    assert result["words"] == 20_000
    assert result["recall"] >= 99.5, result["missed"][:30]
    assert result["ascii_letter_recall"] == 100.0
    # the ascii tier lacks "café" etc., so it can only do worse
    assert lexicon_recall(offline_tokenizer, "ascii")["recall"] < result["recall"]


@pytest.mark.parametrize("tier", ["ascii", "english"])
def test_every_character_of_the_tier_has_in_tier_tokens(offline_tokenizer: Any, tier: str) -> None:
    result = representability(offline_tokenizer, tier, samples=300)
    assert result["characters_missing"] == []
    assert result["alphabet_size"] == len(tier_alphabet(tier))
    if tier == "ascii":
        assert result["random_texts_in_tier"] == 100.0


def test_strict_tier_lacks_the_bare_space(offline_tokenizer: Any) -> None:
    # Documented limitation: a lone " " is a whitespace token, so strict cannot write "a  b".
    assert representability(offline_tokenizer, "strict", samples=50)["characters_missing"] == [" "]


def test_non_english_sentences_are_rejected(offline_tokenizer: Any) -> None:
    result = rejection(offline_tokenizer, "english")
    assert set(result) == {"chinese", "russian", "arabic", "japanese"}
    assert result["chinese"]["outside"] == 100.0
    assert result["japanese"]["outside"] == 100.0
    # spaces and ASCII punctuation between the words are legitimately in-tier
    assert result["russian"]["outside"] > 80
    assert result["arabic"]["outside"] > 80
    english = rejection(offline_tokenizer, "english", {"english": "The cat sat on the mat."})
    assert english["english"]["outside"] == 0.0
