"""``qwen-backends info``: resolved settings, installed extras, accelerators, backend readiness."""

from __future__ import annotations

import argparse
import importlib.util
import json
from typing import Any

from qwen_backends.backends.probe import probe_server
from qwen_backends.cli._options import add_backend_options, settings_from_args
from qwen_backends.factory import prompt_cache_status, readiness
from qwen_backends.family import FAMILIES
from qwen_backends.memory import describe_need
from qwen_backends.registry import BACKENDS, missing_modules
from qwen_backends.settings import Settings

__all__ = ["accelerators", "backend_status", "collect", "probe_server", "register", "run"]

#: Extras that are not a backend -> a module whose presence shows the extra is installed.
_OTHER_EXTRAS = {
    "offline": "dashscope",
    "vocab": "wordfreq",
    "finetune": "peft",
    "serve": "uvicorn",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``info`` subcommand."""
    parser = subparsers.add_parser("info", help="show settings, extras and what can run here")
    add_backend_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the report."""
    settings = settings_from_args(args)
    report = collect(settings)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"backend: {settings.backend}  model: {settings.model_name}")
    family = report["family"]
    print(f"family: {family['name']} -- {family['title']}")
    print("settings:")
    print(json.dumps(report["settings"], indent=2))
    extras = report["extras"]
    print("extras: " + ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in extras.items()))
    print(f"accelerators: {report['accelerators']}")
    print("backends:")
    for name, status in report["backends"].items():
        print(f"  {name:<8} model {report['models'][name]}: {status}")
        print(f"  {'':<8} prompt cache: {report['prompt_cache'][name]}")
    print("memory:")
    for name, need in report["memory"].items():
        print(f"  {name:<8} {need}")
    return 0


def collect(settings: Settings) -> dict[str, Any]:
    """Everything ``info`` shows, as plain data (secrets masked)."""
    family = FAMILIES[settings.family]
    return {
        "family": {"name": family.name, "title": family.title, "mode": family.mode},
        "models": {name: settings.model or settings.default_model(name) for name in BACKENDS},
        "settings": settings.redacted(),
        "extras": {
            **{
                registration.extra: not missing_modules(name)
                for name, registration in BACKENDS.items()
            },
            **{
                extra: importlib.util.find_spec(module) is not None
                for extra, module in _OTHER_EXTRAS.items()
            },
        },
        "accelerators": accelerators(),
        "backends": {name: backend_status(name, settings) for name in BACKENDS},
        "prompt_cache": {name: prompt_cache_status(name, settings) for name in BACKENDS},
        # In-process backends whose extra is installed: what their model would need here.
        "memory": {
            name: need
            for name in BACKENDS
            if not missing_modules(name) and (need := describe_need(name, settings))
        },
    }


def accelerators() -> dict[str, bool | str]:
    """CUDA / MPS availability (needs torch; reports its absence otherwise)."""
    if importlib.util.find_spec("torch") is None:
        return {"cuda": "unknown (torch not installed)", "mps": "unknown (torch not installed)"}
    import torch

    return {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}


def backend_status(name: str, settings: Settings) -> str:
    """A short verdict on whether backend ``name`` can start on this machine."""
    return readiness(name, settings)
