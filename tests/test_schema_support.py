"""Which JSON-schema keywords the grammar enforces, checks after, or refuses."""

from __future__ import annotations

from typing import Any

import pytest

from qwen_backends.schema_support import CHECKED_AFTER, UnenforceableSchema, prepare

CARD = {
    "type": "object",
    "properties": {"kind": {"const": "card"}, "last4": {"type": "string"}},
    "required": ["kind", "last4"],
}
CASH = {
    "type": "object",
    "properties": {"kind": {"enum": ["cash", "cheque"]}},
    "required": ["kind"],
}


def test_keywords_no_grammar_expresses_are_taken_out_and_named() -> None:
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "uniqueItems": {"type": "integer"},  # a property may be *named* like a keyword
        },
        "dependentRequired": {"tags": ["uniqueItems"]},
    }
    prepared = prepare(schema)
    assert prepared.checked_after == ("dependentRequired", "uniqueItems")
    assert "uniqueItems" not in prepared.schema["properties"]["tags"]
    assert prepared.schema["properties"]["uniqueItems"] == {"type": "integer"}
    assert "dependentRequired" not in prepared.schema
    assert schema["properties"]["tags"]["uniqueItems"] is True, "the caller's schema is intact"
    assert set(CHECKED_AFTER) >= {"not", "if", "contains", "propertyNames"}


@pytest.mark.parametrize(
    "branches",
    [
        [CARD, CASH],  # a discriminating property with different values
        [{"type": "string"}, {"type": "integer"}, {"type": "null"}],  # different types
        [  # closed objects: each requires a property the other does not allow
            {"type": "object", "properties": {"a": {}}, "required": ["a"],
             "additionalProperties": False},
            {"type": "object", "properties": {"b": {}}, "required": ["b"],
             "additionalProperties": False},
        ],
        [{"$ref": "#/$defs/card"}, {"$ref": "#/$defs/cash"}],  # through local refs
    ],
)  # fmt: skip
def test_a_oneof_with_exclusive_branches_is_enforced_as_anyof(branches: list[Any]) -> None:
    schema = {"$defs": {"card": CARD, "cash": CASH}, "oneOf": branches}
    assert prepare(schema).schema["oneOf"]


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "at the top level"),
        (
            {"properties": {"n": {"oneOf": [{"multipleOf": 3}, {"multipleOf": 5}]}}},
            "at /properties/n",
        ),
        ({"oneOf": [{"required": ["a"]}, {"required": ["b"]}]}, "at the top level"),
        ({"items": {"oneOf": [CARD, {**CASH, "properties": {"kind": {}}}]}}, "at /items"),
    ],
)
def test_a_oneof_whose_branches_may_overlap_is_refused(schema: dict[str, Any], path: str) -> None:
    with pytest.raises(UnenforceableSchema, match=f"oneOf {path}") as caught:
        prepare(schema)
    assert caught.value.keyword == "oneOf"


def test_objects_listing_their_properties_are_generated_closed() -> None:
    prepared = prepare(
        {
            "type": "object",
            "properties": {"a": {"type": "object", "properties": {"b": {}}}},
            "required": ["a"],
        }
    )
    assert prepared.schema["additionalProperties"] is False
    assert prepared.schema["properties"]["a"]["additionalProperties"] is False
    kept = {"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "string"}}
    assert prepare(kept).schema == kept
    # A required property the object does not list: closing it would make it unsatisfiable.
    assert "additionalProperties" not in prepare({"properties": {}, "required": ["x"]}).schema


def test_a_schema_with_allof_keeps_its_objects_open() -> None:
    base = {"type": "object", "properties": {"id": {}}, "required": ["id"]}
    schema = {"$defs": {"base": base}, "allOf": [{"$ref": "#/$defs/base"}, {"properties": {}}]}
    assert "additionalProperties" not in prepare(schema).schema["$defs"]["base"]
