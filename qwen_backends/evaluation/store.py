"""The on-disk form of a run: an append-only ``outputs.jsonl`` that survives being killed.

Each record is written as one complete line with a single ``write`` on an ``O_APPEND``
descriptor followed by ``fsync``, so after a crash the file holds whole records plus, at
worst, one partial trailing line (a write cut short). :meth:`OutputsFile.recover` cuts that
line off before a resumed run appends again; nothing is ever written twice because finished ids
are skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from qwen_backends.errors import ConfigurationError

__all__ = ["OutputsFile", "write_json_atomic"]


class OutputsFile:
    """Append-only JSONL of finished records.

    Parameters
    ----------
    path
        The ``outputs.jsonl`` file (created on the first :meth:`append`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        #: Bytes of an incomplete trailing record removed by the last :meth:`recover`.
        self.dropped_bytes = 0

    def recover(self, *, repair: bool = True) -> list[dict[str, Any]]:
        """Read the complete records, cutting off a partial trailing line.

        Parameters
        ----------
        repair
            Truncate the file after its last complete line (``False``: only ignore the
            partial line, leaving the file untouched, e.g. for reports).

        Raises
        ------
        ConfigurationError
            When a complete line is not a JSON record with an ``id``, or an id repeats (the
            file was edited by hand or belongs to something else).
        """
        self.dropped_bytes = 0
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            self.dropped_bytes = len(data) - complete
            if repair:
                with self.path.open("r+b") as handle:
                    handle.truncate(complete)
                    handle.flush()
                    os.fsync(handle.fileno())
        records: list[dict[str, Any]] = []
        seen: set[str] = set()
        for number, line in enumerate(data[:complete].splitlines(), start=1):
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                raise ConfigurationError(
                    f"{self.path}:{number}: not an output record; the file was edited or "
                    "damaged: delete that line, or start a new run with another "
                    "evaluation.run_name"
                )
            if record["id"] in seen:
                raise ConfigurationError(
                    f"{self.path}:{number}: a second record for id {record['id']!r}; delete "
                    "one of them, or start a new run with another evaluation.run_name"
                )
            seen.add(record["id"])
            records.append(record)
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line and force it to disk before returning."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        view = memoryview(line)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file descriptor (safe to call twice)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
