"""The vLLM backend (``backend="vllm"``): a vLLM OpenAI-compatible server via the ``openai`` SDK.

vLLM is how Qwen3-4B scales past one machine (tensor and pipeline parallelism, multi-node via
Ray); this backend only talks to such a server, so the same code serves a laptop or a cluster.

Every request is built by :func:`build_request`, shared by the sync and async paths, and always
carries ``chat_template_kwargs={"enable_thinking": False}`` plus every sampling value explicitly
(vLLM would otherwise fall back to the model's thinking-mode ``generation_config``). Reasoning
that comes back anyway (a ``reasoning``/``reasoning_content`` field from a server started with a
reasoning parser, or ``<think>`` text) is removed and logged.

``response_format`` goes as the OpenAI ``response_format`` of type ``json_schema``, which vLLM
enforces with its structured-output backend. ``tools`` go in the ``tools`` field (the server's
chat template renders Qwen3's ``<tools>`` block). Tool calls are read the same way whether or not
the server was started with a tool parser (``--enable-auto-tool-choice --tool-call-parser
hermes``): with one, from ``message.tool_calls`` (streamed deltas assembled by index); without
one, the ``<tool_call>`` blocks stay in the content and are parsed here
(:mod:`qwen_backends.tools`), in streams too. A server without a tool parser refuses the default
``tool_choice`` (``auto``) with HTTP 400; the backend then resends with ``tool_choice="none"``
(the template still renders the tools) and keeps doing so. History tool calls are sent with
their arguments as a JSON string, as the OpenAI protocol requires.

Before the first answer the backend asks the server which template mode its model has
(:meth:`VLLMBackend.template_mode`): vLLM's ``POST /tokenize`` (at the server root, not under
``/v1``) renders a one-turn probe with ``enable_thinking=False`` and returns the token strings.
A prompt that ends with the empty think block is the hybrid Qwen3-4B; one that ends at
``<|im_start|>assistant\n`` is Instruct-2507 (confirmed by a second probe: a template with a
think switch renders a think block into the last assistant turn, so a hybrid whose switch the
server dropped is caught); one that opens ``<think>`` is thinking-only (Qwen3-4B-Thinking-2507)
and is refused with :class:`~qwen_backends.errors.ThinkingModeError` before any answer. The same
endpoint gives the exact prompt ids (:meth:`VLLMBackend.prompt_ids`, ``count_prompt_tokens``).

Failures go through the shared remote layer (:mod:`qwen_backends.backends.remote`): the same
error classes and retries as every server backend (the client's own retries are off). Answers
that are not what the OpenAI protocol promises (HTML, truncated JSON, empty ``choices``, a
missing field) are :class:`~qwen_backends.errors.ProtocolError`, never a raw
``JSONDecodeError`` / ``AttributeError`` / ``IndexError``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from qwen_backends.backends.base import Capabilities, ModelBackend
from qwen_backends.backends.remote import Failure, Remote
from qwen_backends.chat import Message
from qwen_backends.errors import (
    ConfigurationError,
    ContextLengthError,
    GenerationError,
    ModelNotFoundError,
    QwenBackendsError,
    UnsupportedFeatureError,
)
from qwen_backends.results import FinishReason, Generation, Request, ToolCall
from qwen_backends.thinking import (
    TemplateMode,
    ThinkingStreamFilter,
    prompt_mode,
    strip_thinking,
)
from qwen_backends.tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ToolCallFilter, parse_tool_calls

if TYPE_CHECKING:
    from openai import AsyncOpenAI, OpenAI

    from qwen_backends.sampling import SamplingParams
    from qwen_backends.settings import Settings
    from qwen_backends.structured import ResponseFormat

__all__ = ["VLLMBackend", "build_request", "decode_token_strs"]

logger = logging.getLogger(__name__)

#: vLLM's value for "no top-k": 0 in current releases, but -1 is accepted by old and new alike
#: (releases before 0.8 rejected 0), so deployments on any version understand it.
TOP_K_OFF = -1
#: Reasoning fields a vLLM server fills when started with ``--reasoning-parser``.
_REASONING_FIELDS = ("reasoning_content", "reasoning")
#: Most requests :meth:`VLLMBackend.generate_batch` keeps in flight at once.
MAX_BATCH_CONCURRENCY = 64
#: The template-mode probes: one user turn; and a finished exchange (its assistant turn shows
#: whether the template has a think switch).
_PROBE = [{"role": "user", "content": "hi"}]
_HISTORY_PROBE = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]


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
    """Text of byte-level BPE token strings as ``/tokenize`` returns them (``Ċ`` is ``\n``).

    Pieces that are not byte-level (special tokens such as ``<|im_start|>``) pass unchanged.
    """
    out = bytearray()
    for piece in pieces:
        if all(char in _BYTES for char in piece):
            out += bytes(_BYTES[char] for char in piece)
        else:
            out += piece.encode("utf-8")
    return out.decode("utf-8", errors="replace")


def build_request(
    messages: list[Message],
    sampling: SamplingParams,
    *,
    model: str,
    allowed_token_ids: Sequence[int] | None = None,
    stream: bool = False,
    response_format: ResponseFormat | None = None,
    tools: Sequence[dict[str, Any]] = (),
    tool_choice: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``client.chat.completions.create`` (sync and async alike).

    Parameters
    ----------
    messages
        A validated conversation (see :func:`qwen_backends.chat.validate_messages`).
    sampling
        Every field is sent explicitly; ``top_k=0`` (off) becomes vLLM's :data:`TOP_K_OFF`.
    model
        The name the server serves the model under.
    allowed_token_ids
        Restrict sampling to these ids (``english_only``); ``None`` allows the whole vocabulary.
    stream
        Ask for a stream of chunks, the last one carrying the token usage.
    response_format
        Output schema, sent as ``response_format`` of type ``json_schema``.
    tools
        OpenAI-style function specs, sent as ``tools``.
    tool_choice
        Sent with ``tools`` when given; ``None`` leaves the server's default (``auto``).
    """
    extra_body: dict[str, Any] = {
        "chat_template_kwargs": {"enable_thinking": False},
        "top_k": sampling.top_k if sampling.top_k > 0 else TOP_K_OFF,
        "min_p": sampling.min_p,
        "repetition_penalty": sampling.repetition_penalty,
    }
    if allowed_token_ids is not None:
        extra_body["allowed_token_ids"] = list(allowed_token_ids)
    request: dict[str, Any] = {
        "model": model,
        "messages": [_openai_message(message) for message in messages],
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_completion_tokens": sampling.max_new_tokens,
        "presence_penalty": sampling.presence_penalty,
        "stop": list(sampling.stop),
        "extra_body": extra_body,
    }
    if sampling.seed is not None:
        request["seed"] = sampling.seed
    if stream:
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    if response_format is not None:
        request["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": re.sub(r"[^A-Za-z0-9_-]", "_", response_format.name)[:64],
                "schema": response_format.schema,
                "strict": True,
            },
        }
    if tools:
        request["tools"] = list(tools)
        if tool_choice is not None:
            request["tool_choice"] = tool_choice
    return request


def _openai_message(message: Message) -> Message:
    """``message`` as the OpenAI protocol wants it: tool-call arguments as a JSON string."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    converted = []
    for index, call in enumerate(calls):
        function = dict(call.get("function", call))
        arguments = function.get("arguments") or {}
        converted.append(
            {
                "id": call.get("id") or f"call_{index}",
                "type": "function",
                "function": {
                    "name": function.get("name"),
                    "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                },
            }
        )
    return {**message, "tool_calls": converted}


class VLLMBackend(ModelBackend):
    """Qwen3-4B on a vLLM OpenAI-compatible server (see the module docs).

    Reads ``settings.vllm`` (``base_url``, ``api_key``, ``timeout``, ``max_retries``,
    ``tokenizer``) and serves ``settings.model_name``. Nothing is contacted until the first call.

    Parameters
    ----------
    settings
        Resolved settings.

    Attributes
    ----------
    remote
        The shared error table and retry policy (:class:`~qwen_backends.backends.remote.Remote`).
    """

    name = "vllm"
    capabilities = Capabilities(
        english_only=True,
        native_batching=True,
        native_async=True,
        structured_output=True,
        tools=True,
    )

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._config = settings.vllm
        self.remote = Remote(
            backend=self.name,
            server="the vLLM server",
            url=self._config.base_url,
            how_to_start=f"vllm serve {self.model_name} --port <port>",
            timeout=self._config.timeout,
            timeout_setting="QWEN_VLLM__TIMEOUT",
            max_retries=self._config.max_retries,
        )
        self._client: OpenAI | None = None
        # An async client's connections belong to the event loop that opened them.
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncOpenAI]
        self._async_clients = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._english_ids: list[int] | None = None
        #: ``None`` (the server's default, auto) until a server without a tool parser refuses it.
        self._tool_choice: str | None = None
        self._served: list[str] | None = None
        self._mode: TemplateMode | None = None
        self._mode_checked = False
        self._mode_lock = threading.Lock()
        self._root = self._config.base_url.rstrip("/").removesuffix("/v1")

    @classmethod
    def readiness(cls, settings: Settings) -> str:
        """Whether a server answers ``GET /models`` at the configured base URL (with the key)."""
        from qwen_backends.cli.info import probe_server

        key = settings.vllm.api_key.get_secret_value()
        return probe_server(
            settings.vllm.base_url.rstrip("/") + "/models",
            "vllm serve MODEL",
            headers={"Authorization": f"Bearer {key}"},
            key_setting="QWEN_VLLM__API_KEY",
        )

    # -- public API ---------------------------------------------------------------------------

    def template_mode(self) -> TemplateMode | None:
        """The served model's template mode, asked of the server once (``None``: unknown).

        ``None`` when the server has no ``/tokenize`` endpoint (then a warning is logged).

        Raises
        ------
        ThinkingModeError
            When the server serves a thinking-only model.
        ChatTemplateError
            When its template is not a Qwen3 non-thinking one (or the server drops
            ``chat_template_kwargs``).
        """
        self._check_template()
        return self._mode

    def close(self) -> None:
        """Close the connections of the sync client (async ones: see :meth:`aclose`)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
        super().close()

    async def aclose(self) -> None:
        """Close the sync client and the async client of the running event loop.

        Call it (or use ``async with backend:``) before the event loop ends: an async client's
        pooled connections belong to that loop and cannot be closed after it.
        """
        client = self._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()
        self.close()

    # -- hooks --------------------------------------------------------------------------------

    def _generate(self, request: Request) -> Generation:
        self._english_only_ids(request.sampling)  # its errors come before any request
        self._check_template()
        started = time.perf_counter()
        response = self._create(request, stream=False)
        return self._generation(response, time.perf_counter() - started, bool(request.tools))

    def _stream(self, request: Request) -> Iterator[str | Generation]:
        self._english_only_ids(request.sampling)  # its errors come before any request
        self._check_template()
        started = time.perf_counter()
        chunks = self._create(request, stream=True)
        return self._stream_chunks(chunks, started, bool(request.tools))

    def _create(self, request: Request, *, stream: bool) -> Any:
        """``chat.completions.create`` for ``request`` (see :meth:`_tool_choice_fallback`)."""
        client = self._sync_client()
        for attempt in (1, 2):
            body = self._body(request, stream=stream)
            try:
                create = functools.partial(client.chat.completions.create, **body)
                return self.remote.call(create, self._status_errors)
            except ConfigurationError as exc:
                if attempt == 2 or not self._tool_choice_fallback(request, exc):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _acreate(self, request: Request, *, stream: bool) -> Any:
        """Async :meth:`_create`."""
        client = self._async_client()
        for attempt in (1, 2):
            body = await self._abody(request, stream=stream)
            try:
                acreate = functools.partial(client.chat.completions.create, **body)
                return await self.remote.acall(acreate, self._status_errors)
            except ConfigurationError as exc:
                if attempt == 2 or not self._tool_choice_fallback(request, exc):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _tool_choice_fallback(self, request: Request, error: ConfigurationError) -> bool:
        """Whether to resend with ``tool_choice="none"``: the server refused ``auto`` because
        it has no tool parser. The template still renders the tools and the calls are parsed
        here from the content, so the result is the same; remembered for this backend."""
        if not request.tools or self._tool_choice is not None:
            return False
        if "enable-auto-tool-choice" not in str(error):
            return False
        logger.info(
            "the vLLM server has no tool parser; sending tool_choice='none' and parsing tool "
            "calls from the content"
        )
        self._tool_choice = "none"
        return True

    def _stream_chunks(
        self, chunks: Any, started: float, tools: bool = False
    ) -> Iterator[str | Generation]:
        assembler = _StreamAssembler(self.remote, tools)
        try:
            for chunk in chunks:
                piece = assembler.feed(chunk)
                if piece:
                    yield piece
            yield from assembler.finish(time.perf_counter() - started)
        except Exception as exc:
            raise self._mid_stream_error(exc, assembler) from exc
        finally:
            # Closing the response makes the server abort the request (early break included).
            chunks.close()

    async def _agenerate(self, request: Request) -> Generation:
        await self._abody(request, stream=False)  # english_only errors before any request
        await self._acheck_template()
        started = time.perf_counter()
        response = await self._acreate(request, stream=False)
        return self._generation(response, time.perf_counter() - started, bool(request.tools))

    async def _astream(self, request: Request) -> AsyncIterator[str | Generation]:
        await self._abody(request, stream=False)  # english_only errors before any request
        await self._acheck_template()
        started = time.perf_counter()
        chunks = await self._acreate(request, stream=True)
        assembler = _StreamAssembler(self.remote, bool(request.tools))
        try:
            async for chunk in chunks:
                piece = assembler.feed(chunk)
                if piece:
                    yield piece
            for item in assembler.finish(time.perf_counter() - started):
                yield item
        except Exception as exc:
            raise self._mid_stream_error(exc, assembler) from exc
        finally:
            await chunks.close()

    def _generate_batch(self, requests: list[Request]) -> list[Generation]:
        # Concurrent requests are batched by the server's scheduler (continuous batching).
        self._english_only_ids(requests[0].sampling)  # load the tokenizer once, not per thread
        self._check_template()
        workers = min(len(requests), MAX_BATCH_CONCURRENCY)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vllm-batch") as pool:
            return list(pool.map(self._generate, requests))

    def _prompt_ids(self, messages: list[Message], tools: tuple[dict[str, Any], ...]) -> list[int]:
        """The server's own ids for the non-thinking prompt (``POST /tokenize``)."""
        self._check_template()
        answer = self._tokenize(messages, tools=tools)
        tokens = answer.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise self.remote.protocol_error("/tokenize answered without a token list")
        return tokens

    # -- the template mode, asked of the server -------------------------------------------------

    def _tokenize_body(
        self,
        messages: Sequence[Message],
        *,
        tools: tuple[dict[str, Any], ...] = (),
        generation_prompt: bool = True,
        token_strs: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": list(messages),
            "add_generation_prompt": generation_prompt,
            "chat_template_kwargs": {"enable_thinking": False},
            "return_token_strs": token_strs,
        }
        if tools:
            body["tools"] = list(tools)
        return body

    def _tokenize(self, messages: Sequence[Message], **options: Any) -> dict[str, Any]:
        import httpx

        client = self._sync_client()
        body = self._tokenize_body(messages, **options)
        answer = self.remote.call(
            lambda: client.post(self._root + "/tokenize", body=body, cast_to=httpx.Response),
            self._tokenize_errors,
        )
        return self._tokenize_json(answer)

    async def _atokenize(self, messages: Sequence[Message], **options: Any) -> dict[str, Any]:
        import httpx

        client = self._async_client()
        body = self._tokenize_body(messages, **options)
        answer = await self.remote.acall(
            lambda: client.post(self._root + "/tokenize", body=body, cast_to=httpx.Response),
            self._tokenize_errors,
        )
        return self._tokenize_json(answer)

    def _tokenize_json(self, answer: Any) -> dict[str, Any]:
        try:
            data = answer.json()
        except ValueError:
            raise self.remote.protocol_error("/tokenize did not answer JSON") from None
        if not isinstance(data, dict):
            raise self.remote.protocol_error("/tokenize did not answer a JSON object")
        return data

    def _tokenize_errors(self, failure: Failure) -> QwenBackendsError | None:
        if failure.status == 404:
            served = self._served_models()
            if served is not None and self.model_name in served:
                return UnsupportedFeatureError(
                    self.name,
                    "the template check and prompt token counting",
                    f"the server at {self._root} has no /tokenize endpoint (vLLM has it since "
                    "0.5); upgrade vLLM",
                )
        return self._status_errors(failure)

    def _check_template(self) -> None:
        if self._mode_checked:
            return
        with self._mode_lock:  # batch threads: one probe, the others wait for its verdict
            if self._mode_checked:
                return
            try:
                probe = self._tokenize(_PROBE, token_strs=True)
                history = None
                if _tail_is_open(probe):
                    history = self._tokenize(
                        _HISTORY_PROBE, generation_prompt=False, token_strs=True
                    )
            except UnsupportedFeatureError as exc:
                self._unknown_mode(exc)
                return
            self._set_mode(probe, history)

    async def _acheck_template(self) -> None:
        if self._mode_checked:
            return
        try:
            probe = await self._atokenize(_PROBE, token_strs=True)
            history = None
            if _tail_is_open(probe):
                history = await self._atokenize(
                    _HISTORY_PROBE, generation_prompt=False, token_strs=True
                )
        except UnsupportedFeatureError as exc:
            self._unknown_mode(exc)
            return
        self._set_mode(probe, history)

    def _set_mode(self, probe: dict[str, Any], history: dict[str, Any] | None) -> None:
        prompt = self._probe_text(probe)
        switchable = history is not None and "<think>" in self._probe_text(history)
        self._mode = prompt_mode(prompt, switchable=switchable, source=self.model_name)
        self._mode_checked = True

    def _unknown_mode(self, exc: UnsupportedFeatureError) -> None:
        logger.warning(
            "cannot ask the vLLM server which template mode %s has (%s); a thinking-only "
            "model would not be refused before its first answer",
            self.model_name,
            exc,
        )
        self._mode_checked = True

    def _probe_text(self, answer: dict[str, Any]) -> str:
        pieces = answer.get("token_strs")
        if not isinstance(pieces, list) or not all(isinstance(p, str) for p in pieces):
            raise self.remote.protocol_error("/tokenize answered without token_strs")
        return decode_token_strs(pieces)

    # -- requests and answers -----------------------------------------------------------------

    def _body(self, request: Request, *, stream: bool) -> dict[str, Any]:
        return build_request(
            request.messages,
            request.sampling,
            model=self.model_name,
            allowed_token_ids=self._english_only_ids(request.sampling),
            stream=stream,
            response_format=request.response_format,
            tools=request.tools,
            tool_choice=self._tool_choice,
        )

    async def _abody(self, request: Request, *, stream: bool) -> dict[str, Any]:
        if request.sampling.english_only and self._english_ids is None:
            # Loading the tokenizer takes seconds: keep it off the event loop.
            await asyncio.to_thread(self._english_only_ids, request.sampling)
        return self._body(request, stream=stream)

    def _generation(self, response: Any, seconds: float, tools: bool = False) -> Generation:
        """A :class:`Generation` from a (non-streamed) chat completion, checked field by field."""
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices:
            kind = type(response).__name__
            raise self.remote.protocol_error(
                f"the chat completion has no choices (got {kind}: {str(response)[:60]!r})"
            )
        message = getattr(choices[0], "message", None)
        if message is None:
            raise self.remote.protocol_error("the first choice has no message")
        content = message.content or ""
        reasoning = _reasoning_of(message)
        text = strip_thinking(content)
        if reasoning or text != content:
            logger.warning(
                "the vLLM server returned thinking despite enable_thinking=False; removed "
                "(%d characters)",
                len(reasoning or "") + len(content) - len(text),
            )
        calls: list[ToolCall] = []
        if tools:
            for index, call in enumerate(getattr(message, "tool_calls", None) or ()):
                function = call.function
                parsed = _server_call(call.id, function.name, function.arguments, index)
                if isinstance(parsed, str):
                    text += parsed  # not valid JSON: kept as text, as for a local parse
                else:
                    calls.append(parsed)
            text, local = parse_tool_calls(text)
            calls += local
        generation = _finished(self.remote, text, choices[0].finish_reason, response.usage, seconds)
        return _with_calls(generation, calls)

    # -- english_only -------------------------------------------------------------------------

    def _english_only_ids(self, sampling: SamplingParams) -> list[int] | None:
        """The English-tier ids for ``allowed_token_ids``, or ``None`` when not restricted."""
        if not sampling.english_only:
            return None
        with self._lock:
            if self._english_ids is None:
                self._english_ids = self._load_english_ids()
            return self._english_ids

    def _load_english_ids(self) -> list[int]:
        from qwen_backends.tokenizer import OFFLINE, load_tokenizer
        from qwen_backends.vocab import allowed_token_ids

        source = self._config.tokenizer or self.model_name
        try:
            tokenizer = load_tokenizer(source)
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(
                f"english_only needs the tokenizer of the served model, and {source!r} cannot "
                f"be loaded here; set QWEN_VLLM__TOKENIZER to its hub id or a local directory, "
                f"or to {OFFLINE!r} for Qwen3's byte-exact offline tokenizer"
            ) from exc
        # The server's embedding matrix (151,936 rows for Qwen3) is larger than the tokenizer
        # (151,669 ids); only ids the tokenizer can decode are offered, all below both sizes.
        return [i for i in allowed_token_ids(tokenizer, tier="english") if 0 <= i < len(tokenizer)]

    # -- clients and errors ---------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        return {
            "base_url": self._config.base_url,
            "api_key": self._config.api_key.get_secret_value(),
            "timeout": self._config.timeout,
            "max_retries": 0,  # retries are the remote layer's: bounded, never for a 4xx
        }

    def _sync_client(self) -> OpenAI:
        with self._lock:
            if self._client is None:
                from openai import OpenAI

                self._client = OpenAI(**self._client_options())
            return self._client

    def _async_client(self) -> AsyncOpenAI:
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            from openai import AsyncOpenAI

            client = self._async_clients[loop] = AsyncOpenAI(**self._client_options())
        return client

    def _status_errors(self, failure: Failure) -> QwenBackendsError | None:
        """vLLM's wording for 404 (which models it serves), 401/403 and 400/422."""
        url, status, detail = self.remote.url, failure.status, failure.detail
        if status == 404:
            served = self._served_models()
            if served is None:
                return ConfigurationError(
                    f"{url} answered 404 ({detail}) and lists no models; base_url must be the "
                    "server's OpenAI API root, e.g. http://host:8000/v1"
                )
            if self.model_name not in served:
                return ModelNotFoundError(
                    f"the vLLM server at {url} does not serve model {self.model_name!r}; it "
                    f"serves {', '.join(map(repr, served)) or 'nothing'}: set QWEN_MODEL (or "
                    "QWEN_VLLM__MODEL) to one of them"
                )
            return None
        if status in (401, 403):
            return ConfigurationError(
                f"the vLLM server at {url} refused the API key ({status}: {detail}); set "
                "QWEN_VLLM__API_KEY to the server's --api-key"
            )
        if status in (400, 422):
            kind = ContextLengthError if _about_context(detail) else ConfigurationError
            return kind(f"the vLLM server rejected the request: {detail}")
        return None

    def _served_models(self) -> list[str] | None:
        """The model ids the server lists, or ``None`` if it lists none (a wrong base_url).

        Asked over plain HTTP so that it works from sync and async paths alike.
        """
        import httpx

        key = self._config.api_key.get_secret_value()
        try:
            answer = httpx.get(
                self._config.base_url.rstrip("/") + "/models",
                headers={"Authorization": f"Bearer {key}"},
                timeout=min(self._config.timeout, 5.0),
            )
            data = answer.json().get("data")
            return [str(model["id"]) for model in data] if isinstance(data, list) else None
        except Exception as exc:
            logger.debug("listing the vLLM server's models failed: %s", exc)
            return None

    def _mid_stream_error(self, exc: Exception, assembler: _StreamAssembler) -> BaseException:
        if isinstance(exc, GenerationError) and not exc.partial_text and assembler.text:
            exc.partial_text = assembler.text
            return exc
        return self.remote.translate(exc, partial_text=assembler.text)


def _tail_is_open(probe: dict[str, Any]) -> bool:
    """Whether the probe ends at the assistant header (Instruct-2507, or a dropped switch)."""
    pieces = probe.get("token_strs")
    return isinstance(pieces, list) and decode_token_strs(pieces).endswith(
        "<|im_start|>assistant\n"
    )


def _finished(
    remote: Remote, text: str, finish_reason: str | None, usage: Any, seconds: float
) -> Generation:
    prompt_tokens = getattr(usage, "prompt_tokens", None)
    completion_tokens = getattr(usage, "completion_tokens", None)
    if not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int):
        raise remote.protocol_error(
            "the answer carries no token usage (vLLM >= 0.5 reports it)", partial_text=text
        )
    return Generation(
        text=text,
        finish_reason=_finish_reason(finish_reason, text, remote),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        seconds=seconds,
    )


def _finish_reason(value: str | None, text: str, remote: Remote) -> FinishReason:
    """Our finish reason for the server's; an abort or error raises (with the text so far)."""
    if value == "length":
        return "length"
    if value in ("stop", "tool_calls", "function_call", None):
        return "stop"
    raise GenerationError(
        f"{remote.server} at {remote.url} ended the generation with {value!r}; check its log",
        partial_text=text,
        backend=remote.backend,
    )


def _server_call(call_id: Any, name: Any, arguments: Any, index: int) -> ToolCall | str:
    """A server-parsed call as a :class:`ToolCall`, or (arguments not a JSON object) the
    ``<tool_call>`` block the model wrote, to keep as text with a warning."""
    try:
        decoded = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        decoded = None
    if not isinstance(decoded, dict) or not isinstance(name, str) or not name:
        raw = json.dumps({"name": name, "arguments": arguments})
        logger.warning(
            "the vLLM server parsed a tool call whose arguments are not a JSON object; kept "
            "as text: %.80r",
            raw,
        )
        return f"{TOOL_CALL_OPEN}\n{raw}\n{TOOL_CALL_CLOSE}"
    from qwen_backends.tools import new_call_id

    return ToolCall(
        id=call_id if isinstance(call_id, str) and call_id else new_call_id(),
        name=name,
        arguments=decoded,
    )


def _with_calls(generation: Generation, calls: Sequence[ToolCall]) -> Generation:
    if not calls:
        return generation
    from dataclasses import replace

    return replace(generation, tool_calls=tuple(calls), finish_reason="tool_calls")


def _about_context(message: str) -> bool:
    lowered = message.lower()
    return "max_model_len" in lowered or "context length" in lowered


class _StreamAssembler:
    """Turns chat-completion chunks into text pieces, removing any thinking on the way.

    Content goes through the shared :class:`~qwen_backends.thinking.ThinkingStreamFilter`; a
    reasoning field or removed ``<think>`` text is logged once. A chunk without the fields the
    protocol promises is a :class:`~qwen_backends.errors.ProtocolError` (text so far kept).
    """

    def __init__(self, remote: Remote, tools: bool = False) -> None:
        self.remote = remote
        self.text = ""  # what was handed out so far
        self.finish_reason: str | None = None
        self.usage: Any = None
        self._filter = ThinkingStreamFilter()
        self._calls = ToolCallFilter() if tools else None
        # Server-parsed calls arrive as deltas: index -> [id, name, argument fragments].
        self._deltas: dict[int, list[Any]] = {}
        self._warned = False

    def feed(self, chunk: Any) -> str:
        """Text that can be handed out after ``chunk`` (often the chunk's own content)."""
        if getattr(chunk, "usage", None) is not None:
            self.usage = chunk.usage
        choices = getattr(chunk, "choices", None)
        if not isinstance(choices, list):
            raise self.remote.protocol_error(
                f"a stream chunk has no choices list ({str(chunk)[:60]!r})", partial_text=self.text
            )
        if not choices:
            return ""
        choice = choices[0]
        if choice.finish_reason is not None:
            self.finish_reason = choice.finish_reason
        delta = choice.delta
        if delta is None:
            return ""
        if _reasoning_of(delta):
            self._warn("a reasoning field")
        for call in getattr(delta, "tool_calls", None) or ():
            entry = self._deltas.setdefault(call.index, [None, None, ""])
            entry[0] = entry[0] or call.id
            function = call.function
            if function is not None:
                entry[1] = entry[1] or function.name
                entry[2] += function.arguments or ""
        return self._emit(self._visible(self._filter.feed(delta.content or "")))

    def _visible(self, text: str) -> str:
        return self._calls.feed(text) if self._calls is not None else text

    def finish(self, seconds: float) -> Iterator[str | Generation]:
        """What is left at the end of the stream, then the final :class:`Generation`.

        Raises
        ------
        ProtocolError
            If the stream ended without a finish reason or usage (cut mid-way).
        GenerationError
            If the server ended the stream for another reason than a stop or the length limit.
        """
        rest = self._visible(self._filter.flush())
        calls: list[ToolCall] = []
        if self._calls is not None:
            rest += self._calls.flush()
            for index in sorted(self._deltas):
                call_id, name, arguments = self._deltas[index]
                parsed = _server_call(call_id, name, arguments, index)
                if isinstance(parsed, str):
                    rest += parsed
                else:
                    calls.append(parsed)
            calls += self._calls.calls
        if self.finish_reason is None:
            raise self.remote.protocol_error(
                "the stream ended before its last chunk (no finish_reason)",
                partial_text=self.text + rest,
            )
        generation = _finished(
            self.remote, self.text + rest, self.finish_reason, self.usage, seconds
        )
        generation = _with_calls(generation, calls)
        piece = self._emit(rest)
        if piece:
            yield piece
        yield generation

    def _emit(self, piece: str) -> str:
        if self._filter.removed:
            self._warn("<think> text")
        self.text += piece
        return piece

    def _warn(self, what: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                "the vLLM server streamed %s despite enable_thinking=False; removed", what
            )


def _reasoning_of(message: Any) -> str:
    extra = getattr(message, "model_extra", None) or {}
    for field in _REASONING_FIELDS:
        value = getattr(message, field, None) or extra.get(field)
        if value:
            return str(value)
    return ""
