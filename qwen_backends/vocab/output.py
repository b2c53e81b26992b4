"""Write an :class:`~qwen_backends.vocab.EnglishVocab` to a directory people can use.

Files (see :func:`write_output`):

``tokens.tsv``
    One line per token of the whole vocabulary: ``id``, ``token`` (vocabulary string),
    ``text`` (decoded, escaped), ``bytes_hex`` (the exact bytes), ``category``, ``tier`` (the
    narrowest tier holding it, or ``-``). In ``text``, a backslash is written ``\\\\``, tab /
    newline / carriage return as ``\\t`` ``\\n`` ``\\r``, other control characters and bytes of
    partial UTF-8 characters as ``\\xNN``.
``token_ids.npy``
    The sorted ids of the extracted tier (int32), for ``numpy.load``.
``summary.json``
    :meth:`EnglishVocab.summary` plus the validation figures, when given.
``report.md`` and ``categories.png``
    A short report with a bar chart of the categories (the chart needs matplotlib, from the
    ``vocab`` extra; without it the report says so and the rest is written).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen_backends.errors import ConfigurationError, MissingDependencyError
from qwen_backends.vocab.categories import CATEGORIES, TIER_NAMES, TIERS, token_table
from qwen_backends.vocab.extract import EnglishVocab, extract_english_tokens

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "escape_text",
    "export_english_vocab",
    "format_summary_table",
    "prepare_output_dir",
    "render_report",
    "write_output",
]

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_ESCAPE_TABLE = str.maketrans(
    {
        **_ESCAPES,
        **{chr(c): f"\\x{c:02x}" for c in [*range(32), 127] if chr(c) not in _ESCAPES},
    }
)


def escape_text(data: bytes) -> str:
    """The decoded text of ``data`` on one line (see the module docstring for the escapes)."""
    try:
        return data.decode("utf-8").translate(_ESCAPE_TABLE)
    except UnicodeDecodeError:
        return (
            data.replace(b"\\", b"\\\\")
            .decode("utf-8", "backslashreplace")
            .translate({c: _ESCAPE_TABLE[c] for c in _ESCAPE_TABLE if c != ord("\\")})
        )


def export_english_vocab(
    tokenizer: PreTrainedTokenizerBase,
    directory: str | Path,
    tier: str = "english",
    *,
    validate: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[EnglishVocab, dict[str, Any]]:
    """Extract ``tier``, validate it, and write the output directory (what the CLI runs).

    Parameters
    ----------
    tokenizer
        A loaded tokenizer; only the tokenizer is used, never model weights.
    directory
        Where to write (see :func:`write_output`).
    tier
        ``strict``, ``ascii`` or ``english``.
    validate
        Run :func:`qwen_backends.vocab.validation.validate` (about 2 s) and include it.
    progress
        Called with the name of each step before it starts.

    Returns
    -------
    The extracted vocabulary and the summary written to ``summary.json``.
    """
    from qwen_backends.vocab.validation import validate as run_validation

    report = progress or (lambda step: None)
    report("classifying tokens")
    vocab = extract_english_tokens(tokenizer, tier)
    validation = None
    if validate:
        report("validating")
        validation = run_validation(tokenizer, tier)
    report("writing files")
    files = write_output(vocab, directory, tokenizer=tokenizer, validation=validation)
    summary: dict[str, Any] = json.loads(files["summary"].read_text(encoding="utf-8"))
    return vocab, summary


def prepare_output_dir(directory: str | Path) -> Path:
    """Create ``directory`` (and parents) if needed and return it.

    Raises
    ------
    ConfigurationError
        When it exists as a file or cannot be created.
    """
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot use {str(out)!r} as the output directory ({exc.strerror or exc}); "
            "pass --output with a new or existing directory you can write to"
        ) from exc
    return out


def write_output(
    vocab: EnglishVocab,
    directory: str | Path,
    *,
    tokenizer: PreTrainedTokenizerBase,
    validation: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the output directory for ``vocab``; returns the written files by kind.

    Parameters
    ----------
    vocab
        The extracted tier (its ``categories`` cover the whole vocabulary).
    directory
        Created if needed; existing files of the same names are replaced.
    tokenizer
        The tokenizer ``vocab`` was extracted from (its decoded tokens are cached).
    validation
        :func:`qwen_backends.vocab.validation.validate` output, added to the summary and report.

    Raises
    ------
    ConfigurationError
        When ``directory`` exists as a file or cannot be created.
    MissingDependencyError
        When numpy is missing (the ``vocab`` extra).
    """
    out = prepare_output_dir(directory)
    try:
        import numpy as np
    except ImportError as exc:
        raise MissingDependencyError(
            "numpy is not installed; install it with: pip install 'qwen-backends[vocab]'"
        ) from exc

    files = {
        "tokens": out / "tokens.tsv",
        "token_ids": out / "token_ids.npy",
        "summary": out / "summary.json",
        "report": out / "report.md",
    }
    table = token_table(tokenizer)
    narrowest = {
        category: next((tier for tier in TIER_NAMES if category in TIERS[tier]), "-")
        for category in CATEGORIES
    }
    lines = ["id\ttoken\ttext\tbytes_hex\tcategory\ttier\n"]
    lines.extend(
        f"{index}\t{table.tokens[index].translate(_ESCAPE_TABLE)}\t{escape_text(raw)}\t"
        f"{raw.hex()}\t{category}\t{narrowest[category]}\n"
        for index, (raw, category) in enumerate(zip(table.data, vocab.categories, strict=True))
    )
    files["tokens"].write_text("".join(lines), encoding="utf-8")
    np.save(files["token_ids"], np.asarray(vocab.token_ids, dtype=np.int32))

    summary = vocab.summary()
    if validation is not None:
        summary["validation"] = validation
    chart = _write_chart(summary, out / "categories.png")
    if chart is not None:
        files["chart"] = chart
    summary["files"] = {kind: path.name for kind, path in files.items()}
    files["summary"].write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", "utf-8")
    files["report"].write_text(render_report(summary, chart is not None), encoding="utf-8")
    return files


def format_summary_table(summary: dict[str, Any]) -> str:
    """The category and tier counts as a fixed-width text table (what the CLI prints)."""
    rows = [f"{'category':<22}{'tokens':>9}{'%':>9}  tiers"]
    for name, entry in summary["categories"].items():
        tiers = ",".join(entry["tiers"]) or "-"
        rows.append(f"{name:<22}{entry['count']:>9,}{entry['percent']:>9.2f}  {tiers}")
    rows.append(f"{'total':<22}{summary['vocab_size']:>9,}{100:>9.2f}")
    rows.append("")
    rows.append(f"{'tier':<22}{'tokens':>9}{'%':>9}")
    for name, entry in summary["tiers"].items():
        marker = "  <- extracted" if name == summary["tier"] else ""
        rows.append(f"{name:<22}{entry['count']:>9,}{entry['percent']:>9.2f}{marker}")
    return "\n".join(rows)


def render_report(summary: dict[str, Any], chart: bool) -> str:
    """The markdown report (``report.md``) for a summary, optionally with validation figures."""
    parts = [
        f"# English vocabulary of `{summary['tokenizer']}`",
        "",
        f"Tier extracted: **{summary['tier']}**, {summary['tier_size']:,} of "
        f"{summary['vocab_size']:,} tokens. Criteria `{summary['criteria_version']}`; "
        f"tokenizer sha256 `{summary['tokenizer_sha256'][:16]}...`.",
        "",
        "![token categories](categories.png)"
        if chart
        else "_Chart skipped: matplotlib is not installed (`pip install 'qwen-backends[vocab]'`)._",
        "",
        "| category | tokens | % | tiers | what |",
        "|---|---:|---:|---|---|",
    ]
    for name, entry in summary["categories"].items():
        parts.append(
            f"| {name} | {entry['count']:,} | {entry['percent']:.2f} | "
            f"{', '.join(entry['tiers']) or '-'} | {entry['description']} |"
        )
    parts += ["", "| tier | tokens | % |", "|---|---:|---:|"]
    for name, entry in summary["tiers"].items():
        parts.append(f"| {name} | {entry['count']:,} | {entry['percent']:.2f} |")
    validation = summary.get("validation")
    if validation:
        parts += ["", *_validation_markdown(validation)]
    return "\n".join(parts) + "\n"


def _validation_markdown(validation: dict[str, Any]) -> list[str]:
    tier = validation["tier"]
    lines = [
        "## Validation",
        "",
        "Coverage of English prose (share of produced tokens inside each tier):",
        "",
        "| source | documents | tokens | "
        + " | ".join(TIER_NAMES)
        + " | decode(encode(text)) == text |",
        "|---|---:|---:|" + "---:|" * len(TIER_NAMES) + "---|",
    ]
    for source, entry in validation["coverage"].items():
        if not entry["available"]:
            lines.append(f"| {source} | absent on this machine | | " + "| " * len(TIER_NAMES))
            continue
        shares = " | ".join(f"{entry['in_tier'][t]:.3f}%" for t in TIER_NAMES)
        lines.append(
            f"| {source} | {entry['documents']} | {entry['tokens']:,} | {shares} | "
            f"{entry['roundtrip_ok']}/{entry['documents']} |"
        )
    lines += [
        "",
        "Representability (every character of the tier's alphabet is written by in-tier "
        "tokens; share of random texts whose own encoding stays in the tier):",
        "",
        "| tier | alphabet | characters without in-tier tokens | random texts in tier |",
        "|---|---:|---|---:|",
    ]
    for name, entry in validation["representability"].items():
        missing = ", ".join(repr(c) for c in entry["characters_missing"]) or "none"
        lines.append(
            f"| {name} | {entry['alphabet_size']} | {missing} | "
            f"{entry['random_texts_in_tier']:.2f}% |"
        )
    recall = validation["lexicon_recall"]
    shown = ", ".join(recall["missed"][:20])
    lines += [
        "",
        f"Lexicon recall ({tier}): {recall['recall']:.3f}% of wordfreq's top "
        f"{recall['words']:,} English words (leading space) tokenize inside the tier "
        f"(goal >= 99.5%); {len(recall['missed'])} missed: {shown}",
        "",
        f"Rejection ({tier}): share of a real sentence's tokens outside the tier:",
        "",
        "| language | tokens | outside |",
        "|---|---:|---:|",
    ]
    for language, entry in validation["rejection"].items():
        lines.append(f"| {language} | {entry['tokens']} | {entry['outside']:.1f}% |")
    return lines


def _write_chart(summary: dict[str, Any], path: Path) -> Path | None:
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        return None
    names = list(summary["categories"])[::-1]
    counts = [summary["categories"][n]["count"] for n in names]
    colours = {"strict": "#2b6cb0", "ascii": "#63b3ed", "english": "#9ae6b4"}
    bar_colours = [
        colours[summary["categories"][n]["tiers"][0]]
        if summary["categories"][n]["tiers"]
        else "#cbd5e0"
        for n in names
    ]
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.subplots()
    bars = axes.barh(names, counts, color=bar_colours)
    axes.bar_label(bars, labels=[f"{c:,}" for c in counts], padding=3, fontsize=8)
    axes.set_xlabel("tokens")
    axes.set_xlim(0, max(counts) * 1.18)
    axes.set_title(f"{summary['vocab_size']:,} tokens by category (colour = narrowest tier)")
    handles = [Patch(color=c, label=t) for t, c in colours.items()]
    handles.append(Patch(color="#cbd5e0", label="outside every tier"))
    axes.legend(handles=handles, loc="lower right", fontsize=8)
    figure.savefig(path, dpi=110)
    return path
