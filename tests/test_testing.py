"""The random-weight test checkpoints load like Qwen3-4B and carry its thinking defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_backends.errors import ConfigurationError
from qwen_backends.testing import (
    REAL_SIZE,
    build_checkpoint,
    qwen3_config,
    tiny_checkpoint,
    write_streamed_weights,
)


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


# -- Qwen3-4B's real shape, written tensor by tensor ----------------------------------------------


def test_the_real_size_shape_is_qwen3_4bs_config() -> None:
    from qwen_backends.backends.torch_devices import count_parameters

    config = qwen3_config(REAL_SIZE, "bfloat16")
    shape = (
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
        config.intermediate_size,
    )
    assert shape == (2560, 36, 32, 8, 128, 9728)
    assert (config.vocab_size, config.tie_word_embeddings) == (151_936, True)
    assert config.rms_norm_eps == 1e-6 and config.max_position_embeddings == 40_960
    assert config.rope_parameters["rope_theta"] == 1_000_000.0
    assert count_parameters(config, trust_remote_code=False) == 4_022_468_096  # Qwen3-4B's


def test_streamed_weights_are_sharded_bf16_and_independent_of_the_shard_size(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    config = qwen3_config("tiny", "bfloat16")
    rng_before = torch.random.get_rng_state()
    small = tmp_path / "small"
    small.mkdir()
    shards = write_streamed_weights(config, small, seed=1, shard_bytes=1 << 16)
    assert torch.equal(rng_before, torch.random.get_rng_state())
    # The 151,936 x 64 embedding (19 MB) gets a shard of its own; the rest fills 64 KiB shards.
    assert len(shards) > 2 and shards[0].name == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((small / "model.safetensors.index.json").read_text())
    loaded = {}
    for shard in shards:
        tensors = load_file(shard)
        assert shard.stat().st_size <= (1 << 16) + 4096 or len(tensors) == 1
        assert all(index["weight_map"][name] == shard.name for name in tensors)
        loaded.update(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in loaded.values())
    # Same names as save_pretrained writes (the tied lm_head is not stored).
    assert loaded.keys() == load_file(tiny_model_dir / "model.safetensors").keys()
    assert {t.dtype for t in loaded.values()} == {torch.bfloat16}
    assert torch.equal(loaded["model.norm.weight"], torch.ones(64, dtype=torch.bfloat16))
    embedding = loaded["model.embed_tokens.weight"].float()
    assert abs(embedding.std().item() - config.initializer_range) < 0.002

    whole = tmp_path / "whole"
    whole.mkdir()
    (single,) = write_streamed_weights(config, whole, seed=1)
    assert single.name == "model.safetensors"
    again = load_file(single)
    assert all(torch.equal(again[name], loaded[name]) for name in loaded)
    other_seed = tmp_path / "other"
    other_seed.mkdir()
    (different,) = write_streamed_weights(config, other_seed, seed=2)
    assert not torch.equal(
        load_file(different)["model.embed_tokens.weight"], again["model.embed_tokens.weight"]
    )


def test_a_streamed_checkpoint_loads_like_the_hub_model(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = build_checkpoint(
        tmp_path / "m", size="tiny", template="instruct-2507", streamed=True
    )
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert model.dtype == torch.bfloat16  # Qwen3-4B's torch_dtype, kept by "auto" loading
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.generation_config.temperature == 0.6
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]  # llama.cpp's converter needs it
    assert "<think>" not in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    with torch.no_grad():
        logits = model(torch.tensor([[9707, 11, 1879, 0]])).logits
    assert logits.shape == (1, 4, 151_936) and bool(torch.isfinite(logits).all())


@pytest.mark.realsize
def test_the_cached_real_size_checkpoint_has_qwen3_4bs_weights() -> None:
    from safetensors import safe_open

    directory = tiny_checkpoint(REAL_SIZE)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 4_022_468_096 * 2  # bfloat16
    assert len(index["weight_map"]) == 1 + 36 * 11 + 1
    shard = directory / index["weight_map"]["model.layers.35.mlp.down_proj.weight"]
    with safe_open(str(shard), framework="pt") as weights:
        down = weights.get_slice("model.layers.35.mlp.down_proj.weight")
        assert (down.get_shape(), down.get_dtype()) == ([2560, 9728], "BF16")
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["dtype"]) == (
        2560,
        36,
        "bfloat16",
    )
