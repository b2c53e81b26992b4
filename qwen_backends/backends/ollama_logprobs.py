"""Per-token log-probabilities on an Ollama server (``"logprobs": true`` on ``/api/chat``).

Ollama reports them from server release 0.12.11 on (older servers ignore the field, so they are
refused before a request is sent: :func:`check_logprobs_version`). Each answer line carries the
entries of the tokens it holds: the token's text, its log-probability (the log-softmax of the
raw logits, as everywhere here) and the ``top_logprobs`` most likely alternatives, also by
text. Two differences from the other backends, both the server's:

- tokens are named by text only: :func:`chunk_steps` finds each id in Qwen3's vocabulary (every
  Qwen3-4B release shares it); a token that is a byte of a longer character has no text of its
  own (the server sends U+FFFD) and gets the id ``-1`` (:data:`UNKNOWN_ID`);
- the end-of-turn token and tokens cut by a stop string get no entry, so an answer may have
  fewer entries than ``completion_tokens``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from qwen_backends.backends.token_loop import Step
from qwen_backends.errors import UnsupportedFeatureError

if TYPE_CHECKING:
    from qwen_backends.backends.remote import Remote

__all__ = [
    "MIN_LOGPROBS_VERSION",
    "UNKNOWN_ID",
    "check_logprobs_version",
    "chunk_steps",
    "qwen3_vocabulary",
]

#: The first Ollama release that returns log-probabilities.
MIN_LOGPROBS_VERSION: tuple[int, int, int] = (0, 12, 11)
#: The id of a token the server names by a text that is no single vocabulary entry.
UNKNOWN_ID = -1


def check_logprobs_version(version: tuple[int, int, int] | None, *, remote: Remote) -> None:
    """Refuse per-token log-probabilities on a server that would silently leave them out.

    An unreadable version is let through (the version check has already warned about it).

    Raises
    ------
    UnsupportedFeatureError
        For a server older than :data:`MIN_LOGPROBS_VERSION`.
    """
    if version is not None and version < MIN_LOGPROBS_VERSION:
        shown = ".".join(map(str, version))
        raise UnsupportedFeatureError(
            remote.backend,
            "logprobs",
            f"Ollama {shown} at {remote.url} returns none (they came in 0.12.11); upgrade "
            "Ollama (https://ollama.com/download) or drop logprobs",
        )


@functools.lru_cache(maxsize=1)
def qwen3_vocabulary() -> tuple[Any, dict[str, int]]:
    """Qwen3's byte-exact tokenizer (every Qwen3-4B release shares its vocabulary) and what
    :func:`chunk_steps` looks texts up in: the byte-level spelling of each token -> its id, the
    added tokens (``<|im_end|>`` ...) spelled as the server shows them. Loaded once (seconds)."""
    from qwen_backends.tokenizer import OFFLINE, load_tokenizer

    tokenizer = load_tokenizer(OFFLINE)
    encoder = _byte_encoder()
    vocabulary = dict(tokenizer.get_vocab())
    for text, token in tokenizer.get_added_vocab().items():
        vocabulary["".join(encoder[byte] for byte in text.encode("utf-8"))] = token
    return tokenizer, vocabulary


def chunk_steps(entries: Any) -> tuple[Step, ...]:
    """The :class:`~qwen_backends.backends.token_loop.Step` values of one answer line's
    ``logprobs``, ids looked up in :func:`qwen3_vocabulary`."""
    if not entries:
        return ()
    vocabulary = qwen3_vocabulary()[1]
    steps = []
    for entry in entries or ():
        top = tuple(
            (_token_id(item.token, vocabulary), float(item.logprob))
            for item in entry.top_logprobs or ()
        )
        steps.append(Step(_token_id(entry.token, vocabulary), float(entry.logprob), top))
    return tuple(steps)


def _token_id(text: str, vocabulary: dict[str, int]) -> int:
    if "\ufffd" in text:
        # A byte of a longer character, which the server's JSON spells U+FFFD (Qwen3 also has
        # a token for U+FFFD itself, which is not what such a byte is).
        return UNKNOWN_ID
    encoder = _byte_encoder()
    found = vocabulary.get("".join(encoder[byte] for byte in text.encode("utf-8")))
    return UNKNOWN_ID if found is None else found


@functools.lru_cache(maxsize=1)
def _byte_encoder() -> dict[int, str]:
    from qwen_backends.tokenizer import byte_decoder

    return {byte: char for char, byte in byte_decoder().items()}
