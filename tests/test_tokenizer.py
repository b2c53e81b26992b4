"""The tokenizer-only loader and the byte-exact offline Qwen3-4B tokenizer."""

from __future__ import annotations

import os
from typing import Any

import pytest

from qwen_backends.errors import MissingDependencyError, ModelNotFoundError
from qwen_backends.tokenizer import ADDED_TOKENS, load_tokenizer, offline_tokenizer_dir

GOLDEN = {
    "Hello, world!": [9707, 11, 1879, 0],
    "The quick brown fox jumps over the lazy dog.": [
        785, 3974, 13876, 38835, 34208, 916, 279, 15678, 5562, 13
    ],
    "Hello world": [9707, 1879],
    "Hello  world\n": [9707, 220, 1879, 198],
    "<|im_start|>user\nHello<|im_end|>\n": [151644, 872, 198, 9707, 151645, 198],
}  # fmt: skip


@pytest.mark.parametrize(("text", "ids"), GOLDEN.items())
def test_offline_tokenizer_matches_golden_ids(
    offline_tokenizer: Any, text: str, ids: list[int]
) -> None:
    assert offline_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    assert offline_tokenizer.decode(ids) == text


def test_offline_tokenizer_shape(offline_tokenizer: Any) -> None:
    assert len(offline_tokenizer) == 151_669
    assert offline_tokenizer.eos_token == "<|im_end|>"
    assert offline_tokenizer.pad_token == "<|endoftext|>"
    assert offline_tokenizer.bos_token is None
    for offset, (content, _) in enumerate(ADDED_TOKENS):
        assert offline_tokenizer.convert_tokens_to_ids(content) == 151_643 + offset
    # Single digits (the Qwen split), NFC normalisation, byte-level round trip of any text.
    assert offline_tokenizer("2025", add_special_tokens=False)["input_ids"] == [17, 15, 17, 20]
    decomposed = "cafe\u0301"
    assert offline_tokenizer.decode(offline_tokenizer(decomposed)["input_ids"]) == "café"
    emoji = "naïve 🤖 日本語"
    assert offline_tokenizer.decode(offline_tokenizer(emoji)["input_ids"]) == emoji


def test_offline_build_is_cached_not_rebuilt() -> None:
    directory = offline_tokenizer_dir()
    stamp = os.stat(directory / "tokenizer.json").st_mtime_ns
    assert offline_tokenizer_dir() == directory
    assert os.stat(directory / "tokenizer.json").st_mtime_ns == stamp


def test_unreachable_hub_error_points_to_offline() -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        load_tokenizer("Qwen/Qwen3-4B")
    message = str(caught.value)
    assert "'Qwen/Qwen3-4B'" in message and "load_tokenizer('offline')" in message
    assert "\n" not in message


def test_missing_directory_is_a_clear_error(tmp_path: Any) -> None:
    with pytest.raises(ModelNotFoundError, match=r"directory .* does not exist") as caught:
        load_tokenizer(str(tmp_path / "nowhere"))
    assert "load_tokenizer('offline')" in str(caught.value)
    assert "Repo id" not in str(caught.value)  # not a hub-id complaint about a local path


def test_file_or_directory_without_tokenizer_is_a_clear_error(tmp_path: Any) -> None:
    with pytest.raises(ModelNotFoundError, match="holds no tokenizer"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="is a file; pass the directory"):
        load_tokenizer(str(tmp_path / "weights.bin"))


def test_local_directory_loads(tmp_path: Any, offline_tokenizer: Any) -> None:
    offline_tokenizer.save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path))("Hello world")["input_ids"] == [9707, 1879]


def test_missing_offline_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "dashscope" else real(name, *a),
    )
    with pytest.raises(MissingDependencyError, match=r"qwen-backends\[offline\]"):
        load_tokenizer("offline")
