"""A loopback stand-in for an Ollama server, for tests and benchmarks (no Ollama here).

It listens on 127.0.0.1 with real sockets, so the unchanged ``ollama`` client talks to it over
HTTP exactly as to ``ollama serve``. It implements the documented shapes of ``/api/chat``
(NDJSON streaming and single JSON), ``/api/show``, ``/api/tags``, ``/api/pull``, ``/api/create``
(``from`` an existing model, with a new ``template`` and ``parameters``) and ``/api/version``, and
rejects what the real server rejects: an unknown model (404), an invalid
``think`` value (400) and ``think: true`` on a model without the thinking capability (400).

Tokens come from a real (random-weight) Qwen3 checkpoint run with transformers: the prompt is
rendered with the checkpoint's tokenizer carrying the served model's chat template (the hybrid
Qwen3-4B's, Instruct-2507's or Thinking-2507's: :data:`qwen_backends.testing.TEMPLATES`), so
the prompt counts differ per release as on a real server, and ``num_predict``, ``seed``,
``temperature``, ``top_k``, ``top_p``, ``min_p``, ``repeat_penalty``, ``presence_penalty`` and
``stop`` are honoured, so token counts and streaming are real. Special tokens other than the
end-of-turn token are masked out, so the model never produces ``<think>`` by accident; thinking
appears only when a served model is set up to think.

Every request is recorded (:attr:`OllamaServer.requests`) and every answer too
(:attr:`OllamaServer.answers`), so tests assert exactly what was sent and received. Behaviours
for error paths are plain attributes: ``version``, ``latency``, ``fail_next``, ``error_after``,
``gate``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

INSTRUCT_TAG = "qwen3:4b-instruct-2507-q4_K_M"
#: The server release the stand-in reports by default (one that returns logprobs).
RELEASE = "0.13.0"
THINKING_TAG = "qwen3:4b"
HYBRID_TAG = "qwen3:4b-q4_K_M"
THINK_LEVELS = ("low", "medium", "high")
#: Ids the model may produce besides regular tokens: <|endoftext|> and <|im_end|>.
EOS_IDS = (151_643, 151_645)
FIRST_ADDED_ID = 151_643

_HYBRID_TEMPLATE = (
    "{{- range $i, $_ := .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}"
    "{{- if and $.IsThinkSet (not $.Think) }} /no_think{{ end }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)
_THINKING_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n<think>\n"
)
_INSTRUCT_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)


@dataclass
class ServedModel:
    """One model the stub serves, and how it behaves.

    Attributes
    ----------
    name
        Tag, e.g. ``qwen3:4b-instruct-2507-q4_K_M``.
    capabilities
        What ``/api/show`` reports; ``thinking`` allows ``think: true``.
    model_info
        GGUF metadata (``general.*``) reported by ``/api/show``.
    template
        The Go template ``/api/show`` reports.
    chat_template
        Which release's chat template renders its prompts (a key of
        :data:`qwen_backends.testing.TEMPLATES`).
    thinking_only
        Thinks whatever ``think`` says (Qwen3-4B-Thinking-2507).
    leak
        Thinking comes back despite ``think: false``: ``"field"`` in ``message.thinking``,
        ``"tags"`` as a ``<think>`` block in the content; ``None`` for a well-behaved model.
    think_tokens
        Tokens of thinking produced when the model thinks.
    end_after
        End the turn (the end-of-turn token) after this many tokens; ``None`` lets the
        checkpoint decide.
    """

    name: str
    capabilities: list[str] = field(default_factory=lambda: ["completion", "tools"])
    model_info: dict[str, Any] = field(default_factory=dict)
    template: str = _INSTRUCT_TEMPLATE
    chat_template: str = "instruct-2507"
    thinking_only: bool = False
    leak: str | None = None
    think_tokens: int = 6
    end_after: int | None = None

    def listing(self) -> dict[str, Any]:
        """The entry of ``/api/tags``."""
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": "2025-08-12T10:00:00.000000000Z",
            "size": 2_497_293_918,
            "digest": "e55aed6fe643" + "0" * 52,
            "details": self.details(),
        }

    def details(self) -> dict[str, Any]:
        """The ``details`` object of ``/api/tags`` and ``/api/show``."""
        return {
            "parent_model": "",
            "format": "gguf",
            "family": "qwen3",
            "families": ["qwen3"],
            "parameter_size": "4.0B",
            "quantization_level": "Q4_K_M",
        }


def instruct_model(name: str = INSTRUCT_TAG) -> ServedModel:
    """Qwen3-4B-Instruct-2507: no thinking capability."""
    return ServedModel(
        name,
        model_info={"general.architecture": "qwen3", "general.finetune": "Instruct-2507"},
    )


def thinking_model(name: str = THINKING_TAG) -> ServedModel:
    """Qwen3-4B-Thinking-2507 (today's plain ``qwen3:4b``): thinks even with ``think: false``."""
    return ServedModel(
        name,
        capabilities=["completion", "tools", "thinking"],
        model_info={
            "general.architecture": "qwen3",
            "general.name": "Qwen3 4B Thinking 2507",
            "general.finetune": "Thinking-2507",
        },
        template=_THINKING_TEMPLATE,
        chat_template="thinking-2507",
        thinking_only=True,
        leak="field",
    )


def hybrid_model(name: str = HYBRID_TAG) -> ServedModel:
    """The April 2025 hybrid Qwen3-4B: thinks unless ``think: false`` (or omitted before 0.12.4)."""
    return ServedModel(
        name,
        capabilities=["completion", "tools", "thinking"],
        model_info={"general.architecture": "qwen3"},
        template=_HYBRID_TEMPLATE,
        chat_template="hybrid",
    )


class TinyQwen:
    """A random-weight Qwen3 checkpoint that renders prompts and samples tokens.

    Parameters
    ----------
    directory
        A checkpoint from :func:`qwen_backends.testing.tiny_checkpoint`.
    """

    def __init__(self, directory: str | Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory))
        self.model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
        self.model.eval()
        vocab = self.model.config.vocab_size
        self.banned = torch.zeros(vocab, dtype=torch.bool)
        self.banned[FIRST_ADDED_ID:] = True
        self.banned[list(EOS_IDS)] = False
        # One forward pass at a time, like a server with OLLAMA_NUM_PARALLEL=1.
        self.lock = threading.Lock()
        self._tokenizers: dict[str, Any] = {}

    def prompt_ids(self, messages: list[dict[str, Any]], template: str = "hybrid") -> list[int]:
        """Token ids of the prompt for ``messages`` under release ``template``'s chat template.

        Non-thinking for the hybrid and Instruct-2507; a thinking-only template renders its
        own prompt (opening ``<think>``), as the real server would.
        """
        from qwen_backends.chat import render_prompt_ids

        clean = []
        for message in messages:
            entry = {"role": message["role"], "content": message.get("content") or ""}
            if message.get("tool_calls"):
                entry["tool_calls"] = message["tool_calls"]
            clean.append(entry)
        tokenizer = self.tokenizer_for(template)
        if template == "thinking-2507":
            prompt = tokenizer.apply_chat_template(
                clean, tokenize=False, add_generation_prompt=True
            )
            return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        # A server's template inserts whatever text it gets: refusing control tokens is the
        # client library's job (allow_control_tokens), not Ollama's.
        return render_prompt_ids(tokenizer, clean, allow_control_tokens=True)

    def tokenizer_for(self, template: str) -> Any:
        """The checkpoint's tokenizer carrying release ``template``'s chat template."""
        from qwen_backends.testing import chat_template

        found = self._tokenizers.get(template)
        if found is None:
            found = copy.copy(self.tokenizer)
            found.chat_template = chat_template(template)
            self._tokenizers[template] = found
        return found

    def tokens(
        self,
        prompt: list[int],
        options: dict[str, Any],
        end_after: int | None = None,
        outcome: dict[str, bool] | None = None,
        logprobs: list[dict[str, Any]] | None = None,
        top: int = 0,
    ) -> Iterator[int]:
        """Sample token ids after ``prompt`` (stops at end of turn or ``num_predict``).

        The end-of-turn token itself is not yielded; ``outcome["ended"]`` is set when it came
        (it counts as a generated token, as in Ollama's ``eval_count``). ``end_after`` forces
        it after that many tokens. ``logprobs`` receives the entry of each yielded token, with
        ``top`` alternatives.
        """
        outcome = {} if outcome is None else outcome
        outcome["ended"] = False
        torch = self.torch
        seed = options.get("seed")
        generator = torch.Generator().manual_seed(
            seed if isinstance(seed, int) and seed >= 0 else random.randrange(2**31)
        )
        limit = options.get("num_predict", -1)
        limit = 128 if limit is None or limit < 0 else limit
        generated: list[int] = []
        past = None
        step_input = torch.tensor([prompt])
        while len(generated) < limit:
            if end_after is not None and len(generated) >= end_after:
                outcome["ended"] = True
                return
            with self.lock, torch.no_grad():
                out = self.model(
                    input_ids=step_input, past_key_values=past, use_cache=True, logits_to_keep=1
                )
            past = out.past_key_values
            token = self._pick(out.logits[0, -1], generated, options, generator)
            if token in EOS_IDS:  # Ollama's runner gives the end of turn no logprobs entry
                outcome["ended"] = True
                return
            if logprobs is not None:
                logprobs.append(self._logprob_entry(out.logits[0, -1], token, top))
            generated.append(token)
            yield token
            step_input = torch.tensor([[token]])

    def _logprob_entry(self, logits: Any, token: int, top: int) -> dict[str, Any]:
        """Ollama's entry for ``token``: the log-softmax of the raw logits, tokens by text (a
        byte of a longer character is U+FFFD, as Go's JSON encoder writes invalid UTF-8)."""
        rows = self.torch.log_softmax(logits.float(), dim=-1)
        entry: dict[str, Any] = {"token": self.decode([token]), "logprob": float(rows[token])}
        if top:
            values, ids = self.torch.topk(rows, top)
            entry["top_logprobs"] = [
                {"token": self.decode([int(i)]), "logprob": float(v)}
                for v, i in zip(values, ids, strict=True)
            ]
        return entry

    def _pick(
        self, logits: Any, generated: list[int], options: dict[str, Any], generator: Any
    ) -> int:
        torch = self.torch
        logits = logits.clone().masked_fill(self.banned, float("-inf"))
        recent = torch.tensor(sorted(set(generated[-64:])), dtype=torch.long)
        if len(recent):
            penalty = float(options.get("repeat_penalty", 1.0))
            values = logits[recent]
            logits[recent] = torch.where(values > 0, values / penalty, values * penalty)
            logits[recent] -= float(options.get("presence_penalty", 0.0))
        temperature = float(options.get("temperature", 0.8))
        if temperature <= 0:
            return int(torch.argmax(logits))
        # Work on the top-k candidates only (the whole vocabulary when top_k is 0).
        top_k = int(options.get("top_k", 40))
        k = min(top_k, logits.numel()) if top_k > 0 else logits.numel()
        values, ids = torch.topk(logits, k)  # sorted, most likely first
        probs = torch.softmax(values / temperature, dim=-1)
        top_p = float(options.get("top_p", 0.9))
        if top_p < 1.0:
            before = torch.cumsum(probs, 0) - probs
            probs = torch.where(before < top_p, probs, torch.zeros_like(probs))
        min_p = float(options.get("min_p", 0.0))
        if min_p > 0:
            probs = torch.where(probs >= min_p * probs[0], probs, torch.zeros_like(probs))
        choice = torch.multinomial(probs / probs.sum(), 1, generator=generator)
        return int(ids[choice])

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``."""
        text: str = self.tokenizer.decode(ids, skip_special_tokens=False)
        return text


@dataclass
class Recorded:
    """One request the stub received."""

    method: str
    path: str
    body: Any


class OllamaServer:
    """The stub server; use as a context manager or call :meth:`start` / :meth:`stop`.

    Parameters
    ----------
    engine
        The checkpoint that produces tokens.
    models
        Models the server has pulled (default: the instruct tag only).
    pullable
        Models ``/api/pull`` can fetch.

    Attributes
    ----------
    version
        What ``/api/version`` reports; below 0.9.0 the ``think`` field is ignored.
    latency
        Seconds every chat request waits before answering.
    fail_next
        HTTP status codes returned by the next chat requests, one each.
    error_after
        Streamed chat answers break with an error line after this many content chunks.
    gate
        A barrier every chat request waits at before answering (proves concurrency).
    """

    def __init__(
        self,
        engine: TinyQwen,
        models: list[ServedModel] | None = None,
        pullable: list[ServedModel] | None = None,
    ) -> None:
        self.engine = engine
        self.models = {m.name: m for m in (models if models is not None else [instruct_model()])}
        self.pullable = {m.name: m for m in pullable or []}
        self.version = RELEASE
        self.latency = 0.0
        self.fail_next: list[int] = []
        self.error_after: int | None = None
        self.gate: threading.Barrier | None = None
        self.requests: list[Recorded] = []
        self.answers: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        assert self._httpd is not None, "start the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> OllamaServer:
        """Listen on a free port in a background thread."""
        stub = self

        class Handler(_Handler):
            server_stub = stub

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd.drop_connections()
            self._httpd = None

    def reset(self) -> None:
        """Wait for requests still running, forget them, restore the default behaviours.

        A stream the previous test closed early may still be generating in its handler thread;
        waiting keeps its late answer out of the next test's records.
        """
        deadline = time.monotonic() + 10.0
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            self.requests.clear()
            self.answers.clear()
            self.max_in_flight = 0
        self.version, self.latency, self.fail_next = RELEASE, 0.0, []
        self.error_after, self.gate = None, None

    def chats(self) -> list[dict[str, Any]]:
        """Bodies of the ``/api/chat`` requests received so far."""
        return [r.body for r in self.requests if r.path == "/api/chat"]

    def paths(self) -> list[str]:
        """Paths of all requests received so far, in order."""
        return [r.path for r in self.requests]

    def __enter__(self) -> OllamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals used by the handler ------------------------------------------------------

    def _record(self, method: str, path: str, body: Any) -> None:
        with self._lock:
            self.requests.append(Recorded(method, path, body))

    def _version_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.version.split("-")[0].split(".")[:3])


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # Go's listener uses the system's backlog; 5 (the default here) drops concurrent connects.
    request_queue_size = 128

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.connections: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Close kept-alive connections too, as a stopped server would."""
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or stop reading close the socket mid-answer; that is expected.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_stub: OllamaServer
    #: logprobs entries not yet sent (``None``: the request did not ask for them).
    _pending: list[dict[str, Any]] | None = None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing --------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route("GET", None)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            self._json(400, {"error": "invalid JSON in request body"})
            return
        self._route("POST", body)

    def _route(self, method: str, body: Any) -> None:
        stub = self.server_stub
        stub._record(method, self.path, body)
        routes = {
            ("GET", "/api/version"): lambda: self._json(200, {"version": stub.version}),
            ("GET", "/api/tags"): self._tags,
            ("POST", "/api/show"): lambda: self._show(body),
            ("POST", "/api/pull"): lambda: self._pull(body),
            ("POST", "/api/create"): lambda: self._create(body),
            ("POST", "/api/chat"): lambda: self._chat(body),
        }
        handler = routes.get((method, self.path))
        if handler is None:
            self._text(404, "404 page not found")
            return
        try:
            handler()
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception as exc:  # a bug in the stub or a bad request: answer like Go's 500
            self._json(500, {"error": f"{type(exc).__name__}: {exc}"})

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _text(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_ndjson(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _line(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_ndjson(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # -- endpoints -------------------------------------------------------------------------

    def _tags(self) -> None:
        models = list(self.server_stub.models.values())
        self._json(200, {"models": [m.listing() for m in models]})

    def _show(self, body: dict[str, Any]) -> None:
        name = body.get("model") or body.get("name") or ""
        model = self.server_stub.models.get(name)
        if model is None:
            self._json(404, {"error": f"model '{name}' not found"})
            return
        self._json(
            200,
            {
                "modelfile": f"FROM {name}\nTEMPLATE {json.dumps(model.template)}\n",
                "parameters": "temperature 0.6\ntop_p 0.95\ntop_k 20\nrepeat_penalty 1",
                "template": model.template,
                "details": model.details(),
                "model_info": model.model_info,
                "capabilities": model.capabilities,
                "modified_at": "2025-08-12T10:00:00.000000000Z",
            },
        )

    def _pull(self, body: dict[str, Any]) -> None:
        stub = self.server_stub
        name = body.get("model") or ""
        model = stub.pullable.get(name) or stub.models.get(name)
        stream = body.get("stream", True)
        if not stream:
            if model is None:
                self._json(500, {"error": "pull model manifest: file does not exist"})
            else:
                stub.models[name] = model
                self._json(200, {"status": "success"})
            return
        self._start_ndjson()
        self._line({"status": "pulling manifest"})
        if model is None:
            self._line({"error": "pull model manifest: file does not exist"})
            self._end_ndjson()
            return
        digest, total = "sha256:" + "e5" * 32, 2_497_280_000
        for completed in (0, total // 4, total // 2, total):
            self._line(
                {
                    "status": f"pulling {digest[7:19]}",
                    "digest": digest,
                    "total": total,
                    "completed": completed,
                }
            )
        for status in ("verifying sha256 digest", "writing manifest", "success"):
            self._line({"status": status})
        stub.models[name] = model
        self._end_ndjson()

    def _create(self, body: dict[str, Any]) -> None:
        """``/api/create`` from an existing model with a new template (and parameters).

        Like Ollama, the new model has the ``thinking`` capability only if its template reads
        the request's think switch; it renders prompts with its base's chat template, since
        the TEMPLATE given is the non-thinking one for that release.
        """
        stub = self.server_stub
        name, source = body.get("model") or "", body.get("from") or ""
        base = stub.models.get(source)
        if base is None:
            self._json(400, {"error": f"model '{source}' not found, pull it first"})
            return
        template = body.get("template") or base.template
        capabilities = [c for c in base.capabilities if c != "thinking"]
        if "{{ .Think" in template or ".IsThinkSet" in template or ".Thinking" in template:
            capabilities.append("thinking")
        stub.models[name] = ServedModel(
            name,
            capabilities=capabilities,
            model_info=dict(base.model_info),
            template=template,
            chat_template=base.chat_template,
            thinking_only=base.thinking_only,
        )
        if body.get("stream", True):
            self._start_ndjson()
            for status in ("using existing layer", "writing manifest", "success"):
                self._line({"status": status})
            self._end_ndjson()
        else:
            self._json(200, {"status": "success"})

    def _chat(self, body: dict[str, Any]) -> None:
        stub = self.server_stub
        name = body.get("model") or ""
        model = stub.models.get(name)
        if model is None:
            self._json(404, {"error": f"model '{name}' not found"})
            return
        think = body.get("think")
        honours_think = stub._version_tuple() >= (0, 9, 0)
        if honours_think:
            if think is not None and not isinstance(think, bool) and think not in THINK_LEVELS:
                self._json(
                    400,
                    {
                        "error": f"invalid think value: {json.dumps(think)} (must be "
                        '"high", "medium", "low", true, or false)'
                    },
                )
                return
            if think not in (None, False) and "thinking" not in model.capabilities:
                self._json(400, {"error": f'"{name}" does not support thinking'})
                return
        with stub._lock:
            status = stub.fail_next.pop(0) if stub.fail_next else None
            stub.in_flight += 1
            stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
        try:
            if status is not None:
                self._json(status, {"error": f"simulated failure (HTTP {status})"})
                return
            if stub.latency:
                time.sleep(stub.latency)
            if stub.gate is not None:
                stub.gate.wait()
            self._answer(body, model, self._thinks(model, think, honours_think))
        finally:
            with stub._lock:
                stub.in_flight -= 1

    def _thinks(self, model: ServedModel, think: Any, honours_think: bool) -> bool:
        capable = "thinking" in model.capabilities
        if model.thinking_only or model.leak:
            return True
        if not honours_think:
            return capable  # the old hybrid template thinks unless told /no_think
        if think is None:
            # Since 0.12.4 an omitted think means thinking ON for capable models.
            return capable and self.server_stub._version_tuple() >= (0, 12, 4)
        return bool(think)

    def _answer(self, body: dict[str, Any], model: ServedModel, thinks: bool) -> None:
        stub, engine = self.server_stub, self.server_stub.engine
        options = dict(body.get("options") or {})
        stops = [s for s in options.get("stop") or [] if s]
        prompt = engine.prompt_ids(body.get("messages") or [], model.chat_template)
        stream = body.get("stream", True)
        tags = thinks and model.leak == "tags"
        started = time.perf_counter_ns()
        ids: list[int] = []
        thinking, content, shown = "", "", 0
        done_reason = "stop"
        chunks = 0
        outcome: dict[str, bool] = {}
        # Releases from 0.12.11 on answer "logprobs": the entries ride on the lines that carry
        # their tokens' text; older ones ignore the field.
        wanted = body.get("logprobs") is True and stub._version_tuple() >= (0, 12, 11)
        entries: list[dict[str, Any]] | None = [] if wanted else None
        self._pending = entries
        if stream:
            self._start_ndjson()
        if tags and stream:
            # Tags split across chunks, as a runtime that streams token by token may cut them.
            self._chunk(model.name, content="<thi")
            self._chunk(model.name, content="nk>\n")
        think_budget = model.think_tokens if thinks else 0
        closed = False
        try:
            top = int(body.get("top_logprobs") or 0)
            for token in engine.tokens(prompt, options, model.end_after, outcome, entries, top):
                ids.append(token)
                if len(ids) <= think_budget:
                    piece = engine.decode(ids)[len(thinking) :]
                    if piece.endswith("\ufffd"):
                        continue
                    thinking += piece
                    if stream:
                        self._chunk(model.name, **_thinking_piece(piece, tags))
                    continue
                if tags and stream and not closed:
                    self._chunk(model.name, content="\n</th")
                    self._chunk(model.name, content="ink>\n\n")
                    closed = True
                full = engine.decode(ids[think_budget:])
                if full.endswith("\ufffd"):
                    continue
                cut = min((full.find(s) for s in stops if s in full), default=-1)
                if cut >= 0:
                    content = full[:cut]
                    if entries:  # the runner drops the entries of tokens cut by the stop
                        entries.pop()
                    break
                content = full
                safe = len(content) - _held_for_stop(content, stops)
                if stream and safe > shown:
                    if stub.error_after is not None and chunks >= stub.error_after:
                        stub.answers.append({"content": content[:shown], "broken": True})
                        self._line({"error": "an error was encountered while running the model"})
                        self._end_ndjson()
                        return
                    self._chunk(model.name, content=content[shown:safe])
                    shown, chunks = safe, chunks + 1
            else:
                limit = options.get("num_predict", -1)
                if limit is not None and 0 <= limit <= len(ids):
                    done_reason = "length"
            if stream and len(content) > shown:
                self._chunk(model.name, content=content[shown:])

        except (BrokenPipeError, ConnectionResetError):
            stub.answers.append({"content": content[:shown], "cancelled": True})
            return
        # Ollama's runner counts every sampled token, the end-of-turn token included.
        generated = len(ids) + (1 if outcome.get("ended") else 0)
        final = {
            "model": model.name,
            "created_at": _now(),
            "done": True,
            "done_reason": done_reason,
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": 1000,
            "prompt_eval_count": len(prompt),
            "prompt_eval_duration": 1000,
            "eval_count": generated,
            "eval_duration": time.perf_counter_ns() - started,
        }
        stub.answers.append(
            {
                "content": content,
                "thinking": thinking,
                "eval_count": generated,
                "prompt_eval_count": len(prompt),
            }
        )
        if entries is not None:
            final["logprobs"] = entries
        if stream:
            self._line({**final, "message": {"role": "assistant", "content": ""}})
            self._end_ndjson()
        elif tags:
            leaked = f"<think>\n{thinking}\n</think>\n\n{content}"
            self._json(200, {**final, "message": {"role": "assistant", "content": leaked}})
        else:
            message = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            self._json(200, {**final, "message": message})

    def _chunk(self, model: str, content: str = "", thinking: str | None = None) -> None:
        message = {"role": "assistant", "content": content}
        if thinking is not None:
            message["thinking"] = thinking
        line = {"model": model, "created_at": _now(), "message": message, "done": False}
        if self._pending:  # the entries of the tokens generated since the last line
            line["logprobs"] = list(self._pending)
            self._pending.clear()
        self._line(line)


def _thinking_piece(piece: str, tags: bool) -> dict[str, Any]:
    return {"content": piece} if tags else {"thinking": piece}


def _held_for_stop(text: str, stops: list[str]) -> int:
    """Length of the end of ``text`` that could still grow into a stop string."""
    held = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if stop.startswith(text[-size:]):
                held = max(held, size)
                break
    return held


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
