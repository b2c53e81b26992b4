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
