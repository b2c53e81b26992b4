"""Qwen3-4B on Unsloth (``backend="unsloth"``): Colab / Lightning GPUs, 4-bit by default.

Only loading (and the decode call) differs from the hf backend: :meth:`UnslothBackend._load` calls
``FastLanguageModel.from_pretrained`` (model, ``max_seq_length``, ``load_in_4bit``, ``dtype``,
``token`` from ``settings.unsloth``) and ``FastLanguageModel.for_inference``. Rendering (always
non-thinking), the SamplingParams mapping, ``english_only``, streaming and batching are the hf
backend's, inherited unchanged.

Import order matters: Unsloth patches transformers, TRL and PEFT when it is imported, so it must
be imported before them *in that process*. :func:`import_unsloth` is the one place that imports
it; build the unsloth backend (or start an unsloth fine-tune) before anything imports
transformers. If transformers was imported first, Unsloth still loads but warns that some of
its optimisations may be missing; restart the process (or the notebook kernel) and create the
unsloth backend first to get them.

Unsloth needs an NVIDIA, AMD or Intel GPU. Without one, the backend stops with one sentence
(:data:`GPU_REQUIRED`) before importing Unsloth, and Unsloth's own "no GPU" exceptions are
translated to the same sentence.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from types import ModuleType
from typing import TYPE_CHECKING

from qwen_backends.backends.hf import HFBackend
from qwen_backends.errors import (
    BackendUnavailableError,
    MissingDependencyError,
    ModelNotFoundError,
    QwenBackendsError,
    first_line,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from qwen_backends.settings import Settings

__all__ = [
    "GPU_REQUIRED",
    "UnslothBackend",
    "has_supported_gpu",
    "import_unsloth",
    "load_unsloth_model",
    "require_gpu",
]

#: The one-line answer on a machine Unsloth cannot use.
GPU_REQUIRED = (
    "the unsloth backend needs an NVIDIA, AMD or Intel GPU (Colab, Lightning); on this machine "
    "use backend hf, or the peft fine-tuning engine"
)
#: Fragments of the exceptions Unsloth raises when it finds no usable accelerator.
_NO_GPU_MARKERS = ("no nvidia gpu", "cannot find any torch accelerator", "you need a gpu")


def has_supported_gpu() -> bool:
    """Whether torch sees a GPU Unsloth supports: CUDA (NVIDIA, or AMD via ROCm) or Intel XPU."""
    import torch

    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def require_gpu() -> None:
    """Raise :class:`BackendUnavailableError` (:data:`GPU_REQUIRED`) without a supported GPU."""
    if importlib.util.find_spec("torch") is None:
        raise MissingDependencyError(
            "the unsloth backend needs torch, which is not installed; install it with: "
            "pip install 'qwen-backends[unsloth]'"
        )
    if not has_supported_gpu():
        raise BackendUnavailableError(GPU_REQUIRED, retryable=False)


def import_unsloth() -> ModuleType:
    """Import and return the ``unsloth`` module, translating its failures.

    Checks for a GPU first, so that on a CPU-only machine Unsloth is never imported (its import
    raises there, after patching half of transformers).

    Raises
    ------
    BackendUnavailableError
        Without a supported GPU (:data:`GPU_REQUIRED`), or when Unsloth's import says so.
    MissingDependencyError
        When Unsloth is not installed.
    """
    require_gpu()
    try:
        return importlib.import_module("unsloth")
    except ModuleNotFoundError as exc:
        if exc.name == "unsloth":
            raise MissingDependencyError(
                "unsloth is not installed; install it with: pip install 'qwen-backends[unsloth]'"
            ) from exc
        raise MissingDependencyError(
            f"unsloth cannot be imported: {exc}; reinstall it with: "
            "pip install 'qwen-backends[unsloth]'"
        ) from exc
    except (NotImplementedError, RuntimeError, ImportError, AssertionError) as exc:
        if isinstance(exc, NotImplementedError) or any(
            marker in str(exc).lower() for marker in _NO_GPU_MARKERS
        ):
            raise BackendUnavailableError(GPU_REQUIRED, retryable=False) from exc
        raise BackendUnavailableError(
            f"unsloth failed to start ({first_line(exc)}); check that its version matches "
            "torch, transformers and trl (see docs/finetuning.md), or use backend hf",
            retryable=False,
        ) from exc


def load_unsloth_model(
    model_name: str,
    *,
    max_seq_length: int,
    dtype: str,
    load_in_4bit: bool,
    token: str | None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``FastLanguageModel.from_pretrained`` with every failure translated.

    The one Unsloth loader: the unsloth backend and the unsloth fine-tuning engine both call it.

    Parameters
    ----------
    model_name
        Hub id or local folder.
    max_seq_length
        The longest sequence Unsloth prepares the model for.
    dtype
        ``"auto"`` (Unsloth picks) or a torch dtype name.
    load_in_4bit
        Load 4-bit (bitsandbytes) weights.
    token
        Hugging Face token for gated or private models.

    Raises
    ------
    BackendUnavailableError
        Without a supported GPU, or when the GPU runs out of memory.
    ModelNotFoundError
        When the model cannot be found or read.
    """
    fast = import_unsloth().FastLanguageModel
    import torch

    try:
        model, tokenizer = fast.from_pretrained(
            model_name=model_name,
            max_seq_length=max_seq_length,
            dtype=None if dtype == "auto" else getattr(torch, dtype),
            load_in_4bit=load_in_4bit,
            token=token,
        )
    except QwenBackendsError:
        raise
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"unsloth cannot load {model_name!r} ({first_line(exc)}); check the hub id or local "
            "folder (QWEN_MODEL or the config's model), the network, and HF_TOKEN for gated "
            "models"
        ) from exc
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise BackendUnavailableError(
                f"the GPU ran out of memory loading {model_name!r}; load it in 4 bits "
                "(QWEN_UNSLOTH__LOAD_IN_4BIT=true, or load_in_4bit: true in a fine-tuning "
                "config) or lower max_seq_length",
                retryable=False,
            ) from exc
        raise ModelNotFoundError(f"unsloth cannot load {model_name!r} ({first_line(exc)})") from exc
    return model, tokenizer


class UnslothBackend(HFBackend):
    """Qwen3-4B through Unsloth's ``FastLanguageModel``, non-thinking, on a GPU.

    Build it with ``create_backend(backend="unsloth")`` (or ``QWEN_BACKEND=unsloth``); settings
    come from ``settings.unsloth`` and the model from ``settings.model_name``
    (``unsloth/Qwen3-4B`` by default, 4-bit). Generation is :class:`HFBackend`'s, through
    Unsloth's patched ``model.generate`` rather than the hf backend's own decode loop: Unsloth
    patches the model for inference (``for_inference``) and its ``generate`` is the path it
    supports.

    Raises
    ------
    BackendUnavailableError
        On a machine without an NVIDIA, AMD or Intel GPU (:data:`GPU_REQUIRED`).
    """

    name = "unsloth"
    own_decode_loop = False
    # Log-probabilities come from generate's raw logits (output_logits); the prompt cache
    # needs the own decode loop (its budget is 0 here).
    capabilities = dataclasses.replace(HFBackend.capabilities, prompt_cache=False)

    @classmethod
    def readiness(cls, settings: Settings) -> str:
        """Ready only with a GPU Unsloth supports."""
        if has_supported_gpu():
            return "ready"
        return "cannot start: needs an NVIDIA, AMD or Intel GPU"

    @property
    def context_window(self) -> int:
        """``settings.unsloth.max_seq_length``: what Unsloth prepared the model for."""
        return self.settings.unsloth.max_seq_length

    def _load(self) -> None:
        """:func:`load_unsloth_model` then ``for_inference`` (Unsloth imported first)."""
        options = self.settings.unsloth
        model, tokenizer = load_unsloth_model(
            self.model_name,
            max_seq_length=options.max_seq_length,
            dtype=options.dtype,
            load_in_4bit=options.load_in_4bit,
            token=options.token.get_secret_value() if options.token is not None else None,
        )
        import_unsloth().FastLanguageModel.for_inference(model)
        self.model, self.tokenizer = model, tokenizer
