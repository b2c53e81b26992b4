"""The tokenizer embedded in a GGUF: byte-exact with the Hugging Face one, without torch."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_tokenizer import GOLDEN

from qwen_backends.errors import ModelNotFoundError
from qwen_backends.gguf_tokenizer import LightTokenizer, read_gguf_metadata, tokenizer_from_gguf

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Das Wetter für eine Stadt.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Wetter in München?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather",
                                                  "arguments": {"city": "München"}}}
            ],
        },
        {"role": "tool", "content": "sonnig"},
        {"role": "user", "content": "danke 🤖"},
    ],
]  # fmt: skip


@pytest.fixture(scope="module")
def gguf() -> Path:
    pytest.importorskip("llama_cpp", reason="building the test GGUF needs the llamacpp extra")
    from qwen_backends.testing import tiny_gguf

    return tiny_gguf("q8_0")


@pytest.fixture(scope="module")
def light(gguf: Path) -> LightTokenizer:
    return tokenizer_from_gguf(gguf)


def test_the_header_is_read(gguf: Path) -> None:
    meta = read_gguf_metadata(gguf, prefix="tokenizer.ggml.")
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "qwen2"
    assert len(meta["tokenizer.ggml.tokens"]) == 151_936
    assert meta["tokenizer.ggml.eos_token_id"] == 151645
    assert all(key.startswith("tokenizer.ggml.") for key in meta)


@pytest.mark.parametrize(("text", "ids"), GOLDEN.items())
def test_golden_ids(light: LightTokenizer, text: str, ids: list[int]) -> None:
    assert light(text, add_special_tokens=False)["input_ids"] == ids
    assert light.decode(ids) == text


def test_it_matches_the_hugging_face_tokenizer(
    light: LightTokenizer, offline_tokenizer: Any
) -> None:
    prose = Path("/usr/share/common-licenses/GPL-3")
    source = prose.read_text() if prose.is_file() else Path(__file__).read_text()
    rng = random.Random(0)
    texts = ["naïve 🤖 日本語", "cafe\u0301", "x<tool_call>{}</tool_call><think>\n\n</think>\r\n\t"]
    for _ in range(200):
        start = rng.randrange(len(source) - 300)
        texts.append(source[start : start + rng.randrange(1, 300)])
    for text in texts:
        ids = offline_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert light(text, add_special_tokens=False)["input_ids"] == ids, text
        for skip in (False, True):
            expected = offline_tokenizer.decode(ids, skip_special_tokens=skip)
            assert light.decode(ids, skip_special_tokens=skip) == expected
    pieces = [[i] for i in range(0, 151_669, 997)]
    assert light.batch_decode(pieces) == offline_tokenizer.batch_decode(pieces)
    assert light.get_vocab() == offline_tokenizer.get_vocab()
    assert len(light) == len(offline_tokenizer) == 151_669
    assert {i: (t.content, t.special) for i, t in light.added_tokens_decoder.items()} == {
        i: (t.content, t.special) for i, t in offline_tokenizer.added_tokens_decoder.items()
    }
    assert (light.eos_token, light.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert light.convert_tokens_to_ids(["<|im_end|>", "nope-not-a-token"]) == [151645, None]
    assert light("Hello world").input_ids == [9707, 1879]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("tools", [None, TOOLS])
def test_the_chat_template_renders_byte_identically(
    light: LightTokenizer, offline_tokenizer: Any, conversation: Any, tools: Any
) -> None:
    options = {"add_generation_prompt": True, "enable_thinking": False, "tools": tools}
    expected = offline_tokenizer.apply_chat_template(conversation, tokenize=False, **options)
    assert light.apply_chat_template(conversation, tokenize=False, **options) == expected
    ids = offline_tokenizer.apply_chat_template(conversation, tokenize=True, **options)
    assert light.apply_chat_template(conversation, tokenize=True, **options) == list(
        getattr(ids, "input_ids", ids)
    )


def test_a_file_that_is_not_a_qwen_gguf_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(ModelNotFoundError, match="not a GGUF file"):
        read_gguf_metadata(text)
    # A valid header without a vocabulary: one string key, no tensors.
    key, value = b"general.name", b"x"
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
    header += struct.pack("<Q", len(key)) + key + struct.pack("<I", 8)
    header += struct.pack("<Q", len(value)) + value
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(header)
    assert read_gguf_metadata(empty) == {"general.name": "x"}
    with pytest.raises(ModelNotFoundError, match="no Qwen byte-level BPE vocabulary"):
        tokenizer_from_gguf(empty)


def test_llamacpp_answers_with_a_schema_without_importing_torch(gguf: Path) -> None:
    script = f"""
import sys
from qwen_backends import create_backend
options = {{"n_threads": 1, "n_threads_batch": 1, "n_ctx": 1024}}
schema = {{"type": "object", "properties": {{"ok": {{"type": "boolean"}}}}, "required": ["ok"]}}
with create_backend(backend="llamacpp", model={str(gguf)!r}, llamacpp=options) as backend:
    answer = backend.generate(
        "hi", {{"max_new_tokens": 16, "seed": 0, "english_only": True}}, response_format=schema
    )
assert isinstance(answer.parsed["ok"], bool), answer
heavy = [name for name in ("torch", "transformers", "trl", "datasets") if name in sys.modules]
assert not heavy, heavy
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
