"""``export.mlx``: a CPU fine-tune of the tiny checkpoint exported to MLX answers its trained
questions through the mlx backend exactly as the merged model does through hf (greedy).

One run of ``configs/finetune/cpu_smoke.yaml`` with ``export.mlx: {quant: none, check_examples:
8}``: the pipeline loads the export with the mlx backend and the merged model with the hf backend
and answers all eight training questions through both (greedy).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qwen_backends.errors import ConfigurationError, MissingDependencyError
from qwen_backends.finetune import FinetuneResult, load_config, run_finetune
from qwen_backends.finetune.data import assistant_turns, load_conversations

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "finetune"


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny model on a shared machine: one thread avoids OpenMP stalls."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FinetuneResult:
    pytest.importorskip("mlx_lm", reason="the mlx extra is not installed")
    config = load_config(
        CONFIGS / "cpu_smoke.yaml",
        model=str(tiny_model_dir),
        export={
            "output_dir": str(tmp_path_factory.mktemp("finetune-mlx")),
            "save_adapter": False,
            "modelfile": False,
            "mlx": {"quant": "none", "check_examples": 8},
        },
        training={"progress_bar": False},
    )
    return run_finetune(config)


def _questions() -> list[tuple[list[dict[str, Any]], str]]:
    config = load_config(CONFIGS / "cpu_smoke.yaml")
    return [assistant_turns(chat)[-1] for chat in load_conversations(config.data)]


@pytest.mark.mlx
@pytest.mark.timeout(300)
def test_the_mlx_export_answers_the_trained_questions_exactly_as_hf(
    trained: FinetuneResult,
) -> None:
    assert trained.mlx_dir == trained.output_dir / "mlx" and trained.merged_dir is not None
    assert f"MLX: {trained.mlx_dir}" in trained.summary()
    check = trained.mlx_check
    assert check is not None and check.prompts_checked == 8
    questions = {history[-1]["content"]: answer for history, answer in _questions()}
    assert [question for question, _, _ in check.answers] == list(questions)
    assert [mlx for _, _, mlx in check.answers] == [hf for _, hf, _ in check.answers]
    learned = sum(mlx.strip() == questions[question] for question, _, mlx in check.answers)
    assert learned >= 7, check.answers


def test_export_mlx_needs_the_merged_model(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"export\.mlx converts the merged model"):
        load_config(
            CONFIGS / "cpu_smoke.yaml",
            model=str(tiny_model_dir),
            export={"merge": False, "modelfile": False, "mlx": {"quant": "4bit"}},
        )
    with pytest.raises(ConfigurationError, match=r"export\.mlx\.quant"):
        load_config(CONFIGS / "cpu_smoke.yaml", export={"mlx": {"quant": "3bit"}})


def test_export_mlx_without_mlx_lm_fails_before_training(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qwen_backends.registry as registry

    real = registry.missing_modules
    monkeypatch.setattr(
        registry, "missing_modules", lambda name: ["mlx_lm"] if name == "mlx" else real(name)
    )
    config = load_config(
        CONFIGS / "cpu_smoke.yaml",
        model=str(tiny_model_dir),
        export={"output_dir": str(tmp_path / "out"), "mlx": {"quant": "4bit"}},
    )
    with pytest.raises(MissingDependencyError, match=r"qwen-backends\[mlx\]"):
        run_finetune(config)
    assert not (tmp_path / "out").exists()
