"""The vLLM backend and the Qwen3-4B family, on a real vLLM server (CPU, marked ``vllm``).

The server serves the ``vllm`` test checkpoint with Qwen3-4B-Instruct-2507's chat template (no
think switch, no think block). It is started with ``--trust-request-chat-template`` so that a
relay can make ``/tokenize`` render with the Thinking-2507 template instead, which proves a
thinking-only model is refused before any answer. This server lives for this module only; the
session's hybrid server (tests/conftest.py) may run next to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_vllm import GREEDY, _arun, _backend, _Proxy, _root
from vllm_server import VLLMServer, vllm_python

from qwen_backends.backends.vllm import VLLMBackend
from qwen_backends.chat import render_prompt_ids
from qwen_backends.errors import ThinkingModeError
from qwen_backends.testing import chat_template, tiny_checkpoint
from qwen_backends.thinking import TemplateMode

#: Instruct-2507's prompt ids for the single user message ``hi``: no empty think block.
HI_INSTRUCT = [151644, 872, 198, 6023, 151645, 198, 151644, 77091, 198]


@pytest.fixture(scope="module")
def served_instruct() -> Iterator[tuple[str, str]]:
    """``(base_url, model)`` of a vLLM server serving the Instruct-2507-template checkpoint."""
    model = str(tiny_checkpoint("vllm", template="instruct-2507"))
    if vllm_python() is None:
        pytest.skip(
            "no vLLM environment: run `bash scripts/setup.sh --with-vllm` or set QWEN_VLLM_PYTHON"
        )
    with VLLMServer(
        model, startup_timeout=600, extra_args=["--trust-request-chat-template"]
    ) as server:
        yield server.base_url, model


@pytest.fixture(scope="module")
def instruct_tokenizer(served_instruct: tuple[str, str]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(served_instruct[1])


@pytest.mark.vllm
def test_an_instruct_2507_model_answers_with_its_own_prompt(
    served_instruct: tuple[str, str], instruct_tokenizer: Any
) -> None:
    base_url, model = served_instruct
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2?"},
    ]
    with _Proxy(_root(base_url)) as proxy, _backend(proxy.base_url, model) as backend:
        assert isinstance(backend, VLLMBackend)
        assert backend.template_mode() is TemplateMode.NON_THINKING
        # the open tail was confirmed by the history probe (no think switch in the template)
        assert [path for path, _ in proxy.side] == ["/tokenize", "/tokenize"]
        assert proxy.side[1][1]["add_generation_prompt"] is False
        assert backend.prompt_ids("hi") == HI_INSTRUCT
        assert backend.count_prompt_tokens(conversation) == len(
            render_prompt_ids(instruct_tokenizer, conversation)
        )
        generation = backend.generate("hi", GREEDY)
        streamed = "".join(backend.stream("hi", GREEDY))
    assert generation.prompt_tokens == len(HI_INSTRUCT)
    assert generation.text and streamed == generation.text
    assert "<think>" not in generation.text
    asynchronous = _backend(base_url, model)
    assert _arun(asynchronous, lambda: asynchronous.agenerate("hi", GREEDY)).text == generation.text
    assert asynchronous.template_mode() is TemplateMode.NON_THINKING


@pytest.mark.vllm
def test_a_thinking_only_template_is_refused_before_the_first_answer(
    served_instruct: tuple[str, str],
) -> None:
    base_url, model = served_instruct
    thinking = {"chat_template": chat_template("thinking-2507")}
    with (
        _Proxy(_root(base_url), inject_side=thinking) as proxy,
        _backend(proxy.base_url, model) as backend,
    ):
        with pytest.raises(ThinkingModeError) as caught:
            backend.generate("hi", GREEDY)
        with pytest.raises(ThinkingModeError):
            list(backend.stream("hi", GREEDY))
        with pytest.raises(ThinkingModeError):
            _arun(backend, lambda: backend.agenerate("hi", GREEDY))
    message = str(caught.value)
    assert "\n" not in message and "thinking-only" in message
    assert "Qwen/Qwen3-4B-Instruct-2507" in message
    assert proxy.requests == []  # no chat request ever reached the server
    assert {path for path, _ in proxy.side} == {"/tokenize"}


@pytest.mark.vllm
def test_a_hybrid_template_whose_switch_the_server_drops_is_refused(
    served_instruct: tuple[str, str],
) -> None:
    # The hybrid template, but the relay removes chat_template_kwargs: the prompt then ends at
    # the assistant header like Instruct-2507's, and only the history probe tells them apart.
    from qwen_backends.errors import ChatTemplateError

    base_url, model = served_instruct
    hybrid = {"chat_template": chat_template("hybrid"), "chat_template_kwargs": {}}
    with (
        _Proxy(_root(base_url), inject_side=hybrid) as proxy,
        _backend(proxy.base_url, model) as backend,
        pytest.raises(ChatTemplateError, match="ignores enable_thinking=False"),
    ):
        backend.generate("hi", GREEDY)
    assert proxy.requests == []
