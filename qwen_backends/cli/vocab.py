"""``qwen-backends vocab english``: Qwen3-4B's English vocabulary from the tokenizer alone."""

from __future__ import annotations

import argparse
import sys

from qwen_backends.vocab.categories import TIER_NAMES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``vocab`` subcommand (with its ``english`` action)."""
    parser = subparsers.add_parser(
        "vocab",
        help="study the vocabulary (tokenizer only, no weights)",
        description="Tokenizer-only views of the vocabulary; never loads model weights.",
    )
    actions = parser.add_subparsers(dest="vocab_command", metavar="ACTION", required=True)
    english = actions.add_parser(
        "english",
        help="extract the English tokens, validate them, write a report directory",
        description="Classify every token (exactly one category each), extract a tier "
        "(strict < ascii < english), validate it, and write tokens.tsv, token_ids.npy, "
        "summary.json, report.md and categories.png into --output.",
    )
    english.add_argument(
        "--tokenizer",
        metavar="SOURCE",
        help="hub id, local directory, or 'offline' for the byte-exact offline Qwen3-4B "
        "tokenizer (default: the hf backend's model: hf.model, else the QWEN_FAMILY model)",
    )
    english.add_argument(
        "--tier", choices=TIER_NAMES, default="english", help="tier to extract (default english)"
    )
    english.add_argument("--output", required=True, metavar="DIR", help="directory to write")
    english.add_argument(
        "--no-validate", action="store_true", help="skip the validation checks (about 2 s)"
    )
    english.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the tokenizer, extract and validate the tier, write the directory, print a table."""
    from tqdm import tqdm

    from qwen_backends.tokenizer import load_tokenizer
    from qwen_backends.vocab.output import (
        export_english_vocab,
        format_summary_table,
        prepare_output_dir,
    )

    prepare_output_dir(args.output)  # a bad --output fails before the slow part
    steps = 3 if args.no_validate else 4
    # delay=1: the bar only appears when the work takes longer than a second.
    with tqdm(total=steps, delay=1.0, file=sys.stderr, leave=False, unit="step") as bar:

        def step(name: str) -> None:
            bar.update(1)  # the previous step is done
            bar.set_description(name, refresh=False)

        # refresh=False: the bar stays hidden for its first second (delay), even on an error.
        bar.set_description("loading tokenizer", refresh=False)
        tokenizer = load_tokenizer(args.tokenizer)
        _, summary = export_english_vocab(
            tokenizer, args.output, args.tier, validate=not args.no_validate, progress=step
        )
        bar.update(1)
    print(f"tokenizer: {summary['tokenizer']}  (sha256 {summary['tokenizer_sha256'][:12]})")
    print(format_summary_table(summary))
    validation = summary.get("validation")
    if validation:
        recall = validation["lexicon_recall"]
        print(
            f"\nlexicon recall ({args.tier}): {recall['recall']:.2f}% of the top "
            f"{recall['words']:,} English words"
        )
    print(f"\nwrote {args.output}/ ({', '.join(summary['files'].values())})")
    return 0
