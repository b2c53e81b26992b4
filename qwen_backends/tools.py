"""Tool calling: tool specs in, :class:`ToolCall` objects out, the same on every backend.

Data path::

    tools=[fn or spec] --normalize_tools--> OpenAI-style specs --template--> Qwen3's <tools>
    model text --ToolCallFilter / parse_tool_calls--> (visible text, [ToolCall])
    ToolCall + result --tool_message--> {"role": "tool", ...} --> next turn

**Specs.** A tool is a JSON-schema function spec (``{"type": "function", "function": {"name",
"description", "parameters"}}`` or just the inner ``{"name", ...}``) or a Python callable; a
callable's spec comes from its signature (type hints, through pydantic) and its docstring
(the summary as the description; per-argument text from a numpy ``Parameters`` or Google
``Args:`` section). transformers' ``get_json_schema`` is not used: it needs transformers (the
Ollama and vLLM backends do not), accepts Google-style docstrings only and refuses an
undocumented argument.

**Parsing.** Qwen3 writes each call as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
Rules (one implementation, :class:`ToolCallFilter`, serves whole texts and streams, so the
result does not depend on how the text is cut):

- a block whose body is a JSON object with a string ``name`` and an ``arguments`` object (or a
  JSON string holding one; missing means ``{}``) becomes a :class:`ToolCall` and is removed from
  the text with the whitespace after it; whitespace before it is kept only if text follows;
- a block that is not such JSON, or that is never closed, is **kept verbatim in the text** and a
  warning is logged (logger ``qwen_backends.tools``): nothing the model wrote is lost, and
  nothing crashes;
- while a stream is inside a block, or could be starting one, nothing of it is shown.

Thinking is removed before this step (``<think>`` blocks never reach the parser), so a
``<tool_call>`` written inside thinking is not a call.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import secrets
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from qwen_backends.chat import OPT_IN, check_caller_text
from qwen_backends.errors import ConfigurationError
from qwen_backends.openai_wire import tool_call_object
from qwen_backends.results import ToolCall
from qwen_backends.thinking import longest_partial_suffix

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "ToolCall",
    "ToolCallFilter",
    "ToolLike",
    "assistant_message",
    "new_call_id",
    "normalize_tools",
    "parse_tool_calls",
    "run_tool_calls",
    "tool_call_dict",
    "tool_message",
    "tool_spec",
]

logger = logging.getLogger(__name__)

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
#: What ``tools=`` accepts per tool.
ToolLike = Mapping[str, Any] | Callable[..., Any]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_FUNCTION_KEYS = frozenset({"name", "description", "parameters", "strict"})


def tool_call_dict(call: ToolCall) -> dict[str, Any]:
    """OpenAI-style ``{"id", "type": "function", "function": {"name", "arguments"}}`` for an
    assistant message (``arguments`` as a dict, which Qwen3's template and Ollama accept)."""
    return tool_call_object(call.id, call.name, call.arguments, as_text=False)


def new_call_id() -> str:
    """A fresh tool-call id (``call_`` + 24 hex digits)."""
    return f"call_{secrets.token_hex(12)}"


# -- specs ---------------------------------------------------------------------------------


def normalize_tools(
    tools: Sequence[ToolLike] | None,
    *,
    allow_control_tokens: bool = False,
    opt_in: str = OPT_IN,
) -> tuple[dict[str, Any], ...]:
    """Turn ``tools`` into OpenAI-style function specs, checking each one.

    The chat template renders each spec whole into the prompt (its ``<tools>`` block), so its
    text -- description, parameter docs (a callable's docstring), every string of the
    parameters' schema -- is checked as message text is
    (:func:`qwen_backends.chat.check_caller_text`).

    Parameters
    ----------
    tools
        Spec dicts and callables.
    allow_control_tokens
        Accept Qwen3 control-token text (``<|im_start|>``) in the specs; backends pass their
        ``allow_control_tokens`` setting.
    opt_in
        How the caller opts in, quoted when control tokens are refused.

    Raises
    ------
    ConfigurationError
        For a malformed spec, a callable whose signature cannot be described, two tools with
        the same name, or spec text holding control tokens (unless allowed) or invalid Unicode
        (the message names the tool, the field and the fix).
    """
    if tools is None:
        return ()
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise ConfigurationError(
            f"tools must be a list of function specs or callables, got {type(tools).__name__}; "
            "wrap a single tool in a list"
        )
    specs = tuple(tool_spec(tool) for tool in tools)
    seen: set[str] = set()
    for spec in specs:
        name = spec["function"]["name"]
        if name in seen:
            raise ConfigurationError(f"two tools are named {name!r}; give each tool its own name")
        seen.add(name)
        check_caller_text(
            spec["function"],
            f"tool {name!r}",
            allow_control_tokens=allow_control_tokens,
            opt_in=opt_in,
        )
    return specs


def tool_spec(tool: ToolLike) -> dict[str, Any]:
    """One tool as ``{"type": "function", "function": {"name", "description", "parameters"}}``.

    Parameters
    ----------
    tool
        A spec dict (the OpenAI form or its inner ``function`` object) or a callable.

    Raises
    ------
    ConfigurationError
        If the spec is malformed or the callable cannot be described.
    """
    if isinstance(tool, Mapping):
        return _spec_from_mapping(tool)
    if callable(tool):
        return _spec_from_callable(tool)
    raise ConfigurationError(
        f"a tool must be a function spec dict or a callable, got {type(tool).__name__}"
    )


def _spec_from_mapping(tool: Mapping[str, Any]) -> dict[str, Any]:
    if "function" in tool:
        if tool.get("type", "function") != "function" or set(tool) - {"type", "function"}:
            raise ConfigurationError(
                f"tool spec {dict(tool)!r} is not {{'type': 'function', 'function': {{...}}}}; "
                "only function tools are supported"
            )
        function = tool["function"]
    else:
        function = tool
    if not isinstance(function, Mapping):
        raise ConfigurationError("a tool's 'function' must be a dict with name and parameters")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"tool name {name!r} is invalid; use letters, digits, '_', '.' or '-' "
            "(at most 64, starting with a letter or '_')"
        )
    unknown = set(function) - _FUNCTION_KEYS
    if unknown:
        raise ConfigurationError(
            f"tool {name!r} has unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
            f"allowed: {', '.join(sorted(_FUNCTION_KEYS))}"
        )
    description = function.get("description", "")
    if not isinstance(description, str):
        raise ConfigurationError(f"tool {name!r}: description must be a string")
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    _check_parameters(name, parameters)
    clean: dict[str, Any] = {"name": name, "description": description}
    clean["parameters"] = json.loads(json.dumps(parameters))
    if "strict" in function:
        clean["strict"] = bool(function["strict"])
    return {"type": "function", "function": clean}


def _check_parameters(name: str, parameters: Any) -> None:
    if not isinstance(parameters, Mapping) or parameters.get("type") != "object":
        raise ConfigurationError(
            f"tool {name!r}: parameters must be a JSON schema of type 'object', e.g. "
            "{'type': 'object', 'properties': {'city': {'type': 'string'}}}"
        )
    from qwen_backends.structured import check_schema

    check_schema(parameters, f"tool {name!r}: parameters")


def _spec_from_callable(function: Callable[..., Any]) -> dict[str, Any]:
    import pydantic

    name = getattr(function, "__name__", "")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"callable {function!r} has no usable __name__ for a tool; pass a spec dict instead"
        )
    try:
        signature = inspect.signature(function)
        hints = typing.get_type_hints(function)
    except (TypeError, ValueError, NameError) as exc:
        raise ConfigurationError(
            f"cannot read the signature of tool {name!r} ({exc}); pass a spec dict instead"
        ) from exc
    summary, documented = _parse_docstring(inspect.getdoc(function) or "")
    fields: dict[str, Any] = {}
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ConfigurationError(
                f"tool {name!r} takes *{parameter.name}; a tool needs named parameters only"
            )
        if parameter.name not in hints:
            raise ConfigurationError(
                f"tool {name!r}: parameter {parameter.name!r} has no type annotation; annotate "
                "it (e.g. city: str) so the model knows what to pass"
            )
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (
            hints[parameter.name],
            pydantic.Field(default, description=documented.get(parameter.name)),
        )
    try:
        model = pydantic.create_model(f"{name}_arguments", **fields)
        schema = model.model_json_schema()
    except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError, TypeError) as exc:
        raise ConfigurationError(
            f"tool {name!r}: cannot describe its parameters as JSON schema ({exc}); use JSON "
            "types (str, int, float, bool, list, dict, Literal, pydantic models)"
        ) from exc
    parameters = _without_titles(schema)
    parameters.setdefault("properties", {})
    return {
        "type": "function",
        "function": {"name": name, "description": summary, "parameters": parameters},
    }


def _without_titles(node: Any) -> Any:
    """Drop pydantic's auto-generated ``title`` annotations (noise in the prompt), keeping
    properties that happen to be *named* ``title``."""
    if isinstance(node, list):
        return [_without_titles(item) for item in node]
    if not isinstance(node, dict):
        return node
    clean: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs", "patternProperties") and isinstance(value, dict):
            clean[key] = {name: _without_titles(schema) for name, schema in value.items()}
        else:
            clean[key] = _without_titles(value)
    return clean


_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Returns?|Raises|Yields|Examples?|Notes?|"
    r"See Also|Attributes|Warnings?)\s*:?\s*$"
)
_GOOGLE_ARG = re.compile(r"^(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_NUMPY_ARG = re.compile(r"^(\w+)(?:\s*:.*)?$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """``(summary, {argument: description})`` from a numpy- or Google-style docstring."""
    lines = doc.splitlines()
    summary_lines: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION.match(line.strip()):
            break
        summary_lines.append(line.strip())
    arguments: dict[str, str] = {}
    section = ""
    current = ""
    indent = 0
    for index, line in enumerate(lines):
        stripped = line.strip()
        header = _SECTION.match(stripped)
        underline = index + 1 < len(lines) and set(lines[index + 1].strip()) == {"-"}
        if header and (stripped.endswith(":") or underline):
            section, current = header.group(1), ""
            continue
        if section not in ("Args", "Arguments", "Parameters") or not stripped:
            continue
        if set(stripped) == {"-"}:
            continue
        level = len(line) - len(line.lstrip())
        if current and level > indent:
            arguments[current] = f"{arguments[current]} {stripped}".strip()
            continue
        match = _GOOGLE_ARG.match(stripped) if section != "Parameters" else None
        if match:
            current, indent = match.group(1), level
            arguments[current] = match.group(2).strip()
            continue
        match = _NUMPY_ARG.match(stripped)
        if match:
            current, indent = match.group(1), level
            arguments[current] = ""
    return " ".join(summary_lines), {key: value for key, value in arguments.items() if value}


# -- parsing -------------------------------------------------------------------------------


class ToolCallFilter:
    """Take tool calls out of text that arrives in pieces; same result however it is cut.

    Feed visible text (thinking already removed) with :meth:`feed`, show what it returns, call
    :meth:`flush` at the end; :attr:`calls` then holds the parsed calls in order. The rules are
    in this module's docstring.

    Attributes
    ----------
    calls
        Parsed :class:`ToolCall` objects, in the order the model wrote them.
    invalid
        How many blocks were kept as text because they were not valid calls.
    """

    def __init__(self) -> None:
        self.calls: list[ToolCall] = []
        self.invalid = 0
        self._state = "out"  # "out", "in" (inside a block) or "gap" (whitespace after a call)
        self._pending = ""  # text that may be the start of <tool_call>
        self._block = ""  # body of the open block
        self._held = ""  # whitespace not yet shown: it is dropped if a call follows it
        self._separator = False  # _held came before a removed call: show it only if text follows

    def feed(self, text: str) -> str:
        """Add text; return what can be shown now."""
        buffer, self._pending = self._pending + text, ""
        out: list[str] = []
        index = 0
        while index < len(buffer):
            if self._state == "in":
                end = buffer.find(TOOL_CALL_CLOSE, index)
                if end < 0:
                    self._block += buffer[index:]
                    # Keep a possibly cut closing tag in the block: it is searched again.
                    keep = longest_partial_suffix(self._block, (TOOL_CALL_CLOSE,))
                    if keep:
                        self._pending, self._block = self._block[-keep:], self._block[:-keep]
                    return "".join(out)
                self._block += buffer[index:end]
                index = end + len(TOOL_CALL_CLOSE)
                self._close_block(out)
                continue
            if self._state == "gap":
                while index < len(buffer) and buffer[index].isspace():
                    index += 1
                if index < len(buffer):
                    self._state = "out"
                continue
            start = buffer.find(TOOL_CALL_OPEN, index)
            if start < 0:
                segment = buffer[index:]
                keep = longest_partial_suffix(segment, (TOOL_CALL_OPEN,))
                if keep:
                    self._pending = segment[-keep:]
                    segment = segment[:-keep]
                self._show(segment, out)
                return "".join(out)
            self._show(buffer[index:start], out)
            self._state, self._block = "in", ""
            index = start + len(TOOL_CALL_OPEN)
        return "".join(out)

    def flush(self) -> str:
        """Return the text still held back; call once at the end."""
        out: list[str] = []
        if self._state == "in":
            raw = TOOL_CALL_OPEN + self._block + self._pending
            logger.warning(
                "the model opened %s but never closed it (output cut off?); kept as text: %.80r",
                TOOL_CALL_OPEN,
                raw,
            )
            self.invalid += 1
            out.append(self._held + raw)
            self._held, self._separator, self._state = "", False, "out"
        else:
            self._show(self._pending, out)
        if not self._separator:
            out.append(self._held)
        self._held, self._pending, self._separator = "", "", False
        return "".join(out)

    def _show(self, text: str, out: list[str]) -> None:
        if not text:
            return
        body = text.rstrip()
        if body:
            out.append(self._held + body)
            self._held, self._separator = text[len(body) :], False
        else:
            self._held += text

    def _close_block(self, out: list[str]) -> None:
        call = _parse_call(self._block)
        if call is None:
            self.invalid += 1
            raw = TOOL_CALL_OPEN + self._block + TOOL_CALL_CLOSE
            logger.warning(
                "a %s block is not valid JSON with 'name' and 'arguments'; kept as text: %.80r",
                TOOL_CALL_OPEN,
                raw,
            )
            out.append(self._held + raw)
            self._held, self._separator, self._state = "", False, "out"
        else:
            self.calls.append(call)
            self._separator = True
            self._state = "gap"
        self._block = ""


def _parse_call(body: str) -> ToolCall | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        return None
    arguments = data.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    call_id = data.get("id")
    return ToolCall(
        id=call_id if isinstance(call_id, str) and call_id else new_call_id(),
        name=data["name"],
        arguments=arguments,
    )


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """Split a complete answer into ``(visible_text, calls)``.

    Same rules as :class:`ToolCallFilter` (invalid or unclosed blocks stay in the text, with a
    logged warning). Run it on text whose thinking is already removed.
    """
    parser = ToolCallFilter()
    visible = parser.feed(text) + parser.flush()
    return visible, parser.calls


# -- the round trip -------------------------------------------------------------------------


def assistant_message(text: str, calls: Sequence[ToolCall]) -> dict[str, Any]:
    """The assistant turn to append to the history after the model asked for ``calls``."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = [tool_call_dict(call) for call in calls]
    return message


def tool_message(call: ToolCall, result: Any) -> dict[str, Any]:
    """The ``{"role": "tool", ...}`` message carrying ``result`` for ``call``.

    ``result`` is sent as is when it is a string, else as JSON (``str()`` for what JSON cannot
    hold).
    """
    content = result if isinstance(result, str) else json.dumps(result, default=str)
    return {"role": "tool", "content": content, "tool_call_id": call.id, "name": call.name}


def run_tool_calls(calls: Sequence[ToolCall], tools: Sequence[ToolLike]) -> list[dict[str, Any]]:
    """Run each call with the matching callable in ``tools``; return the tool messages.

    A call to an unknown tool, or one whose function raises, gets an ``"error: ..."`` result
    that the model can read (the loop goes on; nothing is raised).
    """
    functions = {
        getattr(tool, "__name__", ""): tool for tool in tools if not isinstance(tool, Mapping)
    }
    messages = []
    for call in calls:
        function = functions.get(call.name)
        if function is None:
            result: Any = f"error: no callable tool named {call.name!r}"
        else:
            try:
                result = function(**call.arguments)
            except Exception as exc:  # the model reads the failure and may retry
                result = f"error: {type(exc).__name__}: {exc}"
        messages.append(tool_message(call, result))
    return messages
