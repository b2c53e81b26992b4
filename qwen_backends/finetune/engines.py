"""The two fine-tuning engines: how the model is loaded, given LoRA, merged and exported.

Everything else (data, rendering, labels, trainer, checkpoints, the Modelfile) is shared by
:mod:`qwen_backends.finetune.pipeline`. An engine only answers:

- :meth:`Engine.load` -- the base model and its tokenizer;
- :meth:`Engine.add_lora` -- the model with trainable LoRA adapters;
- :meth:`Engine.trainer_flags` -- mixed precision and gradient checkpointing for the trainer;
- :meth:`Engine.save_merged` -- adapters merged into 16-bit weights, saved with the tokenizer;
- :meth:`Engine.export_gguf` -- GGUF files (peft: llama.cpp's converter and quantizer via
  :mod:`qwen_backends.export.gguf`; unsloth: Unsloth's own tooling).

``unsloth`` (:class:`UnslothEngine`) needs an NVIDIA, AMD or Intel GPU and imports Unsloth before
anything else it patches. ``peft`` (:class:`PeftEngine`) is plain transformers + PEFT and runs on
CPU or GPU.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from qwen_backends.errors import ConfigurationError, first_line
from qwen_backends.models import looks_like_path
from qwen_backends.registry import ENGINES

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from qwen_backends.finetune.config import FinetuneConfig

__all__ = ["ENGINES", "Engine", "PeftEngine", "UnslothEngine", "create_engine", "engine_class"]


class Engine(ABC):
    """How one fine-tuning engine loads, adapts and saves the model.

    Parameters
    ----------
    config
        The run's configuration.
    """

    #: ``engine:`` value in the config (its key in :data:`qwen_backends.registry.ENGINES`).
    name: ClassVar[str]

    def __init__(self, config: FinetuneConfig) -> None:
        self.config = config

    @abstractmethod
    def load(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The base model and its tokenizer."""

    @abstractmethod
    def add_lora(self, model: PreTrainedModel) -> PreTrainedModel:
        """Wrap ``model`` with trainable LoRA adapters from ``config.lora``."""

    @abstractmethod
    def trainer_flags(self) -> dict[str, bool]:
        """``bf16``, ``fp16`` and ``gradient_checkpointing`` for the trainer's arguments."""

    @abstractmethod
    def save_merged(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path
    ) -> Path:
        """Merge the adapters into the weights and save model + tokenizer to ``directory``."""

    def export_gguf(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path
    ) -> list[Path]:
        """Write GGUF files; engines without a converter refuse."""
        raise ConfigurationError(
            f"the {self.name} engine cannot write GGUF files; use engine: unsloth on a GPU, or "
            "import the merged folder into Ollama directly (see docs/finetuning.md)"
        )

    @abstractmethod
    def check_training_options(self) -> None:
        """Refuse what this engine cannot run here, before anything is loaded."""


class PeftEngine(Engine):
    """Plain transformers + PEFT: CPU, CUDA or Apple MPS, full-precision base weights."""

    name = "peft"

    def check_training_options(self) -> None:
        """Reject 8-bit / paged optimizers without CUDA (they need bitsandbytes on a GPU)."""
        import torch

        optim = self.config.training.optim
        if ("8bit" in optim or "paged" in optim) and not torch.cuda.is_available():
            raise ConfigurationError(
                f"training.optim={optim!r} needs bitsandbytes on a CUDA GPU; on this machine "
                "use optim: adamw_torch"
            )

    def _dtype(self) -> torch.dtype:
        import torch

        if self.config.dtype != "auto":
            dtype: torch.dtype = getattr(torch, self.config.dtype)
            return dtype
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32

    def load(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """Load with ``AutoModelForCausalLM`` / ``AutoTokenizer``."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from qwen_backends.errors import ModelNotFoundError

        source = self.config.model_name
        if looks_like_path(source) and not Path(source).expanduser().is_dir():
            raise ModelNotFoundError(
                f"model folder {source!r} does not exist; fix model: in the config (or "
                f"--model), or build the tiny test checkpoint there with: "
                f"qwen-backends make-test-model {source}"
            )
        token = self.config.token.get_secret_value() if self.config.token else None
        try:
            source = str(Path(source).expanduser())
            tokenizer = AutoTokenizer.from_pretrained(source, token=token)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=self._dtype(), token=token)
        except OSError as exc:
            raise ModelNotFoundError(
                f"cannot load {self.config.model_name!r} ({first_line(exc)}); check the model id "
                "or folder, and HF_TOKEN for gated models"
            ) from exc
        return model, tokenizer

    def add_lora(self, model: PreTrainedModel) -> PreTrainedModel:
        """``peft.get_peft_model`` with the config's LoRA settings (seeded initialisation)."""
        from peft import LoraConfig, get_peft_model
        from transformers import set_seed

        lora = self.config.lora
        set_seed(self.config.training.seed)
        peft_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            bias=lora.bias,
            use_rslora=lora.use_rslora,
            task_type="CAUSAL_LM",
        )
        try:
            return get_peft_model(model, peft_config)  # type: ignore[return-value]
        except ValueError as exc:
            raise ConfigurationError(
                f"lora.target_modules {lora.target_modules} do not fit this model ({exc}); "
                "use names of its linear layers, e.g. q_proj, k_proj, v_proj, o_proj"
            ) from exc

    def trainer_flags(self) -> dict[str, bool]:
        """Mixed precision only on CUDA with half weights; the trainer does checkpointing."""
        import torch

        dtype = self._dtype()
        on_cuda = torch.cuda.is_available()
        return {
            "bf16": on_cuda and dtype == torch.bfloat16,
            "fp16": on_cuda and dtype == torch.float16,
            "gradient_checkpointing": self.config.training.gradient_checkpointing,
        }

    def save_merged(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path
    ) -> Path:
        """``merge_and_unload`` then ``save_pretrained`` in ``export.merged_dtype``."""
        import torch

        merged = model.merge_and_unload()  # type: ignore[operator]
        merged = merged.to(getattr(torch, self.config.export.merged_dtype))
        directory.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(str(directory))
        tokenizer.save_pretrained(str(directory))
        return directory

    def export_gguf(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path
    ) -> list[Path]:
        """One ``<ollama_name>.<QUANT>.gguf`` per ``export.gguf`` type, from the merged folder.

        Converts ``output_dir/merged`` (written just before) with llama.cpp's converter
        (:func:`qwen_backends.export.gguf.convert_to_gguf`); without ``export.merge`` the
        merged model is written to a temporary folder first.
        """
        import tempfile

        from qwen_backends.export.gguf import convert_to_gguf, gguf_file_name

        stem = self.config.export.ollama_name
        merged = directory.parent / "merged"
        with tempfile.TemporaryDirectory(prefix="merged-") as tmp:
            if not (merged / "config.json").is_file():
                merged = self.save_merged(model, tokenizer, Path(tmp))
            return [
                convert_to_gguf(merged, directory / gguf_file_name(stem, quant), quant)
                for quant in self.config.export.gguf
            ]


class UnslothEngine(Engine):
    """Unsloth's ``FastLanguageModel``: 4-bit QLoRA and fast kernels on a GPU."""

    name = "unsloth"

    def _fast_model(self) -> Any:
        from qwen_backends.backends.unsloth import import_unsloth

        return import_unsloth().FastLanguageModel

    def check_training_options(self) -> None:
        """Fail early, before any download, when there is no supported GPU."""
        from qwen_backends.backends.unsloth import require_gpu

        require_gpu()

    def load(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The unsloth backend's loader with the config's model, sequence length and bits."""
        from qwen_backends.backends.unsloth import load_unsloth_model

        return load_unsloth_model(
            self.config.model_name,
            max_seq_length=self.config.max_seq_length,
            dtype=self.config.dtype,
            load_in_4bit=self.config.load_in_4bit,
            token=self.config.token.get_secret_value() if self.config.token else None,
        )

    def add_lora(self, model: PreTrainedModel) -> PreTrainedModel:
        """``FastLanguageModel.get_peft_model`` (Unsloth's gradient checkpointing if asked)."""
        lora = self.config.lora
        checkpointing: str | bool = (
            "unsloth" if self.config.training.gradient_checkpointing else False
        )
        return self._fast_model().get_peft_model(
            model,
            r=lora.r,
            target_modules=list(lora.target_modules),
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            bias=lora.bias,
            use_gradient_checkpointing=checkpointing,
            random_state=self.config.training.seed,
            use_rslora=lora.use_rslora,
        )

    def trainer_flags(self) -> dict[str, bool]:
        """bf16 where the GPU supports it, else fp16; checkpointing is Unsloth's own."""
        from unsloth import is_bf16_supported

        bf16 = bool(is_bf16_supported())
        return {"bf16": bf16, "fp16": not bf16, "gradient_checkpointing": False}

    def save_merged(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path
    ) -> Path:
        """``save_pretrained_merged(..., save_method="merged_16bit")`` (dequantizes 4-bit)."""
        model.save_pretrained_merged(  # type: ignore[operator]
            str(directory), tokenizer, save_method="merged_16bit"
        )
        return directory

    def export_gguf(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path
    ) -> list[Path]:
        """``save_pretrained_gguf`` for every quantization in ``export.gguf``."""
        methods = [method.lower() for method in self.config.export.gguf]
        try:
            model.save_pretrained_gguf(  # type: ignore[operator]
                str(directory), tokenizer, quantization_method=methods
            )
        except Exception as exc:  # llama.cpp conversion fails in many ways; keep the cause
            from qwen_backends.errors import QwenBackendsError

            raise QwenBackendsError(
                f"GGUF conversion failed ({first_line(exc)}); the merged model in "
                f"{directory.parent / 'merged'} is intact: convert it with llama.cpp's "
                "convert_hf_to_gguf.py, or import the folder with ollama create"
            ) from exc
        # Recent Unsloth versions write to "<dir>_gguf"; older ones into <dir> itself.
        found = sorted(directory.glob("*.gguf")) + sorted(
            directory.with_name(directory.name + "_gguf").glob("*.gguf")
        )
        if not found:
            from qwen_backends.errors import QwenBackendsError

            raise QwenBackendsError(
                f"Unsloth reported no error but wrote no .gguf file under {directory}; convert "
                f"{directory.parent / 'merged'} with llama.cpp's convert_hf_to_gguf.py instead"
            )
        # The quantization listed first in export.gguf is the one the Modelfile uses.
        first = methods[0].replace("_", "").lower()
        found.sort(key=lambda path: first not in path.name.replace("_", "").lower())
        return found


def engine_class(name: str) -> type[Engine]:
    """The class of engine ``name``, its dependencies checked first (:meth:`Registry.resolve
    <qwen_backends.registry.Registry.resolve>` over :data:`~qwen_backends.registry.ENGINES`).

    Raises
    ------
    UnknownBackendError
        For an unregistered name (with a did-you-mean).
    MissingDependencyError
        When its pip extra is not installed.
    """
    cls: type[Engine] = ENGINES.resolve(name)
    return cls


def create_engine(config: FinetuneConfig) -> Engine:
    """The engine ``config.engine`` names, with its dependencies checked."""
    return engine_class(config.engine)(config)
