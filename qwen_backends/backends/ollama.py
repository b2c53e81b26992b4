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
Generation, streaming, async calls, batches, the closed check and mid-stream errors (an error
line after streaming began keeps the text received in ``partial_text``) are the shared server
base's (:mod:`qwen_backends.backends.server`). Errors from the client (``ResponseError``, the
builtin ``ConnectionError``, raw ``httpx`` exceptions) go through the shared remote layer
(:mod:`qwen_backends.backends.remote`): 5xx, 429, timeouts and broken connections are retried
``settings.ollama.max_retries`` times with jittered exponential backoff; other 4xx and refused
connections never. ``eval_count``, which counts the end-of-turn token, is
``completion_tokens``. The server's version and model checks and the pulling and building of
models live in :mod:`qwen_backends.backends.ollama_models`.

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
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from qwen_backends.backends.answer import Piece
from qwen_backends.backends.base import Capabilities
from qwen_backends.backends.ollama_logprobs import (
    check_logprobs_version,
    chunk_steps,
    qwen3_vocabulary,
)
from qwen_backends.backends.ollama_models import (
    INSTRUCT_TAGS,
    MIN_THINK_VERSION,
    ModelManager,
    built_model_source,
    check_model,
    check_version,
    ollama_template_mode,
    parse_version,
    thinking_only_reason,
)
from qwen_backends.backends.probe import probe_server
from qwen_backends.backends.remote import Failure, Remote
from qwen_backends.backends.server import Call, Dialogue, ServerBackend
from qwen_backends.chat import Message
from qwen_backends.errors import ConfigurationError, ModelNotFoundError, QwenBackendsError
from qwen_backends.results import Request, ToolCall
from qwen_backends.sampling import SamplingParams
from qwen_backends.tools import new_call_id

if TYPE_CHECKING:
    import ssl

    import ollama

    from qwen_backends.settings import OllamaSettings, Settings
    from qwen_backends.structured import ResponseFormat
    from qwen_backends.thinking import TemplateMode

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

#: Most requests :meth:`OllamaBackend.generate_batch` keeps in flight at once.
BATCH_CONCURRENCY = 8

_NUMBER = re.compile(r"-?\d+(\.\d+)?")


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
    if sampling.logprobs:
        body["logprobs"] = True
        if sampling.top_logprobs:
            body["top_logprobs"] = sampling.top_logprobs
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


# -- the backend ---------------------------------------------------------------------------


class OllamaBackend(ServerBackend):
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
    capabilities = Capabilities(
        native_async=True, structured_output=True, tools=True, logprobs=True
    )
    #: Ollama gives no entry to the end-of-turn token or to tokens cut by a stop string.
    logprobs_cover_every_token = False
    batch_concurrency = BATCH_CONCURRENCY
    thinking_switch = "think=false"
    thinking_field = "message.thinking"
    thinking_advice = f"; use a non-thinking tag such as {INSTRUCT_TAGS[0]}"

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
            deadline=config.deadline,
            deadline_setting="QWEN_OLLAMA__DEADLINE",
        )
        # One TLS context for every client: building it loads the CA bundle (~35 ms), which
        # would otherwise dominate each short-lived AsyncClient.
        self._ssl: ssl.SSLContext = httpx.create_ssl_context()
        self._client = ollama.Client(host=config.host, timeout=config.timeout, verify=self._ssl)
        self._warned_tools: set[tuple[str, tuple[str, ...]]] = set()
        self._mode: TemplateMode | None = None
        self._version: tuple[int, int, int] | None = None

    @classmethod
    def readiness(cls, settings: Settings) -> str:
        """Whether an Ollama server answers at the configured host."""
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
        listing = self._call(Call(lambda client: client.list(), self._status_errors))
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
        PARAMETERs of :mod:`qwen_backends.finetune.ollama` (empty think block pre-filled). The
        work is :class:`~qwen_backends.backends.ollama_models.ModelManager`'s.

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
        self._check_open()
        manager = ModelManager(self._client, self.remote, self.model_name, self._status_errors)
        return manager.ensure(pull=pull, progress=progress)

    def close(self) -> None:
        """Close the HTTP connection pool. Safe to call twice."""
        if not self._closed:
            self._client.close()
        super().close()

    # -- the server backend's hooks ---------------------------------------------------------

    def _sync_client(self) -> ollama.Client:
        return self._client

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

    def _body(self, request: Request, *, stream: bool) -> dict[str, Any]:
        if request.sampling.logprobs:
            check_logprobs_version(self._version, remote=self.remote)
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

    def _send(self, client: Any, body: dict[str, Any]) -> Any:
        return client.chat(**body)

    def _parse(self, chunk: Any) -> Piece:
        """A ``ChatResponse``: a stream line, or the whole answer (one line with ``done``)."""
        message = getattr(chunk, "message", None)
        if message is None:
            raise self.remote.protocol_error("a chat answer line has no message")
        done = getattr(chunk, "done", None) is True
        return Piece(
            text=message.content or "",
            thinking=bool(message.thinking),
            calls=tuple(_tool_calls(message)),
            final=done,
            finish_reason=chunk.done_reason if done else None,
            prompt_tokens=_count(chunk.prompt_eval_count) if done else None,
            completion_tokens=_count(chunk.eval_count) if done else None,
            steps=chunk_steps(getattr(chunk, "logprobs", None)),
        )

    def _local_work(self, request: Request) -> Callable[[], object] | None:
        # Loading the vocabulary takes seconds: async calls run it on a worker thread.
        return qwen3_vocabulary if request.sampling.logprobs else None

    def _logprob_tokenizer(self) -> Any:
        """Qwen3's byte-exact tokenizer (every Qwen3-4B release shares its vocabulary), which
        turns the token texts Ollama reports into ids."""
        return qwen3_vocabulary()[0]

    def _first_use_check(self) -> Dialogue[None]:
        """The server version (``/api/version``), then the model (``/api/show``)."""
        response = yield Call(lambda client: client._request_raw("GET", "/api/version"))
        try:
            payload = response.json()
        except ValueError:
            raise self.remote.protocol_error("/api/version did not answer JSON") from None
        version = payload.get("version") if isinstance(payload, dict) else None
        check_version(version if isinstance(version, str) else None, remote=self.remote)
        self._version = parse_version(version if isinstance(version, str) else None)
        name = self.model_name
        show = yield Call(lambda client: client.show(name), self._status_errors)
        self._mode = check_model(name, show)

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


def _tool_calls(message: Any) -> list[ToolCall]:
    """The native ``message.tool_calls`` of an Ollama answer (which carry no ids)."""
    calls = []
    for call in getattr(message, "tool_calls", None) or ():
        function = call.function
        arguments = dict(function.arguments or {})
        calls.append(ToolCall(id=new_call_id(), name=function.name, arguments=arguments))
    return calls


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
