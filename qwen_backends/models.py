"""Where a model comes from: a hub id or a local path (one rule for every loader)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["hub_hint", "hub_offline", "looks_like_path"]


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


def hub_hint(
    source: str, section: str | None, *, offline: bool, local: str = "a local directory holding it"
) -> str:
    """The advice after a failed hub download, the same wording on every backend.

    Parameters
    ----------
    source
        The hub id that failed.
    section
        The backend's settings prefix (``"QWEN_HF"``) when its section has ``revision``,
        ``token`` and ``local_files_only`` fields; ``None`` when only the hub's own variables
        apply.
    offline
        Whether downloads are off (:func:`hub_offline`): then the fix is a local copy.
    local
        What to point ``QWEN_MODEL`` at instead (a directory, a ``.gguf`` file ...).
    """
    if offline:
        switch = f"HF_HUB_OFFLINE or {section}__LOCAL_FILES_ONLY" if section else "HF_HUB_OFFLINE"
        return (
            f"downloads are off ({switch}) and {source} is not in the local cache; point "
            f"QWEN_MODEL / --model at {local}, or download it once while online: hf download "
            f"{source}"
        )
    revision = f" (and {section}__REVISION)" if section else ""
    token = f"{section}__TOKEN / HF_TOKEN" if section else "HF_TOKEN"
    return (
        f"check the hub id{revision}, the network, and {token} for gated or private models; "
        f"without network use {local}"
    )
