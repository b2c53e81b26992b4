"""One :class:`Harness` per backend for the conformance suite (fixtures: conftest.py).

A backend joins the suite with one entry in :data:`HARNESSES` (its name) and one builder function
decorated with :func:`harness`: the function returns a :class:`Harness` that says how to build
the backend and how to make its runtime misbehave. Everything else in test_conformance.py runs
unchanged against it.

- ``hf``: the ``tiny`` random-weight checkpoint in process;
- ``ollama``: the loopback Ollama stand-in (tests/backends/ollama_server.py);
- ``vllm``: the session's real vLLM server on CPU (skipped without a vLLM environment);
- ``mlx``: the ``tiny`` checkpoint through mlx-lm in process (MLX's CPU build on Linux; skipped
  without the mlx extra);
- ``echo``: echo_backend.py, a minimal in-process backend added by docs/adding_a_backend.md's
  steps (registered for the run only), which proves the checklist.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from faults import INJECTED_CALL, FaultProxy

from qwen_backends import create_backend
from qwen_backends.backends.base import ModelBackend
from qwen_backends.backends.local import LocalBackend
from qwen_backends.backends.token_loop import Step
from qwen_backends.sampling import SamplingParams

#: Every backend the suite runs against; a new backend adds its name here and a builder below.
HARNESSES = ["hf", "llamacpp", "mlx", "ollama", "vllm", "echo"]
#: Those that talk to a server (the fault tests run against these).
SERVER_HARNESSES = ["ollama", "vllm"]
#: Qwen3's end-of-turn token.
IM_END = 151_645

BackendMaker = Callable[..., ModelBackend]


@dataclass
class Harness:
    """How the suite builds one backend and makes its runtime misbehave.

    Attributes
    ----------
    name
        The registry name.
    backend
        A backend shared by the tests of one run (do not close it).
    make
        ``make(**section)`` builds a new backend with these settings of its own section
        (``timeout``, ``max_retries`` ...); the caller closes it.
    tokenizer
        The tokenizer the runtime renders prompts with.
    upstream
        For server backends: the server root the fault proxy relays to; ``None`` in process.
    through
        For server backends: ``through(url, **section)`` builds a backend talking to ``url``
        (a fault proxy's root) instead of the server.
    leaking
        ``leaking(sampling)`` is a context manager giving ``(backend, expected_text)``: a backend
        whose runtime emits a thinking block (tags split across chunks) before its answer to
        ``"Hi"``, and the text a caller must see instead.
    ending
        A context manager giving a backend whose model ends its turn at the first token.
    calling
        ``calling(sampling, tools)`` is a context manager giving ``(backend, expected_text)``: a
        backend whose model writes a ``<tool_call>`` block for :data:`faults.INJECTED_CALL`
        (split across chunks) before its answer to ``"Hi"``, and the text a caller must see.
    enforces_schema
        Whether the runtime enforces ``response_format`` (the Ollama stand-in records ``format``
        but, unlike a real server, does not apply it).
    """

    name: str
    backend: ModelBackend
    make: BackendMaker
    tokenizer: Any
    leaking: Callable[[SamplingParams], contextlib.AbstractContextManager[tuple[ModelBackend, str]]]
    ending: Callable[[], contextlib.AbstractContextManager[ModelBackend]]
    upstream: str | None = None
    through: Callable[..., ModelBackend] | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)
    calling: (
        Callable[
            [SamplingParams, list[Any]], contextlib.AbstractContextManager[tuple[ModelBackend, str]]
        ]
        | None
    ) = None
    enforces_schema: bool = True


BUILDERS: dict[str, Callable[[pytest.FixtureRequest], Harness]] = {}


def harness(name: str) -> Callable[[Any], Any]:
    """Register the builder of ``name``'s :class:`Harness`."""

    def register(builder: Callable[[pytest.FixtureRequest], Harness]) -> Any:
        BUILDERS[name] = builder
        return builder

    return register


def _leak_through_proxy(
    upstream: str, through: Callable[..., ModelBackend], direct: ModelBackend
) -> Callable[[SamplingParams], contextlib.AbstractContextManager[tuple[ModelBackend, str]]]:
    """Server backends leak through a ``think`` proxy: the answer, with a block before it."""

    @contextlib.contextmanager
    def leaking(sampling: SamplingParams) -> Iterator[tuple[ModelBackend, str]]:
        # Whitespace after a removed block is removed with it (thinking.strip_thinking).
        expected = direct.generate("Hi", sampling).text.lstrip()
        with FaultProxy(upstream, "think") as proxy, through(proxy.url) as backend:
            yield backend, expected

    return leaking


def _call_through_proxy(
    upstream: str, through: Callable[..., ModelBackend], direct: ModelBackend
) -> Callable[
    [SamplingParams, list[Any]], contextlib.AbstractContextManager[tuple[ModelBackend, str]]
]:
    """Server backends call a tool through a ``tool_call`` proxy: the block before the answer."""

    @contextlib.contextmanager
    def calling(sampling: SamplingParams, tools: list[Any]) -> Iterator[tuple[ModelBackend, str]]:
        # A removed call takes the whitespace after it (qwen_backends.tools).
        expected = direct.generate("Hi", sampling, tools=tools).text.lstrip()
        with FaultProxy(upstream, "tool_call") as proxy, through(proxy.url) as backend:
            yield backend, expected

    return calling


# -- hf: in process, the tiny checkpoint ------------------------------------------------------


@harness("hf")
def _hf(request: pytest.FixtureRequest) -> Harness:
    from qwen_backends.backends.hf import HFBackend
    from qwen_backends.testing import tiny_checkpoint

    model = str(tiny_checkpoint("tiny"))

    def make(**section: Any) -> ModelBackend:
        return create_backend(backend="hf", model=model, hf=section)

    shared = make()
    assert isinstance(shared, HFBackend)
    return _local_harness("hf", shared, make)


def _local_harness(name: str, shared: LocalBackend, make: BackendMaker) -> Harness:
    """The harness of an in-process backend: its model is made to misbehave through the token
    loop's one seam (see :func:`_forcing`)."""
    tokenizer = shared.tokenizer
    forcing = _forcing(shared)

    @contextlib.contextmanager
    def leaking(sampling: SamplingParams) -> Iterator[tuple[ModelBackend, str]]:
        # The tags as ordinary tokens ("<", "think", ">"), so they arrive split across pieces.
        raw = "<think>\nsecret plan\n</think>\n\nHello world"
        script = list(tokenizer(raw, add_special_tokens=False, split_special_tokens=True).input_ids)
        assert len(script) > 6
        with forcing([*script, IM_END]) as backend:
            yield backend, "Hello world"

    def ending() -> contextlib.AbstractContextManager[ModelBackend]:
        return forcing([IM_END])

    built = Harness(name, shared, make, tokenizer, leaking, ending)
    built.calling = _forced_call(tokenizer, forcing)
    return built


def _forcing(
    shared: LocalBackend,
) -> Callable[[list[int]], contextlib.AbstractContextManager[ModelBackend]]:
    """In-process backends are forced through the token loop's one seam, ``_tokens``: the
    runtime emits ``script`` first, then the real model goes on after it."""

    @contextlib.contextmanager
    def forcing(script: list[int]) -> Iterator[ModelBackend]:
        with pytest.MonkeyPatch.context() as patch:
            original = shared._tokens

            def tokens(prompt_ids: list[int], request: Any, compiled: Any) -> Iterator[Any]:
                top = request.sampling.top_logprobs
                for token in script:  # a forced token is certain: log-probability 0
                    yield (
                        Step(token, 0.0, ((token, 0.0),) * top)
                        if request.sampling.logprobs
                        else token
                    )
                yield from original([*prompt_ids, *script], request, compiled)

            patch.setattr(shared, "_tokens", tokens)
            yield shared

    return forcing


def _forced_call(
    tokenizer: Any, forcing: Callable[[list[int]], contextlib.AbstractContextManager[ModelBackend]]
) -> Callable[
    [SamplingParams, list[Any]], contextlib.AbstractContextManager[tuple[ModelBackend, str]]
]:
    """In-process backends call a tool by being forced to write the block, then an answer."""

    @contextlib.contextmanager
    def calling(sampling: SamplingParams, tools: list[Any]) -> Iterator[tuple[ModelBackend, str]]:
        name, arguments = INJECTED_CALL
        raw = (
            f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(arguments)}}}\n'
            "</tool_call>\nHello world"
        )
        script = list(tokenizer(raw, add_special_tokens=False).input_ids)
        with forcing([*script, IM_END]) as backend:
            yield backend, "Hello world"

    return calling


# -- llamacpp: in process, a GGUF of the tiny checkpoint ---------------------------------------


@harness("llamacpp")
def _llamacpp(request: pytest.FixtureRequest) -> Harness:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (extra 'llamacpp')")
    from qwen_backends.backends.llamacpp import LlamaCppBackend
    from qwen_backends.testing import tiny_gguf

    model = str(tiny_gguf("q8_0"))
    options = {"n_threads": 1, "n_threads_batch": 1, "n_ctx": 2048}

    def make(**section: Any) -> ModelBackend:
        return create_backend(backend="llamacpp", model=model, llamacpp={**options, **section})

    shared = make()
    assert isinstance(shared, LlamaCppBackend)
    return _local_harness("llamacpp", shared, make)


# -- ollama: the loopback stand-in ----------------------------------------------------------


@harness("ollama")
def _ollama(request: pytest.FixtureRequest) -> Harness:
    from ollama_server import INSTRUCT_TAG, OllamaServer, TinyQwen, instruct_model

    from qwen_backends.testing import tiny_checkpoint

    server = OllamaServer(TinyQwen(tiny_checkpoint("tiny"))).start()

    def through(url: str, **section: Any) -> ModelBackend:
        backend = create_backend(
            backend="ollama", model=INSTRUCT_TAG, ollama={"host": url, **section}
        )
        backend.remote.backoff = 0.01  # type: ignore[attr-defined]
        return backend

    def make(**section: Any) -> ModelBackend:
        return through(server.url, **section)

    shared = make()

    @contextlib.contextmanager
    def ending() -> Iterator[ModelBackend]:
        server.models[INSTRUCT_TAG] = replace(instruct_model(), end_after=0)
        try:
            yield shared
        finally:
            server.models[INSTRUCT_TAG] = instruct_model()

    built = Harness(
        "ollama",
        shared,
        make,
        # the instruct tag renders Instruct-2507's template (no empty think block)
        server.engine.tokenizer_for("instruct-2507"),
        _leak_through_proxy(server.url, through, shared),
        ending,
        upstream=server.url,
        through=through,
        calling=_call_through_proxy(server.url, through, shared),
        enforces_schema=False,
    )
    built.closers.append(server.stop)
    return built


# -- vllm: the session's real server ----------------------------------------------------------


@harness("vllm")
def _vllm(request: pytest.FixtureRequest) -> Harness:
    from qwen_backends.tokenizer import load_tokenizer

    base_url, model = request.getfixturevalue("vllm_served")
    root = base_url.removesuffix("/v1")

    def through(url: str, **section: Any) -> ModelBackend:
        backend = create_backend(
            backend="vllm", model=model, vllm={"base_url": url + "/v1", **section}
        )
        backend.remote.backoff = 0.01  # type: ignore[attr-defined]
        return backend

    def make(**section: Any) -> ModelBackend:
        return through(root, **section)

    shared = make()

    @contextlib.contextmanager
    def ending() -> Iterator[ModelBackend]:
        # OpenAI's logit_bias (-100..100) makes the end-of-turn token win at once.
        with (
            FaultProxy(root, "pass", inject={"logit_bias": {str(IM_END): 100}}) as proxy,
            through(proxy.url) as backend,
        ):
            yield backend

    return Harness(
        "vllm",
        shared,
        make,
        load_tokenizer("offline"),
        _leak_through_proxy(root, through, shared),
        ending,
        upstream=root,
        through=through,
        calling=_call_through_proxy(root, through, shared),
    )


# -- mlx: in process, the tiny checkpoint through mlx-lm ----------------------------------------


@harness("mlx")
def _mlx(request: pytest.FixtureRequest) -> Harness:
    pytest.importorskip("mlx_lm", reason="the mlx extra is not installed")
    from qwen_backends.backends.mlx import MLXBackend
    from qwen_backends.testing import tiny_checkpoint

    model = str(tiny_checkpoint("tiny"))

    def make(**section: Any) -> ModelBackend:
        return create_backend(backend="mlx", model=model, mlx=section)

    shared = make()
    assert isinstance(shared, MLXBackend)
    return _local_harness("mlx", shared, make)


# -- echo: the minimal backend of docs/adding_a_backend.md ----------------------------------------


@harness("echo")
def _echo(request: pytest.FixtureRequest) -> Harness:
    from echo_backend import ECHO

    from qwen_backends.registry import BACKENDS

    BACKENDS.register("echo", ECHO)
    shared = create_backend(backend="echo")
    assert isinstance(shared, LocalBackend)
    built = _local_harness("echo", shared, create_backend_for("echo"))
    built.closers.append(lambda: BACKENDS.unregister("echo"))
    return built


def create_backend_for(name: str) -> BackendMaker:
    """``make(**section)`` for a backend that needs no model argument."""

    def make(**section: Any) -> ModelBackend:
        return create_backend(backend=name, **{name: section})

    return make
