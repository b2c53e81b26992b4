"""``qwen-backends export ...``: convert a Qwen3 checkpoint for another runtime.

Each format registers one action on the ``export`` group (``register_mlx`` here); the library
work lives in :mod:`qwen_backends.export`.
"""

from __future__ import annotations

import argparse

__all__ = ["register", "register_mlx", "run_mlx"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand group and its actions."""
    parser = subparsers.add_parser(
        "export",
        help="convert a Qwen3 checkpoint for another runtime (mlx)",
        description="Convert a Hugging Face-format Qwen3 checkpoint (e.g. a merged fine-tune) "
        "into another runtime's format.",
    )
    actions = parser.add_subparsers(dest="export_command", metavar="FORMAT", required=True)
    register_mlx(actions)


def register_mlx(actions: argparse._SubParsersAction) -> None:
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
