"""JSON Lines input, shared by evaluation prompt sets and fine-tuning data.

Every problem names ``FILE:LINE``, so the offending line can be fixed directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
        If the file does not exist, or a line is not valid JSON or not a JSON object.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigurationError(f"{what} {file} does not exist; {missing_hint}")
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
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
