"""The ``evaluation`` settings section: YAML, environment overrides, and the committed config."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_backends.errors import ConfigurationError
from qwen_backends.evaluation.runner import run_directory
from qwen_backends.family import FAMILIES
from qwen_backends.settings import Settings

REPO = Path(__file__).resolve().parents[2]
BASE_CONFIG = REPO / "configs" / "evaluation" / "base_config.yaml"


def test_committed_base_config_selects_qwen3_4b_non_thinking() -> None:
    settings = Settings.from_file(BASE_CONFIG)
    assert settings.backend == "hf"
    assert settings.family == "qwen3-4b"
    assert settings.model_name == FAMILIES["qwen3-4b"].hf
    # --backend switches only the runtime: every backend runs the family's model
    for backend in ("ollama", "vllm", "unsloth"):
        other = Settings.from_file(BASE_CONFIG, backend=backend)
        assert other.model_name == FAMILIES["qwen3-4b"].model_for(backend)
    assert (settings.sampling.temperature, settings.sampling.top_p) == (0.7, 0.8)
    assert (settings.sampling.top_k, settings.sampling.min_p) == (20, 0.0)
    assert (REPO / settings.evaluation.prompts).is_file()
    assert run_directory(settings) == Path("runs/evaluation/hf")


def test_environment_overrides_the_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN_EVALUATION__OUTPUT_DIR", "elsewhere")
    monkeypatch.setenv("QWEN_EVALUATION__RUN_NAME", "nightly")
    monkeypatch.setenv("QWEN_SAMPLING__MAX_NEW_TOKENS", "8")
    settings = Settings.from_file(BASE_CONFIG)
    assert settings.evaluation.output_dir == Path("elsewhere")
    assert settings.evaluation.prompts == Path("configs/evaluation/prompts.jsonl")
    assert settings.sampling.max_new_tokens == 8
    assert settings.sampling.seed == 0, "the rest of the YAML still applies"
    assert run_directory(settings) == Path("elsewhere/nightly")


def test_keyword_overrides_merge_with_the_yaml_section() -> None:
    settings = Settings.from_file(BASE_CONFIG, evaluation={"limit": 2})
    assert settings.evaluation.limit == 2
    assert settings.evaluation.output_dir == Path("runs/evaluation")


@pytest.mark.parametrize(
    ("yaml_text", "fragment"),
    [
        ("evaluation:\n  prompt_file: x.jsonl\n", "evaluation.prompt_file: is not a known setting"),
        ("evaluation:\n  limit: 0\n", "evaluation.limit"),
        ("evaluations:\n  limit: 1\n", "evaluations: is not a known setting"),
    ],
)
def test_bad_evaluation_sections(tmp_path: Path, yaml_text: str, fragment: str) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(ConfigurationError) as info:
        Settings.from_file(config)
    assert fragment in str(info.value)


@pytest.mark.parametrize("name", ["a/b", "..", " "])
def test_run_name_must_be_a_folder_name(name: str) -> None:
    with pytest.raises(ConfigurationError, match="plain folder name"):
        run_directory(Settings(evaluation={"run_name": name}))
