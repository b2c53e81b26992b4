"""Where a model comes from: a hub id or a local path (one rule for every loader)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["hub_offline", "looks_like_path"]


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


def hub_offline(local_files_only: bool = False) -> bool:
    """Whether downloads from the model hub are off (``HF_HUB_OFFLINE`` or a backend's
    ``local_files_only`` setting)."""
    flag = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    return local_files_only or flag
