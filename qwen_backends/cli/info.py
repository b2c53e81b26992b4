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
from qwen_backends.factory import BACKENDS, missing_modules
from qwen_backends.settings import Settings, mask_url

#: pip extra -> a module whose presence shows the extra is installed.
_EXTRA_PROBES = {
    "hf": "transformers",
    "ollama": "ollama",
    "vllm": "openai",
    "offline": "dashscope",
    "vocab": "wordfreq",
    "finetune": "peft",
    "unsloth": "unsloth",
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
    print("settings:")
    print(json.dumps(report["settings"], indent=2))
    extras = report["extras"]
    print("extras: " + ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in extras.items()))
    print(f"accelerators: {report['accelerators']}")
    print("backends:")
    for name, status in report["backends"].items():
        print(f"  {name:<8} {status}")
    return 0


def collect(settings: Settings) -> dict[str, Any]:
    """Everything ``info`` shows, as plain data (secrets masked)."""
    return {
        "settings": settings.redacted(),
        "extras": {
            extra: importlib.util.find_spec(module) is not None
            for extra, module in _EXTRA_PROBES.items()
        },
        "accelerators": accelerators(),
        "backends": {name: backend_status(name, settings) for name in BACKENDS},
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
    if name == "unsloth":
        cuda = accelerators()["cuda"]
        return "ready" if cuda is True else "cannot start: needs an NVIDIA, AMD or Intel GPU"
    if name == "ollama":
        return probe_server(settings.ollama.host.rstrip("/") + "/api/version", "ollama serve")
    if name == "vllm":
        key = settings.vllm.api_key.get_secret_value()
        return probe_server(
            settings.vllm.base_url.rstrip("/") + "/models",
            "vllm serve MODEL",
            api_key=None if key in ("", "EMPTY") else key,
            key_setting="QWEN_VLLM__API_KEY",
        )
    return "ready"


def probe_server(
    url: str, how_to_start: str, *, api_key: str | None = None, key_setting: str = ""
) -> str:
    """One short GET of ``url``: is a server there, and does it accept our credentials?

    Credentials in the URL (``http://user:pass@host``) are sent as HTTP basic auth, as the
    backends' HTTP clients do, and ``api_key`` as a bearer token; every URL in the verdict is
    masked with :func:`~qwen_backends.settings.mask_url`.
    """
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    shown = mask_url(parts.geturl())
    headers = {}
    if parts.username is not None or parts.password is not None:
        user = urllib.parse.unquote(parts.username or "")
        secret = urllib.parse.unquote(parts.password or "")
        basic = base64.b64encode(f"{user}:{secret}".encode()).decode()
        headers["Authorization"] = f"Basic {basic}"
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(parts.geturl(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=1.0):
            return f"ready (server answers at {shown})"
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            fix = f"set {key_setting}" if key_setting else "check the credentials in the URL"
            return (
                f"a server answers at {shown} but refuses the credentials (HTTP {exc.code}); {fix}"
            )
        return f"a server answers at {shown} with HTTP {exc.code}; check the address"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"installed; no server at {shown} ({reason}); start one with `{how_to_start}`"
