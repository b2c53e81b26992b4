"""Memory estimates from a model's shape: parameters, KV cache, GGUF headers, info's report."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from qwen_backends.memory import (
    QWEN3_4B,
    ModelShape,
    _malloc_trim,
    backend_need,
    config_shape,
    gguf_shape,
    kv_cache_bytes,
    release_free_heap,
)
from qwen_backends.settings import Settings

GIB = 1024**3


def test_qwen3_4b_parameters_and_kv_cache_from_its_config() -> None:
    config = {
        "hidden_size": 2560,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 9728,
        "vocab_size": 151_936,
        "tie_word_embeddings": True,
    }
    assert ModelShape.from_config(config) == QWEN3_4B
    untied = ModelShape.from_config({**config, "tie_word_embeddings": False})
    assert untied.parameters - QWEN3_4B.parameters == 151_936 * 2560
    # 36 layers x 8 KV heads x 128 x (K and V) x 2 bytes = 144 KiB a token.
    assert kv_cache_bytes(QWEN3_4B, 1) == 144 * 1024
    assert kv_cache_bytes(QWEN3_4B, 32_768) == 4.5 * GIB
    assert kv_cache_bytes(QWEN3_4B, 8_192, bytes_per_value=1) == 0.5625 * GIB


def test_the_shape_of_a_checkpoint_matches_its_weights(tiny_model_dir: Path) -> None:
    from transformers import AutoConfig

    from qwen_backends.backends.torch_devices import count_parameters

    shape = config_shape(tiny_model_dir)
    assert shape is not None and (shape.layers, shape.kv_heads, shape.head_dim) == (2, 2, 16)
    counted = count_parameters(AutoConfig.from_pretrained(tiny_model_dir), False)
    assert shape.parameters == counted
    assert config_shape(tiny_model_dir / "missing") is None


def test_gguf_header_gives_the_kv_geometry(tmp_path: Path) -> None:
    from qwen_backends.testing import tiny_gguf

    assert gguf_shape(tiny_gguf("q8_0")) == ModelShape(0, 2, 2, 16)
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"GGML" + bytes(40))
    assert gguf_shape(not_gguf) is None
    truncated = tmp_path / "t.gguf"
    truncated.write_bytes(tiny_gguf("q8_0").read_bytes()[:64])
    assert gguf_shape(truncated) is None


def test_llamacpp_need_counts_the_kv_cache_of_n_ctx(tmp_path: Path) -> None:
    from qwen_backends.testing import tiny_gguf

    path = tiny_gguf("q8_0")
    small = backend_need("llamacpp", Settings(backend="llamacpp", model=str(path)))
    large = backend_need(
        "llamacpp", Settings(backend="llamacpp", model=str(path), llamacpp={"n_ctx": 16_384})
    )
    assert small is not None and large is not None
    tiny = ModelShape(0, 2, 2, 16)
    assert large.needed - small.needed == kv_cache_bytes(tiny, 16_384 - 8_192)
    assert "n_ctx=16,384" in large.describe() and "GiB available here" in large.describe()
    # The default model (a hub id, not on disk) is Qwen3-4B: its Q4_K_M plus 8,192 tokens.
    default = backend_need("llamacpp", Settings(backend="llamacpp"))
    assert default is not None
    assert default.needed > 2.3 * GIB + kv_cache_bytes(QWEN3_4B, 8_192)


def test_hf_need_is_the_low_memory_estimate(tiny_model_dir: Path) -> None:
    from qwen_backends.backends.torch_devices import estimated_load_bytes

    settings = Settings(backend="hf", model=str(tiny_model_dir), hf={"dtype": "bfloat16"})
    need = backend_need("hf", settings)
    shape = config_shape(tiny_model_dir)
    assert need is not None and shape is not None
    assert need.needed == estimated_load_bytes(shape.parameters, "bfloat16")
    assert "in bfloat16 on cpu" in need.describe()
    hub = backend_need("hf", Settings(backend="hf", hf={"dtype": "float32"}))
    assert hub is not None and "4.02B parameters in float32" in hub.describe()
    assert backend_need("vllm", Settings(backend="vllm")) is None


@pytest.mark.parametrize("fits", [True, False])
def test_describe_says_whether_it_fits(fits: bool) -> None:
    from qwen_backends.memory import MemoryNeed

    need = MemoryNeed(4 * GIB, (8 if fits else 2) * GIB, "x")
    assert need.describe().endswith("fits") is fits
    assert MemoryNeed(GIB, None, "x").describe() == "needs ~1.0 GiB (x)"


def test_info_reports_what_each_local_backend_needs() -> None:
    from qwen_backends.cli.info import collect

    report = collect(Settings(backend="hf"))
    assert "parameters in" in report["memory"]["hf"]
    assert "n_ctx=8,192" in report["memory"]["llamacpp"]
    assert {"vllm", "ollama"}.isdisjoint(report["memory"])
    json.dumps(report)


# -- fine-tuning -----------------------------------------------------------------------------------


def _finetune_config(**changes: object) -> object:
    from qwen_backends.finetune import load_config

    smoke = Path(__file__).resolve().parents[1] / "configs" / "finetune" / "cpu_smoke.yaml"
    return load_config(smoke, **changes)


def test_lora_parameters_of_qwen3_4b() -> None:
    from qwen_backends.memory import QWEN3_4B_CONFIG, lora_parameters

    # r x (in + out) of each projection, 36 layers: q 2560+4096, k and v 2560+1024, o 4096+2560.
    attention = lora_parameters(QWEN3_4B_CONFIG, 8, ["q_proj", "k_proj", "v_proj", "o_proj"])
    assert attention == 36 * 8 * (6656 + 3584 + 3584 + 6656)
    every = lora_parameters(
        QWEN3_4B_CONFIG,
        32,
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    assert every == 36 * 32 * (6656 * 2 + 3584 * 2 + 3 * 12288)


def test_real_size_float32_finetune_needs_more_than_this_machine() -> None:
    from qwen_backends.memory import finetune_need

    real = _finetune_config(model="Qwen/Qwen3-4B", export={"gguf": []})
    need = finetune_need(real, "float32", 24 * GIB)
    # Weights alone are 15 GiB; 9 x 256 tokens of activations come on top.
    assert need.needed > 24 * GIB and "does NOT fit" in need.describe()
    short = real.replace(  # type: ignore[attr-defined]
        max_seq_length=64, training={"per_device_train_batch_size": 1}
    )
    bf16 = finetune_need(short, "bfloat16", 24 * GIB)
    assert 8 * GIB < bf16.needed < 12 * GIB
    checked = short.replace(export={"gguf": ["q8_0"]})  # type: ignore[attr-defined]
    # The GGUF check loads the merged model again, in float32, beside the trained one.
    with_check = finetune_need(checked, "bfloat16", None)
    assert with_check.needed > bf16.needed + 13 * GIB and "loads the merged model" in (
        with_check.detail
    )


def test_the_pipeline_refuses_a_run_that_cannot_fit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from qwen_backends.backends import torch_devices
    from qwen_backends.errors import ConfigurationError
    from qwen_backends.finetune import run_finetune

    monkeypatch.setattr(torch_devices, "free_memory", lambda device: GIB)
    config = _finetune_config(model="Qwen/Qwen3-4B", export={"output_dir": str(tmp_path)})
    with pytest.raises(ConfigurationError, match=r"would need ~\d+\.\d GiB of RAM but 1\.0 GiB"):
        run_finetune(config)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())  # refused before anything was loaded or written


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_the_c_heap_can_be_given_back_on_glibc() -> None:
    assert _malloc_trim() is not None
    release_free_heap()  # returns; what it frees is measured by bench_prompt_cache --memory
