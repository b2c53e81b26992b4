"""``qwen-backends eval``: run a prompt set through a backend; ``eval compare``: compare runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qwen_backends._files import ensure_directory, write_failure
from qwen_backends.cli._options import (
    add_backend_options,
    add_sampling_options,
    sampling_from_args,
    settings_from_args,
)
from qwen_backends.errors import ConfigurationError
from qwen_backends.evaluation import compare_runs, format_summary, run_evaluation
from qwen_backends.evaluation.runner import run_directory
from qwen_backends.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand and its ``compare`` subcommand."""
    parser = subparsers.add_parser(
        "eval",
        help="run a JSONL prompt set through a backend, or compare two runs",
        description="Run every prompt of the configured prompt set (evaluation.prompts) through "
        "the selected backend in non-thinking mode, writing outputs.jsonl and summary.json "
        "under evaluation.output_dir/RUN_NAME. Running the same command again resumes.",
    )
    add_backend_options(parser)
    group = parser.add_argument_group("evaluation (override the config's evaluation section)")
    group.add_argument("--prompts", help="JSONL prompt set")
    group.add_argument("--output-dir", help="directory holding the runs")
    group.add_argument("--run-name", help="run folder name (default: the backend name)")
    group.add_argument("--limit", type=int, help="only the first N prompts")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_sampling_options(parser)
    commands = parser.add_subparsers(dest="eval_command", metavar="{compare}")
    compare = commands.add_parser(
        "compare",
        help="markdown side-by-side report of two runs, with a prompt-parity check",
        description="Compare two run directories: summary metrics, prompt parity (the same "
        "conversation rendered to the same non-thinking prompt) and every answer side by side.",
    )
    compare.add_argument("run_a", metavar="RUN_A", help="first run directory")
    compare.add_argument("run_b", metavar="RUN_B", help="second run directory")
    compare.add_argument("--output", "-o", help="write the report here instead of printing it")
    parser.set_defaults(handler=run, eval_command=None)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the run or to ``compare``."""
    if args.eval_command == "compare":
        return run_compare(args)
    settings = eval_settings(args)
    run_dir = run_directory(settings)
    try:
        result = run_evaluation(settings, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(
            f"qwen-backends: interrupted; finished prompts are saved in {run_dir}; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    if result.dropped_partial:
        print("removed an incomplete record left by an interrupted run", file=sys.stderr)
    if result.repaired_manifest:
        print("run.json was damaged; rewrote it from the saved records", file=sys.stderr)
    title = f"run {run_dir}: {settings.backend} / {settings.model_name}"
    if result.skipped:
        title += f" (resumed: {result.skipped} already done)"
    print(format_summary(result.summary, title=title))
    print(f"outputs: {result.outputs_path}")
    print(f"summary: {result.summary_path}")
    return 0


def eval_settings(args: argparse.Namespace) -> Settings:
    """Settings from every source with the command line's evaluation and sampling flags on top."""
    settings = settings_from_args(args)
    evaluation: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("prompts", "output_dir", "run_name", "limit")
        if getattr(args, name) is not None
    }
    sampling = sampling_from_args(args, settings.sampling)
    changes: dict[str, Any] = {}
    if evaluation:
        changes["evaluation"] = evaluation
    if sampling != settings.sampling:
        changes["sampling"] = sampling.model_dump()
    return settings.replace(**changes)


def run_compare(args: argparse.Namespace) -> int:
    """Print (or write) the comparison report and the parity verdict."""
    comparison = compare_runs(args.run_a, args.run_b)
    if not args.output:
        print(comparison.markdown, end="")
        return 0
    output = Path(args.output)
    if output.is_dir():
        raise ConfigurationError(f"--output {output} is a directory; name a file to write")
    ensure_directory(output.parent, "the report", "--output")
    try:
        output.write_text(comparison.markdown, encoding="utf-8")
    except OSError as exc:
        raise write_failure(exc, output, "report", "run the comparison again") from exc
    parity = comparison.parity
    verdict = (
        "identical"
        if parity.identical
        else f"not checked ({parity.not_checked})"
        if parity.not_checked
        else "not checked"
        if parity.compared == 0
        else f"{len(parity.mismatches)} of {parity.compared} prompts differ"
    )
    print(f"report written to {output}; prompt parity: {verdict}")
    for warning in comparison.warnings:
        print("warning: " + warning.replace("**", ""), file=sys.stderr)
    return 0
