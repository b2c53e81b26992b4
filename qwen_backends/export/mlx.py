"""Convert a Qwen3 checkpoint to MLX with mlx-lm's converter, and check the result.

:func:`export_mlx` writes an MLX directory (float weights as they are, or 4-/8-bit affine
quantization) that the mlx backend loads with ``QWEN_BACKEND=mlx QWEN_MODEL=DIR``;
:func:`check_mlx_export` loads it with the mlx backend and compares it with the source:
identical non-thinking prompt ids, and greedy answers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qwen_backends._files import ensure_directory, write_failure
from qwen_backends.errors import (
    ConfigurationError,
    ModelNotFoundError,
    QwenBackendsError,
    first_line,
)
from qwen_backends.export.answers import ask, conversation_tools
from qwen_backends.models import looks_like_path

__all__ = ["MLX_QUANTIZATIONS", "MLXCheck", "MLXQuant", "check_mlx_export", "export_mlx"]

logger = logging.getLogger(__name__)

MLXQuant = Literal["4bit", "8bit", "none"]
#: ``--quant`` choices: bits per weight, or ``none`` for the source's float weights.
MLX_QUANTIZATIONS: dict[str, int | None] = {"4bit": 4, "8bit": 8, "none": None}


def export_mlx(
    model: str | Path,
    output: str | Path,
    *,
    quant: str = "4bit",
    group_size: int = 64,
    dtype: str | None = None,
) -> Path:
    """Write an MLX copy of ``model`` to ``output`` with mlx-lm's converter.

    Parameters
    ----------
    model
        A local Hugging Face-format Qwen3 directory (e.g. a merged fine-tune) or a hub id.
    output
        The new directory; it must not exist yet (or be empty). The export is written beside
        it under a hidden temporary name and renamed when complete, so a failed or interrupted
        export leaves nothing behind.
    quant
        ``"4bit"``, ``"8bit"`` (affine quantization, ``group_size`` weights per scale) or
        ``"none"`` (keep the float weights).
    group_size
        Weights per quantization scale: 32, 64 or 128; every quantized layer's input width must
        be a multiple of it (Qwen3-4B's are; for tiny test models use 32).
    dtype
        Float type of the non-quantized weights (``float16``, ``bfloat16``, ``float32``);
        ``None`` keeps the checkpoint's.

    Returns
    -------
    Path
        ``output``.

    Raises
    ------
    ConfigurationError
        For an unknown ``quant``, an existing non-empty ``output`` or a group size the model's
        widths do not allow.
    ModelNotFoundError
        When ``model`` cannot be read.
    """
    if quant not in MLX_QUANTIZATIONS:
        raise ConfigurationError(
            f"unknown MLX quantization {quant!r}; choose one of {', '.join(MLX_QUANTIZATIONS)}"
        )
    if group_size not in (32, 64, 128):
        raise ConfigurationError(f"group size {group_size} is not supported; use 32, 64 or 128")
    source = str(model)
    if looks_like_path(source) and not Path(source).expanduser().is_dir():
        raise ModelNotFoundError(
            f"model directory {source!r} does not exist; give a Hugging Face-format Qwen3 "
            "directory (config.json, *.safetensors, tokenizer files) or a hub id"
        )
    target = Path(output).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigurationError(
            f"output {target} already exists and is not empty; choose a new directory or remove it"
        )
    bits = MLX_QUANTIZATIONS[quant]
    try:
        from mlx_lm.convert import convert
    except ImportError as exc:
        from qwen_backends.errors import MissingDependencyError

        raise MissingDependencyError(
            "exporting to MLX needs mlx-lm; pip install 'qwen-backends[mlx]' "
            "(Apple silicon Mac, or Linux with glibc >= 2.35)"
        ) from exc
    # Written beside the target under a hidden name and renamed when complete: a failed or
    # interrupted export leaves nothing that blocks the re-run.
    ensure_directory(target.parent, "the MLX export", "--output")
    try:
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as exc:
        raise write_failure(exc, target.parent, "the MLX export into", "run it again") from exc
    partial.rmdir()  # mlx-lm refuses any existing path
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            convert(
                str(Path(source).expanduser()) if looks_like_path(source) else source,
                mlx_path=str(partial),
                quantize=bits is not None,
                q_bits=bits,
                q_group_size=group_size if bits is not None else None,
                dtype=dtype,
            )
        if target.exists():
            target.rmdir()  # empty (checked above); a directory cannot be renamed over it
        partial.rename(target)
    except QwenBackendsError:
        _remove_partial(partial)
        raise
    except OSError as exc:
        _remove_partial(partial)
        if exc.filename is not None and Path(exc.filename).is_relative_to(target.parent):
            raise write_failure(exc, target, "the MLX export", "run it again") from exc
        raise ModelNotFoundError(
            f"mlx-lm cannot read {source!r} ({first_line(exc)}); check that it is a readable "
            "Hugging Face-format Qwen3 checkpoint"
        ) from exc
    except Exception as exc:
        detail = first_line(exc)
        _remove_partial(partial)
        if bits is not None and ("group" in detail.lower() or "divisible" in detail.lower()):
            raise ConfigurationError(
                f"cannot quantize {source!r} with group size {group_size} ({detail}); use "
                "--group-size 32, or --quant none"
            ) from exc
        raise ModelNotFoundError(
            f"mlx-lm cannot convert {source!r} ({detail}); give a Hugging Face-format Qwen3 "
            "checkpoint (config.json, *.safetensors, tokenizer files)"
        ) from exc
    except BaseException:  # Ctrl-C: nothing half-written stays
        _remove_partial(partial)
        raise
    logger.debug("mlx-lm convert: %s", chatter.getvalue().strip())
    return target


def _remove_partial(target: Path) -> None:
    import shutil

    if target.is_dir():
        shutil.rmtree(target, ignore_errors=True)


@dataclass
class MLXCheck:
    """How an MLX export compared with its source.

    Attributes
    ----------
    directory
        The MLX export that was loaded.
    prompts_checked
        Conversations whose prompt ids were compared (all must be identical).
    answers
        ``(question, through hf, through mlx)`` for each compared greedy answer.
    """

    directory: Path
    prompts_checked: int = 0
    answers: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def matched(self) -> int:
        """Answers identical through both backends."""
        return sum(hf == mlx for _, hf, mlx in self.answers)

    @property
    def agreement(self) -> float:
        """Fraction of identical answers (1.0 when none were compared)."""
        return self.matched / len(self.answers) if self.answers else 1.0


def check_mlx_export(
    export_dir: str | Path,
    source_dir: str | Path,
    conversations: Sequence[Sequence[dict[str, Any]]],
    *,
    max_new_tokens: int = 32,
    min_agreement: float = 1.0,
) -> MLXCheck:
    """Load ``export_dir`` with the mlx backend and compare it with ``source_dir`` through hf.

    For each conversation (ending with the user turn to answer; a fine-tuning ``Chat`` brings
    its trained tools): the mlx backend's prompt ids must equal
    :func:`~qwen_backends.chat.render_prompt_ids` with the source's tokenizer, and the greedy
    answers through both backends (text and tool calls, :mod:`qwen_backends.export.answers`)
    are compared.

    Raises
    ------
    QwenBackendsError
        (a :class:`~qwen_backends.errors.ConfigurationError`) when prompt ids differ, or when
        fewer than ``min_agreement`` of the answers are identical; the message names the first
        difference.
    """
    from transformers import AutoTokenizer

    from qwen_backends.chat import render_prompt_ids
    from qwen_backends.factory import create_backend

    check = MLXCheck(Path(export_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(source_dir))
    with create_backend(backend="mlx", model=str(export_dir)) as mlx:
        for chat in conversations:
            # A fine-tuning chat with tools (finetune.data.Chat) was trained with them rendered.
            tools = conversation_tools(chat)
            options: dict[str, Any] = {"tools": tools} if tools else {}
            expected = render_prompt_ids(tokenizer, list(chat), **options)
            got = mlx.prompt_ids(list(chat), tools=tools)
            if got != expected:
                raise ConfigurationError(
                    f"the MLX export {export_dir} renders a different prompt than its source "
                    f"({len(got)} vs {len(expected)} tokens for {chat[-1]['content']!r}); its "
                    "tokenizer files were not copied intact: export again from the merged model"
                )
            check.prompts_checked += 1
        mlx_answers = [ask(mlx, chat, max_new_tokens).shown() for chat in conversations]
    with create_backend(backend="hf", model=str(source_dir)) as hf:
        hf_answers = [ask(hf, chat, max_new_tokens).shown() for chat in conversations]
    check.answers = [
        (str(chat[-1]["content"]), a, b)
        for chat, a, b in zip(conversations, hf_answers, mlx_answers, strict=True)
    ]
    if check.agreement < min_agreement:
        question, through_hf, through_mlx = next(a for a in check.answers if a[1] != a[2])
        raise ConfigurationError(
            f"the MLX export {export_dir} answers {check.matched}/{len(check.answers)} checked "
            f"questions like its source (needed {min_agreement:.0%}); e.g. {question!r}: hf "
            f"{through_hf!r}, mlx {through_mlx!r}. Quantization changes answers: export with "
            "quant: 8bit or none, or lower export.mlx.min_agreement"
        )
    return check
