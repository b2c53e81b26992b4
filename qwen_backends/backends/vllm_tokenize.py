"""vLLM's ``POST /tokenize``: the exact prompt ids, and the template mode of the served model.

``/tokenize`` (at the server root, not under ``/v1``) renders a conversation with the served
model's chat template (:func:`tokenize`, always with ``enable_thinking=False``) and returns the
ids and, when asked, the token strings. The vllm backend sends the :data:`PROBES` before its
first answer, and
:func:`template_mode_of` reads the verdict: a prompt that ends with the empty think block is the
hybrid Qwen3-4B; one that ends at ``<|im_start|>assistant\\n`` is Instruct-2507, confirmed by
the second probe (a template with a think switch renders a think block into the last assistant
turn, so a hybrid whose switch the server dropped is caught); one that opens ``<think>`` is
thinking-only and refused. Byte-level BPE token strings are decoded by
:func:`decode_token_strs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from qwen_backends.backends.server import Call, Dialogue, StatusErrors
from qwen_backends.thinking import GENERATION_PROMPT, TemplateMode, prompt_mode

if TYPE_CHECKING:
    from qwen_backends.backends.remote import Remote
    from qwen_backends.chat import Message

__all__ = ["PROBES", "decode_token_strs", "needs_history_probe", "template_mode_of", "tokenize"]

#: ``/tokenize`` options of the probes: one user turn; and a finished exchange (its assistant
#: turn shows whether the template has a think switch), asked only when the first one ends at
#: the assistant header (see :func:`needs_history_probe`).
PROBES: tuple[dict[str, Any], ...] = (
    {"messages": [{"role": "user", "content": "hi"}], "token_strs": True},
    {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}],
        "generation_prompt": False,
        "token_strs": True,
    },
)


def tokenize(
    url: str,
    model: str,
    messages: Sequence[Message],
    *,
    remote: Remote,
    status_errors: StatusErrors,
    tools: Sequence[dict[str, Any]] = (),
    generation_prompt: bool = True,
    token_strs: bool = False,
) -> Dialogue[dict[str, Any]]:
    """Ask ``url`` (the server's ``/tokenize``) to render ``messages`` non-thinking.

    A dialogue for :meth:`~qwen_backends.backends.server.ServerBackend._run` (either client);
    returns the JSON object answered.

    Raises
    ------
    ProtocolError
        When the answer is not a JSON object.
    """
    import httpx

    body: dict[str, Any] = {
        "model": model,
        "messages": list(messages),
        "add_generation_prompt": generation_prompt,
        "chat_template_kwargs": {"enable_thinking": False},
        "return_token_strs": token_strs,
    }
    if tools:
        body["tools"] = list(tools)
    answer = yield Call(
        lambda client: client.post(url, body=body, cast_to=httpx.Response), status_errors
    )
    try:
        data = answer.json()
    except ValueError:
        raise remote.protocol_error("/tokenize did not answer JSON") from None
    if not isinstance(data, dict):
        raise remote.protocol_error("/tokenize did not answer a JSON object")
    return data


def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-ins -> the bytes they stand for."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    kept += range(ord("®"), ord("ÿ") + 1)
    mapping = {chr(byte): byte for byte in kept}
    shifted = 0
    for byte in range(256):
        if byte not in kept:
            mapping[chr(256 + shifted)] = byte
            shifted += 1
    return mapping


_BYTES = _byte_decoder()


def decode_token_strs(pieces: Sequence[str]) -> str:
    """Text of byte-level BPE token strings as ``/tokenize`` returns them (``Ċ`` is ``\\n``).

    Pieces that are not byte-level (special tokens such as ``<|im_start|>``) pass unchanged.
    """
    out = bytearray()
    for piece in pieces:
        if all(char in _BYTES for char in piece):
            out += bytes(_BYTES[char] for char in piece)
        else:
            out += piece.encode("utf-8")
    return out.decode("utf-8", errors="replace")


def needs_history_probe(first: dict[str, Any]) -> bool:
    """Whether the first probe ends at the assistant header (Instruct-2507, or a hybrid whose
    switch the server dropped): then the second probe decides."""
    pieces = first.get("token_strs")
    return isinstance(pieces, list) and decode_token_strs(pieces).endswith(GENERATION_PROMPT)


def template_mode_of(answers: Sequence[dict[str, Any]], remote: Remote, model: str) -> TemplateMode:
    """The template mode from the ``/tokenize`` answers to the probes sent.

    Raises
    ------
    ThinkingModeError
        For a thinking-only model.
    ChatTemplateError
        For a template that is not a Qwen3 non-thinking one.
    ProtocolError
        For an answer without token strings.
    """
    prompt = _probe_text(answers[0], remote)
    switchable = len(answers) > 1 and "<think>" in _probe_text(answers[1], remote)
    return prompt_mode(prompt, switchable=switchable, source=model)


def _probe_text(answer: dict[str, Any], remote: Remote) -> str:
    pieces = answer.get("token_strs")
    if not isinstance(pieces, list) or not all(isinstance(p, str) for p in pieces):
        raise remote.protocol_error("/tokenize answered without token_strs")
    return decode_token_strs(pieces)
