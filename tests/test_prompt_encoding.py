"""Prompt ids reusing the pieces of earlier prompts: always the ids of a whole encoding."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from qwen_backends.chat import render_prompt, render_prompt_ids
from qwen_backends.prompt_encoding import _ENCODERS, MIN_KEPT_CHARACTERS, encode_prompt

SYSTEM = "You are a careful assistant who answers in one line. Ünïcödé, 中文 and 😀. " * 20
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city. " * 12,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!   How can I help?\n\n"},
        {"role": "user", "content": "Weather in  Oslo?\t" + "more words " * 40},
    ],
    [{"role": "user", "content": "x" * (MIN_KEPT_CHARACTERS + 1)}],
]


def whole(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("tools", [None, TOOLS])
def test_prompt_ids_equal_a_whole_encoding_first_and_from_kept_pieces(
    offline_tokenizer: Any, tools: Any
) -> None:
    for _ in range(2):  # the second time the long pieces come from the kept ids
        for messages in CONVERSATIONS:
            text = render_prompt(offline_tokenizer, messages, tools=tools)
            assert render_prompt_ids(offline_tokenizer, messages, tools=tools) == whole(
                offline_tokenizer, text
            )
    encoder = _ENCODERS[offline_tokenizer]
    assert encoder.exact and any(SYSTEM in piece for piece in encoder.kept)


def test_added_tokens_in_allowed_text_and_short_pieces_are_exact(offline_tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "a<tool_call>b</tool_call><think>c" + "d" * 300}]
    text = render_prompt(offline_tokenizer, messages, allow_control_tokens=True)
    assert encode_prompt(offline_tokenizer, text) == whole(offline_tokenizer, text)


def test_a_long_piece_is_tokenized_once(offline_tokenizer: Any) -> None:
    first = render_prompt(offline_tokenizer, CONVERSATIONS[0])
    encode_prompt(offline_tokenizer, first)
    encoder = _ENCODERS[offline_tokenizer]
    encoded: list[str] = []
    original = encoder.encode_text

    def counting(text: str, **options: Any) -> Any:
        encoded.append(text)
        return original(text, **options)

    encoder.encode_text = counting
    try:
        later = render_prompt(offline_tokenizer, CONVERSATIONS[1])
        assert encode_prompt(offline_tokenizer, later) == whole(offline_tokenizer, later)
    finally:
        encoder.encode_text = original
    assert encoded and not any(SYSTEM in text for text in encoded)


class _Stripping:
    """A tokenizer whose added token ``<s>`` eats the space before it (``lstrip``): pieces
    between added tokens are then not encoded alone, so the whole text must be."""

    def __init__(self) -> None:
        self.backend_tokenizer = SimpleNamespace(
            encode=self._encode,
            get_added_tokens_decoder=lambda: {1000: SimpleNamespace(content="<s>")},
        )

    @staticmethod
    def _encode(text: str, add_special_tokens: bool = False) -> Any:
        ids: list[int] = []
        for position, piece in enumerate(text.replace(" <s>", "<s>").split("<s>")):
            if position:
                ids.append(1000)
            ids.extend(ord(char) for char in piece)
        return SimpleNamespace(ids=ids)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self._encode(text).ids}


def test_a_tokenizer_that_strips_around_added_tokens_is_encoded_whole() -> None:
    tokenizer = _Stripping()
    text = "a <s>b" + "c" * MIN_KEPT_CHARACTERS
    assert encode_prompt(tokenizer, text) == whole(tokenizer, text)
    assert not _ENCODERS[tokenizer].exact
    assert encode_prompt(tokenizer, text + " <s>") == whole(tokenizer, text + " <s>")
