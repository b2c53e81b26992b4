"""Rendered prompt -> token ids, reusing the ids of the long pieces of earlier prompts.

Every call of a conversation, an agent loop or a few-shot evaluation renders the whole history
again and tokenizes it again: ~5 ms for 2,000 tokens, ~80 ms for 30,000, before any prompt
cache can help. The tokenizers library splits a text at its added tokens (``<|im_start|>``,
``<|im_end|>``, ``<tool_call>`` ...) before anything else, so the ids of a prompt are the ids of
the pieces between added tokens, joined with the added tokens' ids. :func:`encode_prompt` keeps
the ids of recent long pieces (a system prompt, the tool list, earlier turns) per tokenizer and
tokenizes only the pieces it has not seen.

The first prompt of each tokenizer is also encoded whole and compared: a tokenizer whose added
tokens do not split text that way (one that strips the spaces around them) is then always
encoded whole.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections import OrderedDict
from typing import Any

__all__ = ["encode_prompt"]

#: Pieces shorter than this are tokenized every time (cheaper than keeping them).
MIN_KEPT_CHARACTERS = 256
#: Pieces kept per tokenizer, least recently used dropped first.
KEPT_PIECES = 64


class _PieceEncoder:
    """One tokenizer's split pattern and its kept pieces."""

    def __init__(self, tokenizer: Any) -> None:
        backend = tokenizer.backend_tokenizer
        self.encode_text = backend.encode
        decoder = backend.get_added_tokens_decoder()
        added = {token.content: index for index, token in decoder.items()}
        self.added = added
        # Longest first, so that a token is never matched as the start of a longer one.
        names = sorted(added, key=len, reverse=True)
        self.split = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None
        self.kept: OrderedDict[str, list[int]] = OrderedDict()
        self.lock = threading.Lock()
        self.checked = False
        self.exact = True

    def whole(self, text: str) -> list[int]:
        return list(self.encode_text(text, add_special_tokens=False).ids)

    def encode(self, text: str) -> list[int]:
        if self.split is None or not self.exact:
            return self.whole(text)
        ids: list[int] = []
        for position, piece in enumerate(self.split.split(text)):
            if position % 2:
                ids.append(self.added[piece])
            elif len(piece) < MIN_KEPT_CHARACTERS:
                if piece:
                    ids.extend(self.whole(piece))
            else:
                ids.extend(self._piece(piece))
        if not self.checked:
            self.checked = True
            self.exact = ids == self.whole(text)
            if not self.exact:
                return self.whole(text)
        return ids

    def _piece(self, piece: str) -> list[int]:
        with self.lock:
            found = self.kept.get(piece)
            if found is not None:
                self.kept.move_to_end(piece)
                return found
        ids = self.whole(piece)
        with self.lock:
            self.kept[piece] = ids
            while len(self.kept) > KEPT_PIECES:
                self.kept.popitem(last=False)
        return ids


_ENCODERS: weakref.WeakKeyDictionary[Any, _PieceEncoder] = weakref.WeakKeyDictionary()
_ENCODERS_LOCK = threading.Lock()


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """The ids of ``text`` (a rendered prompt) as ``tokenizer(text, add_special_tokens=False)``
    gives them, reusing the ids of long pieces this tokenizer encoded before (see the module
    docs). Tokenizers without a ``backend_tokenizer`` (slow ones) are called as they are."""
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    try:
        encoder = _ENCODERS.get(tokenizer)
    except TypeError:  # not weakly referenceable: no reuse
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if encoder is None:
        with _ENCODERS_LOCK:
            encoder = _ENCODERS.get(tokenizer)
            if encoder is None:
                encoder = _ENCODERS[tokenizer] = _PieceEncoder(tokenizer)
    return encoder.encode(text)
