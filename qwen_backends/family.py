"""The Qwen3-4B family: which model every backend runs, chosen once (``QWEN_FAMILY``).

Qwen published three 4B chat models; two of them can answer without thinking:

- ``qwen3-4b`` -- **Qwen/Qwen3-4B** (April 2025, hybrid): thinks unless the template is given
  ``enable_thinking=False``, which pre-fills an empty think block (the default here);
- ``qwen3-4b-instruct-2507`` -- **Qwen/Qwen3-4B-Instruct-2507** (July 2025): non-thinking only,
  no switch, 262,144-token context;
- Qwen3-4B-Thinking-2507 is thinking-only and is refused by every backend (it has no entry).

:data:`FAMILIES` is the ONE table of default model names: the hub repository (hf, vllm), the
Unsloth repository, the Ollama tag, the GGUF repository and file pattern (llama.cpp) and the MLX
repository. A backend's settings section leaves ``model`` unset (``None``) to mean "the family's";
:attr:`qwen_backends.settings.Settings.model_name` resolves an explicit ``QWEN_MODEL`` first, then
the section's own ``model``, then this table. Switching ``QWEN_BACKEND`` therefore switches only
the runtime, never the model.

Ollama no longer lists the hybrid under an official tag (plain ``qwen3:4b`` is
Thinking-2507), so the hybrid's Ollama model is built locally: :attr:`Family.ollama_source` is a
GGUF on the hub that ``ollama pull hf.co/...`` fetches, and
:meth:`qwen_backends.backends.ollama.OllamaBackend.ensure_model` creates :attr:`Family.ollama`
from it with the non-thinking TEMPLATE of :mod:`qwen_backends.finetune.ollama`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qwen_backends.errors import ConfigurationError, UnknownBackendError
from qwen_backends.registry import BACKENDS

__all__ = ["DEFAULT_FAMILY", "FAMILIES", "Family", "FamilyName", "family_for_model"]

FamilyName = Literal["qwen3-4b", "qwen3-4b-instruct-2507"]
DEFAULT_FAMILY: FamilyName = "qwen3-4b"

#: Attributes of :class:`Family` a registration may name as its default model.
_MODEL_ATTRIBUTES = frozenset({"hf", "unsloth", "vllm", "ollama", "gguf_repo", "mlx"})


@dataclass(frozen=True)
class Family:
    """Default model names of one Qwen3-4B release, per runtime.

    Attributes
    ----------
    name
        The ``QWEN_FAMILY`` value.
    title
        The release, as Qwen names it.
    mode
        The template mode its chat template has (a :class:`qwen_backends.thinking.TemplateMode`
        value: ``"hybrid"`` or ``"non-thinking"``).
    hf
        Hub repository for the hf backend (transformers).
    unsloth
        Hub repository for the unsloth backend and fine-tuning.
    vllm
        Model name a vLLM server is started with (``vllm serve NAME``).
    ollama
        Ollama model name.
    ollama_source
        Where :meth:`~qwen_backends.backends.ollama.OllamaBackend.ensure_model` gets
        :attr:`ollama` when the Ollama library has no such tag: a ``hf.co/<repo>:<quant>`` GGUF
        to pull and wrap with the non-thinking TEMPLATE; ``None`` when :attr:`ollama` is pulled
        directly.
    gguf_repo, gguf_file
        GGUF repository and file pattern for the llama.cpp backend.
    mlx
        MLX repository for the mlx backend (Apple Silicon).
    unverified
        Attribute names whose repository name was not checked against the hub from here.
    """

    name: FamilyName
    title: str
    mode: str
    hf: str
    unsloth: str
    vllm: str
    ollama: str
    ollama_source: str | None
    gguf_repo: str
    gguf_file: str
    mlx: str
    unverified: tuple[str, ...] = ()

    def model_for(self, backend: str) -> str:
        """The default model of ``backend`` (a registry name) in this family.

        The backend's registration names the attribute (:attr:`Registration.family_model
        <qwen_backends.registry.Registration.family_model>`): ``llamacpp`` gets the GGUF
        repository (its file pattern is :attr:`gguf_file`).

        Raises
        ------
        UnknownBackendError
            For an unregistered backend.
        ConfigurationError
            When the backend's registration names no model of the family table.
        """
        if backend not in BACKENDS:
            raise UnknownBackendError(BACKENDS.unknown(backend))
        attribute = BACKENDS[backend].family_model
        if attribute not in _MODEL_ATTRIBUTES:
            raise ConfigurationError(
                f"the {backend} backend has no default model in the family table "
                f"(its registration names {attribute!r}, not one of "
                f"{', '.join(sorted(_MODEL_ATTRIBUTES))}); set QWEN_MODEL or "
                f"QWEN_{backend.upper()}__MODEL"
            )
        model: str = getattr(self, attribute)
        return model

    def all_names(self) -> frozenset[str]:
        """Every model name of this family (to tell which family a model belongs to)."""
        names = {getattr(self, attribute) for attribute in _MODEL_ATTRIBUTES}
        if self.ollama_source:
            names.add(self.ollama_source)
        return frozenset(names)


FAMILIES: dict[str, Family] = {
    "qwen3-4b": Family(
        name="qwen3-4b",
        title="Qwen3-4B (hybrid, April 2025; non-thinking through enable_thinking=False)",
        mode="hybrid",
        hf="Qwen/Qwen3-4B",
        unsloth="unsloth/Qwen3-4B",
        vllm="Qwen/Qwen3-4B",
        # A local name: ensure_model() builds it from ollama_source with the non-thinking
        # TEMPLATE, since the library's qwen3:4b is now the thinking-only 2507 build.
        ollama="qwen3-4b-nothink:q4_K_M",
        ollama_source="hf.co/unsloth/Qwen3-4B-GGUF:Q4_K_M",
        gguf_repo="unsloth/Qwen3-4B-GGUF",
        gguf_file="*Q4_K_M.gguf",
        mlx="Qwen/Qwen3-4B-MLX-4bit",
        unverified=("ollama_source", "gguf_repo", "mlx"),
    ),
    "qwen3-4b-instruct-2507": Family(
        name="qwen3-4b-instruct-2507",
        title="Qwen3-4B-Instruct-2507 (July 2025; non-thinking only)",
        mode="non-thinking",
        hf="Qwen/Qwen3-4B-Instruct-2507",
        unsloth="unsloth/Qwen3-4B-Instruct-2507",
        vllm="Qwen/Qwen3-4B-Instruct-2507",
        ollama="qwen3:4b-instruct-2507-q4_K_M",
        ollama_source=None,
        gguf_repo="unsloth/Qwen3-4B-Instruct-2507-GGUF",
        gguf_file="*Q4_K_M.gguf",
        mlx="lmstudio-community/Qwen3-4B-Instruct-2507-MLX-4bit",
        unverified=("gguf_repo", "mlx"),
    ),
}

#: Ollama's alias of the Instruct-2507 tag (same model).
OLLAMA_INSTRUCT_ALIAS = "qwen3:4b-instruct"


def family_for_model(model: str) -> Family | None:
    """The family whose table names ``model`` (``None`` for a local path or another name)."""
    for family in FAMILIES.values():
        if model in family.all_names():
            return family
    return None
