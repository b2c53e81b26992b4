"""The fine-tuning configuration: :class:`FinetuneConfig`, usually loaded from a YAML file.

One file describes a whole run: which engine (``unsloth`` on a GPU, ``peft`` anywhere), which
model, which data, the LoRA adapter, the trainer and what to export. Unknown keys and
out-of-range values are one-line :class:`~qwen_backends.errors.ConfigurationError` messages.
Relative ``data.path`` values are read relative to the YAML file's folder (so a config and its
data travel together); ``export.output_dir`` is relative to the working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from qwen_backends._files import load_yaml_mapping
from qwen_backends.errors import ConfigurationError
from qwen_backends.family import DEFAULT_FAMILY, FAMILIES, FamilyName
from qwen_backends.registry import ENGINES
from qwen_backends.sampling import validation_message
from qwen_backends.settings import Section, deep_merge

__all__ = [
    "ALL_PROJECTIONS",
    "DataConfig",
    "ExportConfig",
    "FinetuneConfig",
    "LoraConfigSection",
    "MLXExportConfig",
    "TrainingConfig",
    "load_config",
]

#: The seven linear projections of a Qwen3 decoder layer (attention and MLP).
ALL_PROJECTIONS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


class DataConfig(Section):
    """Where the training conversations come from (exactly one of ``path`` / ``hub_dataset``)."""

    path: str | None = Field(
        None,
        description="Local JSONL file: one object per line with 'messages' (role/content) or "
        "'conversations' (ShareGPT from/value). Relative to the config file's folder.",
    )
    hub_dataset: str | None = Field(
        None,
        description="A Hugging Face dataset id (ShareGPT or messages format), e.g. "
        "mlabonne/FineTome-100k; loaded with the datasets library.",
    )
    split: str = Field("train", description="Split of hub_dataset, e.g. 'train' or 'train[:500]'.")
    limit: int | None = Field(None, ge=1, description="Use at most this many conversations.")
    allow_control_tokens: bool = Field(
        False,
        description="Train on text holding Qwen3 control-token text such as <|im_end|> (it is "
        "tokenized as the real control token); off: such conversations are refused with FILE:LINE.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.path is None) == (self.hub_dataset is None):
            raise ValueError(
                "data: set exactly one of data.path (a local JSONL file) or data.hub_dataset"
            )
        return self


class LoraConfigSection(Section):
    """The LoRA adapter trained on top of the frozen model."""

    r: int = Field(16, ge=1, le=1024, description="Rank of the update matrices.")
    alpha: int = Field(16, ge=1, description="Scale numerator: updates are scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(ALL_PROJECTIONS),
        min_length=1,
        description="Module names that get adapters (default: all seven projections).",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train.")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r).")


class TrainingConfig(Section):
    """Trainer settings (TRL ``SFTTrainer``); names follow ``transformers.TrainingArguments``."""

    per_device_train_batch_size: int = Field(2, ge=1, description="Sequences per step per device.")
    gradient_accumulation_steps: int = Field(4, ge=1, description="Steps summed per update.")
    warmup_steps: int = Field(5, ge=0, description="Linear warm-up updates.")
    max_steps: int = Field(30, description="Optimizer updates; -1 means use num_train_epochs.")
    num_train_epochs: float = Field(1.0, gt=0, description="Epochs when max_steps is -1.")
    learning_rate: float = Field(2e-4, gt=0, le=1.0, description="Peak learning rate.")
    optim: str = Field(
        "adamw_torch",
        description="Optimizer name understood by transformers (adamw_8bit needs CUDA).",
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    lr_scheduler_type: str = Field("linear", description="linear, cosine, constant, ...")
    seed: int = Field(3407, ge=0, description="Seed of LoRA initialisation and data order.")
    logging_steps: int = Field(1, ge=1, description="Log the loss every this many updates.")
    save_steps: int | None = Field(
        None, ge=1, description="Write a checkpoint every this many updates (None: none)."
    )
    save_total_limit: int = Field(2, ge=1, description="Keep at most this many checkpoints.")
    resume_from_checkpoint: bool | str = Field(
        False, description="true: resume from the newest checkpoint; or a checkpoint folder."
    )
    gradient_checkpointing: bool = Field(
        False, description="Trade compute for memory (the unsloth engine uses its own variant)."
    )
    progress_bar: bool = Field(True, description="Show tqdm progress bars.")
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads during the run (None: torch's default). 1 is fastest for "
        "tiny models and on machines busy with other work.",
    )
    loss_examples: int = Field(
        16, ge=0, description="Examples used to measure the loss before and after (0: skip)."
    )

    @model_validator(mode="after")
    def _steps(self) -> TrainingConfig:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(
                f"training.max_steps={self.max_steps} is invalid; use a positive number of "
                "updates, or -1 to train for num_train_epochs"
            )
        return self


class MLXExportConfig(Section):
    """An MLX copy of the merged model (``export.mlx``), for the mlx backend on a Mac.

    Written to ``output_dir/mlx`` with mlx-lm's converter, then loaded with the mlx backend and
    checked against the merged model through the hf backend: identical prompt ids and greedy
    answers on the first ``check_examples`` training questions.
    """

    quant: Literal["4bit", "8bit", "none"] = Field(
        "4bit", description="Weights: 4bit (what Qwen publishes for MLX), 8bit, or none (float)."
    )
    group_size: Literal[32, 64, 128] = Field(
        64, description="Weights per quantization scale (32 for tiny test models)."
    )
    check_examples: int = Field(
        4, ge=0, description="Training questions answered through both backends (0: no check)."
    )
    min_agreement: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Fraction of checked answers that must be identical; quantized exports of "
        "long answers may need less.",
    )


class ExportConfig(Section):
    """What is written after training, all under ``output_dir``."""

    output_dir: str = Field("outputs/qwen3-finetune", description="Folder of every artefact.")
    save_adapter: bool = Field(True, description="Save the LoRA adapter to output_dir/lora.")
    merge: bool = Field(True, description="Merge the adapter and save to output_dir/merged.")
    merged_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16",
        description="Weight type of the merged model (peft engine; Unsloth writes 16-bit).",
    )
    gguf: list[str] = Field(
        default_factory=list,
        description="GGUF quantizations to write into output_dir/gguf, e.g. [q8_0, q4_k_m] "
        "(peft: llama.cpp's converter and quantizer; unsloth: Unsloth's tooling). The first "
        "one is what the Modelfile imports.",
    )
    verify_gguf: bool = Field(
        True,
        description="Load each GGUF with the llamacpp backend and check its template renders "
        "the training prompts, <|im_end|> ends answers, and trained answers come back greedy.",
    )
    verify_examples: int = Field(
        4, ge=0, description="How many trained answers the GGUF check asks for (0: none)."
    )
    modelfile: bool = Field(
        True, description="Write an Ollama Modelfile with the non-thinking template."
    )
    ollama_name: str = Field(
        "qwen3-finetuned", description="Model name suggested for `ollama create`."
    )
    num_ctx: int | None = Field(
        None, ge=1, description="PARAMETER num_ctx in the Modelfile (None: Ollama's default)."
    )
    mlx: MLXExportConfig | None = Field(
        None,
        description="Also write an MLX copy to output_dir/mlx, e.g. {quant: 4bit} (needs "
        "export.merge and the mlx extra).",
    )


class FinetuneConfig(BaseModel):
    """One fine-tuning run: engine, model, data, LoRA, trainer and export settings.

    Build it from YAML with :func:`load_config` or :meth:`from_yaml`, or directly with keyword
    arguments; :meth:`replace` returns a validated copy with nested changes.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    engine: str = Field(
        "unsloth",
        description="unsloth: Unsloth on an NVIDIA/AMD/Intel GPU; peft: plain transformers + "
        "PEFT + TRL (CPU or GPU).",
    )
    family: FamilyName = Field(
        DEFAULT_FAMILY,
        description="Qwen3-4B release whose Unsloth repo is the default base model: qwen3-4b "
        "(hybrid) or qwen3-4b-instruct-2507 (non-thinking only).",
    )
    model: str | None = Field(
        None, description="Hub id or local folder of the base model (default: the family's)."
    )
    max_seq_length: int = Field(2048, ge=8, description="Longer examples are truncated.")
    load_in_4bit: bool = Field(
        False, description="QLoRA: load the base in 4 bits (unsloth engine only)."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="Compute type; auto: half precision on a GPU, float32 on CPU.",
    )
    token: SecretStr | None = Field(None, description="Hugging Face token (else HF_TOKEN).")
    data: DataConfig
    lora: LoraConfigSection = Field(default_factory=LoraConfigSection)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigurationError(validation_message(exc, "fine-tuning config")) from None

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        # The names come from the engine registry, the one list of engines.
        if value not in ENGINES:
            raise ValueError(ENGINES.unknown(value))
        return value

    @model_validator(mode="after")
    def _engine_rules(self) -> FinetuneConfig:
        if self.engine == "peft" and self.load_in_4bit:
            raise ValueError(
                "load_in_4bit is only supported by the unsloth engine; set load_in_4bit: false "
                "for the peft engine (or engine: unsloth on a GPU)"
            )
        if self.engine == "peft":
            from qwen_backends.export.gguf import GGUF_TYPES

            unknown = [q for q in self.export.gguf if q.lower() not in GGUF_TYPES]
            if unknown:
                raise ValueError(
                    f"export.gguf has {', '.join(map(repr, unknown))}, which llama.cpp cannot "
                    f"write here; use some of {', '.join(GGUF_TYPES)}"
                )
        if self.export.mlx is not None and not self.export.merge:
            raise ValueError(
                "export.mlx converts the merged model; set export.merge: true (or remove "
                "export.mlx)"
            )
        if self.export.modelfile and not (self.export.merge or self.export.gguf):
            raise ValueError(
                "export.modelfile needs a model to point at; set export.merge: true or list "
                "export.gguf quantizations"
            )
        return self

    @property
    def model_name(self) -> str:
        """The base model: ``model`` if set, else the family's Unsloth repository."""
        return self.model or FAMILIES[self.family].unsloth

    @property
    def output_dir(self) -> Path:
        """``export.output_dir`` as a path."""
        return Path(self.export.output_dir)

    def replace(self, **changes: Any) -> FinetuneConfig:
        """Return a validated copy with ``changes`` merged in (nested dicts merge)."""
        merged = deep_merge(self.model_dump(), changes)
        if isinstance(merged.get("token"), SecretStr):
            merged["token"] = merged["token"].get_secret_value()
        return FinetuneConfig(**merged)

    @classmethod
    def from_yaml(cls, path: str | Path, **changes: Any) -> FinetuneConfig:
        """Load a config file; see :func:`load_config`."""
        return load_config(path, **changes)


def load_config(path: str | Path, **changes: Any) -> FinetuneConfig:
    """Read a fine-tuning YAML file into a :class:`FinetuneConfig`.

    Parameters
    ----------
    path
        The YAML file. A relative ``data.path`` inside it is resolved against its folder.
    **changes
        Values that replace the file's (nested dicts merge), e.g. ``training={"max_steps": 5}``.

    Raises
    ------
    ConfigurationError
        If the file is missing, is not a YAML mapping, or holds an invalid value.
    """
    config_path = Path(path)
    if not config_path.exists():
        raise ConfigurationError(f"fine-tuning config {config_path} does not exist; check the path")
    raw = load_yaml_mapping(config_path, "fine-tuning config", "engine:, model:, data:, ...")
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        data_path = Path(data["path"]).expanduser()
        if not data_path.is_absolute():
            data["path"] = str((config_path.parent / data_path).resolve())
    return FinetuneConfig(**deep_merge(raw, changes))
