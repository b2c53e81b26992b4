"""llama.cpp: the schema rewrite that makes integer bounds enforceable by its grammar."""

from __future__ import annotations

import pytest

from qwen_backends.backends.llamacpp import MAX_ENUMERATED_RANGE, llama_schema
from qwen_backends.errors import UnsupportedFeatureError


def test_bounded_integers_become_enums_everywhere_and_names_are_left_alone() -> None:
    schema = {
        "type": "object",
        "properties": {
            "minimum": {"type": "integer", "minimum": 0, "maximum": 3, "description": "d"},
            "scores": {
                "type": "array",
                "items": {"type": "integer", "exclusiveMinimum": -1, "exclusiveMaximum": 2},
            },
        },
        "$defs": {"P": {"type": "integer", "minimum": -1, "maximum": 1}},
    }
    assert llama_schema(schema) == {
        "type": "object",
        "properties": {
            "minimum": {"description": "d", "enum": [0, 1, 2, 3]},
            "scores": {"type": "array", "items": {"enum": [0, 1]}},
        },
        "$defs": {"P": {"enum": [-1, 0, 1]}},
    }
    assert schema["properties"]["minimum"]["maximum"] == 3, "the input is not modified"


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "number", "minimum": 0, "maximum": 1}, "does not enforce minimum, maximum"),
        ({"type": "integer", "minimum": 0}, "does not enforce minimum"),
        ({"type": "integer", "minimum": 0, "maximum": 9, "multipleOf": 3}, "multipleOf"),
        ({"type": "integer", "minimum": 0, "maximum": MAX_ENUMERATED_RANGE}, "too wide"),
    ],
)
def test_bounds_that_cannot_be_spelled_out_are_refused(schema: dict, message: str) -> None:
    with pytest.raises(UnsupportedFeatureError, match=message) as caught:
        llama_schema(schema)
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


def test_sampled_output_matches_a_bounded_schema_for_many_seeds() -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (extra 'llamacpp')")
    from qwen_backends.factory import create_backend
    from qwen_backends.testing import tiny_gguf

    options = {"n_threads": 1, "n_threads_batch": 1, "n_ctx": 2048}
    with create_backend(
        backend="llamacpp", model=str(tiny_gguf("q8_0")), llamacpp=options
    ) as backend:
        answers = set()
        for seed in range(8):
            result = backend.generate(
                "Fill it in.", {"max_new_tokens": 120, "seed": seed}, response_format=BOUNDED
            )
            assert set(result.parsed) == set(BOUNDED["properties"])
            assert 0 <= result.parsed["count"] <= 9 and len(result.parsed["code"]) <= 4
            answers.add(result.text)
        assert len(answers) > 1
