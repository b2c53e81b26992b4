"""How large a context window may be: what the model was trained for, and what its KV cache costs.

llama.cpp allocates the whole KV cache when the model loads, so a context window too large for
the machine kills the process (the kernel's out-of-memory killer), and one larger than the
model's trained context only earns a log line. These checks turn both into a one-line
:class:`~qwen_backends.errors.ConfigurationError` that says what the memory would be:

- :func:`check_context_setting` -- without the model (settings validation): at most
  :data:`MAX_CONTEXT`, the largest context of any Qwen3-4B release;
- :func:`check_loaded_context` -- once the model's GGUF metadata is known: at most its trained
  context (scaled by its rope factor when the GGUF sets YaRN), and a KV cache that fits the
  machine's memory.

Qwen3-4B's KV cache in f16: 36 layers x 8 KV heads x 128 head_dim x 2 (K and V) x 2 bytes
= :data:`KV_BYTES_PER_TOKEN` (147,456) bytes a token: 4.5 GiB at 32,768 tokens.
"""

from __future__ import annotations

import os

from qwen_backends.errors import ConfigurationError

__all__ = [
    "KV_BYTES_PER_TOKEN",
    "MAX_CONTEXT",
    "check_context_setting",
    "check_loaded_context",
    "kv_cache_bytes",
    "machine_memory",
]

#: Qwen3-4B (and -2507): layers, KV heads, head size; K and V; 2 bytes (f16).
KV_BYTES_PER_TOKEN = 36 * 8 * 128 * 2 * 2
#: The longest context of any Qwen3-4B release (Qwen3-4B-Instruct-2507's 262,144; the hybrid
#: Qwen3-4B is trained for 40,960 and reaches 131,072 with YaRN).
MAX_CONTEXT = 262_144


def kv_cache_bytes(tokens: int, bytes_per_token: int = KV_BYTES_PER_TOKEN) -> int:
    """Bytes of KV cache for ``tokens`` positions (f16 Qwen3-4B by default)."""
    return tokens * bytes_per_token


def _size(count: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count:,} bytes"


def _memory_note(tokens: int, bytes_per_token: int) -> str:
    return (
        f"its KV cache alone would take {_size(kv_cache_bytes(tokens, bytes_per_token))} "
        f"({bytes_per_token:,} bytes a token)"
    )


def check_context_setting(n_ctx: int, setting: str = "llamacpp.n_ctx") -> int:
    """``n_ctx`` if no Qwen3-4B release could use more; for settings validators.

    Raises
    ------
    ConfigurationError
        Past :data:`MAX_CONTEXT`, saying what the KV cache would take.
    """
    if n_ctx > MAX_CONTEXT:
        raise ConfigurationError(
            f"{setting}={n_ctx:,} is larger than any Qwen3-4B release's context ({MAX_CONTEXT:,} "
            f"for Qwen3-4B-Instruct-2507; 40,960 for Qwen3-4B, 131,072 with YaRN), and "
            f"{_memory_note(n_ctx, KV_BYTES_PER_TOKEN)}; use at most the model's context "
            "(32,768 is the default)"
        )
    return n_ctx


def check_loaded_context(
    n_ctx: int,
    trained: int,
    *,
    rope_factor: float = 1.0,
    bytes_per_token: int = KV_BYTES_PER_TOKEN,
    memory: int | None = None,
    setting: str = "llamacpp.n_ctx",
) -> None:
    """Refuse a context the loaded model cannot use or the machine cannot hold.

    Call it before the context (KV cache) is allocated: with llama.cpp, from the GGUF's
    metadata (``{arch}.context_length``, ``{arch}.rope.scaling.factor`` when its
    ``{arch}.rope.scaling.type`` is ``yarn``) read with ``vocab_only=True`` or from the file.

    Parameters
    ----------
    n_ctx
        The context asked for.
    trained
        The model's trained context (``qwen3.context_length``: 40,960 for Qwen3-4B).
    rope_factor
        The GGUF's YaRN factor (1.0 without YaRN): the usable context is ``trained`` times it.
    bytes_per_token
        KV cache bytes a token (default: Qwen3-4B in f16).
    memory
        Bytes of memory the machine has (default: :func:`machine_memory`; ``0``: not checked).
    setting
        The setting's name, for the message.

    Raises
    ------
    ConfigurationError
        Naming the limit that was passed, what the KV cache would take, and the fix.
    """
    usable = int(trained * max(rope_factor, 1.0))
    if n_ctx > usable:
        yarn = f" with rope factor {rope_factor:g}" if rope_factor > 1.0 else ""
        raise ConfigurationError(
            f"{setting}={n_ctx:,} is more than the model's trained context of {usable:,} "
            f"tokens{yarn}; positions past it give garbage, and "
            f"{_memory_note(n_ctx, bytes_per_token)}; set {setting} to {usable:,} or less"
        )
    available = machine_memory() if memory is None else memory
    needed = kv_cache_bytes(n_ctx, bytes_per_token)
    if available and needed > available:
        raise ConfigurationError(
            f"{setting}={n_ctx:,}: {_memory_note(n_ctx, bytes_per_token)}, more than this "
            f"machine's {_size(available)} of memory; lower {setting} (32,768 needs "
            f"{_size(kv_cache_bytes(32_768, bytes_per_token))})"
        )


def machine_memory() -> int:
    """Bytes of physical memory, or 0 where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0
