"""FinetuneConfig: the shipped YAML files load, and mistakes are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_backends.errors import ConfigurationError
from qwen_backends.finetune.config import ALL_PROJECTIONS, FinetuneConfig, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "finetune"


def test_colab_config_is_the_unsloth_notebook_recipe() -> None:
    config = load_config(CONFIGS / "colab.yaml")
    assert (config.engine, config.model_name, config.load_in_4bit) == (
        "unsloth",
        "unsloth/Qwen3-4B",
        True,
    )
    assert config.family == "qwen3-4b" and config.model is None
    instruct = load_config(CONFIGS / "colab.yaml", family="qwen3-4b-instruct-2507")
    assert instruct.model_name == "unsloth/Qwen3-4B-Instruct-2507"
    assert load_config(CONFIGS / "colab.yaml", model="./mine").model_name == "./mine"
    training = config.training
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (2, 4)
    assert (training.warmup_steps, training.max_steps, training.learning_rate) == (5, 30, 2e-4)
    assert (training.optim, training.weight_decay, training.lr_scheduler_type) == (
        "adamw_8bit",
        0.001,
        "linear",
    )
    assert training.seed == 3407
    assert config.data.hub_dataset == "mlabonne/FineTome-100k"
    assert config.lora.target_modules == list(ALL_PROJECTIONS)
    assert config.export.gguf == ["q4_k_m"]


def test_cpu_smoke_config_uses_the_peft_engine_and_the_sample_chats() -> None:
    config = load_config(CONFIGS / "cpu_smoke.yaml")
    assert config.engine == "peft" and not config.load_in_4bit
    assert config.data.path == str(CONFIGS / "sample_chats.jsonl")  # relative to the file
    assert Path(config.data.path).is_file()
    assert config.export.gguf == []
    assert config.training.optim == "adamw_torch"
    assert config.training.cpu_threads == 1


def test_changes_override_the_file_and_merge_nested_sections() -> None:
    config = load_config(
        CONFIGS / "cpu_smoke.yaml", training={"max_steps": 3}, export={"output_dir": "elsewhere"}
    )
    assert config.training.max_steps == 3
    assert config.training.learning_rate == 5e-3  # untouched siblings survive
    assert config.export.output_dir == "elsewhere"
    again = config.replace(lora={"r": 8})
    assert (again.lora.r, again.lora.alpha) == (8, 32)


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"engine": "peft", "load_in_4bit": True}, "load_in_4bit is only supported by the unsloth"),
        ({"engine": "peft", "export": {"gguf": ["q4_k_mm"]}}, "llama.cpp cannot write"),
        ({"data": {}}, "set exactly one of data.path"),
        ({"data": {"path": "a", "hub_dataset": "b"}}, "set exactly one of data.path"),
        ({"training": {"max_steps": 0}}, "training.max_steps=0 is invalid"),
        ({"lora": {"rank": 8}}, "lora.rank: is not a known setting"),
        ({"engine": "mlx"}, "engine"),
        ({"export": {"merge": False}}, "export.modelfile needs a model"),
        ({"training": {"cpu_threads": 0}}, "training.cpu_threads"),
    ],
)
def test_invalid_values_are_one_line_errors(values: dict[str, object], fragment: str) -> None:
    values = {"data": {"path": "chats.jsonl"}, **values}
    with pytest.raises(ConfigurationError, match="invalid fine-tuning config") as caught:
        FinetuneConfig(**values)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_file_problems_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine: [peft\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"bad\.yaml:2:1: fine-tuning config is not valid"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("peft\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="fine-tuning config must be a mapping"):
        load_config(scalar)
