"""Structured output: one :class:`ResponseFormat` for every backend.

A caller passes ``response_format=`` either a pydantic model class or a JSON-schema dict;
:meth:`ResponseFormat.of` turns both into one object that every backend uses the same way:

- :attr:`ResponseFormat.schema` -- the JSON schema the runtime enforces (a grammar-constrained
  logits processor on hf/unsloth, Ollama's ``format``, vLLM's ``response_format``, a llama.cpp
  grammar built from it);
- :meth:`ResponseFormat.validate` -- the raw text back to a validated object (a pydantic instance
  for a model class, plain JSON data for a dict schema), raising
  :class:`~qwen_backends.errors.OutputValidationError` with the raw text attached when it does not
  parse or match (typically: cut off by ``max_new_tokens``);
- :meth:`ResponseFormat.instructions` -- the schema as a sentence for the prompt, for runtimes
  whose documentation advises stating it (Ollama).

Constraining never relies on retry-until-valid: the runtime's own mechanism enforces the schema,
and validation only reports what still went wrong.

Dict schemas are checked and validated with ``jsonschema`` (imported when first needed).
"""

from __future__ import annotations

import fractions
import functools
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from qwen_backends.errors import ConfigurationError, OutputValidationError

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["ResponseFormat", "ResponseFormatLike", "check_schema"]

#: What ``response_format=`` accepts.
ResponseFormatLike = Any


class ResponseFormat:
    """A JSON schema to constrain output to, with the pydantic model it came from (if any).

    Build it with :meth:`of`. Two formats with the same schema and model are equal and hash
    alike, so compiled grammars can be cached per schema (:attr:`key`).

    Attributes
    ----------
    schema
        The JSON schema (a private deep copy; do not mutate).
    model
        The pydantic model class whose instances :meth:`validate` returns, or ``None`` for a
        dict schema (then :meth:`validate` returns plain JSON data).
    name
        A short name for messages and for runtimes that want one (vLLM): the model's class
        name, else the schema's ``title``, else ``"response"``.
    """

    __slots__ = ("key", "model", "name", "schema")

    def __init__(
        self, schema: dict[str, Any], model: type[BaseModel] | None = None, name: str = ""
    ) -> None:
        self.schema = schema
        self.model = model
        if not name:
            title = schema.get("title")
            name = model.__name__ if model else title if isinstance(title, str) else ""
        self.name = name or "response"
        #: Compact JSON text of the schema (key order kept: it is the order fields are generated
        #: in): the cache key for compiled grammars.
        self.key = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def of(cls, spec: ResponseFormatLike, *, allow_control_tokens: bool = False) -> ResponseFormat:
        """Normalise ``spec`` (a pydantic model class, a JSON-schema dict or a
        :class:`ResponseFormat`) into a :class:`ResponseFormat`.

        The schema's text (descriptions, titles, enum values, property names, a model's
        docstring) can reach the prompt (Ollama appends the schema to the user message), so it
        is checked as message text is (:func:`qwen_backends.chat.check_caller_text`).

        Parameters
        ----------
        spec
            The model class, schema dict or format.
        allow_control_tokens
            Accept Qwen3 control-token text (``<|im_start|>``) in the schema; backends pass
            their ``allow_control_tokens`` setting.

        Raises
        ------
        ConfigurationError
            If ``spec`` is neither, the dict is not a valid JSON schema, or its text holds
            control tokens (unless allowed) or is not valid Unicode (the message names the
            offending part).
        """
        if isinstance(spec, ResponseFormat):
            response_format = spec
        elif isinstance(spec, type) and _is_pydantic_model(spec):
            response_format = _from_model(spec)
        elif isinstance(spec, Mapping):
            response_format = _from_key(_schema_key(spec))
        else:
            raise ConfigurationError(
                f"response_format must be a pydantic model class or a JSON-schema dict, got "
                f"{type(spec).__name__}; e.g. response_format=MyModel or "
                "response_format={'type': 'object', 'properties': {...}}"
            )
        if "<|" in response_format.key or not response_format.key.isascii():
            from qwen_backends.chat import check_caller_text

            check_caller_text(
                response_format.schema,
                f"response_format schema ({response_format.name})",
                allow_control_tokens=allow_control_tokens,
            )
        return response_format

    @property
    def schema_json(self) -> str:
        """The schema as compact JSON text (what runtimes that take a string receive)."""
        return self.key

    def instructions(self) -> str:
        """One sentence for the prompt that states the schema (Ollama advises this)."""
        return f"Answer with JSON only, matching this JSON schema: {self.key}"

    def validate(
        self, text: str, *, backend: str | None = None, finish_reason: str | None = None
    ) -> Any:
        """Parse ``text`` and check it against the schema.

        Parameters
        ----------
        text
            The model's answer.
        backend
            The backend's name, recorded on the error.
        finish_reason
            Why generation ended (``"length"``, ``"stop"`` ...), when known: the error then says
            whether the answer was cut or ended without matching, and only the advice that
            applies.

        Returns
        -------
        Any
            An instance of :attr:`model`, or the JSON data for a dict schema.

        Raises
        ------
        OutputValidationError
            If ``text`` is not JSON or does not match; ``partial_text`` holds ``text``.
        """
        body = text.strip()
        hint = _hint(finish_reason)
        if not body:
            raise OutputValidationError(
                f"the model returned no JSON for {self.name}; {hint}",
                partial_text=text,
                backend=backend,
            )
        if self.model is not None:
            from pydantic import ValidationError

            try:
                return self.model.model_validate_json(body)
            except ValidationError as exc:
                problem = _pydantic_problem(exc)
                raise OutputValidationError(
                    f"the model's output is not a valid {self.name} ({problem}); "
                    f"{_hint(finish_reason, cut_json=_json_error(body) is not None)} "
                    "(raw text in .partial_text)",
                    partial_text=text,
                    backend=backend,
                ) from exc
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            raise OutputValidationError(
                f"the model's output is not JSON ({exc.msg} at character {exc.pos}); {hint} "
                "(raw text in .partial_text)",
                partial_text=text,
                backend=backend,
            ) from exc
        validator = _validator(self.key)
        mismatch = _best_error(validator.iter_errors(data))
        if mismatch is not None:
            where = "/".join(map(str, mismatch.absolute_path)) or "the top level"
            raise OutputValidationError(
                f"the model's output does not match the {self.name} schema at {where} "
                f"({mismatch.validator}: {mismatch.message}); "
                f"{_hint(finish_reason, cut_json=False)} (raw text in .partial_text)",
                partial_text=text,
                backend=backend,
            )
        return data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ResponseFormat):
            return NotImplemented
        return self.key == other.key and self.model is other.model

    def __hash__(self) -> int:
        return hash((self.key, self.model))

    def __repr__(self) -> str:
        return f"ResponseFormat(name={self.name!r})"


def _hint(finish_reason: str | None, *, cut_json: bool = True) -> str:
    """The advice that applies to an answer that failed validation.

    ``cut_json``: the text is not complete JSON (an answer that parsed but does not match was
    not cut short, whatever ended it).
    """
    if not cut_json:
        ended = f"the answer ended (finish_reason {finish_reason!r}) " if finish_reason else ""
        return (
            f"{ended}complete but not matching: the runtime did not enforce this part of the "
            "schema; see docs/structured_output.md for what each backend enforces"
        )
    if finish_reason == "length":
        return "it was cut at max_new_tokens (finish_reason 'length'); raise max_new_tokens"
    if finish_reason == "stop":
        return (
            "it ended (finish_reason 'stop') before the JSON was complete: a stop string may "
            "have cut it; remove stop strings that can occur inside JSON"
        )
    return "if it was cut off (finish_reason 'length'), raise max_new_tokens or remove stop strings"


def _json_error(body: str) -> json.JSONDecodeError | None:
    try:
        json.loads(body)
    except json.JSONDecodeError as exc:
        return exc
    return None


def _is_pydantic_model(value: type) -> bool:
    try:
        from pydantic import BaseModel
    except ImportError:  # pragma: no cover - pydantic is a core dependency
        return False
    return issubclass(value, BaseModel)


@functools.lru_cache(maxsize=256)
def _from_model(model: type[BaseModel]) -> ResponseFormat:
    return ResponseFormat(_checked_schema(_schema_key(model.model_json_schema())), model)


@functools.lru_cache(maxsize=256)
def _from_key(key: str) -> ResponseFormat:
    # Formats are immutable, so one object per schema text is shared (and checked once).
    return ResponseFormat(_checked_schema(key))


def check_schema(schema: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A JSON copy of ``schema`` once it is known to be a valid JSON schema.

    Parameters
    ----------
    schema
        The schema.
    what
        What it is, for the message (``"tool 'f' parameters"``).

    Raises
    ------
    ConfigurationError
        If it is not JSON data or not a valid schema (naming ``what`` and the offending part).
    """
    return _checked_schema(_schema_key(schema, what), what)


def _schema_key(schema: Mapping[str, Any], what: str = "response_format schema") -> str:
    try:
        return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"{what} is not JSON data ({exc}); use only dicts, lists, strings, numbers, booleans "
            "and None"
        ) from exc


def _checked_schema(key: str, what: str = "response_format") -> dict[str, Any]:
    """The schema in ``key`` (canonical JSON text) once it is known to be a valid schema."""
    _check_schema_text(key, what)
    clean: dict[str, Any] = json.loads(key)
    return clean


@functools.lru_cache(maxsize=256)
def _check_schema_text(key: str, what: str) -> None:
    # Checked once per schema text: a server sees the same tool specs on every request.
    validator_class = _validator_class()
    try:
        validator_class.check_schema(json.loads(key))
    except Exception as exc:  # jsonschema.SchemaError; imported lazily
        message = getattr(exc, "message", str(exc))
        path = "/".join(map(str, getattr(exc, "absolute_path", ()))) or "the top level"
        raise ConfigurationError(
            f"{what} is not a valid JSON schema at {path}: {message}; fix the schema "
            "(see https://json-schema.org)"
        ) from exc


def _validator_class() -> Any:
    try:
        import jsonschema
    except ImportError as exc:  # pragma: no cover - a core dependency
        from qwen_backends.errors import MissingDependencyError

        raise MissingDependencyError(
            "structured output with a JSON-schema dict needs jsonschema; pip install jsonschema"
        ) from exc
    return jsonschema.Draft202012Validator


@functools.lru_cache(maxsize=1)
def _answer_validator_class() -> Any:
    """Draft 2020-12 with a ``multipleOf`` that reads numbers as the decimals the model wrote.

    jsonschema divides binary floats, so ``9251.73`` fails ``multipleOf: 0.01``
    (``9251.73 / 0.01 == 925172.9999999999``) although the grammar produced exactly what the
    schema asks for; ``repr`` gives back the shortest decimal of each float, which is the text.
    """
    import jsonschema.validators

    base = _validator_class()
    return jsonschema.validators.extend(base, {"multipleOf": _decimal_multiple_of})


def _decimal_multiple_of(validator: Any, factor: Any, instance: Any, schema: Any) -> Any:
    """The ``multipleOf`` keyword with exact decimal arithmetic (a jsonschema keyword function)."""
    import jsonschema.exceptions

    if not validator.is_type(instance, "number"):
        return
    if isinstance(instance, float) and not math.isfinite(instance):
        return  # json.loads reads Infinity and NaN; they are no multiple of anything finite
    if (_exact(instance) / _exact(factor)).denominator != 1:
        yield jsonschema.exceptions.ValidationError(f"{instance!r} is not a multiple of {factor}")


def _exact(number: float) -> fractions.Fraction:
    """``number`` as the exact value of its shortest decimal text (``0.01`` is 1/100)."""
    return fractions.Fraction(repr(number))


@functools.lru_cache(maxsize=256)
def _validator(key: str) -> Any:
    return _answer_validator_class()(json.loads(key))


def _best_error(errors: Any) -> Any:
    import jsonschema.exceptions

    return jsonschema.exceptions.best_match(errors)


def _pydantic_problem(exc: Any) -> str:
    errors = exc.errors()
    if not errors:
        return "validation failed"
    first = errors[0]
    where = ".".join(map(str, first.get("loc", ()))) or "the top level"
    more = f" and {len(errors) - 1} more" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"
