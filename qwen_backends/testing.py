"""Small random-weight Qwen3 checkpoints for tests, demos and benchmarks (no download).

They are real ``Qwen3ForCausalLM`` models with Qwen3-4B's vocabulary, tokenizer (the offline
build), chat template, special-token ids and its *thinking-mode* ``generation_config`` -- so they
load through exactly the code path of ``Qwen/Qwen3-4B`` and prove that backends override those
defaults. Their weights are random: output is gibberish, deterministic under a seed.

``template`` picks which release's chat template the checkpoint carries (:data:`TEMPLATES`):
``"hybrid"`` (Qwen3-4B, TRL's ``qwen3.jinja``), ``"instruct-2507"`` (Qwen3-4B-Instruct-2507, TRL's
``qwen3_instruct_2507.jinja``) or ``"thinking-2507"`` (Qwen3-4B-Thinking-2507: built from the
public facts -- the Instruct-2507 template whose generation prompt opens ``<think>\n``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from qwen_backends._cache import build_once, cache_dir

__all__ = [
    "CHECKPOINT_SIZES",
    "TEMPLATES",
    "CheckpointSize",
    "build_checkpoint",
    "chat_template",
    "tiny_checkpoint",
    "tiny_gguf",
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


#: ``tiny``: ~56 MB, builds in seconds, for unit tests. ``vllm``: head_dim 64, which vLLM's CPU
#: attention accepts. ``bench``: hidden 512 / 4 layers, closer to real per-token costs.
CHECKPOINT_SIZES: dict[str, CheckpointSize] = {
    "tiny": CheckpointSize(64, 2, 4, 2, 16, 128),
    "vllm": CheckpointSize(128, 2, 2, 1, 64, 256),
    "bench": CheckpointSize(512, 4, 8, 2, 64, 1408),
}


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


def build_checkpoint(
    directory: str | Path, size: str = "tiny", seed: int = 0, template: str = "hybrid"
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
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    from qwen_backends.errors import ConfigurationError
    from qwen_backends.tokenizer import load_tokenizer

    if size not in CHECKPOINT_SIZES:
        raise ConfigurationError(
            f"unknown checkpoint size {size!r}; choose one of {', '.join(CHECKPOINT_SIZES)}"
        )
    template_text = chat_template(template)
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
    tokenizer = load_tokenizer("offline")
    tokenizer.chat_template = template_text
    tokenizer.save_pretrained(str(directory))
    return directory


def tiny_checkpoint(size: str = "tiny", seed: int = 0, template: str = "hybrid") -> Path:
    """A cached checkpoint of ``size`` with ``template``'s chat template (built on first use).

    Checkpoints that differ only in ``template`` have the same weights.
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
