"""Every backend, registered once: the list every other list of backends derives from.

A :class:`Registration` names the implementation lazily (``"module:Class"``), its pip extra and
the modules it needs, so listing the backends imports nothing. The settings' ``backend``
validation, :func:`qwen_backends.create_backend`, ``qwen-backends info``, the CLI's
``--backend`` choices and docs/configuration.md all read :data:`BACKENDS`; the settings section
of a backend is the :class:`~qwen_backends.settings.Settings` field of the same name. Adding a
backend: see docs/adding_a_backend.md.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

__all__ = ["BACKENDS", "Registration", "load_target", "missing_modules"]


@dataclass(frozen=True)
class Registration:
    """Where a backend lives and what it needs.

    Attributes
    ----------
    target
        ``"module:Class"`` of the implementation.
    extra
        The pip extra that installs its dependencies.
    requires
        Importable module names the backend needs (checked before it is imported).
    summary
        One line for ``info`` and the docs: the runtime and where it runs.
    """

    target: str
    extra: str
    requires: tuple[str, ...]
    summary: str


BACKENDS: dict[str, Registration] = {
    "hf": Registration(
        "qwen_backends.backends.hf:HFBackend",
        "hf",
        ("torch", "transformers", "accelerate"),
        "Hugging Face transformers in process (CPU, CUDA, Apple MPS)",
    ),
    "ollama": Registration(
        "qwen_backends.backends.ollama:OllamaBackend",
        "ollama",
        ("ollama", "httpx"),
        "an Ollama server (quantized local inference)",
    ),
    "unsloth": Registration(
        "qwen_backends.backends.unsloth:UnslothBackend",
        "unsloth",
        ("torch", "unsloth"),
        "Unsloth in process (NVIDIA, AMD or Intel GPU: Colab, Lightning)",
    ),
    "vllm": Registration(
        "qwen_backends.backends.vllm:VLLMBackend",
        "vllm",
        ("openai", "httpx"),
        "a vLLM OpenAI-compatible server (many users, several GPUs)",
    ),
    "llamacpp": Registration(
        "qwen_backends.backends.llamacpp:LlamaCppBackend",
        "llamacpp",
        ("llama_cpp", "numpy", "transformers"),
        "a GGUF file on llama.cpp in process (quantized; CPU, Metal or CUDA)",
    ),
    "mlx": Registration(
        "qwen_backends.backends.mlx:MLXBackend",
        "mlx",
        ("mlx", "mlx_lm"),
        "mlx-lm in process (Apple silicon GPU on a Mac; CPU build on Linux)",
    ),
}


def missing_modules(name: str | Registration) -> list[str]:
    """The modules a registration (or backend ``name``) needs that are not installed.

    Cheap: imports nothing. The fine-tuning engines (:data:`qwen_backends.finetune.engines.ENGINES`)
    are registered the same way.
    """
    registration = BACKENDS[name] if isinstance(name, str) else name
    return [m for m in registration.requires if importlib.util.find_spec(m) is None]


def load_target(registration: Registration) -> Any:
    """Import the module of ``registration.target`` (``"module:Class"``) and return the class."""
    module_name, _, attribute = registration.target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)
