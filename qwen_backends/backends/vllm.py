"""The vLLM backend (``backend="vllm"``): a vLLM OpenAI-compatible server via the ``openai`` SDK.

vLLM is how Qwen3-4B scales past one machine (tensor and pipeline parallelism, multi-node via
Ray); this backend only talks to such a server, so the same code serves a laptop or a cluster.

Every request is built by :func:`build_request`, shared by the sync and async paths, and always
carries ``chat_template_kwargs={"enable_thinking": False}`` plus every sampling value explicitly
(vLLM would otherwise fall back to the model's thinking-mode ``generation_config``). Reasoning
that comes back anyway (a ``reasoning``/``reasoning_content`` field from a server started with a
reasoning parser, or ``<think>`` text) is removed and logged.

Errors are translated at one choke point, :func:`translate_error`. Retries are ours (the client's
own are off): 5xx answers, timeouts and dropped connections are retried with exponential backoff
up to ``settings.vllm.max_retries`` times; 4xx answers and a refused connection are not.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from qwen_backends.backends.base import Capabilities, FinishReason, Generation, ModelBackend
from qwen_backends.chat import (
    Conversation,
    Message,
    ThinkingStreamFilter,
    strip_thinking,
)
from qwen_backends.errors import (
    BackendUnavailableError,
    ConfigurationError,
    ContextLengthError,
    GenerationError,
    ModelNotFoundError,
    QwenBackendsError,
)
from qwen_backends.settings import mask_url

if TYPE_CHECKING:
    from openai import AsyncOpenAI, OpenAI

    from qwen_backends.backends.base import SamplingLike
    from qwen_backends.sampling import SamplingParams
    from qwen_backends.settings import Settings

__all__ = ["VLLMBackend", "build_request", "translate_error"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: First retry waits this long; each further retry doubles it (plus up to 25 % jitter).
BACKOFF_SECONDS = 0.25
#: Longest single wait between retries.
MAX_BACKOFF_SECONDS = 8.0
#: vLLM's value for "no top-k": 0 in current releases, but -1 is accepted by old and new alike
#: (releases before 0.8 rejected 0), so deployments on any version understand it.
TOP_K_OFF = -1
#: Reasoning fields a vLLM server fills when started with ``--reasoning-parser``.
_REASONING_FIELDS = ("reasoning_content", "reasoning")
#: Most requests :meth:`VLLMBackend.generate_batch` keeps in flight at once.
MAX_BATCH_CONCURRENCY = 64


def build_request(
    messages: list[Message],
    sampling: SamplingParams,
    *,
    model: str,
    allowed_token_ids: Sequence[int] | None = None,
    stream: bool = False,
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
        "messages": messages,
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
    return request


def translate_error(
    exc: BaseException, *, base_url: str, model: str, served: list[str] | None = None
) -> QwenBackendsError:
    """Turn an ``openai`` exception into the matching qwen-backends error (the choke point).

    Parameters
    ----------
    exc
        What the client raised.
    base_url, model
        For the message: where the server was expected and which model was asked for.
    served
        The server's model ids, when known (they make a 404's message useful).
    """
    import openai

    base_url = mask_url(base_url)  # credentials in the URL never reach a message

    if isinstance(exc, QwenBackendsError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return GenerationError(
            f"the vLLM server at {base_url} did not answer in time; raise "
            "QWEN_VLLM__TIMEOUT or check the server's load",
            retryable=True,
        )
    if isinstance(exc, openai.APIConnectionError):
        if _connection_refused(exc):
            return BackendUnavailableError(
                f"vLLM server not reachable at {base_url} ({_cause(exc)}); start it with "
                f"`vllm serve {model} --port <port>` and point QWEN_VLLM__BASE_URL at its "
                "/v1 root"
            )
        return GenerationError(
            f"the connection to the vLLM server at {base_url} failed ({_cause(exc)}); "
            "check that the server is up and try again",
            retryable=True,
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = _server_message(exc)
        if status == 404:
            if served is None:
                return ConfigurationError(
                    f"{base_url} answered 404 ({detail}) and lists no models; base_url must "
                    "be the server's OpenAI API root, e.g. http://host:8000/v1"
                )
            if model not in served:
                return ModelNotFoundError(
                    f"the vLLM server at {base_url} does not serve model {model!r}; it serves "
                    f"{', '.join(map(repr, served)) or 'nothing'}: set QWEN_MODEL (or "
                    "QWEN_VLLM__MODEL) to one of them"
                )
            return GenerationError(f"the vLLM server at {base_url} answered 404: {detail}")
        if status in (401, 403):
            return ConfigurationError(
                f"the vLLM server at {base_url} refused the API key ({status}: {detail}); set "
                "QWEN_VLLM__API_KEY to the server's --api-key"
            )
        if status in (400, 422):
            kind = ContextLengthError if _about_context(detail) else ConfigurationError
            return kind(f"the vLLM server rejected the request: {detail}")
        if status == 429:
            return BackendUnavailableError(
                f"the vLLM server at {base_url} is overloaded (429: {detail}); retry later"
            )
        if status >= 500:
            return GenerationError(
                f"the vLLM server at {base_url} failed ({status}: {detail}); check its log",
                retryable=True,
            )
        return GenerationError(f"the vLLM server at {base_url} answered {status}: {detail}")
    return GenerationError(
        f"talking to the vLLM server at {base_url} failed: {type(exc).__name__}: {exc}"
    )


class VLLMBackend(ModelBackend):
    """Qwen3-4B on a vLLM OpenAI-compatible server (see the module docs).

    Reads ``settings.vllm`` (``base_url``, ``api_key``, ``timeout``, ``max_retries``,
    ``tokenizer``) and serves ``settings.model_name``. Nothing is contacted until the first call.

    Parameters
    ----------
    settings
        Resolved settings.
    """

    name = "vllm"
    extra = "vllm"
    requires = ("openai",)
    capabilities = Capabilities(english_only=True, native_batching=True, native_async=True)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._config = settings.vllm
        self._client: OpenAI | None = None
        # An async client's connections belong to the event loop that opened them.
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncOpenAI]
        self._async_clients = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._english_ids: list[int] | None = None

    # -- public API ---------------------------------------------------------------------------

    async def agenerate(self, messages: Conversation, sampling: SamplingLike = None) -> Generation:
        """Async :meth:`generate` on the native async client (requests run concurrently)."""
        clean, params = self._validate(messages), self.resolve_sampling(sampling)
        request = await self._arequest(clean, params, stream=False)
        started = time.perf_counter()
        response = await self._acall(lambda client: client.chat.completions.create(**request))
        return _generation(response, time.perf_counter() - started)

    async def astream(
        self, messages: Conversation, sampling: SamplingLike = None
    ) -> AsyncIterator[str]:
        """Async :meth:`stream` on the native async client."""
        clean, params = self._validate(messages), self.resolve_sampling(sampling)
        request = await self._arequest(clean, params, stream=True)
        chunks = await self._acall(lambda client: client.chat.completions.create(**request))
        assembler = _StreamAssembler()
        try:
            async for chunk in chunks:
                piece = assembler.feed(chunk)
                if piece:
                    yield piece
        except Exception as exc:
            raise self._mid_stream_error(exc, assembler) from exc
        finally:
            await chunks.close()
        tail = assembler.finish()
        if tail:
            yield tail

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

    async def __aenter__(self) -> VLLMBackend:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- hooks --------------------------------------------------------------------------------

    def _generate(self, messages: list[Message], sampling: SamplingParams) -> Generation:
        request = self._request(messages, sampling, stream=False)
        started = time.perf_counter()
        response = self._call(lambda client: client.chat.completions.create(**request))
        return _generation(response, time.perf_counter() - started)

    def _stream(self, messages: list[Message], sampling: SamplingParams) -> Iterator[str]:
        request = self._request(messages, sampling, stream=True)
        chunks = self._call(lambda client: client.chat.completions.create(**request))
        assembler = _StreamAssembler()
        try:
            for chunk in chunks:
                piece = assembler.feed(chunk)
                if piece:
                    yield piece
        except Exception as exc:
            raise self._mid_stream_error(exc, assembler) from exc
        finally:
            # Closing the response makes the server abort the request (early break included).
            chunks.close()
        tail = assembler.finish()
        if tail:
            yield tail

    def _generate_batch(
        self, conversations: list[list[Message]], sampling: SamplingParams
    ) -> list[Generation]:
        # Concurrent requests are batched by the server's scheduler (continuous batching).
        self._english_only_ids(sampling)  # load the tokenizer once, not in every thread
        workers = min(len(conversations), MAX_BATCH_CONCURRENCY)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vllm-batch") as pool:
            return list(
                pool.map(lambda messages: self._generate(messages, sampling), conversations)
            )

    # -- requests -----------------------------------------------------------------------------

    def _request(
        self, messages: list[Message], sampling: SamplingParams, *, stream: bool
    ) -> dict[str, Any]:
        return build_request(
            messages,
            sampling,
            model=self.model_name,
            allowed_token_ids=self._english_only_ids(sampling),
            stream=stream,
        )

    async def _arequest(
        self, messages: list[Message], sampling: SamplingParams, *, stream: bool
    ) -> dict[str, Any]:
        if sampling.english_only and self._english_ids is None:
            # Loading the tokenizer takes seconds: keep it off the event loop.
            await asyncio.to_thread(self._english_only_ids, sampling)
        return self._request(messages, sampling, stream=stream)

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

    # -- clients, retries, errors ---------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        return {
            "base_url": self._config.base_url,
            "api_key": self._config.api_key.get_secret_value(),
            "timeout": self._config.timeout,
            "max_retries": 0,  # retries are ours: bounded, and never for a 4xx
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

    def _call(self, request: Callable[[OpenAI], _T]) -> _T:
        """Run ``request`` on the sync client, retrying what may succeed on a second try."""
        client = self._sync_client()
        for attempt in range(self._config.max_retries + 1):
            try:
                return request(client)
            except Exception as exc:
                error = self._translate(exc, self._served_models)
                if not _retry(exc, error, attempt, self._config.max_retries):
                    raise error from exc
                time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _acall(self, request: Callable[[AsyncOpenAI], Awaitable[_T]]) -> _T:
        """Async :meth:`_call`."""
        client = self._async_client()
        for attempt in range(self._config.max_retries + 1):
            try:
                return await request(client)
            except Exception as exc:
                served = await self._aserved_models() if _is_404(exc) else None
                error = translate_error(
                    exc, base_url=self._config.base_url, model=self.model_name, served=served
                )
                if not _retry(exc, error, attempt, self._config.max_retries):
                    raise error from exc
                await asyncio.sleep(_backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(
        self, exc: BaseException, served: Callable[[], list[str] | None]
    ) -> QwenBackendsError:
        return translate_error(
            exc,
            base_url=self._config.base_url,
            model=self.model_name,
            served=served() if _is_404(exc) else None,
        )

    def _served_models(self) -> list[str] | None:
        """The model ids the server lists, or ``None`` if it lists none (a wrong base_url)."""
        try:
            return [model.id for model in self._sync_client().models.list()]
        except Exception as exc:
            logger.debug("listing the vLLM server's models failed: %s", exc)
            return None

    async def _aserved_models(self) -> list[str] | None:
        try:
            return [model.id async for model in self._async_client().models.list()]
        except Exception as exc:
            logger.debug("listing the vLLM server's models failed: %s", exc)
            return None

    def _mid_stream_error(self, exc: Exception, assembler: _StreamAssembler) -> QwenBackendsError:
        error = self._translate(exc, lambda: None)
        if isinstance(error, GenerationError) and not error.partial_text:
            error = GenerationError(
                f"the stream broke after {len(assembler.text)} characters: {error}",
                partial_text=assembler.text,
                retryable=error.retryable,
            )
        return error


class _StreamAssembler:
    """Turns chat-completion chunks into text pieces, removing any thinking on the way.

    Content goes through the shared :class:`~qwen_backends.chat.ThinkingStreamFilter`; a
    reasoning field or removed ``<think>`` text is logged once.
    """

    def __init__(self) -> None:
        self.text = ""  # what was handed out so far
        self.finish_reason: str | None = None
        self.usage: Any = None
        self._filter = ThinkingStreamFilter()
        self._warned = False

    def feed(self, chunk: Any) -> str:
        """Text that can be handed out after ``chunk`` (often the chunk's own content)."""
        if getattr(chunk, "usage", None) is not None:
            self.usage = chunk.usage
        if not chunk.choices:
            return ""
        choice = chunk.choices[0]
        if choice.finish_reason is not None:
            self.finish_reason = choice.finish_reason
        delta = choice.delta
        if delta is None:
            return ""
        if _reasoning_of(delta):
            self._warn("a reasoning field")
        return self._emit(self._filter.feed(delta.content or ""))

    def finish(self) -> str:
        """Whatever is left at the end of the stream (an unclosed think block is dropped).

        Raises
        ------
        GenerationError
            If the server ended the stream for another reason than a stop or the length limit.
        """
        rest = self._filter.flush()
        _finish_reason(self.finish_reason, self.text + rest)
        return self._emit(rest)

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


def _generation(response: Any, seconds: float) -> Generation:
    """A :class:`Generation` from a (non-streamed) chat completion."""
    choice = response.choices[0]
    content = choice.message.content or ""
    reasoning = _reasoning_of(choice.message)
    text = strip_thinking(content)
    if reasoning or text != content:
        logger.warning(
            "the vLLM server returned thinking despite enable_thinking=False; removed "
            "(%d characters)",
            len(reasoning or "") + len(content) - len(text),
        )
    return _finished(text, choice.finish_reason, response.usage, seconds)


def _finished(text: str, finish_reason: str | None, usage: Any, seconds: float) -> Generation:
    if usage is None:
        raise GenerationError(
            "the vLLM server did not report token usage; upgrade it (vLLM >= 0.5 reports it)",
            partial_text=text,
        )
    return Generation(
        text=text,
        finish_reason=_finish_reason(finish_reason, text),
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        seconds=seconds,
    )


def _finish_reason(value: str | None, text: str) -> FinishReason:
    """Our finish reason for the server's; an abort or error raises (with the text so far)."""
    if value == "length":
        return "length"
    if value in ("stop", "tool_calls", "function_call", None):
        return "stop"
    raise GenerationError(
        f"the vLLM server ended the generation with {value!r}; check its log",
        partial_text=text,
    )


def _reasoning_of(message: Any) -> str:
    extra = getattr(message, "model_extra", None) or {}
    for field in _REASONING_FIELDS:
        value = getattr(message, field, None) or extra.get(field)
        if value:
            return str(value)
    return ""


def _retry(exc: BaseException, error: QwenBackendsError, attempt: int, max_retries: int) -> bool:
    if attempt >= max_retries or isinstance(error, BackendUnavailableError):
        return False
    import openai

    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError)


def _backoff(attempt: int) -> float:
    delay = min(MAX_BACKOFF_SECONDS, BACKOFF_SECONDS * 2**attempt)
    return delay * (1 + random.random() / 4)


def _is_404(exc: BaseException) -> bool:
    return getattr(exc, "status_code", None) == 404


def _connection_refused(exc: BaseException) -> bool:
    """Whether the connection was never made (nothing listens), as opposed to dropped."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError) or type(current).__name__ == "ConnectError":
            return True
        current = current.__cause__ or current.__context__
    return False


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)


def _server_message(exc: Any) -> str:
    """The server's own error message (vLLM: ``{"error": {"message": ...}}``)."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if message:
            return " ".join(str(message).split())
    return " ".join(str(exc.message).split())


def _about_context(message: str) -> bool:
    lowered = message.lower()
    return "max_model_len" in lowered or "context length" in lowered
