"""Checks that a tier serves English: coverage, round trip, representability, recall, rejection.

Every check works offline on a fresh machine: the English prose comes from the license texts
under ``/usr/share/common-licenses`` and from docstrings of Python's standard library (read with
:mod:`ast`, nothing is imported), and a missing source is reported as absent, not an error.
"""

from __future__ import annotations

import ast
import importlib.util
import random
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen_backends.vocab.categories import ENGLISH_TYPOGRAPHIC, TIER_NAMES, check_tier, token_table

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "LICENSES_DIR",
    "NON_ENGLISH_SENTENCES",
    "STDLIB_MODULES",
    "coverage",
    "english_corpora",
    "lexicon_recall",
    "rejection",
    "representability",
    "tier_alphabet",
    "validate",
]

#: Where Debian-family systems keep the common license texts (plain English prose).
LICENSES_DIR = Path("/usr/share/common-licenses")
#: Standard-library modules whose docstrings serve as English prose about code.
STDLIB_MODULES: tuple[str, ...] = (
    "argparse", "ast", "asyncio.tasks", "calendar", "collections", "configparser", "csv",
    "dataclasses", "datetime", "difflib", "email.message", "enum", "fractions", "functools",
    "gettext", "heapq", "http.client", "inspect", "json", "logging", "os", "pathlib", "pickle",
    "random", "shutil", "statistics", "string", "subprocess", "tarfile", "textwrap",
    "threading", "typing", "unittest.case", "urllib.parse", "zipfile",
)  # fmt: skip
#: Real sentences in other scripts; their tokens should mostly fall outside every tier.
NON_ENGLISH_SENTENCES: dict[str, str] = {
    "chinese": "今天天气很好，我们一起去公园散步吧。机器学习模型需要大量的数据才能训练好。",
    "russian": "Сегодня хорошая погода, давайте пойдём гулять в парк. "
    "Моделям машинного обучения нужно много данных.",
    "arabic": "الطقس جميل اليوم، دعونا نذهب للتنزه في الحديقة. "
    "تحتاج نماذج التعلم الآلي إلى كميات كبيرة من البيانات.",
    "japanese": "今日はいい天気なので、公園を散歩しましょう。"
    "機械学習モデルの訓練には大量のデータが必要です。",
}


def english_corpora(
    licenses_dir: Path = LICENSES_DIR, modules: Sequence[str] = STDLIB_MODULES
) -> dict[str, dict[str, str]]:
    """English texts available offline: ``{"common-licenses": {...}, "python-docstrings": {...}}``.

    Each source maps a document name to its text; a source that is absent on this machine maps
    to an empty dict (symbolic links to another license are read once).
    """
    licenses: dict[str, str] = {}
    if licenses_dir.is_dir():
        for path in sorted(licenses_dir.iterdir()):
            if path.is_file() and not path.is_symlink():
                try:
                    licenses[path.name] = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
    docstrings: dict[str, str] = {}
    for module in modules:
        text = _module_docstrings(module)
        if text:
            docstrings[module] = text
    return {"common-licenses": licenses, "python-docstrings": docstrings}


def _module_docstrings(module: str) -> str:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return ""
    if spec is None:
        return ""
    source = Path(spec.origin or "")
    if source.suffix != ".py":  # frozen modules (os, ...) still ship their source file
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        source = stdlib / (module.replace(".", "/") + ".py")
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return ""
    nodes: Iterable[ast.AST] = ast.walk(tree)
    documented = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    texts = [ast.get_docstring(node, clean=True) for node in nodes if isinstance(node, documented)]
    return "\n\n".join(text for text in texts if text)


def _encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=False, verbose=False)
    return [list(ids) for ids in encoded["input_ids"]]


def _tier_sets(tokenizer: PreTrainedTokenizerBase) -> dict[str, frozenset[int]]:
    table = token_table(tokenizer)
    return {tier: frozenset(table.tier_ids(tier)) for tier in TIER_NAMES}


def coverage(
    tokenizer: PreTrainedTokenizerBase, corpora: dict[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    """Share of the tokens of real English prose inside each tier, and the round trip.

    Returns, per source, ``documents``, ``characters``, ``tokens``, ``in_tier`` (tier -> share
    in percent), ``roundtrip_ok`` (documents whose ``decode(encode(text)) == text``) and
    ``available``.
    """
    corpora = english_corpora() if corpora is None else corpora
    tiers = _tier_sets(tokenizer)
    result: dict[str, Any] = {}
    for source, documents in corpora.items():
        names = list(documents)
        encoded = _encode(tokenizer, [documents[name] for name in names])
        total = sum(len(ids) for ids in encoded)
        inside = {
            tier: sum(1 for ids in encoded for i in ids if i in members)
            for tier, members in tiers.items()
        }
        roundtrip_failures = [
            name
            for name, ids in zip(names, encoded, strict=True)
            if tokenizer.decode(ids, clean_up_tokenization_spaces=False) != documents[name]
        ]
        result[source] = {
            "available": bool(documents),
            "documents": len(documents),
            "characters": sum(len(text) for text in documents.values()),
            "tokens": total,
            "in_tier": {tier: _percent(inside[tier], total) for tier in tiers},
            "roundtrip_ok": len(documents) - len(roundtrip_failures),
            "roundtrip_failures": roundtrip_failures,
        }
    return result


def tier_alphabet(tier: str) -> str:
    """The characters a tier is meant to write.

    ``strict``: ASCII letters and the space; ``ascii``: printable ASCII plus tab, newlines,
    vertical tab and form feed; ``english``: that plus the English typographic characters and
    the Latin-1 letters.
    """
    check_tier(tier)
    if tier == "strict":
        return "".join(map(chr, [32, *range(65, 91), *range(97, 123)]))
    ascii_chars = "\t\n\x0b\x0c\r" + "".join(map(chr, range(32, 127)))
    if tier == "ascii":
        return ascii_chars
    latin1 = [c for c in map(chr, range(0xC0, 0x100)) if c not in "×÷"]
    return ascii_chars + ENGLISH_TYPOGRAPHIC + "".join(latin1)


def representability(
    tokenizer: PreTrainedTokenizerBase, tier: str = "english", samples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Whether text made of the tier's characters can be written with the tier's tokens only.

    Checks that every character of :func:`tier_alphabet` encodes to tokens of the tier (so any
    text is a concatenation of in-tier tokens), and how many random texts of those characters
    (seeded; 1-40 characters; for ``strict``, letter words joined by single spaces) the
    tokenizer's own encoding keeps entirely inside the tier.
    """
    members = _tier_sets(tokenizer)[tier]
    alphabet = tier_alphabet(tier)
    per_char = _encode(tokenizer, list(alphabet))
    missing = [
        char for char, ids in zip(alphabet, per_char, strict=True) if not members.issuperset(ids)
    ]
    rng = random.Random(seed)
    if tier == "strict":
        letters = alphabet[1:]
        texts = [
            " ".join(
                "".join(rng.choices(letters, k=rng.randint(1, 8))) for _ in range(rng.randint(1, 5))
            )
            for _ in range(samples)
        ]
    else:
        texts = ["".join(rng.choices(alphabet, k=rng.randint(1, 40))) for _ in range(samples)]
    encoded = _encode(tokenizer, texts)
    inside = sum(1 for ids in encoded if members.issuperset(ids))
    return {
        "alphabet_size": len(alphabet),
        "characters_missing": missing,
        "random_texts": samples,
        "random_texts_in_tier": _percent(inside, samples),
    }


def lexicon_recall(
    tokenizer: PreTrainedTokenizerBase, tier: str = "english", top_n: int = 20_000
) -> dict[str, Any]:
    """Share of wordfreq's ``top_n`` English words (with a leading space) tokenized in-tier.

    ``recall`` counts every listed word (wordfreq's list also holds emoji and symbols);
    ``ascii_letter_recall`` only the words made of ASCII letters.

    Raises
    ------
    MissingDependencyError
        When wordfreq (the ``vocab`` extra) is missing.
    """
    from qwen_backends.vocab.categories import _wordfreq

    words = _wordfreq().top_n_list("en", top_n)
    members = _tier_sets(tokenizer)[tier]
    encoded = _encode(tokenizer, [" " + word for word in words])
    missed = [word for word, ids in zip(words, encoded, strict=True) if not members.issuperset(ids)]
    letters = [w for w in words if w.isascii() and w.isalpha()]
    missed_letters = [w for w in missed if w.isascii() and w.isalpha()]
    return {
        "words": len(words),
        "recall": _percent(len(words) - len(missed), len(words)),
        "ascii_letter_words": len(letters),
        "ascii_letter_recall": _percent(len(letters) - len(missed_letters), len(letters)),
        "missed": missed,
    }


def rejection(
    tokenizer: PreTrainedTokenizerBase,
    tier: str = "english",
    sentences: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per language, the share of a real sentence's tokens that fall OUTSIDE the tier."""
    sentences = NON_ENGLISH_SENTENCES if sentences is None else sentences
    members = _tier_sets(tokenizer)[tier]
    encoded = _encode(tokenizer, list(sentences.values()))
    return {
        language: {
            "tokens": len(ids),
            "outside": _percent(sum(1 for i in ids if i not in members), len(ids)),
        }
        for language, ids in zip(sentences, encoded, strict=True)
    }


def validate(tokenizer: PreTrainedTokenizerBase, tier: str = "english") -> dict[str, Any]:
    """Every check above for ``tier`` (coverage covers all tiers), as JSON-ready data."""
    check_tier(tier)
    return {
        "tier": tier,
        "coverage": coverage(tokenizer),
        "representability": {t: representability(tokenizer, t) for t in TIER_NAMES},
        "lexicon_recall": lexicon_recall(tokenizer, tier),
        "rejection": rejection(tokenizer, tier),
    }


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 3) if whole else 0.0
