"""Log-probabilities through ``serve``: chat ``logprobs`` (plain and streamed) and the legacy
``/v1/completions`` that lm-evaluation-harness's ``local-completions`` uses for scoring."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from conftest import Served

from qwen_backends.serve.completions import parse_completion_request
from qwen_backends.serve.openai_schema import RequestError

HI = [{"role": "user", "content": "Hi"}]
SAMPLING = {"temperature": 0, "max_tokens": 6, "presence_penalty": 2.0}


def post(served: Served, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{served.base_url}{path}", json={"model": served.model, **body}, timeout=120)


# -- chat ----------------------------------------------------------------------------------------


def test_chat_logprobs_are_the_librarys_in_openais_shape(hf_served: Served) -> None:
    backend: Any = hf_served.backend
    sampling = {"temperature": 0, "max_new_tokens": 6, "presence_penalty": 2.0}
    expected = backend.generate(HI, {**sampling, "logprobs": True, "top_logprobs": 2}).logprobs
    assert expected is not None
    answer = hf_served.client().chat.completions.create(
        model=hf_served.model, messages=HI, logprobs=True, top_logprobs=2, **SAMPLING
    )
    content = answer.choices[0].logprobs.content
    assert [c.token for c in content] == [t.token for t in expected]
    assert [c.logprob for c in content] == pytest.approx([t.logprob for t in expected], abs=1e-5)
    assert [[b.token for b in c.top_logprobs] for c in content] == [
        [b.token for b in t.top] for t in expected
    ]
    assert content[0].bytes == list(expected[0].token.encode())
    stream = hf_served.client().chat.completions.create(
        model=hf_served.model, messages=HI, logprobs=True, top_logprobs=2, stream=True, **SAMPLING
    )
    streamed = [
        entry.logprob
        for piece in stream
        for choice in piece.choices
        if choice.logprobs is not None
        for entry in choice.logprobs.content or []
    ]
    assert streamed == pytest.approx([t.logprob for t in expected], abs=1e-5)
    plain = hf_served.client().chat.completions.create(
        model=hf_served.model, messages=HI, **SAMPLING
    )
    assert plain.choices[0].logprobs is None


def test_chat_logprobs_a_server_cannot_give_are_a_400(ollama_server: Any) -> None:
    from qwen_backends import create_backend

    ollama_server.version = "0.12.6"  # Ollama returns logprobs from 0.12.11 on
    backend = create_backend(
        backend="ollama", family="qwen3-4b-instruct-2507", ollama={"host": ollama_server.url}
    )
    with backend, Served(backend) as served:
        response = post(served, "/chat/completions", {"messages": HI, "logprobs": True})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "logprobs" and "\n" not in error["message"]
    assert "Ollama 0.12.6" in error["message"] and "0.12.11" in error["message"]
    assert "/api/chat" not in ollama_server.paths()


def test_chat_logprobs_through_ollama(ollama_served: Served, ollama_server: Any) -> None:
    body = {"messages": HI, "logprobs": True, "top_logprobs": 2, **SAMPLING}
    response = post(ollama_served, "/chat/completions", body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    content = choice["logprobs"]["content"]
    # Ollama gives no entry to the end-of-turn token: text tokens only, joined to the answer.
    assert "".join(entry["token"] for entry in content) == choice["message"]["content"]
    for entry in content:
        assert entry["logprob"] <= 0 and len(entry["top_logprobs"]) == 2


# -- /v1/completions -----------------------------------------------------------------------------


def test_echo_gives_the_prompt_tokens_scores_in_the_legacy_shape(hf_served: Served) -> None:
    backend: Any = hf_served.backend
    ids = backend.tokenizer("Two plus two is four", add_special_tokens=False)["input_ids"]
    response = post(
        hf_served, "/completions", {"prompt": [ids], "echo": True, "logprobs": 1, "max_tokens": 1}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion"
    logprobs = body["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(ids) + 1
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    expected = backend.score_text(ids[1:], context=ids[:1], following=1)
    assert logprobs["token_logprobs"][1:-1] == pytest.approx(
        [t.logprob for t in expected.tokens], abs=1e-5
    )
    for token, logprob, top, scored in zip(
        logprobs["tokens"][1:-1],
        logprobs["token_logprobs"][1:-1],
        logprobs["top_logprobs"][1:-1],
        expected.tokens,
        strict=True,
    ):
        assert top[token] == logprob
        assert (max(top.values()) == logprob) == scored.greedy
    assert logprobs["tokens"][-1] == expected.following[0].token  # the greedy next token
    assert logprobs["text_offset"][:2] == [0, len(logprobs["tokens"][0])]
    assert body["usage"]["prompt_tokens"] == len(ids)


def test_text_prompts_get_no_chat_template(hf_served: Served) -> None:
    backend: Any = hf_served.backend
    text = "The quick brown fox"
    body = post(
        hf_served, "/completions", {"prompt": text, "echo": True, "logprobs": 0, "max_tokens": 0}
    ).json()
    choice = body["choices"][0]
    assert choice["text"] == text
    ids = backend.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(choice["logprobs"]["tokens"]) == len(ids)
    expected = backend.score_text(ids[1:], context=ids[:1])
    assert choice["logprobs"]["token_logprobs"][1:] == pytest.approx(
        [t.logprob for t in expected.tokens], abs=1e-5
    )
    # A batch of prompts answers one choice each, in order.
    both = post(hf_served, "/completions", {"prompt": [text, "Hi"], "max_tokens": 1}).json()
    assert [c["index"] for c in both["choices"]] == [0, 1]
    assert both["choices"][0]["logprobs"] is None


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"max_tokens": 5}, "max_tokens", "send 0 or 1"),
        ({"max_tokens": 1, "temperature": 0.7}, "temperature", "temperature 0"),
        ({"logprobs": 21}, "logprobs", "0 to 20"),
        ({"logprobs": True}, "logprobs", "0 to 20"),
        ({"prompt": ""}, "prompt", "non-empty"),
        ({"prompt": [[1, 2], "x"]}, "prompt", "non-empty"),
        ({"echo": "yes"}, "echo", "true or false"),
        ({"stream": True}, "stream", "not supported"),
        ({"colour": 1}, "colour", "unknown field"),
    ],
)
def test_bad_completion_requests_are_refused_by_name(
    fields: dict[str, Any], param: str, words: str
) -> None:
    body = {"model": "m", "prompt": "Hi", "max_tokens": 0, **fields}
    with pytest.raises(RequestError) as caught:
        parse_completion_request(body, ["m"])
    assert caught.value.param == param and words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_completions_on_a_backend_that_cannot_score_is_a_400(
    ollama_served: Served, ollama_server: Any
) -> None:
    response = post(ollama_served, "/completions", {"prompt": "Hi", "max_tokens": 0, "echo": True})
    assert response.status_code == 400
    assert "scoring" in json.dumps(response.json()["error"])
