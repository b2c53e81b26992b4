"""What the grammar engine does with each JSON-schema keyword: enforce, check after, or refuse.

A grammar (a context-free language over the output's bytes) can enforce most of JSON Schema:
types, ``properties`` / ``required`` / ``additionalProperties``, enums and consts, numeric
bounds, string lengths, ``pattern`` and ``format``, ``items`` / ``prefixItems`` / item counts,
local ``$ref`` (recursive too), ``allOf`` and ``anyOf``. Some keywords relate several parts of a
document to each other and no grammar can express them; :func:`prepare` takes them out of the
schema the grammar is built from, so the grammar admits a little more than the schema, and the
answer is validated against the *full* schema afterwards (:meth:`ResponseFormat.validate`): an
answer that breaks one of them raises :class:`~qwen_backends.errors.OutputValidationError`
naming the keyword, never passes silently. Those keywords are :data:`CHECKED_AFTER`.

An object that lists its ``properties`` without saying whether others are allowed is generated
with the listed ones only (as OpenAI's strict mode does): a subset of what the schema allows, so
every answer still validates, and a model cannot pad the answer with invented properties until
it runs out of tokens. In a schema with ``allOf`` (which merges objects), and for objects that
carry ``$ref``, ``anyOf`` ... beside their properties, objects stay as written, since closing
them could change what the schema means.

``oneOf`` is enforced as ``anyOf`` only where its branches provably exclude each other (then the
two mean the same): a discriminating property whose ``const`` / ``enum`` values differ between
branches, closed objects with a required property the other branch does not allow, or branches
of different JSON types. Any other ``oneOf`` is refused before generation
(:class:`UnenforceableSchema`), since "exactly one branch" cannot be a grammar.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

__all__ = ["CHECKED_AFTER", "PreparedSchema", "UnenforceableSchema", "prepare"]

#: Keywords no grammar enforces: left out of the grammar, checked on the answer afterwards.
CHECKED_AFTER = (
    "uniqueItems",
    "contains",
    "minContains",
    "maxContains",
    "propertyNames",
    "dependentRequired",
    "dependentSchemas",
    "not",
    "if",
    "then",
    "else",
)
#: Keywords whose value is one subschema.
_ONE = (
    "items",
    "additionalProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "additionalItems",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
)
#: Keywords whose value maps names to subschemas.
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
#: Keywords whose value is a list of subschemas.
_LIST = ("allOf", "anyOf", "oneOf", "prefixItems")
#: Keywords next to ``properties`` that may bring in more properties.
_OPENERS = (
    "patternProperties",
    "unevaluatedProperties",
    "allOf",
    "anyOf",
    "oneOf",
    "$ref",
    "dependentSchemas",
    "if",
)
_TYPES_OF_CONST = {bool: "boolean", str: "string", dict: "object", list: "array"}


class UnenforceableSchema(Exception):
    """The schema uses a keyword the engine can neither enforce nor check after; ``keyword``
    names it and ``path`` says where (``/``-separated, ``""`` for the top level)."""

    def __init__(self, keyword: str, path: str, reason: str) -> None:
        self.keyword = keyword
        self.path = path
        where = f"at /{path}" if path else "at the top level"
        super().__init__(f"{keyword} {where}: {reason}")


class PreparedSchema:
    """The schema a grammar is built from, and what was left out of it.

    Attributes
    ----------
    schema
        A copy of the schema without the :data:`CHECKED_AFTER` keywords.
    checked_after
        Those keywords found in the schema, sorted (checked on the answer only).
    """

    __slots__ = ("checked_after", "schema")

    def __init__(self, schema: Any, checked_after: tuple[str, ...]) -> None:
        self.schema = schema
        self.checked_after = checked_after


def prepare(schema: dict[str, Any]) -> PreparedSchema:
    """The grammar's copy of ``schema`` (see the module docs).

    Raises
    ------
    UnenforceableSchema
        For a ``oneOf`` whose branches may overlap.
    """
    found: set[str] = set()
    # allOf merges objects (directly or through $ref): closing any of them could change what
    # the schema means, so a schema with allOf keeps every object as it is written.
    close = not any("allOf" in node for _, node in _subschemas(schema, ""))
    stripped = _strip(schema, found, close=close)
    for path, node in _subschemas(schema, ""):
        branches = node.get("oneOf")
        if isinstance(branches, list) and not _exclusive(branches, schema):
            raise UnenforceableSchema(
                "oneOf",
                path,
                "its branches may overlap, and 'exactly one branch' is not something a grammar "
                "can enforce; make the branches exclusive (a property with a different const in "
                "each) or use anyOf",
            )
    return PreparedSchema(stripped, tuple(sorted(found)))


def _strip(node: Any, found: set[str], *, close: bool) -> Any:
    if not isinstance(node, dict):
        return node
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key in CHECKED_AFTER:
            found.add(key)
        elif key in _MAP and isinstance(value, dict):
            result[key] = {name: _strip(sub, found, close=close) for name, sub in value.items()}
        elif key in _LIST and isinstance(value, list):
            result[key] = [_strip(sub, found, close=close) for sub in value]
        elif key in _ONE:
            result[key] = _strip(value, found, close=close)
        else:
            result[key] = value
    if close and _open_object(result):
        result["additionalProperties"] = False
    return result


def _open_object(node: dict[str, Any]) -> bool:
    """Whether ``node`` lists its properties but leaves others open, with nothing that could
    add properties from elsewhere (``allOf``, ``$ref`` ...): such an object is generated with
    its listed properties only."""
    properties = node.get("properties")
    if not isinstance(properties, dict):
        return False
    if any(key in node for key in (*_OPENERS, "additionalProperties")):
        return False
    required = node.get("required", [])
    return isinstance(required, list) and all(name in properties for name in required)


def _subschemas(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every subschema of ``node`` with its path (``node`` first)."""
    if not isinstance(node, dict):
        return
    yield path, node
    prefix = f"{path}/" if path else ""
    for key, value in node.items():
        if key in _MAP and isinstance(value, dict):
            for name, sub in value.items():
                yield from _subschemas(sub, f"{prefix}{key}/{name}")
        elif key in _LIST and isinstance(value, list):
            for index, sub in enumerate(value):
                yield from _subschemas(sub, f"{prefix}{key}/{index}")
        elif key in _ONE:
            yield from _subschemas(value, f"{prefix}{key}")


def _resolve(node: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """``node`` with a local ``$ref`` followed (a few levels; other refs stay as they are)."""
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and depth < 8:
        ref = node["$ref"]
        if not ref.startswith("#"):
            return node
        target: Any = root
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                return node
            target = target[part]
        node, depth = target, depth + 1
    return node


def _exclusive(branches: list[Any], root: dict[str, Any]) -> bool:
    """Whether no JSON value can match two of ``branches``."""
    resolved = [_resolve(branch, root) for branch in branches]
    return all(_disjoint(a, b) for a, b in itertools.combinations(resolved, 2))


def _disjoint(a: Any, b: Any) -> bool:
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    types_a, types_b = _types(a), _types(b)
    if types_a is not None and types_b is not None and not _overlap(types_a, types_b):
        return True
    props_a, props_b = a.get("properties", {}), b.get("properties", {})
    if not isinstance(props_a, dict) or not isinstance(props_b, dict):
        return False
    required_a, required_b = set(a.get("required", ())), set(b.get("required", ()))
    for name in required_a & required_b:
        values_a, values_b = _values(props_a.get(name)), _values(props_b.get(name))
        if values_a is not None and values_b is not None and not values_a & values_b:
            return True
    closed_a = a.get("additionalProperties") is False
    closed_b = b.get("additionalProperties") is False
    return (closed_b and any(name not in props_b for name in required_a)) or (
        closed_a and any(name not in props_a for name in required_b)
    )


def _types(node: dict[str, Any]) -> set[str] | None:
    if "const" in node:
        return {_type_of(node["const"])}
    if isinstance(node.get("enum"), list):
        return {_type_of(value) for value in node["enum"]}
    declared = node.get("type")
    if isinstance(declared, str):
        return {declared}
    if isinstance(declared, list):
        return {str(name) for name in declared}
    return None


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "number"
    return _TYPES_OF_CONST[type(value)]


def _overlap(a: set[str], b: set[str]) -> bool:
    def widen(types: set[str]) -> set[str]:
        return types | {"number"} if "integer" in types else types

    return bool(widen(a) & widen(b))


def _values(node: Any) -> set[str] | None:
    """The JSON texts ``node`` allows when it is a ``const`` / ``enum``, else ``None``."""
    import json

    if not isinstance(node, dict):
        return None
    if "const" in node:
        return {json.dumps(node["const"], sort_keys=True)}
    if isinstance(node.get("enum"), list):
        return {json.dumps(value, sort_keys=True) for value in node["enum"]}
    return None
