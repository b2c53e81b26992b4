"""``qwen-backends make-test-model DIR``: write a random-weight Qwen3 checkpoint for tests.

``--shape qwen3-4b`` writes one with Qwen3-4B's exact shape (~8 GB in bfloat16, built tensor by
tensor) for real-size benchmarks and export checks.
"""

from __future__ import annotations

import argparse

from qwen_backends._files import ensure_directory
from qwen_backends.testing import CHECKPOINT_SIZES, REAL_SIZE, TEMPLATES, build_checkpoint


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``make-test-model`` subcommand."""
    parser = subparsers.add_parser(
        "make-test-model",
        help="write a random-weight Qwen3 checkpoint (tiny for tests, or Qwen3-4B's real shape)",
        description="Write a random-weight Qwen3 checkpoint with Qwen3-4B's tokenizer and chat "
        "template. Its output is gibberish; it exists to exercise the real loading code offline.",
    )
    parser.add_argument("directory", help="where to write it")
    parser.add_argument(
        "--size",
        "--shape",
        dest="size",
        choices=sorted(CHECKPOINT_SIZES),
        default="tiny",
        help=f"tiny (default, ~56 MB), vllm, bench, or {REAL_SIZE} (Qwen3-4B's exact shape: "
        "~8 GB in bfloat16, minutes; written a shard at a time)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--template",
        choices=TEMPLATES,
        default="hybrid",
        help="whose chat template it carries: hybrid (Qwen3-4B), instruct-2507, or "
        "thinking-2507 (which every backend refuses)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build the checkpoint and print its path."""
    ensure_directory(args.directory, "the test checkpoint", "the DIRECTORY argument")
    print(build_checkpoint(args.directory, size=args.size, seed=args.seed, template=args.template))
    return 0
