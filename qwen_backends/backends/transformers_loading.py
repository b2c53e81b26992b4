"""Loading Qwen3-4B with transformers, for the hf backend (and what its errors mean).

:func:`load_model` reads ``settings.model_name`` (a hub id or a local directory) with the
revision, ``local_files_only``, the token, safetensors-only weights unless
``trust_remote_code``, the resolved device and dtype
(:func:`~qwen_backends.backends.torch_devices.resolve_device`,
:func:`~qwen_backends.backends.torch_devices.resolve_dtype`), the attention kernel, optional
bitsandbytes 4/8-bit weights (CUDA only) and YaRN rope scaling. Every loading failure is
translated in :func:`translating_load_errors`, the one choke point, into an error that names the
cause and its fix (:func:`local_load_error` for a local checkpoint directory).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen_backends.backends.torch_devices import (
    DeviceProbes,
    LowMemoryWarning,
    bitsandbytes_config,
    check_load_options,
    count_parameters,
    memory_warning,
    resolve_device,
    resolve_dtype,
)
from qwen_backends.errors import (
    BackendUnavailableError,
    MissingDependencyError,
    ModelNotFoundError,
    QwenBackendsError,
    first_line,
)
from qwen_backends.family import FAMILIES
from qwen_backends.models import hub_hint, hub_offline, looks_like_path
from qwen_backends.settings import YARN_FACTOR, HFSettings
from qwen_backends.thinking import template_mode

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from qwen_backends.settings import Settings

__all__ = ["load_model", "local_load_error", "translating_load_errors", "vocab_rows"]


def load_model(
    settings: Settings, probes: DeviceProbes
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` of ``settings.model_name`` with transformers.

    The tokenizer's template is checked (a thinking-only or foreign template is refused) and the
    memory the weights need is compared with what the device has
    (:class:`~qwen_backends.backends.torch_devices.LowMemoryWarning`) before any weight loads.
    Every failure is translated by :func:`translating_load_errors`.
    """
    hf = settings.hf
    source = settings.model_name
    if looks_like_path(source):
        if not Path(source).expanduser().is_dir():
            raise ModelNotFoundError(
                f"model directory {source!r} does not exist; fix the path in QWEN_MODEL / "
                f"--model, or give a hub id such as {FAMILIES[settings.family].hf}"
            )
        source = str(Path(source).expanduser())
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(hf.device, probes)
    dtype = resolve_dtype(hf.dtype, device, probes)
    check_load_options(hf, device, probes)
    common: dict[str, Any] = {
        "revision": hf.revision,
        "local_files_only": hf.local_files_only,
        "token": hf.token.get_secret_value() if hf.token is not None else None,
        "trust_remote_code": hf.trust_remote_code,
    }
    with translating_load_errors(source, hf):
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        # A thinking-only or foreign template is refused before gigabytes of weights load.
        template_mode(tokenizer)
        config = AutoConfig.from_pretrained(source, **common)
        if hf.yarn:
            apply_yarn(config, hf.max_context)
        weight_format = dtype if hf.quantization == "none" else hf.quantization
        message = memory_warning(
            count_parameters(config, hf.trust_remote_code),
            weight_format,
            device,
            probes.free_memory(device),
        )
        if message:
            warnings.warn(message, LowMemoryWarning, stacklevel=5)
        options: dict[str, Any] = {
            "config": config,
            "dtype": getattr(torch, dtype),
            "attn_implementation": hf.attn_implementation,
            # safetensors only, unless the user trusts the repository's code anyway
            "use_safetensors": None if hf.trust_remote_code else True,
        }
        if hf.quantization != "none":
            options["quantization_config"] = bitsandbytes_config(hf.quantization, dtype)
        if device.startswith("cuda"):
            options["device_map"] = {"": device}
        model = AutoModelForCausalLM.from_pretrained(source, **common, **options)
        if "device_map" not in options:
            model.to(torch.device(device))  # type: ignore[arg-type]
    return model, tokenizer


@contextlib.contextmanager
def translating_load_errors(source: str, hf: HFSettings) -> Iterator[None]:
    """The one place loading failures become :mod:`qwen_backends.errors` types."""
    try:
        yield
    except QwenBackendsError:
        raise
    except ImportError as exc:
        raise MissingDependencyError(
            f"loading {source!r} needs a package that is not installed ({first_line(exc)}); "
            "pip install 'qwen-backends[hf]' (and bitsandbytes / flash-attn if you enabled them)"
        ) from exc
    except (OSError, ValueError, KeyError) as exc:
        detail = first_line(exc)
        if Path(source).is_dir():  # a local checkpoint: hub, network and cache hints are wrong
            raise local_load_error(Path(source), exc, pickles_allowed=hf.trust_remote_code) from exc
        offline = hub_offline(hf.local_files_only)
        if isinstance(exc, KeyError) or "does not recognize this architecture" in detail:
            raise ModelNotFoundError(
                f"transformers cannot build {source!r} ({detail}); Qwen3 needs transformers "
                ">= 4.51: pip install -U 'qwen-backends[hf]'"
            ) from exc
        if "safetensors" in detail and not hf.trust_remote_code:
            hint = (
                "only safetensors weights are loaded by default; convert the checkpoint to "
                "safetensors, or set QWEN_HF__TRUST_REMOTE_CODE=true if you trust its files"
            )
        else:
            hint = hub_hint(source, "QWEN_HF", offline=offline)
        raise ModelNotFoundError(f"cannot load model {source!r} ({detail}); {hint}") from exc
    except RuntimeError as exc:
        if "out of memory" not in str(exc).lower() and Path(source).is_dir():
            raise local_load_error(Path(source), exc, pickles_allowed=hf.trust_remote_code) from exc
        if "out of memory" in str(exc).lower():
            raise BackendUnavailableError(
                f"ran out of memory loading {source!r}; use a smaller dtype "
                "(QWEN_HF__DTYPE=bfloat16), QWEN_HF__QUANTIZATION=4bit on CUDA, or another device",
                retryable=False,
            ) from exc
        raise ModelNotFoundError(
            f"cannot load model {source!r} ({first_line(exc)}); check that it is a Qwen3 "
            "checkpoint that transformers can read"
        ) from exc
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":  # safetensors' own error is no OSError
            raise
        if Path(source).is_dir():
            raise local_load_error(Path(source), exc, pickles_allowed=hf.trust_remote_code) from exc
        raise ModelNotFoundError(
            f"the weights of {source!r} are damaged ({first_line(exc)}); delete its folder from "
            "the Hugging Face cache (~/.cache/huggingface/hub) and download it again"
        ) from exc


def local_load_error(
    directory: Path, exc: BaseException, *, pickles_allowed: bool = False
) -> ModelNotFoundError:
    """Say what is wrong with a local checkpoint directory that failed to load.

    ``pickles_allowed``: ``*.bin`` weights may load (``trust_remote_code``).
    """
    detail = first_line(exc)
    fix = "copy or download the checkpoint again"
    if isinstance(exc, PermissionError):
        name = getattr(exc, "filename", None) or directory
        return ModelNotFoundError(
            f"cannot read {name} ({exc.strerror}); check the permissions of the model directory "
            f"{directory}"
        )
    config = directory / "config.json"
    if not config.is_file():
        return ModelNotFoundError(
            f"{directory} holds no model (no config.json); point QWEN_MODEL / --model at a Qwen3 "
            "checkpoint directory (config.json, tokenizer files, *.safetensors), or give a hub id"
        )
    try:
        json.loads(config.read_bytes())
    except PermissionError as problem:
        return ModelNotFoundError(
            f"cannot read {config} ({problem.strerror}); check its permissions"
        )
    except (OSError, ValueError) as problem:
        return ModelNotFoundError(
            f"{config} is damaged or truncated ({first_line(problem)}); {fix}"
        )
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    if not any((directory / name).is_file() for name in tokenizer_files):
        return ModelNotFoundError(
            f"{directory} holds no tokenizer (no tokenizer.json or tokenizer_config.json); copy "
            "Qwen3-4B's tokenizer files into it"
        )
    lowered = detail.lower()
    if "tokenizer" in lowered and not (directory / "tokenizer.json").is_file():
        return ModelNotFoundError(
            f"{directory} lacks tokenizer.json (Qwen3's tokenizer and its added tokens such as "
            "<|im_end|> live there); copy it from Qwen3-4B's tokenizer files"
        )
    if "tokenizer" in lowered:
        return ModelNotFoundError(
            f"the tokenizer files in {directory} cannot be loaded ({detail}); {fix}"
        )
    safetensors = [path for path in directory.glob("*.safetensors") if path.is_file()]
    pickles = [path for path in directory.glob("*.bin") if path.is_file()]
    if not safetensors and not pickles:
        return ModelNotFoundError(f"{directory} has no weight files (*.safetensors); {fix}")
    if pickles and not safetensors and not pickles_allowed:
        return ModelNotFoundError(
            f"{directory} holds only pickle weights ({pickles[0].name}), which are not loaded by "
            "default; re-save it with save_pretrained(DIR, safe_serialization=True), or set "
            "QWEN_HF__TRUST_REMOTE_CODE=true if you trust its files"
        )
    if "permission denied" in lowered:
        return ModelNotFoundError(
            f"cannot read the weights in {directory} ({detail}); check the files' permissions"
        )
    if any(word in lowered for word in ("safetensor", "deserializ", "header", "incomplete")):
        return ModelNotFoundError(
            f"the weights in {directory} are damaged or truncated ({detail}); {fix}"
        )
    return ModelNotFoundError(
        f"cannot load the model in {directory} ({detail}); check that it is a complete Qwen3 "
        f"checkpoint, or {fix}"
    )


def apply_yarn(config: Any, native: int) -> None:
    """Turn on YaRN (factor 4) on a loaded config, keeping its rope_theta."""
    yarn = {
        "rope_type": "yarn",
        "factor": YARN_FACTOR,
        "original_max_position_embeddings": native,
    }
    if hasattr(config, "rope_parameters"):
        config.rope_parameters = {**(config.rope_parameters or {}), **yarn}
    else:  # transformers < 5 keeps rope_theta outside the scaling dict
        config.rope_scaling = yarn


def vocab_rows(model: Any) -> int:
    """Logit rows of ``model`` (151,936 for Qwen3: more than the tokenizer's 151,669)."""
    embeddings = model.get_output_embeddings()
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return int(embeddings.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)
