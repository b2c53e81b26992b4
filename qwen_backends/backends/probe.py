"""Readiness probes of the server backends: does a server answer at an address?

Used by the backends' :meth:`~qwen_backends.backends.base.ModelBackend.readiness` (which
``qwen-backends info`` shows); standard library only, one short GET, no client packages.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.parse
import urllib.request

from qwen_backends.settings import mask_url

__all__ = ["probe_server"]


def probe_server(
    url: str, how_to_start: str, headers: dict[str, str] | None = None, key_setting: str = ""
) -> str:
    """``info``'s verdict on a server backend: does ``url`` answer (one short GET)?

    Credentials inside the URL (``http://user:pass@host``) are sent as HTTP basic auth, as the
    backends' HTTP clients do, unless ``headers`` already has an ``Authorization``; every URL in
    the verdict is masked with :func:`~qwen_backends.settings.mask_url`. ``key_setting`` names
    the setting to fix when the server refuses the credentials.
    """
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
