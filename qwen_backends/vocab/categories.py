"""Decode every token to its exact bytes and put it in exactly one category.

Criteria (version :data:`CRITERIA_VERSION`), checked in this order; the first that matches wins,
so every token lands in exactly one category:

``special``
    An added token (``<|im_end|>``, ``<think>``, ...), special or not: control markup, not text.
``partial_utf8``
    The token's bytes are not valid UTF-8 on their own: a fragment of a multi-byte character
    (e.g. the first two bytes of ``你``). Such tokens only make sense next to their other halves.
``control``
    ASCII bytes including a control character other than ``\\t \\n \\v \\f \\r`` (``\\x00``,
    ``\\x1b``, DEL ...).
``whitespace``
    Only ASCII whitespace (spaces, tabs, newlines).
``ascii_word`` / ``ascii_word_piece``
    An optional leading space followed by ASCII letters only. It is an ``ascii_word`` when the
    letters, lower-cased, are one of the :data:`LEXICON_SIZE` most frequent English words of
    ``wordfreq`` (``" world"``, ``"Hello"``), otherwise an ``ascii_word_piece`` (``"ing"``,
    ``" Qu"``).
``digits``
    An optional leading space followed by ASCII digits only (Qwen splits numbers into single
    digits, so these are ``"0"`` .. ``"9"``).
``ascii_punct``
    ASCII punctuation and symbols, optionally with whitespace, no letters or digits
    (``"."``, ``");\\n"``, ``" =="``).
``ascii_mixed``
    Any other printable-ASCII token: letters, digits and symbols together, typical of code
    (``"_id"``, ``"2d"``, ``"'s"``, ``"\\tif"``).
``english_typographic``
    Valid UTF-8 whose non-ASCII characters all belong to :data:`ENGLISH_TYPOGRAPHIC`
    (curly quotes, dashes, ellipsis, bullets, no-break space, ``£ € ° © ™``...) and none is a
    Latin-1 letter (``"’s"``, ``" —"``, ``"…"``).
``latin1_letters``
    Valid UTF-8 whose non-ASCII characters are all Latin-1 letters (U+00C0-U+00FF except
    ``×`` and ``÷``) or :data:`ENGLISH_TYPOGRAPHIC`, with at least one Latin-1 letter: the
    accented letters of English loanwords (``"é"``, ``" café"``, ``"ñ"``). Whole French,
    Spanish or German pieces written in these letters land here too (``" für"``).
``cjk``
    Contains a Han, Hiragana, Katakana, Hangul or Bopomofo character, CJK punctuation
    (U+3000-U+303F, U+3200-U+33FF) or a full-width form (U+FF00-U+FFEF).
``other_script``
    Contains another non-ASCII letter, mark or digit (Cyrillic, Arabic, Greek, Thai,
    Latin letters outside Latin-1 such as ``ł`` ...).
``other_symbol``
    Everything else: non-ASCII symbols and punctuation outside the English set (emoji, arrows,
    box drawing, ``« »`` ...).

Tiers (nested, :data:`TIERS`): ``strict`` = English words and word pieces; ``ascii`` = every
printable-ASCII token (``strict`` + digits, punctuation, whitespace, mixed), enough to write any
ASCII text; ``english`` = ``ascii`` + English typographic punctuation + Latin-1 letters.
"""

from __future__ import annotations

import contextlib
import hashlib
import weakref
from collections.abc import Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Any

import regex

from qwen_backends.errors import ConfigurationError, MissingDependencyError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "CATEGORIES",
    "CATEGORY_DESCRIPTIONS",
    "CRITERIA_VERSION",
    "ENGLISH_TYPOGRAPHIC",
    "LEXICON_SIZE",
    "TIERS",
    "TIER_NAMES",
    "TokenTable",
    "check_tier",
    "classify_all",
    "classify_bytes",
    "token_table",
]

#: Bump whenever a criterion below changes, so stored outputs say which rules made them.
CRITERIA_VERSION = "english-vocab-1"
#: How many of wordfreq's most frequent English words count as "words" (vs word pieces).
LEXICON_SIZE = 50_000

#: Non-ASCII characters of ordinary English typography (the ``english_typographic`` category).
ENGLISH_TYPOGRAPHIC = (
    "\u00a0"  # no-break space
    "‘’“”′″"  # curly quotes and primes
    "‐‑‒–—―"  # hyphens and dashes
    "…•·†‡§¶"  # ellipsis, bullets, daggers, section and pilcrow
    "©®™°±×÷µ"  # marks and common math/units
    "£€¢¥"  # currencies
    "½¼¾¹²³"  # fractions and superscripts
)
#: Latin-1 letters (U+00C0-U+00FF without the signs ``×`` ``÷``).
_LATIN1_LETTERS = "\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff"

CATEGORY_DESCRIPTIONS: dict[str, str] = {
    "ascii_word": "English word from the lexicon (ASCII letters, optional leading space)",
    "ascii_word_piece": "ASCII letters, optional leading space, not a lexicon word",
    "digits": "ASCII digits, optional leading space",
    "ascii_punct": "ASCII punctuation/symbols, optionally with whitespace",
    "whitespace": "ASCII whitespace only",
    "ascii_mixed": "other printable ASCII (letters+digits+symbols, code-like)",
    "english_typographic": "ASCII + English typographic punctuation (’ “ — …)",
    "latin1_letters": "ASCII + Latin-1 letters of loanwords (é ï ñ)",
    "cjk": "Chinese, Japanese or Korean characters / CJK punctuation",
    "other_script": "letters or digits of other scripts (Cyrillic, Arabic, ...)",
    "other_symbol": "other non-ASCII symbols (emoji, arrows, box drawing, ...)",
    "control": "ASCII control characters",
    "partial_utf8": "fragment of a multi-byte UTF-8 character",
    "special": "added/special token (<|im_end|>, <think>, ...)",
}
#: Every category, in report order.
CATEGORIES: tuple[str, ...] = tuple(CATEGORY_DESCRIPTIONS)

_STRICT = frozenset({"ascii_word", "ascii_word_piece"})
_ASCII = _STRICT | {"digits", "ascii_punct", "whitespace", "ascii_mixed"}
_ENGLISH = _ASCII | {"english_typographic", "latin1_letters"}
#: Tier name -> the categories it contains; each tier contains the one before.
TIERS: dict[str, frozenset[str]] = {"strict": _STRICT, "ascii": _ASCII, "english": _ENGLISH}
TIER_NAMES: tuple[str, ...] = tuple(TIERS)

# The lexicon decides word vs piece; before it is applied, both share this provisional label.
_LETTERS = "_letters"

_CONTROL = regex.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")
_LETTERS_RE = regex.compile(rb" ?[A-Za-z]+")
_DIGITS_RE = regex.compile(rb" ?[0-9]+")
_PUNCT_RE = regex.compile(rb"[\s!-/:-@\[-`{-~]+")
_ENGLISH_TEXT = regex.compile("[\t\n\x0b\x0c\r -~" + ENGLISH_TYPOGRAPHIC + _LATIN1_LETTERS + "]+")
_LATIN1_LETTER = regex.compile("[" + _LATIN1_LETTERS + "]")
_CJK = regex.compile(
    r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}\p{Bopomofo}"
    r"\u3000-\u303f\u3200-\u33ff\uff00-\uffef]"
)
_OTHER_SCRIPT = regex.compile(r"[^\x00-\x7f](?<=[\p{L}\p{M}\p{N}])")


def classify_bytes(data: bytes) -> str:
    """The category of a regular (non-added) token from its exact bytes.

    ASCII-letter tokens get the provisional label ``"_letters"``; :class:`TokenTable` splits
    them into ``ascii_word`` / ``ascii_word_piece`` with the lexicon.
    """
    if data.isascii():
        if _CONTROL.search(data):
            return "control"
        if data.isspace():
            return "whitespace"
        if _LETTERS_RE.fullmatch(data):
            return _LETTERS
        if _DIGITS_RE.fullmatch(data):
            return "digits"
        if _PUNCT_RE.fullmatch(data):
            return "ascii_punct"
        return "ascii_mixed"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "partial_utf8"
    if _ENGLISH_TEXT.fullmatch(text):
        return "latin1_letters" if _LATIN1_LETTER.search(text) else "english_typographic"
    if _CJK.search(text):
        return "cjk"
    if _OTHER_SCRIPT.search(text):
        return "other_script"
    return "other_symbol"


class TokenTable:
    """Every token of a tokenizer with its exact bytes and its category.

    Build with :func:`token_table` (cached per tokenizer). Attributes are parallel lists
    indexed by token id.

    Attributes
    ----------
    tokens
        The vocabulary strings (byte-level form, e.g. ``"Ġworld"``).
    data
        The exact bytes each token stands for (added tokens: their UTF-8 content).
    categories
        One category per token; ASCII-letter tokens carry ``"_letters"`` until
        :meth:`resolve_words` runs.
    added
        Ids of the added tokens.
    name, sha256
        The tokenizer's ``name_or_path`` and a hash of every token's bytes and kind.
    """

    def __init__(
        self, tokens: list[str], data: list[bytes], added: frozenset[int], name: str
    ) -> None:
        self.tokens = tokens
        self.data = data
        self.added = added
        self.name = name
        self.categories = classify_all(data, added)
        kinds = bytearray(b"R" * len(data))  # R: regular, A: added
        for index in added:
            kinds[index] = ord("A")
        lengths = ",".join(map(str, map(len, data))).encode("ascii")
        self.sha256 = hashlib.sha256(bytes(kinds) + lengths + b"".join(data)).hexdigest()
        self._words_resolved = False
        self._tier_ids: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def tier_ids(self, tier: str) -> list[int]:
        """Sorted ids of ``tier`` (needs no lexicon: words and pieces share every tier)."""
        check_tier(tier)
        if tier not in self._tier_ids:
            wanted = TIERS[tier] | ({_LETTERS} if "ascii_word" in TIERS[tier] else set())
            self._tier_ids[tier] = [i for i, cat in enumerate(self.categories) if cat in wanted]
        return self._tier_ids[tier]

    def resolve_words(self) -> None:
        """Split ``"_letters"`` into ``ascii_word`` / ``ascii_word_piece`` (loads wordfreq)."""
        if self._words_resolved:
            return
        words = english_lexicon()
        indices = [i for i, category in enumerate(self.categories) if category == _LETTERS]
        # One C-level pass: join, lower-case, drop the leading spaces, split back.
        letters = b"\n".join(self.data[i] for i in indices).lower().replace(b" ", b"")
        for index, word in zip(indices, letters.decode("ascii").split("\n"), strict=True):
            self.categories[index] = "ascii_word" if word in words else "ascii_word_piece"
        self._words_resolved = True


# Bits of the per-byte classes used by :func:`classify_all`.
_B_LETTER, _B_DIGIT, _B_SPACE, _B_WS, _B_PUNCT, _B_CONTROL, _B_HIGH = (1 << i for i in range(7))


def _byte_classes() -> list[int]:
    classes = []
    for byte in range(256):
        char = chr(byte)
        if byte >= 0x80:
            classes.append(_B_HIGH)
        elif char.isalpha():
            classes.append(_B_LETTER)
        elif char.isdigit():
            classes.append(_B_DIGIT)
        elif char == " ":
            classes.append(_B_SPACE)
        elif char in "\t\n\x0b\x0c\r":
            classes.append(_B_WS)
        elif 0x21 <= byte <= 0x7E:
            classes.append(_B_PUNCT)
        else:
            classes.append(_B_CONTROL)
    return classes


def classify_all(data: Sequence[bytes], added: frozenset[int] = frozenset()) -> list[str]:
    """The category of every token: the same result as :func:`classify_bytes` per token.

    Added tokens (ids in ``added``) and empty entries (holes in the id space) are ``special``.

    Vectorised with numpy: per-byte classes are OR-reduced per token for the ASCII criteria,
    and the script criteria run once over all non-ASCII texts joined together. Without numpy
    it falls back to calling :func:`classify_bytes` on each token.
    """
    try:
        import numpy as np
    except ImportError:
        return [
            "special" if index in added else classify_bytes(raw) for index, raw in enumerate(data)
        ]
    count = len(data)
    lengths = list(map(len, data))
    result = ["special"] * count
    regular = [i for i in range(count) if lengths[i] and i not in added]
    if not regular:
        return result
    blob = np.frombuffer(b"".join([data[i] for i in regular]), dtype=np.uint8)
    starts = np.concatenate(([0], np.cumsum([lengths[i] for i in regular])[:-1]))
    bits = np.asarray(_byte_classes(), dtype=np.uint8)[blob]
    seen = np.bitwise_or.reduceat(bits, starts)
    spaces = np.add.reduceat((blob == 0x20).astype(np.int32), starts)
    space_ok = (spaces == 0) | ((spaces == 1) & (blob[starts] == 0x20))

    def only(allowed: int) -> Any:
        return (seen & ~np.uint8(allowed)) == 0

    codes = np.full(len(regular), "ascii_mixed", dtype=object)
    codes[only(_B_PUNCT | _B_SPACE | _B_WS) & (seen & _B_PUNCT > 0)] = "ascii_punct"
    codes[only(_B_DIGIT | _B_SPACE) & (seen & _B_DIGIT > 0) & space_ok] = "digits"
    codes[only(_B_LETTER | _B_SPACE) & (seen & _B_LETTER > 0) & space_ok] = _LETTERS
    codes[only(_B_SPACE | _B_WS)] = "whitespace"
    codes[seen & _B_CONTROL > 0] = "control"
    high = np.flatnonzero(seen & _B_HIGH)
    for position, category in zip(
        high.tolist(), _classify_non_ascii([data[regular[i]] for i in high]), strict=True
    ):
        codes[position] = category
    for index, category in zip(regular, codes.tolist(), strict=True):
        result[index] = category
    return result


_NOT_ENGLISH = regex.compile(
    "[^\x00\t\n\x0b\x0c\r -~" + ENGLISH_TYPOGRAPHIC + _LATIN1_LETTERS + "]"
)


def _classify_non_ascii(items: list[bytes]) -> list[str]:
    """:func:`classify_bytes` for tokens with a byte >= 0x80, by whole-text regex passes.

    All tokens are joined with ``\\x00`` and decoded once with ``surrogateescape``: an ASCII
    separator ends any multi-byte sequence, so a token's invalid bytes (and only those) become
    lone surrogates, which mark it ``partial_utf8``. Each criterion is one ``finditer`` over
    the joined text whose hits are mapped back to tokens.
    """
    import numpy as np

    result = [""] * len(items)
    # Tokens that contain the separator byte itself (very rare) take the per-token path.
    batch = [i for i, raw in enumerate(items) if b"\x00" not in raw]
    if len(batch) < len(items):
        for i in set(range(len(items))) - set(batch):
            result[i] = classify_bytes(items[i])
    if not batch:
        return result
    joined = b"\x00".join([items[i] for i in batch]).decode("utf-8", "surrogateescape")
    sizes = [len(text) + 1 for text in joined.split("\x00")]
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))

    def owners(pattern: str) -> set[int]:
        # The pattern consumes the rest of its text, so each text yields at most one match;
        # searchsorted(..., "right") is the 1-based number of the text holding a hit.
        hits = [match.start() for match in regex.finditer(pattern + "[^\\x00]*", joined)]
        return set(np.searchsorted(starts, hits, side="right").tolist())

    partial = owners("[\\udc80-\\udcff]")
    not_english = owners(_NOT_ENGLISH.pattern)
    latin1, cjk = owners(_LATIN1_LETTER.pattern), owners(_CJK.pattern)
    other = owners(_OTHER_SCRIPT.pattern)
    for number, position in enumerate(batch, start=1):
        if number in partial:
            result[position] = "partial_utf8"
        elif number not in not_english:
            result[position] = "latin1_letters" if number in latin1 else "english_typographic"
        elif number in cjk:
            result[position] = "cjk"
        elif number in other:
            result[position] = "other_script"
        else:
            result[position] = "other_symbol"
    return result


_LEXICON: frozenset[str] | None = None


def english_lexicon() -> frozenset[str]:
    """wordfreq's :data:`LEXICON_SIZE` most frequent English words made of ASCII letters."""
    global _LEXICON
    if _LEXICON is None:
        _LEXICON = frozenset(
            word
            for word in _wordfreq().top_n_list("en", LEXICON_SIZE)
            if word.isascii() and word.isalpha()
        )
    return _LEXICON


def _wordfreq() -> Any:
    try:
        import wordfreq
    except ImportError as exc:
        raise MissingDependencyError(
            "wordfreq is not installed (the English lexicon of the vocab tools); "
            "install it with: pip install 'qwen-backends[vocab]'"
        ) from exc
    return wordfreq


def check_tier(tier: str) -> None:
    """Raise :class:`ConfigurationError` for an unknown tier name."""
    if tier not in TIERS:
        raise ConfigurationError(
            f"unknown vocabulary tier {tier!r}; choose one of {', '.join(TIER_NAMES)} "
            "(strict = English words and pieces, ascii = all printable ASCII, "
            "english = ascii + typographic punctuation + Latin-1 letters)"
        )


def _byte_decoder() -> dict[int, int]:
    from qwen_backends.tokenizer import byte_decoder

    return {ord(char): byte for char, byte in byte_decoder().items()}


_TABLES: dict[tuple[Any, ...], TokenTable] = {}
_BY_OBJECT: weakref.WeakKeyDictionary[Any, TokenTable] = weakref.WeakKeyDictionary()


def token_table(tokenizer: PreTrainedTokenizerBase) -> TokenTable:
    """The :class:`TokenTable` of ``tokenizer``, built once per tokenizer (~0.3 s).

    Byte-level BPE strings are mapped back to bytes with the byte-level table
    (:func:`qwen_backends.tokenizer.byte_decoder`; one ``str.translate`` over all regular
    tokens at once); if a token has a character outside that table (a tokenizer that
    is not byte-level), each token falls back to ``tokenizer.convert_tokens_to_string``.
    """
    try:
        return _BY_OBJECT[tokenizer]
    except (KeyError, TypeError):
        pass
    size = len(tokenizer)
    added = frozenset(i for i in tokenizer.added_tokens_decoder if i < size)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        tokens = [token or "" for token in map(backend.id_to_token, range(size))]
    else:
        tokens = [token or "" for token in tokenizer.convert_ids_to_tokens(list(range(size)))]
    key = (getattr(tokenizer, "name_or_path", ""), size, hash(tuple(tokens)))
    table = _TABLES.get(key)
    if table is None:
        table = TokenTable(tokens, _token_bytes(tokenizer, tokens, added), added, key[0])
        _TABLES[key] = table
    # A tokenizer that is not weak-referenceable is still found next time by the content key.
    with contextlib.suppress(TypeError):
        _BY_OBJECT[tokenizer] = table
    return table


def _byte_level_blob(joined: str) -> bytes | None:
    """The bytes behind byte-level BPE text, or ``None`` if a character is not in the table."""
    decoder = _byte_decoder()
    try:
        import numpy as np
    except ImportError:
        if not set(joined) <= {chr(char) for char in decoder}:
            return None
        to_latin1 = str.maketrans({char: chr(byte) for char, byte in decoder.items()})
        return joined.translate(to_latin1).encode("latin-1")
    # One table lookup over the UTF-16 code units (the table's characters are all < U+0400).
    table = np.full(65536, -1, dtype=np.int16)
    table[list(decoder)] = list(decoder.values())
    mapped = table[np.frombuffer(joined.encode("utf-16-le"), dtype="<u2")]
    if mapped.size and mapped.min() < 0:
        return None
    return bytes(mapped.astype(np.uint8).tobytes())


def _token_bytes(
    tokenizer: PreTrainedTokenizerBase, tokens: list[str], added: frozenset[int]
) -> list[bytes]:
    regular = [token for index, token in enumerate(tokens) if index not in added]
    blob = _byte_level_blob("".join(regular))
    if blob is not None:
        # Byte-level: every character stands for exactly one byte, so the token lengths
        # slice the converted vocabulary back into tokens.
        sizes = list(map(len, regular))
        pieces = [
            blob[end - size : end] for end, size in zip(accumulate(sizes), sizes, strict=True)
        ]
        if all(index >= len(regular) for index in added):  # the usual layout: added ones last
            return pieces + [tokens[index].encode("utf-8") for index in sorted(added)]
        remaining = iter(pieces)
        return [
            token.encode("utf-8") if index in added else next(remaining)
            for index, token in enumerate(tokens)
        ]
    return [
        token.encode("utf-8")
        if index in added
        else tokenizer.convert_tokens_to_string([token]).encode("utf-8")
        for index, token in enumerate(tokens)
    ]
