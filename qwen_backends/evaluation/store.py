"""The on-disk form of a run: an append-only ``outputs.jsonl`` that survives being killed.

Each record is written as one complete line with a single ``write`` on an ``O_APPEND``
descriptor followed by ``fsync``, so after a crash the file holds whole records plus, at
worst, one partial trailing line (a write cut short). :meth:`OutputsFile.recover` cuts that
line off before a resumed run appends again; nothing is ever written twice because finished ids
are skipped. A write that fails (a full disk) is rolled back to the last complete record before
the error is raised, so the file stays resumable.

:class:`RunLock` keeps two processes from writing one run at once: an exclusive ``flock`` on
``.lock`` in the run directory, which also holds the owner's pid for the error message. The
operating system releases the lock when its owner dies, so a lock left by a killed run is taken
over without anyone deleting it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from qwen_backends._files import read_bytes, write_failure
from qwen_backends.errors import ConfigurationError

__all__ = ["LOCK_FILE", "OutputsFile", "RunLock", "write_json_atomic"]

#: The lock file inside a run directory.
LOCK_FILE = ".lock"
#: What to do after a failed write is fixed.
_RESUME = "run the same command again to resume (finished prompts are kept)"


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
        data = read_bytes(self.path, "outputs file")
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            self.dropped_bytes = len(data) - complete
            if repair:
                try:
                    with self.path.open("r+b") as handle:
                        handle.truncate(complete)
                        handle.flush()
                        os.fsync(handle.fileno())
                except OSError as exc:
                    raise write_failure(exc, self.path, "outputs file", _RESUME) from exc
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
        """Write ``record`` as one line and force it to disk before returning.

        Raises
        ------
        DiskFullError
            When the disk is full; the file is cut back to its last complete record first.
        ConfigurationError
            When the file cannot be written for another reason (permissions).
        """
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_failure(exc, self.path, "outputs file", _RESUME) from exc
        start = os.fstat(self._fd).st_size
        view = memoryview(line)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError as exc:
            # Leave only whole records behind: a resumed run then appends after them.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise write_failure(exc, self.path, "outputs file", _RESUME) from exc

    def close(self) -> None:
        """Close the file descriptor (safe to call twice)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON through a temporary file and a rename.

    Raises
    ------
    DiskFullError
        When the disk is full (``path`` keeps its old content; the temporary file is removed).
    ConfigurationError
        When ``path`` cannot be written for another reason.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_failure(exc, path, "file", _RESUME) from exc


class RunLock:
    """An exclusive lock on a run directory, held while a run writes to it.

    Use as a context manager: ``with RunLock(run_dir): ...``. The lock is an ``flock`` on
    ``run_dir/.lock``, which records the owner's pid and host and is removed on release; the
    operating system drops the lock when its owner exits or is killed, so a lock file left by a
    dead process is simply taken over.

    Raises
    ------
    ConfigurationError
        On entry, when another live process holds the lock (the message names its pid).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (see the class docs)."""
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise write_failure(exc, self.path, "lock file", "run again") from exc
            if not _try_lock(fd):
                owner = _read_owner(fd)
                os.close(fd)
                raise self._busy(owner)
            # The holder before us may have removed the file after we opened it: then our
            # lock is on a file nobody else can see, so start over with the current one.
            try:
                mine, current = os.fstat(fd), os.stat(self.path)
                same = (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino)
            except OSError:
                same = False
            if same:
                with contextlib.suppress(OSError):  # the pid is only for messages
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
                    os.write(fd, _owner_line().encode())
                self._fd = fd
                return
            os.close(fd)
        raise self._busy("")

    def release(self) -> None:
        """Drop the lock and remove the lock file (safe to call twice)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                self.path.unlink()  # still holding the lock: no one else can be using it
            os.close(fd)  # closing releases the lock

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def _busy(self, owner: str) -> ConfigurationError:
        who = f"process {owner}" if owner else "another process"
        return ConfigurationError(
            f"the run {self.run_dir} is in use by {who} (lock {self.path}); wait for it to "
            "finish, or give this run another evaluation.run_name (--run-name)"
        )


def _owner_line() -> str:
    return f"{os.getpid()} on {socket.gethostname()}\n"


def _try_lock(fd: int) -> bool:
    """Take an exclusive, non-blocking lock on ``fd``; the OS drops it when the process ends."""
    if sys.platform == "win32":  # pragma: no cover - no flock on Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _read_owner(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 200).decode("utf-8", "replace").strip()
    except OSError:
        return ""
