"""Export a Qwen3 checkpoint to the formats other runtimes load (GGUF for llama.cpp / Ollama)."""

from __future__ import annotations

from qwen_backends.export.gguf import GGUF_TYPES, convert_to_gguf, verify_gguf

__all__ = ["GGUF_TYPES", "convert_to_gguf", "verify_gguf"]
