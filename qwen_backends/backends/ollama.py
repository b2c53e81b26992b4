"""Quantized local inference through an Ollama server (``backend="ollama"``).

Uses the official ``ollama`` client (:class:`ollama.Client` for sync calls, a short-lived
:class:`ollama.AsyncClient` per async call) and keeps Qwen3 non-thinking on every request:

- every chat request carries ``think=False`` at the top level (servers since 0.12.4 switch
  thinking ON when the field is omitted);
- on first use the server version (``/api/version``) and the model (``/api/show``) are checked:
  servers older than 0.9.0 cannot switch thinking off and are refused; the model's template is
  classified (:func:`ollama_template_mode`) as the hybrid Qwen3-4B (a ``think`` switch, or the
  empty think block pre-filled), Instruct-2507 (no thinking at all) or a thinking-only build
  such as today's plain ``qwen3:4b`` tag (Qwen3-4B-Thinking-2507), which is refused;
- any thinking that still comes back (``message.thinking`` or a ``<think>`` block) is removed
  from the returned text and a warning is logged.

Sampling is sent as a plain ``options`` dict (``ollama.Options`` silently drops ``min_p``).

``response_format`` goes as Ollama's ``format`` (the JSON schema; the server turns it into a
grammar) and, as Ollama's documentation advises, the schema is also stated at the end of the
last message. ``tools`` go in Ollama's native ``tools`` field; the answer's
``message.tool_calls`` become :class:`~qwen_backends.backends.base.ToolCall` objects, and
``<tool_call>`` blocks left in the content (a model whose Ollama template has no tool parser)
are parsed locally. Ollama's tool format keeps only ``type``, ``description``, ``enum`` and
``items`` of each parameter (the ``ollama`` 0.6.3 client drops the rest; the server's API types
hold the same fields), so a warning names what a spec loses.
Errors from the client (``ResponseError``, the builtin ``ConnectionError``, raw ``httpx``
exceptions) go through the shared remote layer (:mod:`qwen_backends.backends.remote`): the same
error classes and retries as every server backend (5xx, 429, timeouts and broken connections
retried ``settings.ollama.max_retries`` times with jittered exponential backoff; other 4xx and
refused connections never). ``eval_count``, which counts the end-of-turn token, is
``completion_tokens``.

The default model comes from the family table (:mod:`qwen_backends.family`):

- ``QWEN_FAMILY=qwen3-4b-instruct-2507``: the library tag ``qwen3:4b-instruct-2507-q4_K_M``
  (alias ``qwen3:4b-instruct``), a non-thinking-only build, pulled as is;
- ``QWEN_FAMILY=qwen3-4b`` (the hybrid): the Ollama library has no hybrid tag any more, so
  :meth:`OllamaBackend.ensure_model` builds a local model (``qwen3-4b-nothink:q4_K_M``): it pulls
  a hybrid GGUF from the hub (``hf.co/<repo>:<quant>``) and creates the model through
  ``/api/create`` with the non-thinking TEMPLATE and PARAMETERs that the fine-tuning export
  writes (:mod:`qwen_backends.finetune.ollama`), so the prompt pre-fills the empty think block
  exactly as ``render_prompt`` does, whatever template the GGUF carries.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from qwen_backends.backends.base import Capabilities, ModelBackend
from qwen_backends.backends.remote import Failure, Remote
from qwen_backends.chat import Message
from qwen_backends.errors import (
    BackendUnavailableError,
    ConfigurationError,
    GenerationError,
    ModelNotFoundError,
    QwenBackendsError,
    ThinkingModeError,
)
from qwen_backends.family import FAMILIES, Family
from qwen_backends.results import FinishReason, Generation, Request, ToolCall
from qwen_backends.sampling import SamplingParams
from qwen_backends.settings import OLLAMA_NON_THINKING_TAGS
from qwen_backends.thinking import (
    EMPTY_THINK_BLOCK,
    GENERATION_PROMPT,
    TemplateMode,
    ThinkingStreamFilter,
    strip_thinking,
)
from qwen_backends.tools import ToolCallFilter, new_call_id, parse_tool_calls

if TYPE_CHECKING:
    import ssl

    import ollama

    from qwen_backends.settings import OllamaSettings, Settings
    from qwen_backends.structured import ResponseFormat

__all__ = [
    "INSTRUCT_TAGS",
    "MIN_THINK_VERSION",
    "OllamaBackend",
    "built_model_source",
    "chat_request",
    "dropped_tool_fields",
    "ollama_template_mode",
    "parse_version",
    "sampling_options",
    "thinking_only_reason",
]

logger = logging.getLogger(__name__)

#: Tags of Qwen3-4B-Instruct-2507, the non-thinking build the maintainers recommend.
INSTRUCT_TAGS: tuple[str, ...] = OLLAMA_NON_THINKING_TAGS
#: The first server version that understands the top-level ``think`` field.
MIN_THINK_VERSION: tuple[int, int, int] = (0, 9, 0)
#: Most requests :meth:`OllamaBackend.generate_batch` keeps in flight at once.
BATCH_CONCURRENCY = 8

_VERSION = re.compile(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")
#: How an Ollama template reads the request's think field (``.Thinking`` is history, not it).
_THINK_SWITCH = re.compile(r"\.(Think|IsThinkSet)\b")
#: A template that hands over inside an opened think block (not the pre-filled empty one).
_OPENS_THINK = re.compile(re.escape(GENERATION_PROMPT + "<think>") + r"(?!\n\n</think>)")


# -- request building (shared by the sync and async paths) -----------------------------------


def sampling_options(sampling: SamplingParams, num_ctx: int) -> dict[str, Any]:
    """Ollama ``options`` for ``sampling``, as a plain dict.

    Every sampling value is sent, so the model's Modelfile defaults (Qwen3's *thinking*
    values) never apply. ``seed`` is left out when it is ``None`` (the server then draws a
    fresh one) and ``stop`` when it is empty (so the Modelfile's stop strings stay in force).

    Parameters
    ----------
    sampling
        Checked sampling parameters.
    num_ctx
        Context window the server allocates for the model.
    """
    options: dict[str, Any] = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "min_p": sampling.min_p,
        "num_predict": sampling.max_new_tokens,
        "presence_penalty": sampling.presence_penalty,
        "repeat_penalty": sampling.repetition_penalty,
        "num_ctx": num_ctx,
    }
    if sampling.seed is not None:
        options["seed"] = sampling.seed
    if sampling.stop:
        options["stop"] = list(sampling.stop)
    return options


def chat_request(
    model: str,
    messages: Sequence[Message],
    sampling: SamplingParams,
    settings: OllamaSettings,
    *,
    stream: bool,
    response_format: ResponseFormat | None = None,
    tools: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Keyword arguments for ``Client.chat`` / ``AsyncClient.chat``.

    ``think`` is always ``False``: the one line that keeps Qwen3 non-thinking on Ollama.

    Parameters
    ----------
    model
        The Ollama tag.
    messages
        Validated messages (see :func:`qwen_backends.chat.validate_messages`).
    sampling
        Checked sampling parameters.
    settings
        The ``ollama`` settings section (``num_ctx``, ``keep_alive``).
    stream
        Whether the answer is streamed as NDJSON.
    response_format
        Output schema: sent as ``format`` and stated at the end of the last message.
    tools
        OpenAI-style function specs, sent as ``tools``.
    """
    converted = [_ollama_message(message) for message in messages]
    body: dict[str, Any] = {
        "model": model,
        "messages": converted,
        "think": False,
        "options": sampling_options(sampling, settings.num_ctx),
        "keep_alive": _keep_alive(settings.keep_alive),
        "stream": stream,
    }
    if response_format is not None:
        last = converted[-1]
        last["content"] = f"{last['content']}\n\n{response_format.instructions()}"
        body["format"] = response_format.schema
    if tools:
        body["tools"] = [dict(tool) for tool in tools]
    return body


def dropped_tool_fields(tool: Mapping[str, Any]) -> list[str]:
    """JSON-schema keywords of ``tool``'s parameters that Ollama's tool format cannot carry
    (paths such as ``properties.days.minimum``), in order."""
    import ollama

    kept = ollama.Tool.model_validate(tool).model_dump(exclude_none=True, by_alias=True)
    function = tool.get("function", {})
    return _missing(function.get("parameters", {}), kept["function"].get("parameters", {}), "")


def _missing(original: Any, kept: Any, path: str) -> list[str]:
    if not isinstance(original, Mapping):
        return []
    if not isinstance(kept, Mapping):
        return [path.rstrip(".") or "parameters"]
    lost: list[str] = []
    for key, value in original.items():
        if key not in kept:
            lost.append(f"{path}{key}")
        elif key in ("properties", "$defs") and isinstance(value, Mapping):
            for name, schema in value.items():
                lost += _missing(schema, kept[key].get(name), f"{path}{key}.{name}.")
    return lost


def _ollama_message(message: Message) -> dict[str, Any]:
    converted: dict[str, Any] = {"role": message["role"], "content": message["content"]}
    if message["role"] == "tool" and message.get("name"):
        converted["tool_name"] = message["name"]
    if message.get("tool_calls"):
        converted["tool_calls"] = [_ollama_tool_call(call) for call in message["tool_calls"]]
    return converted


def _ollama_tool_call(call: Mapping[str, Any]) -> dict[str, Any]:
    import json

    function = dict(call.get("function", call))
    arguments = function.get("arguments") or {}
    if isinstance(arguments, str):
        # OpenAI-style history carries arguments as a JSON string; Ollama wants an object.
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            raise ConfigurationError(
                f"tool call {function.get('name')!r} has arguments that are not JSON; "
                "pass them as a dict"
            ) from None
    return {"function": {"name": function.get("name"), "arguments": arguments}}


def _keep_alive(value: str) -> str | float:
    # Ollama parses a string as a Go duration, so a bare "-1" or "300" needs to go as a number.
    return float(value) if _NUMBER.fullmatch(value.strip()) else value


# -- server and model checks -----------------------------------------------------------------


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """``"0.12.4"`` -> ``(0, 12, 4)``; ``None`` for a missing or unreadable version.

    Development builds report ``0.0.0``; that is treated as unknown too.
    """
    match = _VERSION.match(text or "")
    if not match:
        return None
    major, minor, patch = (int(part or 0) for part in match.groups())
    return None if (major, minor, patch) == (0, 0, 0) else (major, minor, patch)


def ollama_template_mode(model: str, show: Mapping[str, Any]) -> tuple[TemplateMode, str]:
    """What an Ollama model does with ``think=false``, and why: ``(mode, reason)``.

    ``show`` is the ``/api/show`` answer (``capabilities``, ``template``, ``model_info``).

    - ``THINKING_ONLY``: its template opens ``<think>`` after the assistant header; or it has
      the ``thinking`` capability and its name or GGUF metadata says "thinking" (e.g.
      ``general.finetune: Thinking-2507``), or its ChatML template has none of the
      ``$.Think`` / ``$.IsThinkSet`` switches that honour ``think=false``;
    - ``HYBRID``: the ``thinking`` capability with such a switch (or a server-side renderer),
      or no capability and a template that pre-fills the empty think block (the Modelfile of
      :mod:`qwen_backends.finetune.ollama`, used by :meth:`OllamaBackend.ensure_model`);
    - ``NON_THINKING``: no ``thinking`` capability and no think block (Instruct-2507).
    """
    template = show.get("template") or ""
    if _OPENS_THINK.search(template):
        return TemplateMode.THINKING_ONLY, "its chat template opens <think> for every answer"
    if "thinking" not in (show.get("capabilities") or []):
        if GENERATION_PROMPT + EMPTY_THINK_BLOCK in template:
            return TemplateMode.HYBRID, "its template pre-fills the empty think block"
        return TemplateMode.NON_THINKING, "it has no thinking capability"
    info = show.get("model_info") or show.get("modelinfo") or {}
    labels = [model] + [
        str(info[key]) for key in ("general.name", "general.finetune") if info.get(key)
    ]
    for label in labels:
        lowered = label.lower()
        if "thinking" in lowered and "instruct" not in lowered:
            return TemplateMode.THINKING_ONLY, f"it is labelled {label!r}"
    if "<|im_start|>" in template and not _THINK_SWITCH.search(template):
        return TemplateMode.THINKING_ONLY, "its chat template has no switch for think=false"
    return TemplateMode.HYBRID, "its template honours think=false"


def thinking_only_reason(model: str, show: Mapping[str, Any]) -> str | None:
    """Why ``model`` looks like a thinking-only build, or ``None`` if it can answer directly.

    See :func:`ollama_template_mode` for the rules.
    """
    mode, reason = ollama_template_mode(model, show)
    return reason if mode is TemplateMode.THINKING_ONLY else None


def built_model_source(model: str) -> tuple[Family, str] | None:
    """``(family, hub GGUF)`` when ``model`` is a family's locally built Ollama model.

    The hybrid Qwen3-4B has no Ollama library tag; :meth:`OllamaBackend.ensure_model` builds
    its model from ``hf.co/...``. ``None`` for a model that is pulled as it is.
    """
    for family in FAMILIES.values():
        if family.ollama == model and family.ollama_source:
            return family, family.ollama_source
    return None


# -- streaming ---------------------------------------------------------------------------


class _StreamState:
    """Folds streamed ``ChatResponse`` chunks into text pieces, tool calls and the final counts."""

    def __init__(self, tools: bool = False) -> None:
        self.filter = ThinkingStreamFilter()
        self.calls = ToolCallFilter() if tools else None
        self.native_calls: list[ToolCall] = []
        self.thinking_chars = 0
        self.final: Any = None
        #: Everything handed out so far (kept in a GenerationError if the stream breaks).
        self.text = ""

    def feed(self, chunk: Any) -> str:
        message = chunk.message
        self.thinking_chars += len(message.thinking or "")
        self.native_calls += _tool_calls(message)
        if chunk.done:
            self.final = chunk
        return self._emit(self._visible(self.filter.feed(message.content or "")))

    def finish(self) -> str:
        tail = self._visible(self.filter.flush())
        if self.calls is not None:
            tail += self.calls.flush()
        return self._emit(tail)

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """Native calls first, then calls parsed from the content."""
        return (*self.native_calls, *(self.calls.calls if self.calls is not None else ()))

    def _visible(self, text: str) -> str:
        return self.calls.feed(text) if self.calls is not None else text

    def _emit(self, piece: str) -> str:
        self.text += piece
        return piece


# -- the backend ---------------------------------------------------------------------------


class OllamaBackend(ModelBackend):
    """Qwen3-4B on an Ollama server, always non-thinking.

    Reads ``settings.ollama`` (``host``, ``timeout``, ``keep_alive``, ``num_ctx``,
    ``max_retries``) and the tag from ``settings.model_name``. Nothing is sent until the first
    call; the first generation checks the server version and the model (see the module docs).

    Parameters
    ----------
    settings
        The resolved settings.

    Attributes
    ----------
    remote
        The shared error table and retry policy (:class:`~qwen_backends.backends.remote.Remote`).
    """

    name = "ollama"
    capabilities = Capabilities(native_async=True, structured_output=True, tools=True)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        import httpx
        import ollama

        config = settings.ollama
        self.remote = Remote(
            backend=self.name,
            server="Ollama",
            url=config.host,
            how_to_start="ollama serve",
            timeout=config.timeout,
            timeout_setting="QWEN_OLLAMA__TIMEOUT",
            max_retries=config.max_retries,
        )
        # One TLS context for every client: building it loads the CA bundle (~35 ms), which
        # would otherwise dominate each short-lived AsyncClient.
        self._ssl: ssl.SSLContext = httpx.create_ssl_context()
        self._client = ollama.Client(host=config.host, timeout=config.timeout, verify=self._ssl)
        self._checked = False
        self._warned_tools: set[tuple[str, tuple[str, ...]]] = set()
        self._check_lock = threading.Lock()
        self._mode: TemplateMode | None = None

    @classmethod
    def readiness(cls, settings: Settings) -> str:
        """Whether an Ollama server answers at the configured host."""
        from qwen_backends.cli.info import probe_server

        return probe_server(settings.ollama.host.rstrip("/") + "/api/version", "ollama serve")

    # -- public API beyond the base class -------------------------------------------------

    @property
    def host(self) -> str:
        """The server address from the settings."""
        return self.settings.ollama.host

    def list_models(self) -> list[str]:
        """Names of the models the server has pulled (``/api/tags``).

        Raises
        ------
        BackendUnavailableError
            If the server cannot be reached (never an empty list in that case).
        """
        listing = self.remote.call(self._client.list, self._status_errors)
        return [model.model for model in listing.models if model.model]

    def template_mode(self) -> TemplateMode | None:
        """The served model's template mode once the first-use check ran (else ``None``)."""
        return self._mode

    def ensure_model(self, pull: bool = True, *, progress: bool = True) -> bool:
        """Make sure the configured model is on the server, pulling (or building) it if allowed.

        A library tag (``qwen3:4b-instruct-2507-q4_K_M``) is pulled. The hybrid Qwen3-4B's local
        model (the ``qwen3-4b`` family's :attr:`~qwen_backends.family.Family.ollama`) is built:
        its hub GGUF (:attr:`~qwen_backends.family.Family.ollama_source`, ``hf.co/...``) is
        pulled, then ``/api/create`` makes the model from it with the non-thinking TEMPLATE and
        PARAMETERs of :mod:`qwen_backends.finetune.ollama` (empty think block pre-filled).

        Parameters
        ----------
        pull
            Pull a missing model (``/api/pull``); with ``False`` a missing model is an error.
        progress
            Show a tqdm progress bar from the pull stream.

        Returns
        -------
        bool
            ``True`` if the model was pulled or built, ``False`` if it was already there.

        Raises
        ------
        ModelNotFoundError
            If the model is missing and ``pull`` is false, or the registry has no such tag.
        """
        try:
            self.remote.call(lambda: self._client.show(self.model_name), self._status_errors)
            return False
        except ModelNotFoundError:
            if not pull:
                raise
        built = built_model_source(self.model_name)
        if built is None:
            self._pull(self.model_name, progress)
        else:
            self._build_model(built[1], progress)
        return True

    def close(self) -> None:
        """Close the HTTP connection pool. Safe to call twice."""
        if not self._closed:
            self._client.close()
        super().close()

    # -- hooks ----------------------------------------------------------------------------

    def _generate(self, request: Request) -> Generation:
        self._ensure_checked()
        body = self._build(request, stream=False)
        start = time.perf_counter()
        response = self.remote.call(lambda: self._client.chat(**body), self._status_errors)
        return self._generation(response, time.perf_counter() - start, tools=bool(request.tools))

    def _stream(self, request: Request) -> Iterator[str | Generation]:
        self._ensure_checked()
        body = self._build(request, stream=True)
        started = time.perf_counter()
        chunks, first = self.remote.call(
            lambda: _open(self._client.chat(**body)), self._status_errors
        )
        return self._stream_chunks(chunks, first, started, tools=bool(request.tools))

    def _stream_chunks(
        self, chunks: Any, first: Any, started: float, *, tools: bool = False
    ) -> Iterator[str | Generation]:
        state = _StreamState(tools)
        try:
            chunk = first
            while chunk is not None:
                piece = self._feed(state, chunk)
                if piece:
                    yield piece
                chunk = next(chunks, None)
            yield from self._stream_end(state, time.perf_counter() - started)
        except Exception as exc:
            raise self._stream_error(exc, state) from exc
        finally:
            chunks.close()

    async def _agenerate(self, request: Request) -> Generation:
        body = self._build(request, stream=False)
        async with self._async_client() as client:
            await self._aensure_checked(client)
            start = time.perf_counter()
            response = await self.remote.acall(lambda: client.chat(**body), self._status_errors)
            return self._generation(
                response, time.perf_counter() - start, tools=bool(request.tools)
            )

    async def _astream(self, request: Request) -> AsyncIterator[str | Generation]:
        body = self._build(request, stream=True)
        async with self._async_client() as client:
            await self._aensure_checked(client)
            started = time.perf_counter()
            chunks, first = await self.remote.acall(
                lambda: _aopen(client.chat(**body)), self._status_errors
            )
            state = _StreamState(bool(request.tools))
            try:
                chunk = first
                while chunk is not None:
                    piece = self._feed(state, chunk)
                    if piece:
                        yield piece
                    chunk = await anext(chunks, None)
                for item in self._stream_end(state, time.perf_counter() - started):
                    yield item
            except Exception as exc:
                raise self._stream_error(exc, state) from exc
            finally:
                await chunks.aclose()

    def _generate_batch(self, requests: list[Request]) -> list[Generation]:
        # The server runs parallel requests together (OLLAMA_NUM_PARALLEL) and queues the rest;
        # httpx.Client is thread-safe, so worker threads share its connection pool.
        self._ensure_checked()
        workers = min(len(requests), BATCH_CONCURRENCY)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ollama") as pool:
            return list(pool.map(self._generate, requests))

    # -- request and response handling --------------------------------------------------

    def _build(self, request: Request, *, stream: bool) -> dict[str, Any]:
        for tool in request.tools:
            self._warn_dropped(tool)
        return chat_request(
            self.model_name,
            request.messages,
            request.sampling,
            self.settings.ollama,
            stream=stream,
            response_format=request.response_format,
            tools=request.tools,
        )

    def _warn_dropped(self, tool: Mapping[str, Any]) -> None:
        name = tool["function"]["name"]
        lost = tuple(dropped_tool_fields(tool))
        if lost and (name, lost) not in self._warned_tools:
            self._warned_tools.add((name, lost))
            logger.warning(
                "Ollama's tool format cannot carry %s of tool %r (it keeps type, description, "
                "enum and items per parameter); the model will not see them",
                ", ".join(lost),
                name,
            )

    def _generation(self, response: Any, seconds: float, *, tools: bool = False) -> Generation:
        message = getattr(response, "message", None)
        if message is None or getattr(response, "done", None) is not True:
            raise self.remote.protocol_error("the chat answer has no message or is not done")
        content = message.content or ""
        text = strip_thinking(content)
        self._warn_thinking(len(message.thinking or ""), text != content)
        calls: tuple[ToolCall, ...] = ()
        if tools:
            text, parsed = parse_tool_calls(text)
            calls = (*_tool_calls(message), *parsed)
        return Generation(
            text=text,
            finish_reason="tool_calls" if calls else _finish_reason(response.done_reason),
            prompt_tokens=_count(response.prompt_eval_count),
            completion_tokens=_count(response.eval_count),
            seconds=seconds,
            tool_calls=calls,
        )

    def _feed(self, state: _StreamState, chunk: Any) -> str:
        if getattr(chunk, "message", None) is None:
            raise self.remote.protocol_error(
                "a stream line has no message", partial_text=state.text
            )
        return state.feed(chunk)

    def _stream_end(self, state: _StreamState, seconds: float) -> Iterator[str | Generation]:
        tail = state.finish()
        self._warn_thinking(state.thinking_chars, state.filter.removed)
        if state.final is None:
            raise self.remote.protocol_error(
                "the stream ended without its final (done) line", partial_text=state.text + tail
            )
        if tail:
            yield tail
        final = state.final
        calls = state.tool_calls
        yield Generation(
            text=state.text,
            finish_reason="tool_calls" if calls else _finish_reason(final.done_reason),
            prompt_tokens=_count(final.prompt_eval_count),
            completion_tokens=_count(final.eval_count),
            seconds=seconds,
            tool_calls=calls,
        )

    def _warn_thinking(self, thinking_chars: int, tags: bool) -> None:
        if thinking_chars or tags:
            where = "message.thinking" if thinking_chars else "a <think> block in the content"
            logger.warning(
                "Ollama model %s returned thinking (%s) despite think=false; it was removed "
                "from the answer. Use a non-thinking tag such as %s.",
                self.model_name,
                where,
                INSTRUCT_TAGS[0],
            )

    # -- first-use checks ---------------------------------------------------------------

    def _ensure_checked(self) -> None:
        if self._checked:
            return
        with self._check_lock:
            if self._checked:
                return
            response = self.remote.call(lambda: self._client._request_raw("GET", "/api/version"))
            self._check_version(self._version_of(response))
            show = self.remote.call(lambda: self._client.show(self.model_name), self._status_errors)
            self._check_model(show)
            self._checked = True

    async def _aensure_checked(self, client: ollama.AsyncClient) -> None:
        if self._checked:
            return
        response = await self.remote.acall(lambda: client._request_raw("GET", "/api/version"))
        self._check_version(self._version_of(response))
        show = await self.remote.acall(lambda: client.show(self.model_name), self._status_errors)
        self._check_model(show)
        self._checked = True

    def _version_of(self, response: Any) -> str | None:
        try:
            payload = response.json()
        except ValueError:
            raise self.remote.protocol_error("/api/version did not answer JSON") from None
        version = payload.get("version") if isinstance(payload, dict) else None
        return version if isinstance(version, str) else None

    def _check_version(self, version: str | None) -> None:
        parsed = parse_version(version)
        if parsed is None:
            logger.warning(
                "could not read the Ollama server version (%r) at %s; assuming it honours "
                "think=false (needs 0.9.0 or newer)",
                version,
                self.remote.url,
            )
        elif parsed < MIN_THINK_VERSION:
            raise BackendUnavailableError(
                f"Ollama {version} at {self.remote.url} is older than 0.9.0 and ignores "
                "think=false, so Qwen3 could think; upgrade Ollama (https://ollama.com/download)",
                retryable=False,
                backend=self.name,
            )

    def _check_model(self, show: Any) -> None:
        details = {
            "capabilities": show.capabilities,
            "template": show.template,
            "model_info": show.modelinfo,
        }
        mode, reason = ollama_template_mode(self.model_name, details)
        if mode is TemplateMode.THINKING_ONLY:
            raise ThinkingModeError(
                f"Ollama model {self.model_name} is a thinking-only build ({reason}); "
                f"think=false has no effect on it. Use a non-thinking model: `ollama pull "
                f"{INSTRUCT_TAGS[0]}` (alias {INSTRUCT_TAGS[1]}; "
                "QWEN_FAMILY=qwen3-4b-instruct-2507), or the hybrid "
                f"{FAMILIES['qwen3-4b'].ollama} that "
                "OllamaBackend.ensure_model() builds (QWEN_FAMILY=qwen3-4b)"
            )
        self._mode = mode

    # -- pulling -------------------------------------------------------------------------

    def _build_model(self, source: str, progress: bool) -> None:
        """Pull ``source`` (a hub GGUF) and create :attr:`model_name` from it, non-thinking."""
        from qwen_backends.finetune.ollama import NON_THINKING_TEMPLATE, modelfile_parameters

        self._pull(source, progress)
        name = self.model_name
        self.remote.call(
            lambda: self._client.create(
                model=name,
                from_=source,
                template=NON_THINKING_TEMPLATE,
                parameters=modelfile_parameters(),
            ),
            self._status_errors,
        )

    def _pull(self, name: str, progress: bool) -> None:
        from tqdm import tqdm

        bar = tqdm(
            desc=f"pulling {name}",
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not progress,
        )
        try:
            for update in self._client.pull(name, stream=True):
                if update.total:
                    if bar.total != update.total:
                        bar.reset(total=update.total)
                    bar.update((update.completed or 0) - bar.n)
                if update.status:
                    bar.set_postfix_str(update.status, refresh=False)
        except Exception as exc:
            raise self._pull_error(name, exc) from exc
        finally:
            bar.close()

    def _pull_error(self, name: str, exc: Exception) -> BaseException:
        import ollama

        if isinstance(exc, ollama.ResponseError) and exc.status_code in (-1, 404):
            where = (
                "check the hub repository and quantization (and the network)"
                if name.startswith("hf.co/")
                else f"check the tag (e.g. {INSTRUCT_TAGS[0]}) at https://ollama.com/library/qwen3/tags"
            )
            return ModelNotFoundError(
                f"could not pull {name}: {exc.error}; {where}",
                backend=self.name,
            )
        return self.remote.translate(exc, status_errors=self._status_errors)

    # -- errors ------------------------------------------------------------------------------

    def _status_errors(self, failure: Failure) -> QwenBackendsError | None:
        """Ollama's wording for a 404 (pull the model) and a 400."""
        model, host = self.model_name, self.remote.url
        if failure.status == 404:
            built = built_model_source(model)
            if built is not None:
                return ModelNotFoundError(
                    f"model {model} not found on the Ollama server at {host}; it is built from "
                    f"{built[1]}: call create_backend(backend='ollama').ensure_model()"
                )
            return ModelNotFoundError(
                f"model {model} not found on the Ollama server at {host}; run `ollama pull {model}`"
            )
        if failure.status == 400:
            return ConfigurationError(
                f"Ollama rejected the request for {model} (HTTP 400: {failure.detail}); check the "
                "model tag and sampling settings"
            )
        return None

    def _stream_error(self, exc: Exception, state: _StreamState) -> BaseException:
        import ollama

        if isinstance(exc, QwenBackendsError):
            return exc
        if isinstance(exc, ollama.ResponseError) and exc.status_code == -1:
            # An {"error": ...} line after streaming began: the server's own failure.
            return GenerationError(
                f"Ollama reported an error while generating with {self.model_name}: "
                f"{exc.error}; the {len(state.text)} characters received are kept in "
                "partial_text",
                partial_text=state.text,
                backend=self.name,
            )
        return self.remote.translate(exc, partial_text=state.text)

    @contextlib.asynccontextmanager
    async def _async_client(self) -> AsyncIterator[ollama.AsyncClient]:
        # One client per call: an httpx.AsyncClient belongs to the event loop that used it, and
        # callers may run several loops (asyncio.run per batch) over one backend.
        import ollama

        config = self.settings.ollama
        client = ollama.AsyncClient(host=config.host, timeout=config.timeout, verify=self._ssl)
        try:
            yield client
        finally:
            await client._client.aclose()


def _tool_calls(message: Any) -> list[ToolCall]:
    """The native ``message.tool_calls`` of an Ollama answer (which carry no ids)."""
    calls = []
    for call in getattr(message, "tool_calls", None) or ():
        function = call.function
        arguments = dict(function.arguments or {})
        calls.append(ToolCall(id=new_call_id(), name=function.name, arguments=arguments))
    return calls


def _finish_reason(done_reason: str | None) -> FinishReason:
    return "length" if done_reason == "length" else "stop"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _open(chunks: Any) -> tuple[Any, Any]:
    """Start a stream so connection and HTTP errors surface inside the retry loop."""
    return chunks, next(chunks, None)


async def _aopen(chunks: Any) -> tuple[Any, Any]:
    iterator = await chunks
    return iterator, await anext(iterator, None)
