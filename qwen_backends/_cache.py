"""Where built artefacts (offline tokenizer, test checkpoints) are cached, outside the repo."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["build_once", "cache_dir"]


def cache_dir() -> Path:
    """``$QWEN_BACKENDS_CACHE``, else ``$XDG_CACHE_HOME/qwen-backends``, else ``~/.cache/...``."""
    explicit = os.environ.get("QWEN_BACKENDS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qwen-backends"


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Return ``target``, calling ``build(tmp_dir)`` first if it does not exist yet.

    The build writes into a temporary sibling that is renamed into place, so a crash never
    leaves a half-written directory and concurrent builders (parallel tests) do not collide:
    the first rename wins and the others discard their copy.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
