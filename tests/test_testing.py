"""The random-weight test checkpoints load like Qwen3-4B and carry its thinking defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_backends.errors import ConfigurationError
from qwen_backends.testing import build_checkpoint


def test_tiny_checkpoint_loads_like_the_hub_model(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert model.config.vocab_size == 151_936 and model.config.eos_token_id == 151_645
    assert len(tokenizer) == 151_669
    # Qwen3-4B's shipped generation_config has thinking-mode values; the test model mirrors it.
    assert (model.generation_config.temperature, model.generation_config.top_p) == (0.6, 0.95)


def test_same_seed_same_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    import torch
    from safetensors.torch import load_file

    rng_before = torch.random.get_rng_state()
    build_checkpoint(tmp_path / "again", seed=0)
    assert torch.equal(rng_before, torch.random.get_rng_state())
    first = load_file(tiny_model_dir / "model.safetensors")
    second = load_file(tmp_path / "again" / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_unknown_size() -> None:
    with pytest.raises(ConfigurationError, match="unknown checkpoint size 'huge'"):
        build_checkpoint("unused", size="huge")
