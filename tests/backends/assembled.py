"""Feed answer chunks to a server backend's one assembler, as its generate and stream calls do."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from qwen_backends.backends.answer import Assembler
from qwen_backends.backends.server import ServerBackend
from qwen_backends.results import Generation


def assembled(
    backend: ServerBackend, chunks: Iterable[Any], *, tools: bool = False
) -> tuple[str, Generation]:
    """``(text handed out, final Generation)`` for ``chunks`` (a whole answer is one chunk)."""
    assembler = Assembler(backend, tools=tools)
    shown = "".join(assembler.feed(chunk) for chunk in chunks)
    items = list(assembler.finish(0.1))
    shown += "".join(item for item in items if isinstance(item, str))
    final = items[-1]
    assert isinstance(final, Generation)
    assert shown == final.text == assembler.text
    return shown, final
