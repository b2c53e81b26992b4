"""Real CPU fine-tuning with the peft engine: the tiny checkpoint learns the sample chats.

One run of ``configs/finetune/cpu_smoke.yaml`` (20 full passes over 9 answers, ~10-40 s on two
shared cores) feeds every test here; the learned answers are read back through the hf backend
built by the factory, exactly as a user would load the merged model.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gotemplate import ollama_values, render

from qwen_backends.chat import render_prompt
from qwen_backends.errors import BackendUnavailableError, ConfigurationError, ThinkingModeError
from qwen_backends.factory import create_backend
from qwen_backends.finetune import FinetuneResult, load_config, run_finetune
from qwen_backends.finetune.config import ALL_PROJECTIONS
from qwen_backends.finetune.data import assistant_turns, load_conversations
from qwen_backends.sampling import SamplingParams
from qwen_backends.testing import tiny_checkpoint
from qwen_backends.thinking import TemplateMode

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "finetune"
GREEDY = SamplingParams.preset("greedy", max_new_tokens=12)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny model on a shared machine: one thread avoids OpenMP stalls (10x here under load)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FinetuneResult:
    output = tmp_path_factory.mktemp("finetune-smoke")
    config = load_config(
        CONFIGS / "cpu_smoke.yaml",
        model=str(tiny_model_dir),
        export={"output_dir": str(output)},
        training={"progress_bar": False},
    )
    return run_finetune(config)


def _questions() -> list[tuple[list[dict[str, Any]], str]]:
    config = load_config(CONFIGS / "cpu_smoke.yaml")
    return [assistant_turns(chat)[-1] for chat in load_conversations(config.data)]


def _exact_matches(model_dir: Path) -> list[tuple[str, str]]:
    with create_backend(backend="hf", model=str(model_dir)) as backend:
        return [
            (backend.generate(history, GREEDY).text.strip(), answer)
            for history, answer in _questions()
        ]


def test_the_merged_model_answers_the_chats_through_the_hf_backend(
    trained: FinetuneResult, tiny_model_dir: Path
) -> None:
    assert trained.merged_dir is not None
    answers = _exact_matches(trained.merged_dir)
    correct = sum(got == expected for got, expected in answers)
    assert correct >= 7, answers
    # the untrained checkpoint knows none of them: the answers were learned
    before = _exact_matches(tiny_model_dir)
    assert sum(got == expected for got, expected in before) == 0


def test_result_reloads_with_the_hf_backend(trained: FinetuneResult) -> None:
    with trained.load_backend() as backend:
        assert backend.name == "hf"
        assert backend.generate("What is the capital of France?", GREEDY).text == "Paris."
    with pytest.raises(ConfigurationError, match="wrote no GGUF file"):
        trained.load_backend("llamacpp")


def test_the_assistant_token_loss_falls(trained: FinetuneResult) -> None:
    assert math.isfinite(trained.loss_before) and math.isfinite(trained.loss_after)
    assert trained.loss_after < trained.loss_before - 0.5
    assert (trained.steps, trained.examples, trained.dropped) == (20, 9, 0)
    logged = [record["loss"] for record in trained.log_history if "loss" in record]
    assert len(logged) == 4  # logging_steps 5


def test_artefacts_are_adapter_merged_16bit_and_modelfile(trained: FinetuneResult) -> None:
    assert trained.adapter_dir is not None and trained.merged_dir is not None
    adapter = json.loads((trained.adapter_dir / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (32, 32)
    assert set(adapter["target_modules"]) == set(ALL_PROJECTIONS)
    from safetensors import safe_open

    with safe_open(str(trained.merged_dir / "model.safetensors"), framework="pt") as weights:
        names = list(weights.keys())
        assert not [name for name in names if "lora" in name]
        assert weights.get_tensor(names[0]).dtype.__str__() == "torch.bfloat16"
    assert trained.modelfile == trained.output_dir / "Modelfile"
    assert "FROM ./merged\n" in trained.modelfile.read_text()
    assert trained.gguf_files == []


def test_the_unsloth_engine_refuses_a_machine_without_a_gpu(tiny_model_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = load_config(CONFIGS / "cpu_smoke.yaml", engine="unsloth", model=str(tiny_model_dir))
    with pytest.raises((BackendUnavailableError, ImportError)) as caught:
        run_finetune(config)
    assert "unsloth" in str(caught.value)


def test_eight_bit_optimizers_are_refused_without_cuda(tiny_model_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = load_config(
        CONFIGS / "cpu_smoke.yaml", model=str(tiny_model_dir), training={"optim": "adamw_8bit"}
    )
    with pytest.raises(ConfigurationError, match="use optim: adamw_torch"):
        run_finetune(config)


def test_checkpoints_are_written_and_training_resumes(tiny_model_dir: Path, tmp_path: Path) -> None:
    def config(**training: Any) -> Any:
        return load_config(
            CONFIGS / "cpu_smoke.yaml",
            model=str(tiny_model_dir),
            training={"progress_bar": False, "loss_examples": 0, "logging_steps": 1, **training},
            export={
                "output_dir": str(tmp_path),
                "save_adapter": False,
                "merge": False,
                "modelfile": False,
            },
        )

    with pytest.raises(ConfigurationError, match="cannot resume"):
        run_finetune(config(max_steps=1, resume_from_checkpoint=True))
    first = run_finetune(config(max_steps=2, save_steps=1, save_total_limit=1))
    assert first.steps == 2 and math.isnan(first.loss_before)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*"))
    assert kept == ["checkpoint-2"]  # save_total_limit 1
    # a different learning rate: a fresh run would log a different loss at step 2
    resumed = run_finetune(
        config(max_steps=3, save_steps=1, learning_rate=1e-3, resume_from_checkpoint=True)
    )
    assert resumed.steps == 3
    before = [(r["step"], r["loss"]) for r in first.log_history if "loss" in r]
    after = [(r["step"], r["loss"]) for r in resumed.log_history if "loss" in r]
    assert [step for step, _ in after] == [1, 2, 3]
    assert after[:2] == before  # steps 1-2 come from checkpoint-2, only step 3 ran again


# -- Qwen3-4B-Instruct-2507 (no think block) --------------------------------------------------


@pytest.fixture(scope="module")
def trained_instruct(tmp_path_factory: pytest.TempPathFactory) -> FinetuneResult:
    output = tmp_path_factory.mktemp("finetune-instruct")
    config = load_config(
        CONFIGS / "cpu_smoke.yaml",
        model=str(tiny_checkpoint("tiny", template="instruct-2507")),
        export={"output_dir": str(output)},
        training={"progress_bar": False},
    )
    return run_finetune(config)


def test_an_instruct_2507_checkpoint_learns_and_exports_without_the_think_block(
    trained_instruct: FinetuneResult,
) -> None:
    from transformers import AutoTokenizer

    assert trained_instruct.template_mode is TemplateMode.NON_THINKING
    assert trained_instruct.merged_dir is not None and trained_instruct.modelfile is not None
    answers = _exact_matches(trained_instruct.merged_dir)
    assert sum(got == expected for got, expected in answers) >= 7, answers
    with trained_instruct.load_backend() as backend:
        assert backend.template_mode() is TemplateMode.NON_THINKING
        assert backend.prompt_ids("hi")[-3:] == [151644, 77091, 198]  # <|im_start|>assistant\n
    modelfile = trained_instruct.modelfile.read_text(encoding="utf-8")
    assert "<think>" not in modelfile
    match = re.search(r'^TEMPLATE """(.*?)"""$', modelfile, re.DOTALL | re.MULTILINE)
    assert match is not None
    tokenizer = AutoTokenizer.from_pretrained(trained_instruct.merged_dir)
    for history, _ in _questions():
        expected = render_prompt(tokenizer, history)
        assert render(match.group(1), ollama_values(history)) == expected
        assert "<think>" not in expected


def test_the_hybrid_export_keeps_the_think_prefill(trained: FinetuneResult) -> None:
    assert trained.template_mode is TemplateMode.HYBRID
    assert trained.modelfile is not None
    assert "<think>" in trained.modelfile.read_text(encoding="utf-8")


def test_a_thinking_only_base_model_is_refused(tmp_path: Path) -> None:
    config = load_config(
        CONFIGS / "cpu_smoke.yaml",
        model=str(tiny_checkpoint("tiny", template="thinking-2507")),
        export={"output_dir": str(tmp_path)},
        training={"progress_bar": False},
    )
    with pytest.raises(ThinkingModeError, match="Qwen3-4B-Instruct-2507"):
        run_finetune(config)
    assert not (tmp_path / "merged").exists()
