"""Settings: sources and their precedence, nested overrides, the model override, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_backends.errors import ConfigurationError, ThinkingModeError
from qwen_backends.family import FAMILIES, family_for_model
from qwen_backends.registry import BACKENDS
from qwen_backends.settings import Settings


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_qwen3_4b_non_thinking() -> None:
    settings = Settings()
    assert settings.backend == "hf"
    assert settings.model_name == "Qwen/Qwen3-4B"
    assert settings.hf.context_window == 32_768
    assert (settings.sampling.temperature, settings.sampling.top_p) == (0.7, 0.8)
    assert (settings.sampling.top_k, settings.sampling.min_p) == (20, 0.0)
    assert settings.family == "qwen3-4b"
    assert settings.default_model("unsloth") == "unsloth/Qwen3-4B"


def test_yarn_quadruples_the_context() -> None:
    assert Settings(hf={"yarn": True}).hf.context_window == 131_072


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ({"yaml"}, "yaml"),
        ({"yaml", "dotenv"}, "dotenv"),
        ({"yaml", "dotenv", "env"}, "env"),
        ({"yaml", "dotenv", "env", "argument"}, "argument"),
        ({"dotenv", "argument"}, "argument"),
        ({"yaml", "env"}, "env"),
    ],
)
def test_precedence_argument_env_dotenv_yaml(
    layers: set[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = {name: f"model-from-{name}" for name in ("yaml", "dotenv", "env", "argument")}
    monkeypatch.chdir(tmp_path)
    if "yaml" in layers:
        config = write(tmp_path / "c.yaml", f"hf:\n  model: {models['yaml']}\n")
        monkeypatch.setenv("QWEN_CONFIG", str(config))
    if "dotenv" in layers:
        write(tmp_path / ".env", f"QWEN_HF__MODEL={models['dotenv']}\n")
    if "env" in layers:
        monkeypatch.setenv("QWEN_HF__MODEL", models["env"])
    kwargs = {"hf": {"model": models["argument"]}} if "argument" in layers else {}
    assert Settings(**kwargs).hf.model == models[expected]


def test_default_yaml_is_read_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    write(tmp_path / "configs" / "default.yaml", "backend: ollama\nollama:\n  num_ctx: 4096\n")
    settings = Settings()
    assert settings.backend == "ollama"
    assert settings.ollama.num_ctx == 4096


def test_every_section_can_be_overridden_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = {
        "QWEN_HF__DTYPE": ("hf", "dtype", "float16"),
        "QWEN_HF__LOCAL_FILES_ONLY": ("hf", "local_files_only", True),
        "QWEN_OLLAMA__TIMEOUT": ("ollama", "timeout", 5.0),
        "QWEN_OLLAMA__KEEP_ALIVE": ("ollama", "keep_alive", "0"),
        "QWEN_UNSLOTH__LOAD_IN_4BIT": ("unsloth", "load_in_4bit", False),
        "QWEN_UNSLOTH__MAX_SEQ_LENGTH": ("unsloth", "max_seq_length", 4096),
        "QWEN_VLLM__BASE_URL": ("vllm", "base_url", "http://10.0.0.1:8000/v1"),
        "QWEN_SAMPLING__TEMPERATURE": ("sampling", "temperature", 0.0),
        "QWEN_SAMPLING__SEED": ("sampling", "seed", 7),
    }
    for name, (_, _, value) in values.items():
        monkeypatch.setenv(name, str(value).lower() if isinstance(value, bool) else str(value))
    settings = Settings()
    for section, field, value in values.values():
        assert getattr(getattr(settings, section), field) == value, (section, field)


def test_nested_yaml_keeps_unrelated_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "c.yaml", "sampling:\n  temperature: 0.1\n")
    settings = Settings.from_file(config)
    assert settings.sampling.temperature == 0.1
    assert settings.sampling.top_p == 0.8


def test_qwen_model_overrides_the_selected_backend_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN_BACKEND", "ollama")
    monkeypatch.setenv("QWEN_MODEL", "my-tag:latest")
    settings = Settings()
    assert settings.model_name == "my-tag:latest"
    assert settings.default_model("hf") == "Qwen/Qwen3-4B"
    assert settings.replace(backend="hf").model_name == "my-tag:latest"


def test_model_may_be_written_as_a_name_mapping(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "model:\n  name: ./local-dir\n")
    assert Settings.from_file(config).model_name == "./local-dir"


def test_ollama_host_falls_back_to_ollama_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "http://192.0.2.5:11434")
    assert Settings().ollama.host == "http://192.0.2.5:11434"
    monkeypatch.setenv("QWEN_OLLAMA__HOST", "http://127.0.0.1:9")
    assert Settings().ollama.host == "http://127.0.0.1:9"


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN_HF__TOKEN", "hf_secret_value")
    settings = Settings()
    assert settings.hf.token is not None
    assert settings.hf.token.get_secret_value() == "hf_secret_value"
    assert "hf_secret_value" not in repr(settings)
    assert "hf_secret_value" not in str(settings.redacted())


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"backend": "olama"}, "did you mean 'ollama'"),
        ({"hf": {"dtype": "f16"}}, "hf.dtype"),
        ({"hf": {"modle": "x"}}, "hf.modle: is not a known setting"),
        ({"colour": "blue"}, "colour: is not a known setting"),
        ({"sampling": {"top_p": 1.5}}, "top_p=1.5 is out of range"),
        ({"ollama": {"timeout": 0}}, "ollama.timeout"),
    ],
)
def test_invalid_settings_give_one_line_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(**kwargs)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QWEN_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigurationError, match=r"QWEN_CONFIG names .*nope\.yaml"):
        Settings()
    with pytest.raises(ConfigurationError, match="does not exist"):
        Settings.from_file(tmp_path / "missing.yaml")


@pytest.mark.parametrize("source", ["argument", "env", "yaml"])
def test_thinking_cannot_be_enabled_from_any_source(
    source: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kwargs = {}
    if source == "argument":
        kwargs = {"enable_thinking": True}
    elif source == "env":
        monkeypatch.setenv("QWEN_ENABLE_THINKING", "true")
    else:
        monkeypatch.setenv(
            "QWEN_CONFIG", str(write(tmp_path / "c.yaml", "enable_thinking: true\n"))
        )
    with pytest.raises(ThinkingModeError):
        Settings(**kwargs)
    with pytest.raises(ValueError):  # ThinkingModeError is a ValueError
        Settings(**kwargs)


def test_thinking_in_sampling_section_is_refused() -> None:
    with pytest.raises(ThinkingModeError):
        Settings(sampling={"enable_thinking": True})


def test_replace_merges_nested_sections() -> None:
    settings = Settings(hf={"dtype": "float32"})
    changed = settings.replace(hf={"device": "cpu"}, sampling={"seed": 3})
    assert (changed.hf.dtype, changed.hf.device, changed.sampling.seed) == ("float32", "cpu", 3)
    assert settings.hf.device == "auto"


# -- a shared .env, broken config files, loose values (issue 13) --------------------------------


def test_dotenv_of_other_tools_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    write(
        Path(".env"),
        "OPENAI_API_KEY=sk-other-tool\nDATABASE_URL=postgres://u:p@db/x\n"
        "this line is nobody's syntax\nexport QWEN_BACKEND=ollama\nQWEN_HF__DTYPE=float16\n",
    )
    settings = Settings()
    assert settings.backend == "ollama"
    assert settings.hf.dtype == "float16"


def test_dotenv_unknown_qwen_name_is_still_an_error() -> None:
    write(Path(".env"), "OPENAI_API_KEY=x\nQWEN_BACKEN=ollama\n")
    with pytest.raises(ConfigurationError, match="QWEN_BACKEN: is not a known setting"):
        Settings()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("A=1\nQWEN_BACKEND ollama\n", ".env:2: cannot parse 'QWEN_BACKEND ollama'"),
        ("QWEN_BACKEND\n", ".env:1: QWEN_BACKEND has no value"),
    ],
)
def test_broken_qwen_lines_in_dotenv_name_file_and_line(text: str, fragment: str) -> None:
    write(Path(".env"), text)
    with pytest.raises(ConfigurationError, match=fragment):
        Settings()


def test_dotenv_that_is_not_utf8_names_the_line() -> None:
    Path(".env").write_bytes(b"A=1\nQWEN_BACKEND=\xff\n")
    with pytest.raises(ConfigurationError, match=r"\.env:2: the env file is not UTF-8"):
        Settings()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("backend: [hf\n", r"bad\.yaml:2:1: config file is not valid YAML \(expected ','"),
        ("hf:\n  dtype: float16\n    device: cpu\n", r"bad\.yaml:3:\d+: config file is not valid"),
        ("- hf\n- ollama\n", "top level of a config file must be a mapping .* got a list"),
        ("just a string\n", "must be a mapping .* got a str"),
    ],
)
def test_broken_yaml_is_one_line_with_file_and_line(text: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment) as caught:
        Settings.from_file(write(Path("bad.yaml"), text))
    assert "\n" not in str(caught.value)


def test_empty_yaml_means_defaults() -> None:
    assert Settings.from_file(write(Path("empty.yaml"), "")).backend == "hf"


def test_yaml_that_is_not_utf8_or_a_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    Path("latin1.yaml").write_bytes(b"backend: hf\n# caf\xe9\n")
    with pytest.raises(ConfigurationError, match=r"latin1\.yaml:2: config file is not UTF-8"):
        Settings.from_file("latin1.yaml")
    Path("conf.d").mkdir()
    with pytest.raises(ConfigurationError, match="is a directory"):
        Settings.from_file("conf.d")
    monkeypatch.setenv("QWEN_CONFIG", "conf.d")
    with pytest.raises(ConfigurationError, match=r"QWEN_CONFIG names conf\.d, which is a dir"):
        Settings()


def test_unreadable_yaml_says_permissions(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests may run as root, for whom chmod 000 changes nothing: fail the read itself.
    config = write(Path("locked.yaml"), "backend: hf\n")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ConfigurationError, match=r"cannot read config file locked\.yaml .*"):
        Settings.from_file(config)


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("QWEN_OLLAMA__TIMEOUT", "inf", "ollama.timeout: Input should be a finite number"),
        ("QWEN_OLLAMA__TIMEOUT", "nan", "ollama.timeout: Input should be a finite number"),
        ("QWEN_VLLM__TIMEOUT", "Infinity", "vllm.timeout: Input should be a finite number"),
        ("QWEN_MODEL", "", "model is empty"),
        ("QWEN_MODEL", "  ", "model is empty"),
        ("QWEN_HF__MODEL", "", "hf.model: String should have at least 1 character"),
        ("QWEN_VLLM__BASE_URL", "localhost:8000/v1", "not an http:// or https:// URL"),
        ("QWEN_VLLM__BASE_URL", "http://", "not an http:// or https:// URL with a host"),
        ("QWEN_VLLM__BASE_URL", "http://host:port/v1", "is not a valid URL"),
        ("QWEN_OLLAMA__HOST", "ftp://127.0.0.1", "not an http:// or https:// URL"),
        ("QWEN_SAMPLING__TOP_K", "true", "top_k"),
    ],
)
def test_loose_values_are_refused_at_validation(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=fragment):
        Settings()


def test_ollama_host_without_scheme_is_http_like_ollama_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:11434")
    assert Settings().ollama.host == "http://0.0.0.0:11434"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("http://bob:hunter2@gpu.example:8000/v1", "http://***@gpu.example:8000/v1"),
        ("https://sk-token@h/v1", "https://***@h/v1"),
        ("bob:hunter2@h:11434", "***@h:11434"),
        ("http://h:1/v1?api_key=abc&model=x", "http://h:1/v1?api_key=***&model=x"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    from qwen_backends.settings import mask_url

    assert mask_url(url) == masked


def test_redacted_masks_credentials_in_server_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN_VLLM__BASE_URL", "http://bob:hunter2@gpu:8000/v1")
    monkeypatch.setenv("QWEN_OLLAMA__HOST", "https://ann:s3cret@ollama.example")
    redacted = Settings().redacted()
    assert redacted["vllm"]["base_url"] == "http://***@gpu:8000/v1"
    assert redacted["ollama"]["host"] == "https://***@ollama.example"
    assert "hunter2" not in str(redacted) and "s3cret" not in str(redacted)
    # The real values still reach the backends.
    assert Settings().vllm.base_url == "http://bob:hunter2@gpu:8000/v1"


def test_allow_control_tokens_is_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().allow_control_tokens is False
    monkeypatch.setenv("QWEN_ALLOW_CONTROL_TOKENS", "true")
    assert Settings().allow_control_tokens is True


def test_ollama_host_port_only_means_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", ":11500")
    assert Settings().ollama.host == "http://127.0.0.1:11500"


def test_process_only_variables_in_dotenv_say_so() -> None:
    write(Path(".env"), "QWEN_CONFIG=other.yaml\n")
    with pytest.raises(ConfigurationError, match=r"\.env:1: QWEN_CONFIG is read from the environ"):
        Settings()


# -- the model family -----------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_backend_default_belongs_to_the_chosen_family(
    family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QWEN_FAMILY", family)
    chosen, other = FAMILIES[family], next(f for f in FAMILIES.values() if f.name != family)
    for backend in BACKENDS:
        settings = Settings(backend=backend)
        assert settings.model_name in chosen.all_names(), backend
        assert settings.model_name not in other.all_names(), backend
        assert family_for_model(settings.model_name) is chosen
    # the per-backend names, exactly
    assert Settings(backend="hf").model_name == chosen.hf
    assert Settings(backend="unsloth").model_name == chosen.unsloth
    assert Settings(backend="vllm").model_name == chosen.vllm
    assert Settings(backend="ollama").model_name == chosen.ollama


def test_the_instruct_family_names_the_instruct_2507_model_everywhere() -> None:
    settings = Settings(family="qwen3-4b-instruct-2507")
    models = {backend: settings.replace(backend=backend).model_name for backend in BACKENDS}
    assert models["hf"] == models["vllm"] == "Qwen/Qwen3-4B-Instruct-2507"
    assert models["unsloth"] == "unsloth/Qwen3-4B-Instruct-2507"
    assert models["ollama"] == "qwen3:4b-instruct-2507-q4_K_M"
    assert all("Instruct-2507" in name or "instruct-2507" in name for name in models.values())


def test_switching_backend_never_switches_the_model_family() -> None:
    hybrid = {Settings(backend=b).model_name for b in BACKENDS}
    assert {family_for_model(name) for name in hybrid} == {FAMILIES["qwen3-4b"]}
    # the hybrid has no official Ollama tag: its Ollama model is built from a hub GGUF
    assert FAMILIES["qwen3-4b"].ollama_source is not None
    assert FAMILIES["qwen3-4b"].ollama_source.startswith("hf.co/")
    assert FAMILIES["qwen3-4b"].ollama != "qwen3:4b"  # that tag is Thinking-2507 today


def test_explicit_models_win_over_the_family(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN_FAMILY", "qwen3-4b-instruct-2507")
    monkeypatch.setenv("QWEN_VLLM__MODEL", "served-name")
    assert Settings(backend="vllm").model_name == "served-name"
    assert Settings(backend="hf").model_name == "Qwen/Qwen3-4B-Instruct-2507"
    monkeypatch.setenv("QWEN_MODEL", "./local")
    assert Settings(backend="vllm").model_name == "./local"
    assert Settings(backend="hf").model_name == "./local"


def test_an_unknown_family_is_a_one_line_error() -> None:
    with pytest.raises(ConfigurationError, match="family") as info:
        Settings(family="qwen3-4b-thinking-2507")
    assert "\n" not in str(info.value)
    assert "qwen3-4b-instruct-2507" in str(info.value)


# -- settings that could kill the process or change silently (issue 24) ---------------------------


@pytest.mark.parametrize("n_ctx", [262_145, 10**9, 2**32])
def test_a_context_no_release_can_use_is_refused_with_its_memory(n_ctx: int) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(llamacpp={"n_ctx": n_ctx})
    message = str(caught.value)
    assert f"llamacpp.n_ctx={n_ctx:,} is larger than any Qwen3-4B release's context" in message
    assert "147,456 bytes a token" in message and "\n" not in message
    assert Settings(llamacpp={"n_ctx": 262_144}).llamacpp.n_ctx == 262_144


def test_duplicate_yaml_keys_are_refused_with_file_and_line() -> None:
    config = write(Path("twice.yaml"), "backend: hf\nhf:\n  device: cpu\n  device: cuda\n")
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_file(config)
    assert str(caught.value).startswith(
        "twice.yaml:4: config file sets 'device' twice (first at line 3)"
    )
    merged = "base: &b\n  device: cpu\nhf:\n  <<: *b\n  device: cuda\n"
    with pytest.raises(ConfigurationError, match="base"):  # the merge itself is fine
        Settings.from_file(write(Path("merge.yaml"), merged))


@pytest.mark.parametrize(
    ("kwargs", "suggestion"),
    [
        ({"serve": {"max_qeue": 3}}, "serve.max_qeue: is not a known setting (did you mean 'max_"),
        ({"hf": {"devcie": "cpu"}}, "hf.devcie: is not a known setting (did you mean 'device'?)"),
        ({"samplng": {}}, "samplng: is not a known setting (did you mean 'sampling'?)"),
        ({"sampling": {"temprature": 1}}, "temprature: is not a known setting (did you mean 'temp"),
    ],
)
def test_a_misspelt_key_gets_a_suggestion(kwargs: dict, suggestion: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(**kwargs)
    assert suggestion in str(caught.value)


def test_a_sampling_variable_that_is_not_json_says_how_to_write_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QWEN_SAMPLING", "{temperature: 1}")
    with pytest.raises(ConfigurationError) as caught:
        Settings()
    message = str(caught.value)
    assert message.startswith("QWEN_SAMPLING is not valid JSON (Expecting property name")
    assert "QWEN_SAMPLING__TEMPERATURE=0.2" in message and "\n" not in message
