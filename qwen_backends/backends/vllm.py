"""The vLLM backend (``backend="vllm"``): a vLLM OpenAI-compatible server via the ``openai`` SDK.

vLLM is how Qwen3-4B scales past one machine (tensor and pipeline parallelism, multi-node via
Ray); this backend only talks to such a server, so the same code serves a laptop or a cluster.

Every request is built by :func:`~qwen_backends.backends.vllm_request.build_request` and carries
``chat_template_kwargs={"enable_thinking": False}`` plus every sampling value explicitly (vLLM
would otherwise fall back to the model's thinking-mode ``generation_config``). Reasoning
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
(:meth:`VLLMBackend.template_mode`, read from vLLM's ``POST /tokenize`` by
:mod:`qwen_backends.backends.vllm_tokenize`): the hybrid Qwen3-4B and Instruct-2507 answer, a
thinking-only model is refused with :class:`~qwen_backends.errors.ThinkingModeError` before any
answer. The same endpoint gives the exact prompt ids (:meth:`VLLMBackend.prompt_ids`).

Generation, streaming, async calls, batches, the closed check and mid-stream errors are the
shared server base's (:mod:`qwen_backends.backends.server`); the OpenAI wire format is
:mod:`qwen_backends.openai_wire`, which ``serve`` speaks too. Failures go through the shared
remote layer (:mod:`qwen_backends.backends.remote`; the client's own retries are off). Answers
that are not what the OpenAI protocol promises (HTML, truncated JSON, empty ``choices``, a
missing field) are :class:`~qwen_backends.errors.ProtocolError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from qwen_backends.backends.answer import CallPart, Piece
from qwen_backends.backends.base import Capabilities
from qwen_backends.backends.probe import probe_server
from qwen_backends.backends.remote import Failure, Remote
from qwen_backends.backends.server import Dialogue, ServerBackend
from qwen_backends.backends.vllm_request import TOP_K_OFF, build_request
from qwen_backends.backends.vllm_scoring import chunk_steps, max_model_len
from qwen_backends.backends.vllm_tokenize import (
    PROBES,
    decode_token_strs,
    needs_history_probe,
    template_mode_of,
    tokenize,
)
from qwen_backends.chat import Message
from qwen_backends.errors import (
    ConfigurationError,
    ContextLengthError,
    ModelNotFoundError,
    QwenBackendsError,
    UnsupportedFeatureError,
)
from qwen_backends.openai_wire import finish_reason
from qwen_backends.results import FinishReason, Request

if TYPE_CHECKING:
    from collections.abc import Callable

    from openai import AsyncOpenAI, OpenAI

    from qwen_backends.results import Score
    from qwen_backends.sampling import SamplingParams
    from qwen_backends.scoring import ScoreRequest
    from qwen_backends.settings import Settings
    from qwen_backends.thinking import TemplateMode

__all__ = ["TOP_K_OFF", "VLLMBackend", "build_request", "decode_token_strs"]

logger = logging.getLogger(__name__)

#: Reasoning fields a vLLM server fills when started with ``--reasoning-parser``.
_REASONING_FIELDS = ("reasoning_content", "reasoning")
#: Most requests :meth:`VLLMBackend.generate_batch` keeps in flight at once.
MAX_BATCH_CONCURRENCY = 64


class VLLMBackend(ServerBackend):
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
        logprobs=True,
        scoring=True,
    )
    batch_concurrency = MAX_BATCH_CONCURRENCY
    thinking_switch = "enable_thinking=False"
    thinking_field = "a reasoning field"

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
            deadline=self._config.deadline,
            deadline_setting="QWEN_VLLM__DEADLINE",
        )
        self._client: OpenAI | None = None
        # An async client's connections belong to the event loop that opened them.
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncOpenAI]
        self._async_clients = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._english_ids: list[int] | None = None
        self._window: int | None = None
        self._tokenizer: Any = None
        #: ``None`` (the server's default, auto) until a server without a tool parser refuses it.
        self._tool_choice: str | None = None
        self._mode: TemplateMode | None = None
        self._root = self._config.base_url.rstrip("/").removesuffix("/v1")

    @classmethod
    def readiness(cls, settings: Settings) -> str:
        """Whether a server answers ``GET /models`` at the configured base URL (with the key)."""
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
        self._ensure_checked()
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

    # -- the server backend's hooks -------------------------------------------------------------

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

    def _send(self, client: Any, body: dict[str, Any]) -> Any:
        return client.chat.completions.create(**body)

    def _parse(self, chunk: Any) -> Piece:
        """A chat completion (whole) or one of its stream chunks (a ``delta``)."""
        usage = getattr(chunk, "usage", None)
        counts = (getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))
        prompt_tokens, completion_tokens = counts if None not in counts else (None, None)
        choices = getattr(chunk, "choices", None)
        if not isinstance(choices, list):
            raise self.remote.protocol_error(
                f"the answer has no choices list (got {type(chunk).__name__}: {str(chunk)[:60]!r})"
            )
        if not choices:
            return Piece(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        choice = choices[0]
        message = getattr(choice, "message", None) or getattr(choice, "delta", None)
        parts = [
            CallPart(
                index=position if getattr(call, "index", None) is None else call.index,
                id=call.id,
                name=getattr(call.function, "name", None),
                arguments=getattr(call.function, "arguments", None) or "",
            )
            for position, call in enumerate(getattr(message, "tool_calls", None) or ())
        ]
        return Piece(
            text=getattr(message, "content", None) or "",
            thinking=any(_reasoning(message, field) for field in _REASONING_FIELDS),
            call_parts=tuple(parts),
            final=choice.finish_reason is not None,
            finish_reason=choice.finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            steps=chunk_steps(self, getattr(choice, "logprobs", None)),
        )

    def _logprob_tokenizer(self) -> Any:
        return self._served_tokenizer("logprobs")

    @property
    def context_window(self) -> int:
        """The served model's window in tokens (``max_model_len`` of ``/v1/models``, read once)."""
        if self._window is None:
            self._window = self._run(max_model_len(self))
        return self._window

    def _finish_reason(self, value: str | None) -> FinishReason | None:
        return finish_reason(value)

    def _local_work(self, request: Request) -> Callable[[], object] | None:
        # Loading the tokenizer takes seconds (async calls run it on a worker thread).
        if request.sampling.english_only and self._english_ids is None:
            return lambda: self._english_only_ids(request.sampling)
        if request.sampling.logprobs and self._tokenizer is None:
            return lambda: self._served_tokenizer("logprobs")
        return None

    def _resend(self, request: Request, error: ConfigurationError) -> bool:
        """Resend with ``tool_choice="none"`` when the server refused ``auto`` because it has
        no tool parser. The template still renders the tools and the calls are parsed here
        from the content, so the result is the same; remembered for this backend."""
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

    def _first_use_check(self) -> Dialogue[None]:
        """Ask ``/tokenize`` which template mode the served model has (see the module docs)."""
        answers: list[dict[str, Any]] = []
        try:
            for probe in PROBES:
                answers.append((yield from self._tokenize(**probe)))
                if not needs_history_probe(answers[0]):
                    break
        except UnsupportedFeatureError as exc:
            logger.warning(
                "cannot ask the vLLM server which template mode %s has (%s); a thinking-only "
                "model would not be refused before its first answer",
                self.model_name,
                exc,
            )
            return
        self._mode = template_mode_of(answers, self.remote, self.model_name)

    def _prompt_ids(self, messages: list[Message], tools: tuple[dict[str, Any], ...]) -> list[int]:
        """The server's own ids for the non-thinking prompt (``POST /tokenize``)."""
        self._ensure_checked()
        answer = self._run(self._tokenize(messages, tools=tools))
        tokens = answer.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise self.remote.protocol_error("/tokenize answered without a token list")
        return tokens

    def _tokenize(self, messages: Sequence[Message], **options: Any) -> Dialogue[dict[str, Any]]:
        return tokenize(
            self._root + "/tokenize",
            self.model_name,
            messages,
            remote=self.remote,
            status_errors=self._tokenize_errors,
            **options,
        )

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
        from qwen_backends.vocab import allowed_token_ids

        tokenizer = self._served_tokenizer("english_only")
        # The server's embedding matrix (151,936 rows for Qwen3) is larger than the tokenizer
        # (151,669 ids); only ids the tokenizer can decode are offered, all below both sizes.
        return [i for i in allowed_token_ids(tokenizer, tier="english") if 0 <= i < len(tokenizer)]

    def _served_tokenizer(self, purpose: str) -> Any:
        """The served model's tokenizer, loaded here once (``QWEN_VLLM__TOKENIZER``)."""
        if self._tokenizer is None:
            from qwen_backends.tokenizer import OFFLINE, load_tokenizer

            source = self._config.tokenizer or self.model_name
            try:
                self._tokenizer = load_tokenizer(source)
            except ModelNotFoundError as exc:
                raise ModelNotFoundError(
                    f"{purpose} needs the tokenizer of the served model, and {source!r} cannot "
                    "be loaded here; set QWEN_VLLM__TOKENIZER to its hub id or a local "
                    f"directory, or to {OFFLINE!r} for Qwen3's byte-exact offline tokenizer"
                ) from exc
        return self._tokenizer

    def _score(self, requests: list[ScoreRequest]) -> list[Score]:
        """Score with vLLM's ``prompt_logprobs`` (:mod:`~qwen_backends.backends.vllm_scoring`)."""
        from qwen_backends.backends.vllm_scoring import score_on_vllm

        self._ensure_checked()
        return score_on_vllm(self, requests, self._served_tokenizer("scoring"))

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

    @contextlib.asynccontextmanager
    async def _async_client(self) -> AsyncIterator[AsyncOpenAI]:
        # One client per event loop, kept until aclose() (see there).
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            from openai import AsyncOpenAI

            client = self._async_clients[loop] = AsyncOpenAI(**self._client_options())
        yield client

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


def _about_context(message: str) -> bool:
    lowered = message.lower()
    return "max_model_len" in lowered or "context length" in lowered


def _reasoning(message: Any, field: str) -> bool:
    """Whether ``message`` carries reasoning in ``field`` (an attribute or an extra field)."""
    extra = getattr(message, "model_extra", None) or {}
    return bool(getattr(message, field, None) or extra.get(field))
