"""Where and in what precision a torch model loads: device, dtype, memory and load checks.

Shared by the backends that load through transformers: :mod:`qwen_backends.backends.hf` and
:mod:`qwen_backends.backends.unsloth` (which subclasses the hf backend).

- :func:`resolve_device` turns ``QWEN_HF__DEVICE`` into ``"cuda:N"``, ``"mps"`` or ``"cpu"``
  and :func:`resolve_dtype` picks the weight dtype for it;
- :func:`check_load_options` refuses quantization / flash-attention settings the device cannot
  honour, before any weights are touched;
- :func:`memory_warning` compares the estimated need (:func:`count_parameters` on the meta
  device, times bytes per parameter, plus 1 GiB of runtime) with the free memory and says what
  to change (the backend emits it as a :class:`LowMemoryWarning`);
- :class:`DeviceProbes` is everything these ask of the machine, so tests can inject a fake one.

torch and transformers are imported inside the functions that need them, so importing this
module stays light.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qwen_backends.errors import (
    ConfigurationError,
    MissingDependencyError,
    UnsupportedFeatureError,
)

if TYPE_CHECKING:
    from qwen_backends.settings import HFSettings

__all__ = [
    "DeviceProbes",
    "LowMemoryWarning",
    "bitsandbytes_config",
    "check_load_options",
    "count_parameters",
    "estimated_load_bytes",
    "free_memory",
    "memory_warning",
    "resolve_device",
    "resolve_dtype",
]

#: Bytes per parameter of each weight format (bitsandbytes keeps norms and embeddings wider,
#: so the 4/8-bit figures are lower bounds).
_BYTES_PER_PARAMETER = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "8bit": 1.0, "4bit": 0.5}
#: Room on top of the weights: torch, the tokenizer, activations and a KV cache of a few
#: thousand tokens. Measured at Qwen3-4B's real size on CPU (docs/benchmarks.md): peak RSS minus
#: weights was 0.94 GiB in bfloat16 and 0.81 GiB (anonymous) in float32.
_RUNTIME_BYTES = 1024**3
_GIB = 1024**3


class LowMemoryWarning(UserWarning):
    """The chosen device probably has too little free memory for the model in this dtype."""


@dataclass(frozen=True)
class DeviceProbes:
    """What the machine offers; tests inject their own, :meth:`detect` asks torch.

    Attributes
    ----------
    cuda_available, mps_available
        Whether a CUDA / Apple MPS device can be used.
    cuda_device_count
        How many CUDA devices there are.
    cuda_bf16_supported
        Whether the CUDA device computes in bfloat16.
    free_memory
        Bytes free on a device (``"cuda:0"``, ``"mps"``, ``"cpu"``), or ``None`` if unknown.
    module_available
        Whether an importable module (``"flash_attn"``, ``"bitsandbytes"``) is installed.
    """

    cuda_available: Callable[[], bool]
    mps_available: Callable[[], bool]
    cuda_device_count: Callable[[], int]
    cuda_bf16_supported: Callable[[], bool]
    free_memory: Callable[[str], int | None]
    module_available: Callable[[str], bool]

    @classmethod
    def detect(cls) -> DeviceProbes:
        """Probes that ask torch (and the import system) about this machine."""
        import torch

        def mps_available() -> bool:
            mps = getattr(torch.backends, "mps", None)
            return bool(mps is not None and mps.is_available())

        return cls(
            cuda_available=torch.cuda.is_available,
            mps_available=mps_available,
            cuda_device_count=torch.cuda.device_count,
            cuda_bf16_supported=lambda: bool(torch.cuda.is_bf16_supported()),
            free_memory=free_memory,
            module_available=lambda name: importlib.util.find_spec(name) is not None,
        )


def free_memory(device: str) -> int | None:
    """Bytes free on ``device`` (``"cuda:N"``, ``"mps"``, ``"cpu"``: ``MemAvailable``), or
    ``None`` when unknown."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    if device == "mps":
        import torch

        # Unified memory: the Metal limit is what a model can use.
        return int(torch.mps.recommended_max_memory())
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass  # not Linux: fall back to sysconf
    with contextlib.suppress(AttributeError, OSError, ValueError):
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    return None


def resolve_device(requested: str, probes: DeviceProbes) -> str:
    """The device to load on: ``"cuda:N"``, ``"mps"`` or ``"cpu"``.

    ``auto`` picks CUDA, then Apple MPS, then CPU. A forced device that is not available is an
    error naming the alternatives.

    Raises
    ------
    ConfigurationError
        For an unknown name or a device this machine does not have.
    """
    name = requested.strip().lower()
    if name == "auto":
        if probes.cuda_available():
            return "cuda:0"
        return "mps" if probes.mps_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "mps":
        if not probes.mps_available():
            raise ConfigurationError(
                "device=mps but Apple MPS is not available here; set QWEN_HF__DEVICE=auto or cpu"
            )
        return "mps"
    if name == "cuda" or name.startswith("cuda:"):
        index_text = name.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise ConfigurationError(
                f"device={requested!r} is not a valid CUDA device; write cuda or cuda:N"
            )
        if not probes.cuda_available():
            raise ConfigurationError(
                f"device={requested} but CUDA is not available here (no NVIDIA GPU or a CPU-only "
                "torch build); set QWEN_HF__DEVICE=auto or cpu"
            )
        index, count = int(index_text), probes.cuda_device_count()
        if index >= count:
            raise ConfigurationError(
                f"device={requested} but this machine has {count} CUDA device(s) "
                f"(cuda:0..cuda:{count - 1}); pick one of those"
            )
        return f"cuda:{index}"
    raise ConfigurationError(
        f"unknown device {requested!r}; use auto, cuda, cuda:N, mps or cpu (QWEN_HF__DEVICE)"
    )


def resolve_dtype(requested: str, device: str, probes: DeviceProbes) -> str:
    """The weight dtype: ``auto`` is bfloat16 on CUDA that supports it (else float16), float16
    on MPS and float32 on CPU; any other value is used as given."""
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        return "bfloat16" if probes.cuda_bf16_supported() else "float16"
    return "float16" if device == "mps" else "float32"


def check_load_options(hf: HFSettings, device: str, probes: DeviceProbes) -> None:
    """Refuse option combinations that cannot load here, before touching any weights.

    Raises
    ------
    UnsupportedFeatureError
        For bitsandbytes quantization or flash-attention off CUDA.
    MissingDependencyError
        When bitsandbytes or flash-attn is needed but not installed.
    """
    on_cuda = device.startswith("cuda")
    if hf.quantization != "none":
        if not on_cuda:
            raise UnsupportedFeatureError(
                "hf",
                f"quantization={hf.quantization}",
                f"bitsandbytes {hf.quantization} weights need a CUDA GPU and the device is "
                f"{device}; set QWEN_HF__QUANTIZATION=none, or use the ollama backend for "
                "quantized inference on this machine",
            )
        if not probes.module_available("bitsandbytes"):
            raise MissingDependencyError(
                f"quantization={hf.quantization} needs bitsandbytes, which is not installed; "
                "pip install bitsandbytes (or set QWEN_HF__QUANTIZATION=none)"
            )
    if hf.attn_implementation == "flash_attention_2":
        if not on_cuda:
            raise UnsupportedFeatureError(
                "hf",
                "attn_implementation=flash_attention_2",
                f"flash-attention runs on CUDA only and the device is {device}; set "
                "QWEN_HF__ATTN_IMPLEMENTATION=sdpa",
            )
        if not probes.module_available("flash_attn"):
            raise MissingDependencyError(
                "attn_implementation=flash_attention_2 needs the flash-attn package, which is not "
                "installed; pip install flash-attn --no-build-isolation, or set "
                "QWEN_HF__ATTN_IMPLEMENTATION=sdpa"
            )


def estimated_load_bytes(parameters: int, weight_format: str) -> int:
    """Peak bytes of loading ``parameters`` in ``weight_format`` and generating: the weights
    plus 1 GiB (within 15 % of the measured peak for Qwen3-4B in float32 and bfloat16).

    ``weight_format`` is a dtype name or ``"4bit"``/``"8bit"``.
    """
    return int(parameters * _BYTES_PER_PARAMETER[weight_format] + _RUNTIME_BYTES)


def memory_warning(
    parameters: int, weight_format: str, device: str, free_bytes: int | None
) -> str | None:
    """The warning text when ``parameters`` in ``weight_format`` will not fit ``free_bytes``.

    ``weight_format`` is a dtype name or ``"4bit"``/``"8bit"``; ``None`` means it fits (or the
    free memory is unknown).
    """
    if free_bytes is None:
        return None
    needed = estimated_load_bytes(parameters, weight_format)
    if needed <= free_bytes:
        return None
    if device == "cpu":
        advice = "use a machine with more RAM, a GPU, or the ollama backend (quantized)"
    elif weight_format == "float32":
        advice = "set QWEN_HF__DTYPE=bfloat16 (or float16) to halve it"
    elif device.startswith("cuda") and weight_format not in ("4bit",):
        advice = "set QWEN_HF__QUANTIZATION=4bit (bitsandbytes) or free the GPU"
    else:
        advice = "free memory on the device, or set QWEN_HF__DEVICE=cpu"
    return (
        f"the model has {parameters / 1e9:.2f}B parameters: about {needed / _GIB:.1f} GiB in "
        f"{weight_format} with working room, but only {free_bytes / _GIB:.1f} GiB is free on "
        f"{device}; loading may fail or swap; {advice}"
    )


# -- load-time helpers ------------------------------------------------------------------------


def count_parameters(config: Any, trust_remote_code: bool) -> int:
    """Parameters of the model ``config`` describes, counted on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return sum(parameter.numel() for parameter in skeleton.parameters())


def bitsandbytes_config(quantization: str, dtype: str) -> Any:
    """The ``BitsAndBytesConfig`` for ``quantization`` (``"4bit"``: NF4 with double
    quantization, computing in ``dtype``; ``"8bit"``: LLM.int8)."""
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, dtype),
    )
