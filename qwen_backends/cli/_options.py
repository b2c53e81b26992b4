"""Flags shared by several subcommands, and turning them into Settings / SamplingParams."""

from __future__ import annotations

import argparse
from typing import Any

from qwen_backends.family import FAMILIES
from qwen_backends.registry import BACKENDS
from qwen_backends.sampling import SamplingParams
from qwen_backends.settings import Settings

__all__ = [
    "add_backend_options",
    "add_sampling_options",
    "sampling_from_args",
    "settings_from_args",
]

_SAMPLING_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("temperature", float, "0..2; 0 = greedy"),
    ("top_p", float, "0 < p <= 1"),
    ("top_k", int, ">= 0; 0 = off"),
    ("min_p", float, "0..1"),
    ("max_new_tokens", int, ">= 1"),
    ("presence_penalty", float, "0..2"),
    ("repetition_penalty", float, "0 < r <= 2; 1 = off"),
    ("seed", int, "per-call seed"),
)


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--family``, ``--model`` and ``--config``."""
    group = parser.add_argument_group("backend")
    group.add_argument("--backend", choices=list(BACKENDS), help="overrides QWEN_BACKEND")
    group.add_argument(
        "--family",
        choices=list(FAMILIES),
        help="Qwen3-4B release every backend runs by default (overrides QWEN_FAMILY)",
    )
    group.add_argument("--model", help="model of the selected backend (overrides QWEN_MODEL)")
    group.add_argument("--config", help="YAML settings file (overrides QWEN_CONFIG)")


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`SamplingParams` field, plus ``--preset``."""
    group = parser.add_argument_group("sampling (defaults: Qwen3 non-thinking 0.7/0.8/20/0)")
    group.add_argument("--preset", help="a named preset: non_thinking, greedy, quantized")
    for name, kind, help_text in _SAMPLING_FLAGS:
        group.add_argument(f"--{name.replace('_', '-')}", type=kind, help=help_text)
    group.add_argument("--stop", action="append", help="stop string (repeatable)")
    group.add_argument(
        "--english-only", action="store_true", default=None, help="English-tier tokens only"
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from every source, with ``--backend`` / ``--family`` / ``--model`` / ``--config``
    on top."""
    overrides: dict[str, Any] = {}
    for name in ("backend", "family", "model"):
        if getattr(args, name, None):
            overrides[name] = getattr(args, name)
    config = getattr(args, "config", None)
    return Settings.from_file(config, **overrides) if config else Settings(**overrides)


def sampling_from_args(args: argparse.Namespace, base: SamplingParams) -> SamplingParams:
    """``base`` (usually ``settings.sampling``) with the preset and any given flags applied."""
    preset = getattr(args, "preset", None)
    if preset:
        base = SamplingParams.preset(preset)
    changes = {
        name: getattr(args, name)
        for name, _, _ in (*_SAMPLING_FLAGS, ("stop", list, ""), ("english_only", bool, ""))
        if getattr(args, name, None) is not None
    }
    return base.replace(**changes) if changes else base
