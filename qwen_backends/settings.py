"""Settings: one object, passed explicitly, that says which backend runs which model how.

Sources, highest precedence first:

1. keyword arguments (``Settings(backend="ollama")``, ``create_backend(model=...)``);
2. environment variables with the ``QWEN_`` prefix, ``__`` between nesting levels
   (``QWEN_BACKEND=ollama``, ``QWEN_HF__DTYPE=float16``, ``QWEN_SAMPLING__TEMPERATURE=0``);
3. a ``.env`` file in the working directory (same names);
4. a YAML file: ``QWEN_CONFIG`` if set (it must exist), else ``configs/default.yaml`` when
   the working directory has one;
5. the defaults below.

``QWEN_MODEL`` (or ``model=``) replaces the model of whichever backend is selected; backends
read :attr:`Settings.model_name`. Thinking mode
cannot be switched on from any source: ``QWEN_ENABLE_THINKING=true`` is an error.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from qwen_backends.errors import ConfigurationError, ThinkingModeError, did_you_mean
from qwen_backends.registry import BACKENDS
from qwen_backends.sampling import SamplingParams, validation_message
from qwen_backends.thinking import reject_thinking

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "INSTRUCT_MODEL",
    "OLLAMA_NON_THINKING_TAGS",
    "EvaluationSettings",
    "HFSettings",
    "OllamaSettings",
    "Section",
    "Settings",
    "UnslothSettings",
    "VLLMSettings",
    "mask_url",
]

DEFAULT_CONFIG_FILE = Path("configs/default.yaml")
#: Qwen3-4B's native context; YaRN (factor 4) extends it to 4x this.
NATIVE_CONTEXT = 32_768
YARN_FACTOR = 4.0

_config_file_override: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "qwen_config_file", default=None
)


class Section(BaseModel):
    """A settings section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class HFSettings(Section):
    """The Hugging Face transformers backend (``backend="hf"``)."""

    model: str = Field("Qwen/Qwen3-4B", description="Hub id or local directory of the model.")
    revision: str | None = Field(None, description="Hub branch, tag or commit to load.")
    device: str = Field(
        "auto", description="auto (CUDA, then Apple MPS, then CPU), cuda, cuda:N, mps or cpu."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bfloat16 on CUDA that supports it, float16 on MPS, else float32."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel; flash_attention_2 needs the flash-attn package."
    )
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "none", description="Load weights in 4 or 8 bits through bitsandbytes (CUDA only)."
    )
    max_context: int = Field(
        NATIVE_CONTEXT, ge=1, description="Context window in tokens (prompt + new tokens)."
    )
    yarn: bool = Field(
        False,
        description="Enable YaRN rope scaling (factor 4): context 131,072. The model card advises "
        "it only for long prompts; it can hurt short texts.",
    )
    trust_remote_code: bool = Field(False, description="Run model code from the hub (unsafe).")
    local_files_only: bool = Field(False, description="Never touch the network; use the cache.")
    token: SecretStr | None = Field(None, description="Hugging Face token (else HF_TOKEN).")

    @property
    def context_window(self) -> int:
        """Usable context: ``max_context``, scaled by the YaRN factor when YaRN is on."""
        return int(self.max_context * YARN_FACTOR) if self.yarn else self.max_context


#: The non-thinking Qwen3-4B build to use instead of a thinking-only one (hub id).
INSTRUCT_MODEL = "Qwen/Qwen3-4B-Instruct-2507"
#: Ollama tags of Qwen3-4B-Instruct-2507, the non-thinking build Ollama's maintainers point
#: non-thinking users to (plain ``qwen3:4b`` was re-pointed to the thinking-only 2507 build).
OLLAMA_NON_THINKING_TAGS: tuple[str, ...] = ("qwen3:4b-instruct-2507-q4_K_M", "qwen3:4b-instruct")


class OllamaSettings(Section):
    """The Ollama backend (``backend="ollama"``)."""

    model: str = Field(
        OLLAMA_NON_THINKING_TAGS[0],
        description="Ollama tag. NOT plain qwen3:4b, which now points to a thinking-only build.",
    )
    host: str = Field(
        default_factory=lambda: os.environ.get("OLLAMA_HOST") or "http://127.0.0.1:11434",
        description="Server address (default: OLLAMA_HOST, else http://127.0.0.1:11434).",
    )
    timeout: float = Field(120.0, gt=0, description="Seconds before a request is abandoned.")
    keep_alive: str = Field("5m", description="How long the server keeps the model loaded.")
    num_ctx: int = Field(8192, ge=256, description="Context window the server allocates.")
    max_retries: int = Field(3, ge=0, description="Retries for 5xx errors and timeouts.")


class UnslothSettings(Section):
    """The Unsloth backend (``backend="unsloth"``, GPU only)."""

    model: str = Field("unsloth/Qwen3-4B", description="Hub id or local directory.")
    max_seq_length: int = Field(2048, ge=1, description="Longest sequence Unsloth prepares for.")
    load_in_4bit: bool = Field(True, description="Load weights in 4 bits (bitsandbytes).")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto lets Unsloth pick (bfloat16 where supported)."
    )
    token: SecretStr | None = Field(None, description="Hugging Face token (else HF_TOKEN).")


class VLLMSettings(Section):
    """The vLLM backend (``backend="vllm"``): an OpenAI-compatible vLLM server."""

    model: str = Field("Qwen/Qwen3-4B", description="Model name the server serves.")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="Server's OpenAI API root.")
    api_key: SecretStr = Field(SecretStr("EMPTY"), description="API key (--api-key of vllm).")
    timeout: float = Field(120.0, gt=0, description="Seconds before a request is abandoned.")
    max_retries: int = Field(3, ge=0, description="Retries for 5xx errors and timeouts.")
    tokenizer: str | None = Field(
        None,
        description="Tokenizer for english_only (hub id, directory or 'offline'); default: the "
        "model name (set it when the server uses --served-model-name).",
    )


class EvaluationSettings(Section):
    """The evaluation runner (``qwen-backends eval``); relative paths are from the working dir."""

    prompts: Path = Field(
        Path("configs/evaluation/prompts.jsonl"),
        description="JSONL prompt set: one {id, messages, expected?} object a line.",
    )
    output_dir: Path = Field(
        Path("runs/evaluation"), description="Directory that holds one folder per run."
    )
    run_name: str | None = Field(
        None,
        description="Folder of this run under output_dir (default: the backend name). "
        "Running again with the same name resumes the run.",
    )
    limit: int | None = Field(None, ge=1, description="Run only the first N prompts of the set.")


class Settings(BaseSettings):
    """Everything qwen-backends needs to know, resolved from all sources (see module docs)."""

    model_config = SettingsConfigDict(
        env_prefix="QWEN_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        validate_default=True,
    )

    backend: str = Field("hf", description="Which runtime to use: " + ", ".join(BACKENDS) + ".")
    model: str | None = Field(
        None, description="Overrides the model of the selected backend (QWEN_MODEL)."
    )
    enable_thinking: Literal[False] = Field(
        False, description="Always false: Qwen3 runs in non-thinking mode only."
    )
    hf: HFSettings = Field(default_factory=HFSettings)
    ollama: OllamaSettings = Field(default_factory=OllamaSettings)
    unsloth: UnslothSettings = Field(default_factory=UnslothSettings)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    sampling: SamplingParams = Field(default_factory=SamplingParams)

    def __init__(self, **values: Any) -> None:
        reject_thinking(values, "Settings")
        try:
            super().__init__(**values)
        except ValidationError as exc:
            for error in exc.errors():
                cause = error.get("ctx", {}).get("error")
                if isinstance(cause, ThinkingModeError):
                    raise cause from None
                if error["loc"] and error["loc"][0] == "enable_thinking":
                    raise ThinkingModeError(
                        f"enable_thinking={error.get('input')!r} asks for Qwen3's thinking mode, "
                        "which qwen-backends never enables; unset QWEN_ENABLE_THINKING"
                    ) from None
            raise ConfigurationError(validation_message(exc, "settings")) from None

    @field_validator("backend", mode="before")
    @classmethod
    def _known_backend(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in BACKENDS:
            raise ValueError(
                f"unknown backend {value!r}; {did_you_mean(value, BACKENDS)}"
                f"choose one of {', '.join(BACKENDS)}"
            )
        return value

    @field_validator("model", mode="before")
    @classmethod
    def _model_name(cls, value: Any) -> Any:
        # Config files may write ``model: {name: ...}``.
        if isinstance(value, dict) and set(value) == {"name"}:
            return value["name"]
        return value

    @field_validator("sampling", mode="before")
    @classmethod
    def _sampling(cls, value: Any) -> Any:
        if isinstance(value, dict):
            try:
                return SamplingParams(**value)
            except ThinkingModeError:
                raise
            except ConfigurationError as exc:  # one line, without the nested prefix
                raise ValueError(str(exc).removeprefix("invalid sampling parameters: ")) from None
        return value

    @property
    def selected(self) -> Section:
        """The settings section of the selected backend (the field named like the backend)."""
        section: Section = getattr(self, self.backend)
        return section

    @property
    def model_name(self) -> str:
        """The model the selected backend loads: ``model`` (QWEN_MODEL) if set, else its own."""
        model: str = self.model or getattr(self.selected, "model")  # noqa: B009
        return model

    def replace(self, **overrides: Any) -> Settings:
        """Return new settings with ``overrides`` merged over these (nested dicts merge)."""
        if not overrides:
            return self
        return Settings(**deep_merge(self.model_dump(), overrides))

    def redacted(self) -> dict[str, Any]:
        """The settings as plain data with secrets masked (safe to print or log)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> Settings:
        """Load settings with ``path`` as the YAML layer (environment still overrides it)."""
        config = Path(path)
        if not config.is_file():
            raise ConfigurationError(f"config file {config} does not exist; check the path")
        token = _config_file_override.set(config)
        try:
            return cls(**overrides)
        finally:
            _config_file_override.reset(token)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Add the YAML layer below ``.env`` (see the module docs for the order)."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        config_file = config_file_path()
        if config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return (*sources, file_secret_settings)


def config_file_path() -> Path | None:
    """The YAML file the settings read: an explicit one, ``QWEN_CONFIG``, or the default."""
    explicit = _config_file_override.get()
    if explicit is not None:
        return explicit
    named = os.environ.get("QWEN_CONFIG")
    if named:
        if not Path(named).is_file():
            raise ConfigurationError(
                f"QWEN_CONFIG names {named}, which does not exist; fix the path or unset it"
            )
        return Path(named)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def mask_url(url: str) -> str:
    """``url`` with any credentials (``user:password@``) replaced by ``***@``, safe to print."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url
    host = authority.rpartition("@")[2]
    return f"{scheme}{sep}***@{host}{slash}{path}"


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied; nested dicts merge key by key instead of replacing."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
