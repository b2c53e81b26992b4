"""Settings: one object, passed explicitly, that says which backend runs which model how.

Sources, highest precedence first:

1. keyword arguments (``Settings(backend="ollama")``, ``create_backend(model=...)``);
2. environment variables with the ``QWEN_`` prefix, ``__`` between nesting levels
   (``QWEN_BACKEND=ollama``, ``QWEN_HF__DTYPE=float16``, ``QWEN_SAMPLING__TEMPERATURE=0``);
3. a ``.env`` file in the working directory (same names);
4. a YAML file: ``QWEN_CONFIG`` if set (it must exist), else ``configs/default.yaml`` when
   the working directory has one;
5. the defaults below.

``QWEN_FAMILY`` picks the Qwen3-4B release (hybrid ``qwen3-4b`` or ``qwen3-4b-instruct-2507``):
every backend's default model comes from one table, :data:`qwen_backends.family.FAMILIES`, so
switching backend switches only the runtime. A section's ``model`` (``QWEN_HF__MODEL``) overrides
the table for that backend, and ``QWEN_MODEL`` (or ``model=``) replaces the model of whichever
backend is selected; backends read :attr:`Settings.model_name`. Thinking mode
cannot be switched on from any source: ``QWEN_ENABLE_THINKING=true`` is an error.

Only ``QWEN_``-prefixed lines of ``.env`` are read (the file may hold other tools' variables);
an unknown ``QWEN_`` name is an error. Server addresses may carry credentials
(``http://user:secret@host``): everything printed masks them with :func:`mask_url`.
"""

from __future__ import annotations

import contextvars
import io
import os
import re
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from qwen_backends._files import decode_utf8, load_yaml_mapping, read_bytes
from qwen_backends.errors import ConfigurationError, ThinkingModeError, first_line
from qwen_backends.family import DEFAULT_FAMILY, FAMILIES, OLLAMA_INSTRUCT_ALIAS, FamilyName
from qwen_backends.grammar import DEFAULT_COMPILE_TIMEOUT
from qwen_backends.registry import BACKENDS, load_target
from qwen_backends.sampling import SamplingParams, validation_message
from qwen_backends.thinking import reject_thinking

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "INSTRUCT_MODEL",
    "OLLAMA_NON_THINKING_TAGS",
    "EvaluationSettings",
    "HFSettings",
    "LlamaCppSettings",
    "MLXSettings",
    "OllamaSettings",
    "Section",
    "ServeSettings",
    "Settings",
    "UnslothSettings",
    "VLLMSettings",
    "mask_url",
]

DEFAULT_CONFIG_FILE = Path("configs/default.yaml")
#: The dotenv file read from the working directory (only its ``QWEN_`` lines).
ENV_FILE = Path(".env")
#: Qwen3-4B's native context; YaRN (factor 4) extends it to 4x this.
NATIVE_CONTEXT = 32_768
#: What a server backend's ``timeout`` means (the ollama and vllm sections).
READ_TIMEOUT_HELP = (
    "Seconds to wait for each read: connecting, the answer's first byte and each next piece of "
    "a stream. A per-read limit, not a deadline: a server that keeps sending slowly is waited "
    "for; `deadline` bounds a whole call."
)
#: What a server backend's ``deadline`` means (the ollama and vllm sections).
DEADLINE_HELP = (
    "Seconds a whole call may take: the request, its retries and every piece of the answer "
    "(None: no limit). When it passes the call raises BackendTimeoutError at once, with the "
    "text so far in partial_text, and the answer's connection is closed."
)
#: What the in-process backends' ``prompt_cache_next_turn`` means (hf, mlx, llamacpp).
NEXT_TURN_HELP = (
    "After an answer, once the backend is idle, compute the conversation as its next turn "
    "will begin (the answer rendered as history: for the hybrid Qwen3-4B without the empty "
    "think block its prompt had) into the prompt cache, so the next turn computes only its new "
    "message. Gives way to any call that arrives first. false: the next turn computes the "
    "answer again."
)
YARN_FACTOR = 4.0

_config_file_override: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "qwen_config_file", default=None
)


class Section(BaseModel):
    """A settings section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


SectionT = TypeVar("SectionT", bound=Section)


class HFSettings(Section):
    """The Hugging Face transformers backend (``backend="hf"``)."""

    model: str | None = Field(
        None,
        min_length=1,
        description="Hub id or local directory of the model (default: the family's).",
    )
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
    prompt_cache_mb: int = Field(
        1024,
        ge=0,
        description="Memory for the prompt cache in MiB: the KV state of recent prompts and "
        "answers is kept and the longest shared prefix of a new prompt is reused (a next turn "
        "computes only its new tokens). 0 turns it off. Qwen3-4B's KV state is 144 KiB a token "
        "in bfloat16, 288 KiB in float32.",
    )
    prompt_cache_next_turn: bool = Field(
        True,
        description=NEXT_TURN_HELP,
    )

    @property
    def context_window(self) -> int:
        """Usable context: ``max_context``, scaled by the YaRN factor when YaRN is on."""
        return int(self.max_context * YARN_FACTOR) if self.yarn else self.max_context


#: The non-thinking Qwen3-4B build to use instead of a thinking-only one (hub id).
INSTRUCT_MODEL = FAMILIES["qwen3-4b-instruct-2507"].hf
#: Ollama tags of Qwen3-4B-Instruct-2507, the non-thinking build Ollama's maintainers point
#: non-thinking users to (plain ``qwen3:4b`` was re-pointed to the thinking-only 2507 build).
OLLAMA_NON_THINKING_TAGS: tuple[str, ...] = (
    FAMILIES["qwen3-4b-instruct-2507"].ollama,
    OLLAMA_INSTRUCT_ALIAS,
)


class OllamaSettings(Section):
    """The Ollama backend (``backend="ollama"``)."""

    model: str | None = Field(
        None,
        min_length=1,
        description="Ollama tag (default: the family's). NOT plain qwen3:4b, which now points "
        "to a thinking-only build.",
    )
    host: str = Field(
        default_factory=lambda: os.environ.get("OLLAMA_HOST") or "http://127.0.0.1:11434",
        validate_default=True,
        description="Server address (default: OLLAMA_HOST, else http://127.0.0.1:11434); "
        "HOST:PORT without a scheme means http://HOST:PORT, as for Ollama itself.",
    )
    timeout: float = Field(
        120.0,
        gt=0,
        allow_inf_nan=False,
        description=READ_TIMEOUT_HELP,
    )
    deadline: float | None = Field(None, gt=0, allow_inf_nan=False, description=DEADLINE_HELP)
    keep_alive: str = Field("5m", description="How long the server keeps the model loaded.")
    num_ctx: int = Field(8192, ge=256, description="Context window the server allocates.")
    max_retries: int = Field(3, ge=0, description="Retries for 5xx errors and timeouts.")

    @field_validator("host", mode="before")
    @classmethod
    def _host_url(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() and "://" not in value:
            # Ollama's own conventions for OLLAMA_HOST: no scheme means http, no host localhost.
            value = value.strip()
            value = "http://" + ("127.0.0.1" + value if value.startswith(":") else value)
        return _check_http_url(value, "ollama.host", "http://127.0.0.1:11434")


class UnslothSettings(Section):
    """The Unsloth backend (``backend="unsloth"``, GPU only)."""

    model: str | None = Field(
        None,
        min_length=1,
        description="Hub id or local directory (default: the family's Unsloth repo).",
    )
    max_seq_length: int = Field(2048, ge=1, description="Longest sequence Unsloth prepares for.")
    load_in_4bit: bool = Field(True, description="Load weights in 4 bits (bitsandbytes).")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto lets Unsloth pick (bfloat16 where supported)."
    )
    token: SecretStr | None = Field(None, description="Hugging Face token (else HF_TOKEN).")


class VLLMSettings(Section):
    """The vLLM backend (``backend="vllm"``): an OpenAI-compatible vLLM server."""

    model: str | None = Field(
        None,
        min_length=1,
        description="Model name the server serves (default: the family's hub id).",
    )
    base_url: str = Field(
        "http://127.0.0.1:8000/v1", description="Server's OpenAI API root (http:// or https://)."
    )
    api_key: SecretStr = Field(SecretStr("EMPTY"), description="API key (--api-key of vllm).")
    timeout: float = Field(
        120.0,
        gt=0,
        allow_inf_nan=False,
        description=READ_TIMEOUT_HELP,
    )
    deadline: float | None = Field(None, gt=0, allow_inf_nan=False, description=DEADLINE_HELP)
    max_retries: int = Field(3, ge=0, description="Retries for 5xx errors and timeouts.")
    tokenizer: str | None = Field(
        None,
        description="Tokenizer for english_only (hub id, directory or 'offline'); default: the "
        "model name (set it when the server uses --served-model-name).",
    )

    @field_validator("base_url", mode="before")
    @classmethod
    def _base_url(cls, value: Any) -> Any:
        return _check_http_url(value, "vllm.base_url", "http://127.0.0.1:8000/v1")


class MLXSettings(Section):
    """The MLX backend (``backend="mlx"``): mlx-lm in process (Apple GPU; CPU on Linux)."""

    model: str | None = Field(
        None,
        min_length=1,
        description="Hub id or local directory of an MLX or Hugging Face-format Qwen3 model "
        "(convert one with `qwen-backends export mlx`); default: the family's MLX 4-bit build.",
    )
    revision: str | None = Field(None, description="Hub branch, tag or commit to load.")
    max_context: int = Field(
        NATIVE_CONTEXT, ge=1, description="Context window in tokens (prompt + new tokens)."
    )
    local_files_only: bool = Field(False, description="Never touch the network; use the cache.")
    token: SecretStr | None = Field(None, description="Hugging Face token (else HF_TOKEN).")
    prompt_cache_mb: int = Field(
        1024,
        ge=0,
        description="Memory for the prompt cache in MiB: mlx-lm's KV cache objects of recent "
        "prompts and answers are kept and the longest shared prefix of a new prompt is reused "
        "(a next turn computes only its new tokens). 0 turns it off. Qwen3-4B's KV state is "
        "144 KiB a token in bfloat16.",
    )
    prompt_cache_next_turn: bool = Field(
        True,
        description=NEXT_TURN_HELP,
    )


class LlamaCppSettings(Section):
    """The llama.cpp backend (``backend="llamacpp"``): a GGUF file run in process."""

    model: str | None = Field(
        None,
        min_length=1,
        description="A local .gguf file, or a hub repo holding GGUFs (with `filename`); default: "
        "the family's Q4_K_M GGUF repo (its embedded template is checked when loaded).",
    )
    filename: str | None = Field(
        None,
        min_length=1,
        description="File name or glob pattern of the GGUF inside a hub repo `model` "
        "(default: the family's, *Q4_K_M.gguf).",
    )
    tokenizer: str = Field(
        "gguf",
        description="Vocabulary used to render prompts and decode answers when no Hugging Face "
        "tokenizer folder sits beside the GGUF: 'gguf' (the one embedded in the GGUF; needs "
        "neither transformers nor torch), 'offline' (byte-exact Qwen3), a hub id or a folder. "
        "The chat template always comes from the GGUF itself.",
    )
    n_ctx: int = Field(
        8192,
        ge=16,
        description="Context window in tokens (prompt + new tokens), at most 262,144 (the "
        "longest Qwen3-4B release; Qwen3-4B itself is trained for 40,960); llama.cpp allocates "
        "its KV cache up front, 144 KiB a token for Qwen3-4B in f16: 1.1 GiB at 8,192 (Q4_K_M "
        "in about 4.3 GiB, fits an 8 GB laptop), 4.5 GiB at 32,768.",
    )
    n_threads: int | None = Field(
        None, ge=1, description="Threads for generation (None: llama.cpp's choice)."
    )
    n_threads_batch: int | None = Field(
        None, ge=1, description="Threads for reading the prompt (None: llama.cpp's choice)."
    )
    n_gpu_layers: int = Field(
        0,
        ge=-1,
        description="Layers offloaded to Metal/CUDA when llama-cpp-python was built with them; "
        "-1 offloads all, 0 runs on the CPU.",
    )
    last_n_tokens: int | None = Field(
        None,
        ge=1,
        description="Window of generated tokens that presence_penalty and repetition_penalty "
        "look at (None: every generated token; prompt tokens never count).",
    )
    seed: int = Field(
        0, ge=0, description="Seed of the llama.cpp context (each call still seeds sampling)."
    )
    use_mmap: bool = Field(
        True,
        description="Map the GGUF into memory instead of reading it (llama.cpp's default: fast "
        "starts, pages shared between processes). On a CPU llama.cpp also repacks Q4_K/Q4_0 "
        "weights into a faster layout, and the mapped originals stay resident beside that copy: "
        "false reads the file once, so a Q4_K_M Qwen3-4B peaks at 2.8 GiB instead of 4.4 GiB "
        "(docs/benchmarks.md).",
    )
    verbose: bool = Field(False, description="Let llama.cpp print its logs to stderr.")
    prompt_cache_mb: int = Field(
        1024,
        ge=0,
        description="Memory for the prompt cache in MiB: a new prompt reuses the longest prefix "
        "it shares with llama.cpp's live context, and the KV state of other recent "
        "conversations is saved within this budget and restored when one comes back. 0 turns "
        "it off (every call starts from an empty context). Qwen3-4B's KV state is 144 KiB a "
        "token in f16.",
    )
    prompt_cache_next_turn: bool = Field(
        True,
        description=NEXT_TURN_HELP,
    )

    @field_validator("n_ctx")
    @classmethod
    def _n_ctx_fits_a_release(cls, value: int) -> int:
        from qwen_backends.context_size import check_context_setting

        try:
            return check_context_setting(value)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None


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


class ServeSettings(Section):
    """The OpenAI-compatible server (``qwen-backends serve``)."""

    host: str = Field(
        "127.0.0.1",
        description="Address to bind. Any address but loopback (127.0.0.1, ::1, localhost) "
        "needs api_key.",
    )
    port: int = Field(8000, ge=0, le=65_535, description="TCP port (0 picks a free one).")
    api_key: SecretStr | None = Field(
        None,
        description="Clients must send 'Authorization: Bearer KEY'; required for a non-loopback "
        "host. Never logged.",
    )
    max_queue: int = Field(
        16,
        ge=0,
        description="In-process backends run one generation at a time; this many more requests "
        "may wait, further ones get 503 with Retry-After.",
    )
    shutdown_timeout: int = Field(
        10,
        ge=0,
        description="Seconds a stopping server (SIGTERM, Ctrl-C) lets in-flight requests finish "
        "before cancelling them.",
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest request body in bytes; a larger one gets 413 without being read "
        "(4 MiB holds a 131,072-token conversation several times over).",
    )
    max_json_depth: int = Field(
        64,
        ge=4,
        le=500,
        description="Deepest nesting of JSON objects and arrays in a request body; deeper gets "
        "400.",
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a connection may take to send a complete request head (after it "
        "opens, or after the previous answer); a late one gets 408 and is closed.",
    )
    body_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a request body may take to arrive after its head; a late one gets "
        "408.",
    )

    @field_validator("api_key")
    @classmethod
    def _usable_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        key = value.get_secret_value()
        if key and not key.strip():
            raise ValueError(
                "the API key is only whitespace, which no client can send; set a real key"
            )
        if key != key.strip():
            raise ValueError(
                "the API key starts or ends with whitespace, which HTTP drops from the "
                "Authorization header, so no client could match it; remove the spaces"
            )
        return value


class Settings(BaseSettings):
    """Everything qwen-backends needs to know, resolved from all sources (see module docs).

    Besides the fields below, each backend registered in :data:`qwen_backends.registry.BACKENDS`
    with a settings section has a field named like it (``hf``, ``ollama`` ...), added from the
    registry.
    """

    model_config = SettingsConfigDict(
        env_prefix="QWEN_",
        env_nested_delimiter="__",
        # .env is read by _QwenDotEnvSource (QWEN_ lines only), not by pydantic-settings.
        env_file=None,
        extra="forbid",
        validate_default=True,
    )

    backend: str = Field("hf", description="Which runtime to use: " + ", ".join(BACKENDS) + ".")
    family: FamilyName = Field(
        DEFAULT_FAMILY,
        description="Which Qwen3-4B release every backend runs by default: qwen3-4b (the hybrid "
        "Qwen/Qwen3-4B, run with enable_thinking=False) or qwen3-4b-instruct-2507 "
        "(Qwen/Qwen3-4B-Instruct-2507, non-thinking only).",
    )
    model: str | None = Field(
        None, description="Overrides the model of the selected backend (QWEN_MODEL)."
    )
    enable_thinking: Literal[False] = Field(
        False, description="Always false: Qwen3 runs in non-thinking mode only."
    )
    allow_control_tokens: bool = Field(
        False,
        description="Let caller text contain Qwen3 control-token text such as <|im_start|>: "
        "messages, tool specs (descriptions, parameter docs) and response_format schemas (it "
        "is tokenized as the real control token, so untrusted text could forge turns); off by "
        "default: such requests are refused.",
    )
    structured_compile_timeout: float = Field(
        DEFAULT_COMPILE_TIMEOUT,
        gt=0,
        le=600,
        description="Seconds an in-process backend (hf, unsloth, llamacpp, mlx) may spend "
        "compiling a response_format schema into its grammar; a schema that takes longer is "
        "refused with UnsupportedFeatureError. Compiled schemas are cached per backend.",
    )
    # One section per registered backend is added at run time by _derive_backend_sections():
    # the registry is their one list. The type checker needs them spelt out (a test checks
    # that these match the registry); a new backend may skip this and read its section with
    # Settings.section().
    if TYPE_CHECKING:
        hf: HFSettings
        ollama: OllamaSettings
        unsloth: UnslothSettings
        vllm: VLLMSettings
        llamacpp: LlamaCppSettings
        mlx: MLXSettings
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
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
            raise ConfigurationError(validation_message(exc, "settings", Settings)) from None
        except SettingsError as exc:  # a variable that should hold JSON does not
            raise ConfigurationError(_unparsable_variable(exc)) from None

    @field_validator("backend", mode="before")
    @classmethod
    def _known_backend(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in BACKENDS:
            raise ValueError(BACKENDS.unknown(value))
        return value

    @field_validator("model", mode="before")
    @classmethod
    def _model_name(cls, value: Any) -> Any:
        # Config files may write ``model: {name: ...}``.
        if isinstance(value, dict) and set(value) == {"name"}:
            value = value["name"]
        if isinstance(value, str) and not value.strip():
            raise ValueError(
                "model is empty (QWEN_MODEL= or model: ''); give a model name, or unset it to "
                "use the selected backend's model"
            )
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

    def section(self, kind: type[SectionT], backend: str | None = None) -> SectionT:
        """The section of ``backend`` (default: the selected one), checked to be a ``kind``.

        Typed access for a backend whose section is not spelt out for the type checker:
        ``self.settings.section(EchoSettings, self.name).model``.

        Raises
        ------
        ConfigurationError
            When that backend has no section of type ``kind``.
        """
        name = backend or self.backend
        found = getattr(self, name, None) if name in _backend_fields else None
        if not isinstance(found, kind):
            raise ConfigurationError(
                f"backend {name!r} has no {kind.__name__} settings section; register it with "
                f"settings='module:{kind.__name__}' (see docs/adding_a_backend.md)"
            )
        return found

    @property
    def model_name(self) -> str:
        """The model the selected backend loads.

        ``model`` (QWEN_MODEL) if set, else the section's own ``model``, else the family's
        default for the backend (:data:`qwen_backends.family.FAMILIES`).
        """
        return self.model or self.default_model(self.backend)

    def default_model(self, backend: str) -> str:
        """The model ``backend`` runs without ``QWEN_MODEL``: its section's, else the family's."""
        section = getattr(self, backend, None)
        own = getattr(section, "model", None)
        return own if isinstance(own, str) and own else FAMILIES[self.family].model_for(backend)

    @property
    def gguf_filename(self) -> str:
        """The GGUF file pattern the llamacpp backend picks in a hub repo (its own, else the
        family's)."""
        return self.llamacpp.filename or FAMILIES[self.family].gguf_file

    def replace(self, **overrides: Any) -> Settings:
        """Return new settings with ``overrides`` merged over these (nested dicts merge)."""
        if not overrides:
            return self
        return Settings(**deep_merge(self.model_dump(), overrides))

    def redacted(self) -> dict[str, Any]:
        """The settings as plain data with secrets masked (safe to print or log).

        Masking goes by field type, never by backend name: every ``SecretStr`` field prints as
        ``**********``, and credentials inside the fields a backend's registration marks as URLs
        (:attr:`~qwen_backends.registry.Registration.url_fields`) are masked with
        :func:`mask_url`.
        """
        data = self.model_dump(mode="json")
        for name, registration in BACKENDS.items():
            section = data.get(name)
            if not isinstance(section, dict):
                continue
            for field in registration.url_fields:
                if isinstance(section.get(field), str):
                    section[field] = mask_url(section[field])
        return data

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> Settings:
        """Load settings with ``path`` as the YAML layer (environment still overrides it)."""
        config = Path(path)
        if not config.exists():
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
        env_file = getattr(dotenv_settings, "env_file", None) or ENV_FILE
        dotenv = _QwenDotEnvSource(settings_cls, env_file)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv]
        config_file = config_file_path()
        if config_file is not None:
            values = load_yaml_mapping(
                config_file, "config file", "backend:, model:, hf:, ollama:, sampling:, ..."
            )
            sources.append(InitSettingsSource(settings_cls, init_kwargs=values))
        return (*sources, file_secret_settings)


#: Names of the Settings fields that are backend sections (derived from the registry).
_backend_fields: set[str] = set()


def _derive_backend_sections() -> None:
    """Give :class:`Settings` one field per registered backend section, named like the backend.

    The fields go, in registry order, before the first other section (``evaluation``). Runs at
    import and after every :meth:`~qwen_backends.registry.Registry.register` /
    ``unregister`` of a backend (not thread-safe: register at start-up or in tests).

    Raises
    ------
    ConfigurationError
        When a registration's ``settings`` is not an importable :class:`Section`, its
        ``url_fields`` are not fields of it, or its name is a general setting's.
    """
    sections: dict[str, FieldInfo] = {}
    for name, registration in BACKENDS.items():
        if registration.settings is None:
            continue
        try:
            section = load_target(registration.settings)
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(
                f"the {name} backend's settings={registration.settings!r} cannot be imported "
                f"({first_line(exc)}); check the module and class name"
            ) from exc
        if not (isinstance(section, type) and issubclass(section, Section)):
            raise ConfigurationError(
                f"the {name} backend's settings={registration.settings!r} is not a Section "
                "subclass; point it at a class deriving from qwen_backends.settings.Section"
            )
        unknown = [field for field in registration.url_fields if field not in section.model_fields]
        if unknown:
            raise ConfigurationError(
                f"the {name} backend's url_fields name {', '.join(unknown)}, which "
                f"{section.__name__} does not have; name fields of its settings section"
            )
        sections[name] = FieldInfo.from_annotated_attribute(section, Field(default_factory=section))
    fields = Settings.model_fields
    general = {name: info for name, info in fields.items() if name not in _backend_fields}
    clash = sorted(set(sections) & set(general))
    if clash:
        raise ConfigurationError(
            f"backend name {clash[0]!r} is also a general setting; register it under another name"
        )
    ordered: dict[str, FieldInfo] = {}
    for name, info in general.items():
        annotation = info.annotation
        if sections and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            ordered.update(sections)
            sections = {}
        ordered[name] = info
    ordered.update(sections)
    # In place: model_fields is the class's own field table, which a forced rebuild reads.
    fields.clear()
    fields.update(ordered)
    _backend_fields.clear()
    _backend_fields.update(name for name in ordered if name not in general)
    Settings.model_rebuild(force=True)


_derive_backend_sections()
BACKENDS.watch(_derive_backend_sections)


def _unparsable_variable(exc: SettingsError) -> str:
    """One line for pydantic-settings' "error parsing value for field X from source Y"."""
    field = re.search(r'field "([^"]+)"', str(exc))
    name = f"QWEN_{field.group(1).upper()}" if field else "a QWEN_ variable"
    where = " in .env" if "DotEnv" in str(exc) else ""
    cause = exc.__cause__
    detail = f" ({cause})" if cause is not None else ""
    return (
        f"{name}{where} is not valid JSON{detail}; write the section as JSON, e.g. "
        f"{name}='{{\"temperature\": 0.2}}', or set one value at a time, e.g. "
        f"{name}__TEMPERATURE=0.2"
        if name == "QWEN_SAMPLING"
        else f"{name}{where} is not valid JSON{detail}; write it as a JSON object, or set one "
        f"value at a time with {name}__KEY=VALUE"
    )


def config_file_path() -> Path | None:
    """The YAML file the settings read: an explicit one, ``QWEN_CONFIG``, or the default."""
    explicit = _config_file_override.get()
    if explicit is not None:
        return explicit
    named = os.environ.get("QWEN_CONFIG")
    if named:
        if Path(named).is_dir():
            raise ConfigurationError(
                f"QWEN_CONFIG names {named}, which is a directory; name a YAML file"
            )
        if not Path(named).is_file():
            raise ConfigurationError(
                f"QWEN_CONFIG names {named}, which does not exist; fix the path or unset it"
            )
        return Path(named)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied; nested dicts merge key by key instead of replacing."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def mask_url(url: str) -> str:
    """``url`` with any credentials masked, safe to print.

    The ``user:password@`` part becomes ``***@`` and the values of query parameters that look
    like secrets (``key``, ``token``, ``secret``, ``password``, ``auth`` in the name) become
    ``***``; anything else, including text that is not a URL, is returned unchanged.

    Examples
    --------
    >>> mask_url("https://bob:hunter2@gpu.example.com:8000/v1?api_key=abc&x=1")
    'https://***@gpu.example.com:8000/v1?api_key=***&x=1'
    """
    if "://" not in url and "@" in url:  # host:port without a scheme (Ollama's convention)
        return mask_url("http://" + url).removeprefix("http://")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        secret = ("key", "token", "secret", "password", "auth")
        if any(word in name.lower() for name, _ in pairs for word in secret):
            query = "&".join(
                f"{name}=***" if any(word in name.lower() for word in secret) else f"{name}={value}"
                for name, value in pairs
            )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _check_http_url(value: Any, name: str, example: str) -> Any:
    """Refuse a server address that is not an ``http(s)://HOST`` URL (before any retry)."""
    if not isinstance(value, str):
        return value
    try:
        parts = urllib.parse.urlsplit(value.strip())
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(
            f"{name}={mask_url(value)!r} is not a valid URL ({exc}); write it like {example}"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{name}={mask_url(value)!r} is not an http:// or https:// URL with a host; write it "
            f"like {example}"
        )
    return value.strip()


class _QwenDotEnvSource(DotEnvSettingsSource):
    """``.env`` reading that takes only ``QWEN_`` lines, and names FILE:LINE for broken ones.

    A ``.env`` is often shared with other tools (``OPENAI_API_KEY``, ``DATABASE_URL``); their
    lines are none of our business, even ones python-dotenv cannot parse. A ``QWEN_`` line that
    does not parse, and an unknown ``QWEN_`` name, are errors.
    """

    def __init__(self, settings_cls: type[BaseSettings], env_file: Any) -> None:
        self._qwen_env_file = env_file
        super().__init__(settings_cls, env_file=env_file)

    def _load_env_vars(self) -> dict[str, str | None]:
        files = self._qwen_env_file
        if files is None:
            return {}
        if isinstance(files, str | os.PathLike):
            files = [files]
        values: dict[str, str | None] = {}
        for name in files:
            path = Path(name).expanduser()
            if path.is_file():
                values.update(_read_dotenv(path))
        return values


#: QWEN_ variables that are not settings: they are read before (or outside) the settings.
_PROCESS_ONLY = frozenset({"QWEN_CONFIG", "QWEN_BACKENDS_CACHE"})


def _read_dotenv(path: Path) -> dict[str, str | None]:
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    text = decode_utf8(read_bytes(path, "env file"), path, "the env file")
    kept: list[str] = []
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.string
        ours = "QWEN_" in line.upper()
        if binding.error:
            if ours:
                raise ConfigurationError(
                    f"{path}:{binding.original.line}: cannot parse {line.strip()!r}; write "
                    "QWEN_NAME=value"
                )
            continue  # another tool's line
        key = binding.key
        if key is not None and key.upper() in _PROCESS_ONLY:
            raise ConfigurationError(
                f"{path}:{binding.original.line}: {key} is read from the environment only, not "
                f"from .env; export it (or, for QWEN_CONFIG, pass --config)"
            )
        if key is not None and key.upper().startswith("QWEN_") and binding.value is None:
            raise ConfigurationError(
                f"{path}:{binding.original.line}: {key} has no value; write {key}=value or "
                "remove the line"
            )
        kept.append(line)
    values = dotenv_values(stream=io.StringIO("".join(kept)), interpolate=True)
    return {key.lower(): value for key, value in values.items() if key.upper().startswith("QWEN_")}
