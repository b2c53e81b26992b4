"""llama.cpp: response_format through the grammar engine every in-process backend shares.

llama.cpp's own GBNF route refused numeric bounds it could not spell out, crashed the process on
grammar text it rejected and let raw control characters into strings; the engine's numpy mask
enforces what the schema says, and refuses before generation what it cannot.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from qwen_backends.errors import UnsupportedFeatureError

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (extra 'llamacpp')")


@pytest.fixture(scope="module")
def backend() -> Iterator[Any]:
    from qwen_backends.factory import create_backend
    from qwen_backends.testing import tiny_gguf

    options = {"n_threads": 1, "n_threads_batch": 1, "n_ctx": 2048}
    with create_backend(
        backend="llamacpp", model=str(tiny_gguf("q8_0")), llamacpp=options
    ) as instance:
        yield instance


#: What llama.cpp's converter refused or ignored: number bounds, one-sided and exclusive integer
#: bounds, multipleOf, \d patterns without anchors, tuple items, strings (control characters).
ONCE_REFUSED = {
    "type": "object",
    "properties": {
        "ratio": {"type": "number", "minimum": 0, "maximum": 1},
        "count": {"type": "integer", "exclusiveMinimum": 5, "maximum": 100000},
        "step": {"type": "integer", "minimum": 0, "maximum": 30, "multipleOf": 10},
        "code": {"type": "string", "pattern": "^\\d{3}-\\w$"},
        "pair": {"type": "array", "prefixItems": [{"type": "boolean"}, {"enum": ["a", "b"]}],
                 "items": False, "minItems": 2},
        "note": {"type": "string", "maxLength": 12},
    },
    "required": ["ratio", "count", "step", "code", "pair", "note"],
    "additionalProperties": False,
}  # fmt: skip


def test_bounds_patterns_and_tuples_are_enforced(backend: Any) -> None:
    import re

    for seed in range(4):
        result = backend.generate(
            "Fill it in.", {"max_new_tokens": 160, "seed": seed}, response_format=ONCE_REFUSED
        )
        data = result.parsed  # validated against the whole schema by the base class
        assert 0 <= data["ratio"] <= 1 and data["count"] > 5 and data["step"] in (0, 10, 20, 30)
        assert re.search(r"\d{3}-\w", data["code"])
        assert not any(ord(char) < 0x20 for char in result.text), "raw control character"


def test_a_schema_the_engine_cannot_enforce_is_refused_before_generation(backend: Any) -> None:
    with pytest.raises(UnsupportedFeatureError, match="look-around") as caught:
        backend.generate("x", {"max_new_tokens": 4}, response_format={"pattern": "(?<=a)b"})
    assert caught.value.backend == "llamacpp" and "\n" not in str(caught.value)


BOUNDED = {
    "type": "object",
    "properties": {
        "colour": {"enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
        "code": {"type": "string", "maxLength": 4},
        "point": {
            "type": "object",
            "properties": {"x": {"type": "integer", "minimum": -2, "maximum": 2}},
            "required": ["x"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["colour", "count", "code", "point", "tags"],
    "additionalProperties": False,
}


def test_sampled_output_matches_a_bounded_schema_for_many_seeds(backend: Any) -> None:
    answers = set()
    for seed in range(8):
        result = backend.generate(
            "Fill it in.", {"max_new_tokens": 120, "seed": seed}, response_format=BOUNDED
        )
        assert set(result.parsed) == set(BOUNDED["properties"])
        assert 0 <= result.parsed["count"] <= 9 and len(result.parsed["code"]) <= 4
        answers.add(result.text)
    assert len(answers) > 1
