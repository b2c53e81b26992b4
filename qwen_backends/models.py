"""Where a model comes from: a hub id or a local path (one rule for every loader)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["looks_like_path"]


def looks_like_path(name: str) -> bool:
    """Whether ``name`` means a local path rather than a hub id.

    ``"org/name"`` is a hub id; ``"./dir"``, ``"/abs/dir"``, ``"~/dir"``, ``"a/b/c"``, Windows
    paths, anything ending in ``.gguf`` and anything that exists on disk are paths.
    """
    return (
        name.startswith((".", "/", "~", "\\"))
        or name.count("/") > 1
        or "\\" in name
        or name.endswith(".gguf")
        or Path(name).expanduser().exists()
    )
