"""Load only a tokenizer (never weights): from the hub, a local directory, or ``"offline"``.

``"offline"`` builds a byte-exact Qwen3-4B tokenizer with no network access: the Qwen BPE ranks
(``qwen.tiktoken``, shipped in the ``dashscope`` package) converted by transformers'
``TikTokenConverter`` with Qwen's split pattern, NFC normalisation, the 26 added tokens in id
order, and the official Qwen3 chat template as shipped by TRL. It is built once (~3 s) and cached
under :func:`qwen_backends._cache.cache_dir`, so later loads only read it back.
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from qwen_backends._cache import build_once, cache_dir
from qwen_backends.errors import MissingDependencyError, ModelNotFoundError, first_line

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "ADDED_TOKENS",
    "OFFLINE",
    "QWEN_SPLIT_PATTERN",
    "byte_decoder",
    "load_tokenizer",
    "offline_tokenizer_dir",
]

#: The source name that selects the offline build.
OFFLINE = "offline"
#: Qwen2/Qwen3 pre-tokenizer split regex (single digits, unlike GPT-4's ``\p{N}{1,3}``).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Number of regular BPE tokens (ids 0..151642).
REGULAR_TOKENS = 151_643
#: The added tokens in id order from 151643, with whether each is ``special``.
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
#: Bump when the offline build changes, so stale caches are not reused.
_OFFLINE_BUILD_VERSION = "qwen3-4b-offline-v1"


@functools.lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-in characters -> the bytes they stand for.

    Byte-level BPE vocabularies (GPT-2's, Qwen's) spell each byte as one printable character:
    the printable Latin-1 bytes as themselves, the 68 others as U+0100 onwards in byte order.
    """
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    decoder: dict[str, int] = {}
    shifted = 0
    for byte in range(256):
        if byte in printable:
            decoder[chr(byte)] = byte
        else:
            decoder[chr(0x100 + shifted)] = byte
            shifted += 1
    return decoder


def load_tokenizer(
    source: str | None = None,
    *,
    revision: str | None = None,
    token: str | None = None,
    local_files_only: bool = False,
) -> PreTrainedTokenizerBase:
    """Load a tokenizer only.

    Parameters
    ----------
    source
        A hub id, a local directory, or ``"offline"``; ``None`` means the hf backend's default
        model (the family's, see :class:`~qwen_backends.settings.Settings`).
    revision, token, local_files_only
        Passed to ``AutoTokenizer.from_pretrained`` for hub sources.

    Raises
    ------
    ModelNotFoundError
        When the source cannot be found or downloaded; the message says how to use
        ``"offline"``.
    MissingDependencyError
        When transformers (or, for ``"offline"``, dashscope/trl) is not installed.
    """
    _require("transformers", "hf")
    from transformers import AutoTokenizer

    if source is None:
        from qwen_backends.settings import Settings

        source = Settings().default_model("hf")
    if source == OFFLINE:
        return AutoTokenizer.from_pretrained(str(offline_tokenizer_dir()))
    local = Path(source).expanduser()
    if source.startswith((".", "/", "~", "\\")) and not local.exists():
        raise ModelNotFoundError(
            f"tokenizer directory {source!r} does not exist; fix the path, give a hub id, or use "
            f"the byte-exact offline Qwen3-4B tokenizer: load_tokenizer('{OFFLINE}') / "
            f"--tokenizer {OFFLINE}"
        )
    if local.is_file():
        raise ModelNotFoundError(
            f"{source!r} is a file; pass the directory that holds tokenizer.json (or a hub id, "
            f"or {OFFLINE})"
        )
    if local.is_dir() and not any(
        (local / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")
    ):
        raise ModelNotFoundError(
            f"{source!r} holds no tokenizer (no tokenizer.json or tokenizer_config.json); pass "
            f"a model or tokenizer directory, a hub id, or {OFFLINE}"
        )
    try:
        return AutoTokenizer.from_pretrained(
            source, revision=revision, token=token, local_files_only=local_files_only
        )
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"cannot load the tokenizer of {source!r} ({first_line(exc)}); check the name or path, "
            f"or without network use the byte-exact offline Qwen3-4B tokenizer: "
            f"load_tokenizer('{OFFLINE}') / --tokenizer {OFFLINE}"
        ) from exc


def offline_tokenizer_dir() -> Path:
    """Directory of the cached offline Qwen3-4B tokenizer, building it on first use."""
    _require("dashscope", "offline")
    _require("trl", "offline")
    return build_once(cache_dir() / "tokenizers" / _OFFLINE_BUILD_VERSION, _build_offline)


def _build_offline(directory: Path) -> None:
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from trl.chat_template_utils import qwen3_chat_template

    ranks = importlib.resources.files("dashscope") / "resources" / "qwen.tiktoken"
    with importlib.resources.as_file(ranks) as ranks_path:
        backend = TikTokenConverter(
            vocab_file=str(ranks_path), pattern=QWEN_SPLIT_PATTERN
        ).converted()
    if backend.get_vocab_size() != REGULAR_TOKENS:
        raise ModelNotFoundError(
            f"dashscope's qwen.tiktoken has {backend.get_vocab_size()} tokens, expected "
            f"{REGULAR_TOKENS}; reinstall dashscope"
        )
    backend.normalizer = normalizers.NFC()
    for offset, (content, special) in enumerate(ADDED_TOKENS):
        added = AddedToken(content, special=special, normalized=False)
        if special:
            backend.add_special_tokens([added])
        else:
            backend.add_tokens([added])
        assert backend.token_to_id(content) == REGULAR_TOKENS + offset, content
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=qwen3_chat_template,
        model_max_length=131_072,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(str(directory))


def _require(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"{module} is not installed; install it with: pip install 'qwen-backends[{extra}]'"
        )
