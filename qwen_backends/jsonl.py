"""JSON Lines input, shared by evaluation prompt sets and fine-tuning data.

Every problem names ``FILE:LINE``, so the offending line can be fixed directly.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qwen_backends._files import read_bytes
from qwen_backends.errors import ConfigurationError

__all__ = ["iter_jsonl_objects"]


def iter_jsonl_objects(
    path: str | Path, *, what: str, missing_hint: str, fields_hint: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank line of the JSONL file at ``path``.

    Parameters
    ----------
    path
        The file to read (UTF-8).
    what
        What the file is, for the missing-file message (``"prompt set"``).
    missing_hint
        How to fix a missing file (which setting names it).
    fields_hint
        What each object holds, for the not-an-object message (``"id and messages"``).

    Raises
    ------
    ConfigurationError
        If the file does not exist or cannot be read, or a line is not UTF-8, not valid JSON
        or not a JSON object (naming ``FILE:LINE``).
    """
    file = Path(path)
    if not file.exists():
        raise ConfigurationError(f"{what} {file} does not exist; {missing_hint}")
    # A leading byte-order mark (Windows editors write one) is UTF-8's own, not an error.
    data = read_bytes(file, what, missing_hint).removeprefix(codecs.BOM_UTF8)
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigurationError(
                f"{file}:{number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                f"{exc.start + 1}); save the file as UTF-8"
            ) from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(
                f"{file}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); write "
                "one JSON object per line"
            ) from None
        if not isinstance(record, dict):
            raise ConfigurationError(
                f"{file}:{number}: expected a JSON object with {fields_hint}, got "
                f"{type(record).__name__}"
            )
        yield number, record
