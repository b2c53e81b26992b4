"""Small random-weight Qwen3 checkpoints for tests, demos and benchmarks (no download).

They are real ``Qwen3ForCausalLM`` models with Qwen3-4B's vocabulary, tokenizer (the offline
build), chat template, special-token ids and its *thinking-mode* ``generation_config`` -- so they
load through exactly the code path of ``Qwen/Qwen3-4B`` and prove that backends override those
defaults. Their weights are random: output is gibberish, deterministic under a seed.

``template`` picks which release's chat template the checkpoint carries (:data:`TEMPLATES`):
``"hybrid"`` (Qwen3-4B, TRL's ``qwen3.jinja``), ``"instruct-2507"`` (Qwen3-4B-Instruct-2507, TRL's
``qwen3_instruct_2507.jinja``) or ``"thinking-2507"`` (Qwen3-4B-Thinking-2507: built from the
public facts -- the Instruct-2507 template whose generation prompt opens ``<think>\n``).

``qwen3-4b`` is Qwen3-4B's exact shape (4.0B parameters, ~8 GB in bfloat16): the same cost per
token as the real model, for real-size benchmarks and export checks. It is written tensor by
tensor (:func:`write_streamed_weights`), never holding a float32 copy of the model, so building it
needs about one shard of memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qwen_backends._cache import build_once, cache_dir

__all__ = [
    "CHECKPOINT_SIZES",
    "REAL_SIZE",
    "STREAMED_SIZES",
    "TEMPLATES",
    "CheckpointSize",
    "build_checkpoint",
    "chat_template",
    "qwen3_config",
    "tiny_checkpoint",
    "tiny_gguf",
    "write_streamed_weights",
]

#: Chat templates a test checkpoint can carry, one per Qwen3-4B release.
TEMPLATES = ("hybrid", "instruct-2507", "thinking-2507")
_GENERATION_PROMPT = "{{- '<|im_start|>assistant\\n' }}"


@dataclass(frozen=True)
class CheckpointSize:
    """Shape of a test checkpoint (everything else is Qwen3-4B's)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int


#: The size with Qwen3-4B's exact shape.
REAL_SIZE = "qwen3-4b"

#: ``tiny``: ~56 MB, builds in seconds, for unit tests. ``vllm``: head_dim 64, which vLLM's CPU
#: attention accepts. ``bench``: hidden 512 / 4 layers, closer to real per-token costs.
#: ``qwen3-4b``: Qwen3-4B's exact shape (``../shared/reference/qwen3.md``), ~8 GB in bfloat16.
CHECKPOINT_SIZES: dict[str, CheckpointSize] = {
    "tiny": CheckpointSize(64, 2, 4, 2, 16, 128),
    "vllm": CheckpointSize(128, 2, 2, 1, 64, 256),
    "bench": CheckpointSize(512, 4, 8, 2, 64, 1408),
    REAL_SIZE: CheckpointSize(2560, 36, 32, 8, 128, 9728),
}
#: Sizes written tensor by tensor in bfloat16 (the others: a float32 model, ``save_pretrained``).
STREAMED_SIZES = frozenset({REAL_SIZE})
#: Bytes of one weight shard of a streamed checkpoint (the build holds about one in memory).
SHARD_BYTES = 1 << 30


def chat_template(template: str) -> str:
    """The chat template of release ``template`` (a key of :data:`TEMPLATES`).

    Raises
    ------
    ConfigurationError
        For an unknown name.
    """
    from qwen_backends.errors import ConfigurationError

    if template not in TEMPLATES:
        raise ConfigurationError(
            f"unknown chat template {template!r}; choose one of {', '.join(TEMPLATES)}"
        )
    from trl import chat_template_utils

    if template == "hybrid":
        return str(chat_template_utils.qwen3_chat_template)
    instruct = str(chat_template_utils.qwen3_instruct_2507_chat_template)
    if template == "instruct-2507":
        return instruct
    if instruct.count(_GENERATION_PROMPT) != 1:
        raise ConfigurationError(
            "TRL's qwen3_instruct_2507.jinja changed shape (no single generation prompt); "
            "update qwen_backends.testing.chat_template"
        )
    # Thinking-2507 hands over to the model inside an opened think block.
    return instruct.replace(_GENERATION_PROMPT, "{{- '<|im_start|>assistant\\n<think>\\n' }}")


def qwen3_config(size: str = "tiny", dtype: str = "float32") -> Any:
    """The ``Qwen3Config`` of checkpoint ``size``: Qwen3-4B's except for the shape.

    Raises
    ------
    ConfigurationError
        For an unknown size.
    """
    from transformers import Qwen3Config

    from qwen_backends.errors import ConfigurationError

    if size not in CHECKPOINT_SIZES:
        raise ConfigurationError(
            f"unknown checkpoint size {size!r}; choose one of {', '.join(CHECKPOINT_SIZES)}"
        )
    # The small sizes keep transformers' default rope theta, which their tests rely on.
    rope: dict[str, Any] = {"rope_theta": 1_000_000.0} if size == REAL_SIZE else {}
    return Qwen3Config(
        vocab_size=151_936,
        max_position_embeddings=40_960,
        tie_word_embeddings=True,
        bos_token_id=151_643,
        eos_token_id=151_645,
        pad_token_id=151_643,
        rms_norm_eps=1e-6,
        dtype=dtype,
        **rope,
        **asdict(CHECKPOINT_SIZES[size]),
    )


def _thinking_generation_config() -> Any:
    """Qwen3-4B's shipped generation_config: thinking-mode sampling defaults.

    Mirrored so that tests prove backends pass non-thinking values explicitly.
    """
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=True,
        temperature=0.6,
        top_p=0.95,
        top_k=20,
        bos_token_id=151_643,
        eos_token_id=[151_645, 151_643],
        pad_token_id=151_643,
    )


def build_checkpoint(
    directory: str | Path,
    size: str = "tiny",
    seed: int = 0,
    template: str = "hybrid",
    *,
    streamed: bool | None = None,
) -> Path:
    """Write a random-weight Qwen3 checkpoint plus the offline tokenizer into ``directory``.

    Parameters
    ----------
    directory
        Created if missing; loadable afterwards with ``AutoModelForCausalLM.from_pretrained``.
    size
        A key of :data:`CHECKPOINT_SIZES`.
    seed
        Seed of the random initialisation (same seed, same weights).
    template
        Whose chat template the tokenizer carries: a key of :data:`TEMPLATES`.
    streamed
        Write bfloat16 weights tensor by tensor (:func:`write_streamed_weights`) instead of
        building a float32 model and saving it; ``None``: only for :data:`STREAMED_SIZES`.
        The two ways give different (equally random) weights.

    Raises
    ------
    ConfigurationError
        For an unknown size or template.
    """
    import torch
    from transformers import Qwen3ForCausalLM

    from qwen_backends.tokenizer import load_tokenizer

    if streamed is None:
        streamed = size in STREAMED_SIZES
    config = qwen3_config(size, "bfloat16" if streamed else "float32")
    template_text = chat_template(template)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if streamed:
        write_streamed_weights(config, directory, seed)
        # What save_pretrained records of a model: converters (llama.cpp's) read it.
        config.architectures = [Qwen3ForCausalLM.__name__]
        config.save_pretrained(str(directory))
        _thinking_generation_config().save_pretrained(str(directory))
    else:
        saved_rng = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = Qwen3ForCausalLM(config)
        finally:
            torch.random.set_rng_state(saved_rng)
        model.generation_config = _thinking_generation_config()
        model.save_pretrained(str(directory))
    tokenizer = load_tokenizer("offline")
    tokenizer.chat_template = template_text
    tokenizer.save_pretrained(str(directory))
    return directory


def write_streamed_weights(
    config: Any, directory: Path, seed: int = 0, shard_bytes: int = SHARD_BYTES
) -> list[Path]:
    """Write random weights for ``config`` as safetensors shards, one shard in memory at a time.

    The tensor names and shapes come from the model built on the meta device (no memory); each
    tensor is drawn directly in the config's dtype from its own generator (seeded by ``seed``
    and its name), so no float32 copy of the model ever exists and the weights do not depend on
    the shard size. Norm weights are ones, the rest normal with ``config.initializer_range``,
    as transformers initialises them. Tied weights are stored once, as ``save_pretrained`` does.

    Returns
    -------
    list[Path]
        The shard files: ``model.safetensors`` alone, or ``model-0000N-of-0000M.safetensors``
        plus ``model.safetensors.index.json``.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    dtype = config.dtype if isinstance(config.dtype, torch.dtype) else getattr(torch, config.dtype)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    # named_parameters() yields a tied parameter once, under its first name (the embedding).
    specs = [(name, tuple(param.shape)) for name, param in skeleton.named_parameters()]
    element = torch.empty((), dtype=dtype).element_size()
    shards = list(_plan_shards(specs, element, shard_bytes))
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    )
    weight_map: dict[str, str] = {}
    for file_name, shard in zip(names, shards, strict=True):
        tensors = {
            name: _random_tensor(name, shape, dtype, seed, config.initializer_range)
            for name, shape in shard
        }
        save_file(tensors, str(directory / file_name), metadata={"format": "pt"})
        del tensors  # before the next shard is drawn
        weight_map.update(dict.fromkeys((name for name, _ in shard), file_name))
    if len(shards) > 1:
        total = sum(_numel(shape) * element for _, shape in specs)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return [directory / name for name in names]


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dimension in shape:
        count *= dimension
    return count


def _plan_shards(
    specs: list[tuple[str, tuple[int, ...]]], element: int, shard_bytes: int
) -> Iterator[list[tuple[str, tuple[int, ...]]]]:
    """Consecutive tensors grouped into shards of at most ``shard_bytes`` (a bigger tensor
    gets a shard of its own)."""
    shard: list[tuple[str, tuple[int, ...]]] = []
    used = 0
    for name, shape in specs:
        size = _numel(shape) * element
        if shard and used + size > shard_bytes:
            yield shard
            shard, used = [], 0
        shard.append((name, shape))
        used += size
    if shard:
        yield shard


def _random_tensor(name: str, shape: tuple[int, ...], dtype: Any, seed: int, std: float) -> Any:
    import zlib

    import torch

    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.empty(shape, dtype=dtype).normal_(0.0, std, generator=generator)


def tiny_checkpoint(size: str = "tiny", seed: int = 0, template: str = "hybrid") -> Path:
    """A cached checkpoint of ``size`` with ``template``'s chat template (built on first use).

    Checkpoints that differ only in ``template`` have the same weights. ``size="qwen3-4b"``
    builds the real-size checkpoint (~8 GB, minutes) once.
    """
    kind = "" if template == "hybrid" else f"-{template}"
    target = cache_dir() / "checkpoints" / f"qwen3-{size}{kind}-seed{seed}-v1"
    return build_once(target, lambda tmp: _build_into(tmp, size, seed, template))


def _build_into(directory: Path, size: str, seed: int, template: str) -> None:
    build_checkpoint(directory, size=size, seed=seed, template=template)


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
