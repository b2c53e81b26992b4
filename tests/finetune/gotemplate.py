"""A small interpreter of the Go ``text/template`` subset that Ollama chat templates use.

Enough to execute :data:`qwen_backends.finetune.ollama.NON_THINKING_TEMPLATE` the way Ollama
would: text with ``{{- ... -}}`` whitespace trimming; ``if`` / ``else if`` / ``else`` / ``end``;
``range $i, $x := ...``; variable declaration (``:=``) and assignment (``=``); fields
(``.Role``, ``$.Messages``, ``$x.Content``); string and integer literals; parentheses; and the
builtins ``eq ne lt gt and or not len slice index``. Anything else raises ``SyntaxError`` so a
template that leaves the subset fails loudly instead of rendering something else.

:func:`ollama_values` mirrors Ollama's ``collate`` step (``template/template.go``): system
messages are joined into ``.System`` and consecutive messages of one role are merged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(
    r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<number>-?\d+)|(?P<op>:=|=|,|\(|\))'
    r"|(?P<word>\$?[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*|\$(?:\.[A-Za-z_]\w*)*|\.(?:[A-Za-z_]\w*"
    r"(?:\.[A-Za-z_]\w*)*)?))"
)


def _truth(value: Any) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, int | float | str | list | tuple | dict):
        return bool(value)
    return True


def _eq(first: Any, *others: Any) -> bool:
    return any(first == other for other in others)


_FUNCS: dict[str, Callable[..., Any]] = {
    "eq": _eq,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "gt": lambda a, b: a > b,
    "not": lambda a: not _truth(a),
    "len": len,
    "slice": lambda seq, *bounds: seq[slice(*bounds)] if len(bounds) > 1 else seq[bounds[0] :],
    "index": lambda seq, *keys: _index(seq, keys),
}


def _index(value: Any, keys: Sequence[Any]) -> Any:
    for key in keys:
        value = value[key]
    return value


@dataclass
class _Node:
    kind: str  # text | output | if | range | declare | assign
    text: str = ""
    expr: Any = None
    var: str = ""
    index_var: str = ""
    body: list[_Node] = field(default_factory=list)
    branches: list[tuple[Any, list[_Node]]] = field(default_factory=list)
    otherwise: list[_Node] = field(default_factory=list)


def _lex(source: str) -> list[tuple[str, str]]:
    """Split into ("text", str) and ("action", str) parts, applying trim markers."""
    parts: list[tuple[str, str]] = []
    position = 0
    trim_next = False
    for match in _ACTION.finditer(source):
        text = source[position : match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        parts.append(("text", text))
        parts.append(("action", match.group(2).strip()))
        trim_next = bool(match.group(3))
        position = match.end()
    tail = source[position:]
    parts.append(("text", tail.lstrip() if trim_next else tail))
    return parts


def _tokens(action: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(action):
        if not action[position:].strip():
            break
        match = _TOKEN.match(action, position)
        if match is None or match.end() == position:
            raise SyntaxError(f"unsupported syntax in {{{{ {action} }}}} at {action[position:]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class _ExprParser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.position = 0

    def done(self) -> bool:
        return self.position >= len(self.tokens)

    def peek(self) -> tuple[str, str] | None:
        return None if self.done() else self.tokens[self.position]

    def take(self) -> tuple[str, str]:
        token = self.tokens[self.position]
        self.position += 1
        return token

    def command(self) -> Any:
        """A function call with arguments, or a single operand."""
        items = []
        while not self.done() and self.peek() != ("op", ")"):
            items.append(self.operand())
        if not items:
            raise SyntaxError("empty expression")
        head = items[0]
        if head[0] == "func":
            return ("call", head[1], items[1:])
        if len(items) > 1:
            raise SyntaxError(f"{head} is not a function")
        return head

    def operand(self) -> Any:
        kind, value = self.take()
        if kind == "string":
            return ("const", bytes(value[1:-1], "utf-8").decode("unicode_escape"))
        if kind == "number":
            return ("const", int(value))
        if (kind, value) == ("op", "("):
            inner = self.command()
            if self.done() or self.take() != ("op", ")"):
                raise SyntaxError("unbalanced parenthesis")
            return inner
        if kind == "word":
            if value.startswith("$") or value.startswith("."):
                return ("ref", value)
            if value in ("true", "false"):
                return ("const", value == "true")
            if value in _FUNCS or value in ("and", "or"):
                return ("func", value)
            raise SyntaxError(f"function {value!r} is not in the supported subset")
        raise SyntaxError(f"unexpected {value!r}")


def _expr(tokens: list[tuple[str, str]]) -> Any:
    parser = _ExprParser(tokens)
    result = parser.command()
    if not parser.done():
        raise SyntaxError(f"unexpected trailing tokens {tokens[parser.position :]}")
    return result


def _parse(parts: list[tuple[str, str]]) -> list[_Node]:
    position = 0

    def block(stop: tuple[str, ...]) -> tuple[list[_Node], str]:
        nonlocal position
        nodes: list[_Node] = []
        while position < len(parts):
            kind, value = parts[position]
            position += 1
            if kind == "text":
                if value:
                    nodes.append(_Node("text", text=value))
                continue
            keyword = value.split(None, 1)[0] if value else ""
            if keyword in ("end", "else"):
                if keyword not in stop:
                    raise SyntaxError(f"unexpected {{{{ {value} }}}}")
                return nodes, value
            if keyword == "if":
                node = _Node("if")
                condition = _expr(_tokens(value[2:]))
                while True:
                    body, ended = block(("end", "else"))
                    node.branches.append((condition, body))
                    if ended == "end":
                        break
                    if ended.startswith("else if"):
                        condition = _expr(_tokens(ended[len("else if") :]))
                        continue
                    node.otherwise, _ = block(("end",))
                    break
                nodes.append(node)
            elif keyword == "range":
                tokens = _tokens(value[len("range") :])
                node = _Node("range")
                if ("op", ":=") in tokens:
                    split = tokens.index(("op", ":="))
                    names = [v for k, v in tokens[:split] if k == "word"]
                    if len(names) == 2:
                        node.index_var, node.var = names
                    else:
                        node.var = names[0]
                    tokens = tokens[split + 1 :]
                node.expr = _expr(tokens)
                node.body, _ = block(("end",))
                nodes.append(node)
            else:
                tokens = _tokens(value)
                if len(tokens) > 1 and tokens[1] in (("op", ":="), ("op", "=")):
                    kind_name = "declare" if tokens[1][1] == ":=" else "assign"
                    nodes.append(_Node(kind_name, var=tokens[0][1], expr=_expr(tokens[2:])))
                else:
                    nodes.append(_Node("output", expr=_expr(tokens)))
        if stop:
            raise SyntaxError("missing {{ end }}")
        return nodes, ""

    nodes, _ = block(())
    return nodes


class _Scope:
    def __init__(self, parent: _Scope | None = None) -> None:
        self.parent = parent
        self.names: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.names:
                return scope.names[name]
            scope = scope.parent
        raise NameError(f"undefined variable {name}")

    def set(self, name: str, value: Any) -> None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.names:
                scope.names[name] = value
                return
            scope = scope.parent
        raise NameError(f"assignment to undeclared variable {name}")


def _field(value: Any, path: list[str]) -> Any:
    for name in path:
        value = value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)
    return value


def _evaluate(expr: Any, dot: Any, scope: _Scope) -> Any:
    kind = expr[0]
    if kind == "const":
        return expr[1]
    if kind == "ref":
        name: str = expr[1]
        if name.startswith("."):
            return _field(dot, [p for p in name.split(".") if p])
        head, *path = name.split(".")
        return _field(scope.get(head), path)
    if kind == "call":
        function, args = expr[1], expr[2]
        if function in ("and", "or"):  # Go evaluates these lazily, left to right
            result = None
            for arg in args:
                result = _evaluate(arg, dot, scope)
                if _truth(result) != (function == "and"):
                    return result
            return result
        return _FUNCS[function](*(_evaluate(arg, dot, scope) for arg in args))
    raise SyntaxError(f"cannot evaluate {expr}")


def _format(value: Any) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _run(nodes: list[_Node], dot: Any, scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(node.text)
        elif node.kind == "output":
            out.append(_format(_evaluate(node.expr, dot, scope)))
        elif node.kind == "declare":
            scope.names[node.var] = _evaluate(node.expr, dot, scope)
        elif node.kind == "assign":
            scope.set(node.var, _evaluate(node.expr, dot, scope))
        elif node.kind == "if":
            for condition, body in node.branches:
                if _truth(_evaluate(condition, dot, scope)):
                    _run(body, dot, _Scope(scope), out)
                    break
            else:
                _run(node.otherwise, dot, _Scope(scope), out)
        elif node.kind == "range":
            items = _evaluate(node.expr, dot, scope) or []
            for index, item in enumerate(items):
                inner = _Scope(scope)
                if node.index_var:
                    inner.names[node.index_var] = index
                if node.var:
                    inner.names[node.var] = item
                _run(node.body, item, inner, out)


def render(template: str, values: Mapping[str, Any]) -> str:
    """Execute ``template`` on ``values`` (the root ``.`` and ``$``)."""
    nodes = _parse(_lex(template))
    root = _Scope()
    root.names["$"] = values
    out: list[str] = []
    _run(nodes, values, root, out)
    return "".join(out)


def ollama_values(messages: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """The template data Ollama builds for a chat request (its ``collate`` step).

    A message's ``thinking`` becomes its ``Thinking`` field, where Ollama keeps reasoning.
    """
    system = [m["content"] for m in messages if m["role"] == "system"]
    collated: list[dict[str, str]] = []
    for message in messages:
        if collated and collated[-1]["Role"] == message["role"] and message["role"] != "tool":
            collated[-1]["Content"] += "\n\n" + message["content"]
        else:
            collated.append(
                {
                    "Role": message["role"],
                    "Content": message["content"],
                    "Thinking": message.get("thinking", ""),
                }
            )
    return {"System": "\n\n".join(system), "Messages": collated, "Tools": None}
