"""``qwen-backends finetune --config FILE``: run a LoRA fine-tune described by a YAML file."""

from __future__ import annotations

import argparse
from typing import Any

from qwen_backends.finetune.config import load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``finetune`` subcommand."""
    parser = subparsers.add_parser(
        "finetune",
        help="LoRA fine-tune (unsloth on a GPU, peft anywhere) and export for hf and Ollama",
        description="Fine-tune Qwen3 with LoRA as a YAML file describes (see configs/finetune/), "
        "save the adapter and the merged model, and write a non-thinking Ollama Modelfile.",
    )
    parser.add_argument("--config", required=True, help="fine-tuning YAML file")
    parser.add_argument("--engine", choices=("unsloth", "peft"), help="overrides engine:")
    parser.add_argument("--model", help="overrides model: (hub id or local folder)")
    parser.add_argument("--output-dir", help="overrides export.output_dir")
    parser.add_argument("--max-steps", type=int, help="overrides training.max_steps")
    parser.add_argument(
        "--no-progress", action="store_true", help="hide progress bars (logs still print)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the config, train, print where everything went."""
    from qwen_backends.finetune.pipeline import run_finetune

    changes: dict[str, Any] = {}
    if args.engine:
        changes["engine"] = args.engine
    if args.model:
        changes["model"] = args.model
    if args.output_dir:
        changes["export"] = {"output_dir": args.output_dir}
    training: dict[str, Any] = {}
    if args.max_steps is not None:
        training["max_steps"] = args.max_steps
    if args.no_progress:
        training["progress_bar"] = False
    if training:
        changes["training"] = training
    config = load_config(args.config, **changes)
    result = run_finetune(config)
    print(result.summary())
    return 0
