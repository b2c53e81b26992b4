"""Small random-weight Qwen3 checkpoints for tests, demos and benchmarks (no download).

They are real ``Qwen3ForCausalLM`` models with Qwen3-4B's vocabulary, tokenizer (the offline
build), chat template, special-token ids and its *thinking-mode* ``generation_config`` -- so they
load through exactly the code path of ``Qwen/Qwen3-4B`` and prove that backends override those
defaults. Their weights are random: output is gibberish, deterministic under a seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from qwen_backends._cache import build_once, cache_dir

__all__ = [
    "CHECKPOINT_SIZES",
    "CheckpointSize",
    "build_checkpoint",
    "tiny_checkpoint",
    "tiny_gguf",
]


@dataclass(frozen=True)
class CheckpointSize:
    """Shape of a test checkpoint (everything else is Qwen3-4B's)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int


#: ``tiny``: ~56 MB, builds in seconds, for unit tests. ``vllm``: head_dim 64, which vLLM's CPU
#: attention accepts. ``bench``: hidden 512 / 4 layers, closer to real per-token costs.
CHECKPOINT_SIZES: dict[str, CheckpointSize] = {
    "tiny": CheckpointSize(64, 2, 4, 2, 16, 128),
    "vllm": CheckpointSize(128, 2, 2, 1, 64, 256),
    "bench": CheckpointSize(512, 4, 8, 2, 64, 1408),
}


def build_checkpoint(directory: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight Qwen3 checkpoint plus the offline tokenizer into ``directory``.

    Parameters
    ----------
    directory
        Created if missing; loadable afterwards with ``AutoModelForCausalLM.from_pretrained``.
    size
        A key of :data:`CHECKPOINT_SIZES`.
    seed
        Seed of the random initialisation (same seed, same weights).
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    from qwen_backends.errors import ConfigurationError
    from qwen_backends.tokenizer import load_tokenizer

    if size not in CHECKPOINT_SIZES:
        raise ConfigurationError(
            f"unknown checkpoint size {size!r}; choose one of {', '.join(CHECKPOINT_SIZES)}"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = Qwen3Config(
        vocab_size=151_936,
        max_position_embeddings=40_960,
        tie_word_embeddings=True,
        bos_token_id=151_643,
        eos_token_id=151_645,
        pad_token_id=151_643,
        dtype="float32",
        **asdict(CHECKPOINT_SIZES[size]),
    )
    saved_rng = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Qwen3ForCausalLM(config)
    finally:
        torch.random.set_rng_state(saved_rng)
    # Qwen3-4B ships thinking-mode sampling defaults; mirror them so tests prove backends
    # pass non-thinking values explicitly.
    model.generation_config = GenerationConfig(
        do_sample=True,
        temperature=0.6,
        top_p=0.95,
        top_k=20,
        bos_token_id=151_643,
        eos_token_id=[151_645, 151_643],
        pad_token_id=151_643,
    )
    model.save_pretrained(str(directory))
    load_tokenizer("offline").save_pretrained(str(directory))
    return directory


def tiny_checkpoint(size: str = "tiny", seed: int = 0) -> Path:
    """A cached checkpoint of ``size`` (built on first use under the cache directory)."""
    target = cache_dir() / "checkpoints" / f"qwen3-{size}-seed{seed}-v1"
    return build_once(target, lambda tmp: _build_into(tmp, size, seed))


def _build_into(directory: Path, size: str, seed: int) -> None:
    build_checkpoint(directory, size=size, seed=seed)


def tiny_gguf(quant: str = "q8_0", size: str = "tiny", seed: int = 0) -> Path:
    """:func:`tiny_checkpoint` converted to GGUF with llama.cpp's converter (cached, built once).

    For the ``llamacpp`` backend's tests and benchmarks: the same weights as the checkpoint, so
    greedy answers can be compared with the hf backend. k-quants need the ``bench`` size (the
    tiny model's tensors are too narrow and fall back to q5_0/q8_0).
    """
    from qwen_backends.export.gguf import LLAMA_CPP_VERSION, convert_to_gguf, normalize_type

    quant = normalize_type(quant)
    source = tiny_checkpoint(size, seed)
    target = cache_dir() / "gguf" / f"{source.name}-{quant}-llama.cpp-{LLAMA_CPP_VERSION}"

    def build(directory: Path) -> None:
        convert_to_gguf(source, directory / "model.gguf", quant)

    return build_once(target, build) / "model.gguf"
