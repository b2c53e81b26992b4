"""``qwen-backends info``: resolved settings, installed extras, accelerators, backend readiness."""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from qwen_backends.cli._options import add_backend_options, settings_from_args
from qwen_backends.factory import backend_class
from qwen_backends.family import FAMILIES
from qwen_backends.memory import describe_need
from qwen_backends.registry import BACKENDS, missing_modules
from qwen_backends.settings import Settings

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
    missing = missing_modules(name)
    if missing:
        extra = BACKENDS[name].extra
        return f"cannot start: missing {', '.join(missing)} (pip install 'qwen-backends[{extra}]')"
    return backend_class(name).readiness(settings)


def probe_server(
    url: str, how_to_start: str, headers: dict[str, str] | None = None, key_setting: str = ""
) -> str:
    """``info``'s verdict on a server backend: does ``url`` answer (one short GET)?

    Credentials inside the URL (``http://user:pass@host``) are sent as HTTP basic auth, as the
    backends' HTTP clients do, unless ``headers`` already has an ``Authorization``; every URL in
    the verdict is masked with :func:`~qwen_backends.settings.mask_url`. ``key_setting`` names
    the setting to fix when the server refuses the credentials.
    """
    from qwen_backends.settings import mask_url

    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    shown = mask_url(parts.geturl())
    sent = dict(headers or {})
    if parts.username is not None or parts.password is not None:
        if "Authorization" not in sent:
            user = urllib.parse.unquote(parts.username or "")
            secret = urllib.parse.unquote(parts.password or "")
            basic = base64.b64encode(f"{user}:{secret}".encode()).decode()
            sent["Authorization"] = f"Basic {basic}"
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    try:
        request = urllib.request.Request(parts.geturl(), headers=sent)
        with urllib.request.urlopen(request, timeout=1.0):
            return f"ready (server answers at {shown})"
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            fix = f"set {key_setting}" if key_setting else "check the credentials"
            return (
                f"a server answers at {shown} but refuses the credentials (HTTP {exc.code}); {fix}"
            )
        return f"a server answers at {shown} with HTTP {exc.code}; check the address"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"installed; no server at {shown} ({reason}); start one with `{how_to_start}`"
