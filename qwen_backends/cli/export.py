"""``qwen-backends export``: write a checkpoint in another runtime's format.

A subcommand group: ``export gguf`` (llama.cpp / Ollama) and ``export mlx`` (the mlx backend);
another format registers as one more entry of :data:`ACTIONS`. The library work lives in
:mod:`qwen_backends.export`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["ACTIONS", "register"]


def _register_gguf(actions: argparse._SubParsersAction) -> None:
    from qwen_backends.export.gguf import GGUF_TYPES

    gguf = actions.add_parser(
        "gguf",
        help="convert a Hugging Face / merged Qwen3 folder to a GGUF file (llama.cpp, Ollama)",
        description="Convert with llama.cpp's own convert_hf_to_gguf.py (f32/f16/bf16/q8_0) and "
        "quantize from f16 with llama.cpp's quantizer (k-quants such as q4_k_m), then load the "
        "file with the llamacpp backend and check that its chat template renders the same "
        "prompt ids as the checkpoint's and that <|im_end|> ends generation.",
    )
    gguf.add_argument("model_dir", metavar="MODEL_DIR", help="checkpoint folder (save_pretrained)")
    gguf.add_argument("--output", required=True, metavar="FILE", help="the .gguf file to write")
    gguf.add_argument(
        "--quant",
        default="q8_0",
        type=str.lower,
        choices=GGUF_TYPES,
        metavar="TYPE",
        help=f"weight type (default q8_0): {', '.join(GGUF_TYPES)}",
    )
    gguf.add_argument(
        "--no-verify",
        action="store_true",
        help="skip loading the result in llama.cpp to check its template and end token",
    )
    gguf.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="threads for quantizing/checking (1 or more)",
    )
    gguf.add_argument("--force", action="store_true", help="replace the output file if it exists")
    gguf.set_defaults(handler=run_gguf)


def _positive_int(text: str) -> int:
    """argparse type: a whole number of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def _register_mlx(actions: argparse._SubParsersAction) -> None:
    """Add ``export mlx MODEL_DIR --output DIR [--quant 4bit|8bit|none]``."""
    from qwen_backends.export.mlx import MLX_QUANTIZATIONS

    parser = actions.add_parser(
        "mlx",
        help="an MLX copy for the mlx backend (Apple silicon; CPU on Linux), 4/8-bit or float",
        description="Convert with mlx-lm's converter, then load the result with "
        "QWEN_BACKEND=mlx QWEN_MODEL=DIR. Needs pip install 'qwen-backends[mlx]'.",
    )
    parser.add_argument("model", metavar="MODEL_DIR", help="HF-format directory or hub id")
    parser.add_argument("--output", required=True, metavar="DIR", help="new directory to write")
    parser.add_argument(
        "--quant",
        choices=list(MLX_QUANTIZATIONS),
        default="4bit",
        help="weights: 4bit (default; what Qwen publishes for MLX), 8bit, or none (float)",
    )
    parser.add_argument(
        "--group-size",
        type=int,
        choices=(32, 64, 128),
        default=64,
        help="weights per quantization scale (default 64; 32 for tiny test models)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float16", "bfloat16", "float32"),
        help="float type of unquantized weights (default: the checkpoint's)",
    )
    parser.set_defaults(handler=run_mlx)


#: ``export`` actions: name -> function adding its parser to the group.
ACTIONS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "gguf": _register_gguf,
    "mlx": _register_mlx,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand group and its actions."""
    parser = subparsers.add_parser(
        "export",
        help="write a checkpoint in another runtime's format (gguf, mlx)",
        description="Convert a Hugging Face Qwen3 checkpoint folder (for example a fine-tuning "
        "run's merged/) for another runtime.",
    )
    actions = parser.add_subparsers(dest="export_format", metavar="FORMAT", required=True)
    for add in ACTIONS.values():
        add(actions)


def run_gguf(args: argparse.Namespace) -> int:
    """Convert, check in llama.cpp, print where the file is and how to use it."""
    from pathlib import Path

    from qwen_backends.export.gguf import convert_to_gguf, verify_gguf

    path = convert_to_gguf(
        args.model_dir, args.output, args.quant, threads=args.threads, overwrite=args.force
    )
    if not args.no_verify:
        report = verify_gguf(
            path, tokenizer_dir=Path(args.model_dir), quant=args.quant, threads=args.threads or 1
        )
        print(
            f"checked in llama.cpp: {report.prompts_checked} prompts render identically, "
            "<|im_end|> ends generation"
        )
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:,.1f} MiB)")
    print(f"use it: QWEN_BACKEND=llamacpp QWEN_MODEL={path} qwen-backends generate 'Hello'")
    return 0


def run_mlx(args: argparse.Namespace) -> int:
    """Convert and print the directory written and how to use it."""
    from qwen_backends.export.mlx import export_mlx

    target = export_mlx(
        args.model, args.output, quant=args.quant, group_size=args.group_size, dtype=args.dtype
    )
    shown = str(target) if target.is_absolute() else f"./{target}"
    print(shown)
    print(f"use it: QWEN_BACKEND=mlx QWEN_MODEL={shown} qwen-backends generate 'Hello'")
    return 0
