"""What a model needs in memory: weights, KV cache and working room, from its shape.

Used by ``qwen-backends info`` (what each in-process backend would need on this machine) and by
the hf backend's :class:`~qwen_backends.backends.torch_devices.LowMemoryWarning`. The shape comes
from the model's own files (``config.json``, a GGUF header, MLX safetensors); a hub id that is not
on disk is taken to be Qwen3-4B (:data:`QWEN3_4B`), the model every family of this project has.

The figures were checked against measured peaks at Qwen3-4B's real size (docs/benchmarks.md,
``benchmarks/bench_real_size.py``). :func:`release_free_heap` hands freed C-heap pages back after
work done on a thread of its own.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "QWEN3_4B",
    "MemoryNeed",
    "ModelShape",
    "backend_need",
    "check_finetune_memory",
    "config_shape",
    "describe_need",
    "finetune_need",
    "gguf_shape",
    "kv_cache_bytes",
    "lora_parameters",
    "read_config",
    "release_free_heap",
]

GIB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    """What decides a Qwen3 model's memory: its parameters and its KV cache geometry.

    Attributes
    ----------
    parameters
        Weights, a tied embedding counted once.
    layers, kv_heads, head_dim
        Transformer blocks, key/value heads per block, width of one head.
    """

    parameters: int
    layers: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """The shape of a dense Qwen3 ``config.json`` (the parameters counted from its sizes).

        Raises
        ------
        KeyError
            When a size is missing (not a Qwen2/Qwen3-style config).
        """
        hidden, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        vocabulary, inner = int(config["vocab_size"]), int(config["intermediate_size"])
        attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
        # Two RMSNorms per block, and Qwen3's per-head q/k norms.
        block = attention + 3 * hidden * inner + 2 * hidden + 2 * head_dim
        embeddings = vocabulary * hidden * (1 if config.get("tie_word_embeddings", True) else 2)
        return cls(embeddings + layers * block + hidden, layers, kv_heads, head_dim)


#: The sizes in Qwen/Qwen3-4B's config.json (the 2507 releases have the same).
QWEN3_4B_CONFIG: dict[str, Any] = {
    "hidden_size": 2560,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 9728,
    "vocab_size": 151_936,
    "tie_word_embeddings": True,
}
#: Qwen3-4B: 4,022,468,096 parameters, 36 layers, 8 KV heads of 128.
QWEN3_4B = ModelShape.from_config(QWEN3_4B_CONFIG)


def kv_cache_bytes(shape: ModelShape, tokens: int, bytes_per_value: int = 2) -> int:
    """Bytes of a KV cache for ``tokens`` positions (keys and values, every layer; f16: 2).

    Qwen3-4B: 144 KiB a token, 4.5 GiB at its native 32,768 tokens.
    """
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * bytes_per_value * tokens


def read_config(model_dir: Path) -> dict[str, Any] | None:
    """``model_dir/config.json`` (its text part), or ``None`` when missing or unreadable."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    # Multimodal configs nest the language model's.
    text = config.get("text_config", config)
    return text if isinstance(text, dict) else None


def config_shape(model_dir: Path) -> ModelShape | None:
    """The shape from ``model_dir/config.json``, or ``None`` when it is missing or foreign."""
    config = read_config(model_dir)
    try:
        return ModelShape.from_config(config) if config is not None else None
    except (KeyError, TypeError, ValueError):
        return None


# -- GGUF header ---------------------------------------------------------------------------------

#: GGUF value types with a fixed size -> struct code.
_SCALARS = {
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"
}  # fmt: skip
_STRING, _ARRAY = 8, 9


def gguf_shape(path: Path) -> ModelShape | None:
    """The KV geometry in a GGUF file's header (``<arch>.block_count`` ...), the parameters
    approximated by nothing (0: a GGUF's weight bytes are its file size); ``None`` if unreadable.
    """
    wanted = ("block_count", "attention.head_count_kv", "attention.key_length")
    found: dict[str, int] = {}
    try:
        with path.open("rb") as file:
            if file.read(4) != b"GGUF":
                return None
            _version, _tensors, count = struct.unpack("<IQQ", file.read(20))
            for _ in range(count):
                key = _read_string(file)
                kind = struct.unpack("<I", file.read(4))[0]
                value = _read_value(file, kind)
                suffix = key.partition(".")[2]
                if suffix in wanted and isinstance(value, int):
                    found[suffix] = value
                if len(found) == len(wanted):
                    break
    except (OSError, struct.error, UnicodeDecodeError, KeyError):
        return None
    if len(found) != len(wanted):
        return None
    return ModelShape(0, *(found[key] for key in wanted))


def _read_string(file: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", file.read(8))
    return file.read(length).decode("utf-8")


def _read_value(file: BinaryIO, kind: int) -> object:
    if kind == _STRING:
        return _read_string(file)
    if kind == _ARRAY:
        item_kind, length = struct.unpack("<IQ", file.read(12))
        if item_kind in _SCALARS:  # skipped in one seek: only the block's size matters
            file.seek(length * struct.calcsize("<" + _SCALARS[item_kind]), 1)
        else:
            for _ in range(length):
                _read_value(file, item_kind)
        return None
    code = "<" + _SCALARS[kind]
    (value,) = struct.unpack(code, file.read(struct.calcsize(code)))
    return value


# -- what a backend would need here ----------------------------------------------------------------

#: Weight bytes of Qwen3-4B's default downloads, measured on real-shape exports made here
#: (llama.cpp Q4_K_M, MLX 4-bit with group size 64).
_DEFAULT_WEIGHTS = {"llamacpp": 2.33 * GIB, "mlx": 2.11 * GIB}
#: What a process needs beyond weights and KV cache: the runtime, the tokenizer, llama.cpp's
#: compute buffers and logits (measured peaks at real size minus weights and cache).
_RUNTIME = {"llamacpp": 0.9 * GIB, "mlx": 0.9 * GIB, "peft": 1.0 * GIB}


@dataclass(frozen=True)
class MemoryNeed:
    """An estimate of the memory a backend needs, and what is free where it would run.

    Attributes
    ----------
    needed
        Bytes the process would need at its peak.
    available
        Bytes free on the device it would use (``None``: unknown).
    detail
        What the estimate is made of, in words.
    """

    needed: int
    available: int | None
    detail: str

    def describe(self) -> str:
        """One line for ``info``: the need, what it is made of, and whether it fits."""
        text = f"needs ~{self.needed / GIB:.1f} GiB ({self.detail})"
        if self.available is None:
            return text
        verdict = "fits" if self.needed <= self.available else "does NOT fit"
        return f"{text}; {self.available / GIB:.1f} GiB available here: {verdict}"


def backend_need(name: str, settings: Any) -> MemoryNeed | None:
    """What in-process backend ``name`` would need with ``settings`` on this machine.

    ``None`` for server backends (the server holds the model) and for unsloth (GPU only; its
    4-bit weights are loaded by Unsloth). Never loads a model: the shape comes from the model's
    files, or Qwen3-4B's for a hub id.
    """
    source = settings.model_name if settings.backend == name else settings.default_model(name)
    local = Path(str(source)).expanduser()
    if name == "hf":
        return _hf_need(settings, local)
    if name == "llamacpp":
        shape = (gguf_shape(local) if local.is_file() else None) or QWEN3_4B
        weights = local.stat().st_size if local.is_file() else _DEFAULT_WEIGHTS[name]
        return _cached_need(name, weights, shape, settings.llamacpp.n_ctx, "n_ctx")
    if name == "mlx":
        shape = (config_shape(local) if local.is_dir() else None) or QWEN3_4B
        files = list(local.glob("*.safetensors")) if local.is_dir() else []
        weights = sum(f.stat().st_size for f in files) if files else _DEFAULT_WEIGHTS[name]
        return _cached_need(name, weights, shape, settings.mlx.max_context, "max_context")
    return None


def _cached_need(
    name: str, weights: float, shape: ModelShape, tokens: int, setting: str
) -> MemoryNeed:
    from qwen_backends.backends.torch_devices import free_memory

    cache = kv_cache_bytes(shape, tokens)
    runtime = _RUNTIME[name]
    detail = (
        f"weights {weights / GIB:.1f} + KV cache {cache / GIB:.1f} at {setting}={tokens:,} "
        f"+ runtime {runtime / GIB:.1f}"
    )
    return MemoryNeed(int(weights + cache + runtime), free_memory("cpu"), detail)


def _hf_need(settings: Any, local: Path) -> MemoryNeed:
    from qwen_backends.backends.torch_devices import (
        DeviceProbes,
        estimated_load_bytes,
        resolve_device,
        resolve_dtype,
    )

    hf = settings.hf
    probes = DeviceProbes.detect()
    device = resolve_device(hf.device, probes)
    weight_format = (
        resolve_dtype(hf.dtype, device, probes) if hf.quantization == "none" else hf.quantization
    )
    shape = (config_shape(local) if local.is_dir() else None) or QWEN3_4B
    needed = estimated_load_bytes(shape.parameters, weight_format)
    detail = f"{shape.parameters / 1e9:.2f}B parameters in {weight_format} on {device}"
    return MemoryNeed(needed, probes.free_memory(device), detail)


def describe_need(name: str, settings: Any) -> str | None:
    """:meth:`MemoryNeed.describe` of :func:`backend_need` for ``info`` (``None``: not
    applicable); a setting that cannot resolve here is reported, not raised."""
    from qwen_backends.errors import QwenBackendsError

    try:
        need = backend_need(name, settings)
    except QwenBackendsError as exc:
        return f"cannot estimate: {exc}"
    return need.describe() if need else None


# -- LoRA fine-tuning with the peft engine -------------------------------------------------------

#: Bytes per trainable LoRA parameter: float32 weight, gradient and AdamW's two moments.
_LORA_STATE_BYTES = 16
#: Activations kept for the backward pass, in elements per token per layer, as multiples of
#: ``hidden_size`` and ``intermediate_size`` (norm inputs, q/k/v/attention outputs, the MLP's four
#: intermediate-wide tensors, and the LoRA inputs beside them).
_ACTIVATION_HIDDEN, _ACTIVATION_INNER = 12, 5
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def lora_parameters(config: Mapping[str, Any], rank: int, targets: list[str]) -> int:
    """Trainable parameters of rank-``rank`` adapters on the ``targets`` projections."""
    hidden, inner = int(config["hidden_size"]), int(config["intermediate_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    kv = int(config.get("num_key_value_heads") or heads) * head_dim
    widths = {
        "q_proj": hidden + heads * head_dim,
        "k_proj": hidden + kv,
        "v_proj": hidden + kv,
        "o_proj": heads * head_dim + hidden,
        "gate_proj": hidden + inner,
        "up_proj": hidden + inner,
        "down_proj": inner + hidden,
    }
    per_layer = sum(widths.get(name, 0) for name in targets)
    return int(config["num_hidden_layers"]) * rank * per_layer


def finetune_need(config: Any, dtype: str, available: int | None) -> MemoryNeed:
    """Peak memory of a peft-engine run of ``config`` (a ``FinetuneConfig``) in ``dtype``.

    The larger of two stages: training (base weights, LoRA weights with gradients and AdamW
    state, activations of a batch of ``per_device_train_batch_size`` x ``max_seq_length`` tokens
    -- only layer inputs with gradient checkpointing -- and the runtime) and, when GGUFs are
    checked against the merged model, the merged model loaded a second time by the hf backend
    (float32 on a CPU) while the trained one is still in memory. The shape comes from the
    model's config.json, or Qwen3-4B's for a hub id.
    """
    local = Path(str(config.model_name)).expanduser()
    model_config = (read_config(local) if local.is_dir() else None) or QWEN3_4B_CONFIG
    shape = ModelShape.from_config(model_config)
    element = _DTYPE_BYTES[dtype]
    weights = shape.parameters * element
    lora = lora_parameters(model_config, config.lora.r, list(config.lora.target_modules))
    tokens = config.training.per_device_train_batch_size * config.max_seq_length
    hidden, inner = int(model_config["hidden_size"]), int(model_config["intermediate_size"])
    per_layer = (
        hidden
        if config.training.gradient_checkpointing
        else _ACTIVATION_HIDDEN * hidden + _ACTIVATION_INNER * inner
    )
    activations = tokens * shape.layers * per_layer * element
    runtime = _RUNTIME["peft"]
    training = weights + lora * _LORA_STATE_BYTES + activations + runtime
    export = config.export
    checked = bool(export.gguf) and export.verify_gguf and export.merge
    reference = weights + shape.parameters * 4 + runtime if checked else 0
    detail = (
        f"{shape.parameters / 1e9:.2f}B parameters in {dtype}: weights {weights / GIB:.1f} + "
        f"LoRA state {lora * _LORA_STATE_BYTES / GIB:.1f} + activations of {tokens:,} tokens "
        f"{activations / GIB:.1f} + runtime {runtime / GIB:.1f} GiB"
        + (
            f"; checking the GGUF loads the merged model again: {reference / GIB:.1f} GiB"
            if checked
            else ""
        )
    )
    return MemoryNeed(int(max(training, reference)), available, detail)


def check_finetune_memory(config: Any) -> None:
    """Refuse a peft-engine run on the CPU that cannot fit, before any weights load.

    Raises
    ------
    ConfigurationError
        Naming the memory the run would need, what is available, and what to change.
    """
    import torch

    from qwen_backends.backends.torch_devices import free_memory
    from qwen_backends.errors import ConfigurationError
    from qwen_backends.models import looks_like_path

    if config.engine != "peft" or torch.cuda.is_available():
        return  # the unsloth engine and GPU runs manage their own memory
    source = str(config.model_name)
    if looks_like_path(source) and not Path(source).expanduser().is_dir():
        return  # loading reports the missing folder and how to build the test checkpoint
    dtype = "float32" if config.dtype == "auto" else config.dtype
    need = finetune_need(config, dtype, free_memory("cpu"))
    if need.available is None or need.needed <= need.available:
        return
    raise ConfigurationError(
        f"this fine-tune would need ~{need.needed / GIB:.1f} GiB of RAM but "
        f"{need.available / GIB:.1f} GiB is available ({need.detail}); set dtype: bfloat16, "
        "lower max_seq_length or training.per_device_train_batch_size, set "
        "training.gradient_checkpointing: true, or export.verify_gguf: false"
    )


def release_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere
    nothing).

    glibc gives each thread that allocates its own arena and keeps freed blocks resident there.
    The hf backend decodes on a thread of its own and the work ahead for a next turn runs on
    another, so the activations and KV states they free stay resident beside the arenas of the
    threads that come next: over 200 calls of the bench checkpoint peak RSS grew 66 MiB with
    the prompt cache off and 142 MiB with a 16 MiB cache, against 0 and 0 with this called at
    the end of each (1.9 ms median a call; docs/benchmarks.md).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where the C library has none."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        function: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc, or no C library found
        return None
    return function
