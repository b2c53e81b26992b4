"""Every backend and fine-tuning engine, registered once: the lists every other list derives from.

A :class:`Registration` names everything about a plug-in lazily, as ``"module:Name"`` strings
(the implementation, its settings section, its readiness probe), plus its pip extra and the
modules it needs, so listing the registrations imports nothing.

:data:`BACKENDS` feeds the settings (``backend`` validation, one section per backend,
which fields :meth:`~qwen_backends.settings.Settings.redacted` masks), the family table's
default model per backend (:meth:`qwen_backends.family.Family.model_for`),
:func:`qwen_backends.create_backend`, ``qwen-backends info``, the CLI's ``--backend`` choices and
docs/configuration.md. :data:`ENGINES` feeds the fine-tuning config's ``engine`` validation and
:func:`qwen_backends.finetune.engines.create_engine`. Both resolve through one function,
:meth:`Registry.resolve`. Adding a backend: see docs/adding_a_backend.md.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from qwen_backends.errors import (
    ConfigurationError,
    MissingDependencyError,
    UnknownBackendError,
    did_you_mean,
)

__all__ = [
    "BACKENDS",
    "ENGINES",
    "Registration",
    "Registry",
    "load_target",
    "missing_modules",
]

#: A registry name: it is also a settings field and part of ``QWEN_<NAME>__...`` variables.
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _is_target(value: str) -> bool:
    module_name, colon, attributes = value.partition(":")
    names = [*module_name.split("."), *attributes.split(".")]
    return bool(colon) and all(part.isidentifier() for part in names)


@dataclass(frozen=True)
class Registration:
    """Where a backend (or fine-tuning engine) lives, what it needs and how it is configured.

    Attributes
    ----------
    target
        ``"module:Class"`` of the implementation.
    extra
        The pip extra that installs its dependencies.
    requires
        Importable module names it needs (checked before it is imported).
    summary
        One line for ``info`` and the docs: the runtime and where it runs.
    settings
        ``"module:Class"`` of its settings section (a :class:`qwen_backends.settings.Section`),
        which becomes the :class:`~qwen_backends.settings.Settings` field named like the
        registration (``QWEN_<NAME>__...``); ``None`` for none.
    family_model
        The :class:`qwen_backends.family.Family` attribute holding its default model (``"hf"``,
        ``"gguf_repo"`` ...); ``None`` when the family table has none for it.
    readiness
        ``"module:callable"`` taking the settings and returning ``info``'s short verdict on
        whether it can start here; ``None`` for the ``readiness`` classmethod of ``target``.
    url_fields
        Fields of its settings section that hold URLs, masked by
        :func:`~qwen_backends.settings.mask_url` wherever settings are printed (secrets need no
        entry: a ``SecretStr`` field is masked by its type).
    """

    target: str
    extra: str
    requires: tuple[str, ...]
    summary: str
    settings: str | None = None
    family_model: str | None = None
    readiness: str | None = None
    url_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for field in ("target", "settings", "readiness"):
            value = getattr(self, field)
            if value is not None and not _is_target(value):
                raise ConfigurationError(
                    f"Registration {field}={value!r} is not 'module:Name'; write it like "
                    "'qwen_backends.backends.hf:HFBackend'"
                )

    @property
    def readiness_target(self) -> str:
        """``"module:callable"`` of the readiness probe (:attr:`readiness` or its default)."""
        return self.readiness or f"{self.target}.readiness"


class Registry(dict[str, Registration]):
    """Registered names of one kind (backends or fine-tuning engines), in display order.

    A plain ``dict`` of name -> :class:`Registration` plus the steps every registry shares:
    the one-line error for an unknown name, :meth:`resolve` and (un)registering with
    :meth:`register` / :meth:`registered`, which tell the watchers (the settings, for
    :data:`BACKENDS`) so that derived lists follow.

    Parameters
    ----------
    kind
        What the names name, for messages: ``"backend"``, ``"fine-tuning engine"``.
    entries
        The built-in registrations.
    """

    def __init__(self, kind: str, entries: Mapping[str, Registration]) -> None:
        super().__init__(entries)
        self.kind = kind
        self._watchers: list[Callable[[], None]] = []

    def unknown(self, name: str) -> str:
        """The one-line message for an unregistered ``name`` (with a did-you-mean)."""
        return (
            f"unknown {self.kind} {name!r}; {did_you_mean(name, self)}"
            f"choose one of {', '.join(self)}"
        )

    def resolve(self, name: str) -> Any:
        """Import and return the implementation of ``name``, its dependencies checked first.

        Raises
        ------
        UnknownBackendError
            For an unregistered name (with a did-you-mean).
        MissingDependencyError
            When its pip extra is not installed.
        """
        if name not in self:
            raise UnknownBackendError(self.unknown(name))
        registration = self[name]
        missing = missing_modules(registration)
        if missing:
            raise MissingDependencyError(
                f"the {name} {self.kind} needs {', '.join(missing)}, which is not installed; "
                f"install it with: pip install 'qwen-backends[{registration.extra}]'"
            )
        return load_target(registration.target)

    def register(self, name: str, registration: Registration) -> None:
        """Add ``name``; the watchers (e.g. the settings' sections) follow at once.

        Raises
        ------
        ConfigurationError
            When ``name`` is taken or not a lowercase identifier, or a watcher refuses the
            registration (then nothing is registered).
        """
        if not _NAME.fullmatch(name):
            raise ConfigurationError(
                f"{self.kind} name {name!r} is not a lowercase identifier; use letters, digits "
                "and _ (it names a settings section and QWEN_<NAME>__ variables)"
            )
        if name in self:
            raise ConfigurationError(
                f"{self.kind} {name!r} is already registered; unregister it first"
            )
        self[name] = registration
        try:
            self._notify()
        except BaseException:
            del self[name]
            self._notify()
            raise

    def unregister(self, name: str) -> Registration:
        """Remove ``name`` and return its registration; the watchers follow at once."""
        if name not in self:
            raise UnknownBackendError(self.unknown(name))
        registration = self.pop(name)
        self._notify()
        return registration

    @contextlib.contextmanager
    def registered(self, name: str, registration: Registration) -> Iterator[Registration]:
        """Register ``name`` for the length of a ``with`` block (tests, experiments)."""
        self.register(name, registration)
        try:
            yield registration
        finally:
            self.unregister(name)

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every :meth:`register` / :meth:`unregister`."""
        self._watchers.append(callback)

    def _notify(self) -> None:
        for callback in self._watchers:
            callback()


BACKENDS = Registry(
    "backend",
    {
        "hf": Registration(
            "qwen_backends.backends.hf:HFBackend",
            "hf",
            ("torch", "transformers", "accelerate"),
            "Hugging Face transformers in process (CPU, CUDA, Apple MPS)",
            settings="qwen_backends.settings:HFSettings",
            family_model="hf",
        ),
        "ollama": Registration(
            "qwen_backends.backends.ollama:OllamaBackend",
            "ollama",
            ("ollama", "httpx"),
            "an Ollama server (quantized local inference)",
            settings="qwen_backends.settings:OllamaSettings",
            family_model="ollama",
            url_fields=("host",),
        ),
        "unsloth": Registration(
            "qwen_backends.backends.unsloth:UnslothBackend",
            "unsloth",
            ("torch", "unsloth"),
            "Unsloth in process (NVIDIA, AMD or Intel GPU: Colab, Lightning)",
            settings="qwen_backends.settings:UnslothSettings",
            family_model="unsloth",
        ),
        "vllm": Registration(
            "qwen_backends.backends.vllm:VLLMBackend",
            "vllm",
            ("openai", "httpx"),
            "a vLLM OpenAI-compatible server (many users, several GPUs)",
            settings="qwen_backends.settings:VLLMSettings",
            family_model="vllm",
            url_fields=("base_url",),
        ),
        "llamacpp": Registration(
            "qwen_backends.backends.llamacpp:LlamaCppBackend",
            "llamacpp",
            ("llama_cpp", "numpy", "transformers"),
            "a GGUF file on llama.cpp in process (quantized; CPU, Metal or CUDA)",
            settings="qwen_backends.settings:LlamaCppSettings",
            family_model="gguf_repo",
        ),
        "mlx": Registration(
            "qwen_backends.backends.mlx:MLXBackend",
            "mlx",
            ("mlx", "mlx_lm"),
            "mlx-lm in process (Apple silicon GPU on a Mac; CPU build on Linux)",
            settings="qwen_backends.settings:MLXSettings",
            family_model="mlx",
        ),
    },
)

#: ``engine:`` name of the fine-tuning config -> where the engine lives and what it needs.
ENGINES = Registry(
    "fine-tuning engine",
    {
        "unsloth": Registration(
            "qwen_backends.finetune.engines:UnslothEngine",
            "unsloth",
            ("torch", "unsloth", "trl", "peft", "datasets"),
            "Unsloth on an NVIDIA/AMD/Intel GPU (4-bit QLoRA, GGUF export)",
        ),
        "peft": Registration(
            "qwen_backends.finetune.engines:PeftEngine",
            "finetune",
            ("torch", "transformers", "peft", "trl", "datasets"),
            "plain transformers + PEFT + TRL (CPU or GPU)",
        ),
    },
)


def missing_modules(name: str | Registration) -> list[str]:
    """The modules a registration (or backend ``name``) needs that are not installed.

    Cheap: imports nothing.
    """
    registration = BACKENDS[name] if isinstance(name, str) else name
    return [m for m in registration.requires if importlib.util.find_spec(m) is None]


def load_target(target: str) -> Any:
    """Import ``"module:Name"`` and return the object; ``Name`` may be dotted (``Class.method``)."""
    module_name, _, attributes = target.partition(":")
    found: Any = importlib.import_module(module_name)
    for attribute in attributes.split("."):
        found = getattr(found, attribute)
    return found
