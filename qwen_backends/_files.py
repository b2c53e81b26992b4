"""Reading and writing the user's files with one-line errors instead of ``OSError`` tracebacks.

Every problem names the file (and ``FILE:LINE`` where there is a line), says what was wrong and
how to fix it: a missing or unreadable file, a directory where a file was expected, text that is
not UTF-8, YAML that does not parse or is not a mapping, and, when writing, a full disk, a
missing permission or a file standing where a directory should be.
"""

from __future__ import annotations

import codecs
import errno
import os
from pathlib import Path
from typing import Any

from qwen_backends.errors import ConfigurationError, DiskFullError

__all__ = [
    "decode_utf8",
    "ensure_directory",
    "load_yaml_mapping",
    "read_bytes",
    "read_text",
    "write_failure",
]

#: errno values that mean "no room left" (a full disk or an exhausted quota).
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def read_bytes(path: str | os.PathLike[str], what: str, hint: str = "check the path") -> bytes:
    """The content of the file at ``path``, or a one-line error naming it.

    Parameters
    ----------
    path
        The file.
    what
        What it is, for the message (``"config file"``).
    hint
        How to fix a missing file.

    Raises
    ------
    ConfigurationError
        When the file is missing, is a directory, or cannot be read.
    """
    file = Path(path)
    try:
        return file.read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(f"{what} {file} does not exist; {hint}") from None
    except IsADirectoryError:
        raise ConfigurationError(f"{what} {file} is a directory; pass a file") from None
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read {what} {file} ({exc.strerror or exc}); check its permissions"
        ) from None


def decode_utf8(data: bytes, file: str | os.PathLike[str], what: str) -> str:
    """``data`` decoded as UTF-8, or an error naming ``FILE:LINE`` of the first bad byte.

    A leading byte-order mark (which Windows editors write) is dropped: it is UTF-8's own.

    Raises
    ------
    ConfigurationError
        When ``data`` is not valid UTF-8.
    """
    try:
        return data.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigurationError(
            f"{file}:{line}: {what} is not UTF-8 text (byte 0x{data[exc.start]:02x}); "
            "save it as UTF-8"
        ) from None


def read_text(path: str | os.PathLike[str], what: str, hint: str = "check the path") -> str:
    """The UTF-8 text of the file at ``path`` (see :func:`read_bytes` and :func:`decode_utf8`)."""
    return decode_utf8(read_bytes(path, what, hint), path, what)


def load_yaml_mapping(
    path: str | os.PathLike[str], what: str, keys_hint: str, hint: str = "check the path"
) -> dict[str, Any]:
    """Parse the YAML file at ``path``, whose top level must be a mapping (empty: ``{}``).

    Parameters
    ----------
    path
        The YAML file.
    what
        What it is, for messages (``"config file"``).
    keys_hint
        The keys expected at the top level, for the not-a-mapping message.
    hint
        How to fix a missing file.

    Raises
    ------
    ConfigurationError
        Unreadable file, not UTF-8, a YAML syntax error (``FILE:LINE:COLUMN``), or a top level
        that is not a mapping.
    """
    import yaml

    text = read_text(path, what, hint)
    try:
        data = yaml.load(text, Loader=_unique_keys_loader())  # a SafeLoader subclass
    except _DuplicateKey as exc:
        raise ConfigurationError(
            f"{path}:{exc.line}: {what} sets {exc.key!r} twice (first at line {exc.first}); "
            "keep one of them (YAML would silently use the last)"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigurationError(
            f"{where}: {what} is not valid YAML ({problem}); fix the syntax there"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"{path}: the top level of a {what} must be a mapping ({keys_hint}), "
            f"got a {type(data).__name__}"
        )
    return data


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


def _unique_keys_loader() -> Any:
    """A ``yaml.SafeLoader`` that refuses a key given twice in one mapping."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(key, line, seen[key])
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def write_failure(exc: OSError, path: str | os.PathLike[str], what: str, fix: str) -> Exception:
    """The library error for an ``OSError`` raised while writing ``path``.

    Parameters
    ----------
    exc
        The error the write raised.
    path
        What was being written.
    what
        What it is (``"outputs file"``).
    fix
        What to do once the cause is fixed (``"run the same command again to resume"``).

    Returns
    -------
    Exception
        A :class:`DiskFullError` for a full disk or quota, else a :class:`ConfigurationError`
        (permissions, a file where a directory should be, a read-only file system); raise it
        ``from exc``.
    """
    reason = exc.strerror or str(exc)
    if exc.errno in _FULL:
        return DiskFullError(
            f"the disk is full: cannot write {what} {path} ({reason}); free some space, then {fix}"
        )
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return ConfigurationError(
            f"cannot write {what} {path}: a file stands where a directory is needed ({reason}); "
            f"choose another path or move that file, then {fix}"
        )
    return ConfigurationError(
        f"cannot write {what} {path} ({reason}); check the path and its permissions, then {fix}"
    )


def ensure_directory(path: str | os.PathLike[str], what: str, setting: str) -> Path:
    """Create the directory ``path`` (and its parents) if needed and return it.

    Parameters
    ----------
    path
        The directory.
    what
        What it holds, for messages (``"evaluation runs"``).
    setting
        The setting or flag that names it, for the fix (``"evaluation.output_dir"``).

    Raises
    ------
    ConfigurationError
        When it exists as a file, a parent is a file, or it cannot be created.
    """
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise ConfigurationError(
            f"{directory} is a file, not a directory for {what}; set {setting} to a directory"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        error = write_failure(exc, directory, f"the directory for {what}", f"set {setting}")
        if isinstance(error, ConfigurationError):
            error = ConfigurationError(
                f"cannot create {directory} for {what} ({exc.strerror or exc}); set {setting} to "
                "a directory you can write to"
            )
        raise error from exc
    return directory
