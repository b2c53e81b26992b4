"""Checks of a GGUF file before llama.cpp loads it: one-line errors where llama.cpp would give
a log line, a crash or a process too big for the machine."""

from __future__ import annotations

from pathlib import Path

from qwen_backends.errors import ModelNotFoundError

__all__ = ["GGUF_MAGIC", "check_context", "check_gguf_file"]

#: The first bytes of every GGUF file.
GGUF_MAGIC = b"GGUF"


def check_gguf_file(path: Path, source: str) -> None:
    """Refuse a path that is not a readable GGUF file, saying what it is instead."""
    try:
        path.stat()
    except PermissionError as exc:
        raise ModelNotFoundError(
            f"cannot read GGUF file {source!r} ({exc.strerror}); check the permissions of it "
            "and of the folders above it"
        ) from exc
    except OSError:
        pass  # a missing file is reported below
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        hint = f" such as {found[0]}" if found else ""
        raise ModelNotFoundError(
            f"{source!r} is a folder; the llamacpp backend loads one .gguf file{hint}: point "
            "QWEN_MODEL / --model at it (convert a checkpoint folder with qwen-backends "
            "export gguf)"
        )
    if not path.is_file():
        raise ModelNotFoundError(
            f"GGUF file {source!r} does not exist; fix the path in QWEN_MODEL / --model, or "
            "write one with: qwen-backends export gguf MODEL_DIR --output FILE"
        )
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelNotFoundError(
            f"{source!r} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); convert "
            "a Hugging Face checkpoint with: qwen-backends export gguf MODEL_DIR --output FILE"
        )


def check_context(path: Path, n_ctx: int) -> None:
    """Refuse an ``n_ctx`` the GGUF was not trained for, or whose KV cache this machine
    cannot hold, before llama.cpp allocates it (from the file's own metadata)."""
    from qwen_backends.context_size import KV_BYTES_PER_TOKEN, check_loaded_context
    from qwen_backends.errors import ExportError
    from qwen_backends.export.gguf_tensors import read_metadata

    try:
        meta = read_metadata(path)
    except (ExportError, OSError):
        return  # llama.cpp's own load reports an unreadable file
    arch = str(meta.get("general.architecture", "qwen3"))
    trained = meta.get(f"{arch}.context_length")
    if not isinstance(trained, int):
        return
    scaled = meta.get(f"{arch}.rope.scaling.type") == "yarn"
    factor = float(meta.get(f"{arch}.rope.scaling.factor", 1.0)) if scaled else 1.0
    layers = meta.get(f"{arch}.block_count")
    heads = meta.get(f"{arch}.attention.head_count_kv")
    width = meta.get(f"{arch}.attention.key_length")
    per_token = KV_BYTES_PER_TOKEN
    if isinstance(layers, int) and isinstance(heads, int) and isinstance(width, int):
        per_token = 2 * 2 * layers * heads * width  # K and V, f16
    check_loaded_context(
        n_ctx,
        trained,
        rope_factor=factor,
        bytes_per_token=per_token,
        setting="QWEN_LLAMACPP__N_CTX",
    )
