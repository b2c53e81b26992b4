"""``qwen-backends score`` and ``generate --logprobs N`` on the tiny checkpoint (main())."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from cli_runner import assert_one_line_error, cli

from qwen_backends import create_backend
from qwen_backends.cli import main

DOCUMENT = Path("/usr/share/common-licenses/Apache-2.0")


@pytest.fixture(scope="module")
def hf(tiny_model_dir: Path) -> Any:
    with create_backend(backend="hf", model=str(tiny_model_dir)) as backend:
        yield backend


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_score_a_continuation_as_the_answer(
    hf: Any, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = ["--backend", "hf", "--model", str(tiny_model_dir)]
    shown = run_json(capsys, "score", "What is 2+2?", "Four.", "--system", "Be brief.", *model)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    expected = hf.score(messages, "Four.")
    assert shown["logprob"] == pytest.approx(expected.logprob, abs=1e-5)
    assert [t["id"] for t in shown["tokens"]] == [t.id for t in expected.tokens]
    raw = run_json(capsys, "score", "Two plus two is", " four", "--raw", *model)
    assert raw["logprob"] == pytest.approx(
        hf.score_text(" four", context="Two plus two is").logprob, abs=1e-5
    )
    assert main(["score", "What is 2+2?", "Four.", "--tokens", *model]) == 0
    lines = capsys.readouterr().out.splitlines()
    plain = hf.score("What is 2+2?", "Four.")
    assert lines[0].startswith(f"log-likelihood {plain.logprob:.4f} over {plain.num_tokens} tokens")
    assert len(lines) == 1 + plain.num_tokens and lines[1].startswith("'Four'")


def test_score_the_perplexity_of_a_file(
    hf: Any, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = DOCUMENT.read_text()[:600]
    path = tmp_path / "doc.txt"
    path.write_text(text)
    model = ["--backend", "hf", "--model", str(tiny_model_dir)]
    shown = run_json(capsys, "score", "--file", str(path), "--window", "40", *model)
    expected = hf.score_text(text, window=40)
    assert shown["perplexity"] == pytest.approx(expected.perplexity, rel=1e-5)
    assert shown["num_tokens"] == expected.num_tokens
    assert main(["score", "--file", str(path), *model]) == 0
    line = capsys.readouterr().out.strip()
    assert f"perplexity {hf.score_text(text).perplexity:.2f}" in line


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["score", "only one"], "give PROMPT and CONTINUATION"),
        (["score", "a", "b", "--file", "x.txt"], "not both"),
        (["score", "--file", "/nonexistent/doc.txt"], "doc.txt"),
        (["score", "Hi", ""], "continuation is empty"),
        (["generate", "Hi", "--logprobs", "21"], "top_logprobs"),
    ],
)
def test_bad_score_input_is_one_line(tiny_model_dir: Path, args: list[str], fragment: str) -> None:
    result = cli(*args, "--backend", "hf", "--model", str(tiny_model_dir))
    assert_one_line_error(result, fragment)


def test_generate_logprobs_shows_each_token_with_its_probability(
    hf: Any, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--temperature", "0", "--presence-penalty", "2", "--max-new-tokens", "4"]
    model = ["--backend", "hf", "--model", str(tiny_model_dir)]
    assert main(["generate", "Hi", "--logprobs", "2", *flags, *model]) == 0
    lines = capsys.readouterr().out.splitlines()
    sampling = {"temperature": 0, "presence_penalty": 2.0, "max_new_tokens": 4}
    expected = hf.generate("Hi", {**sampling, "logprobs": True, "top_logprobs": 2})
    table = lines[-4:]
    for line, token in zip(table, expected.logprobs, strict=True):
        assert line.startswith(repr(token.token))
        assert f"{100 * math.exp(token.logprob):.2f}%" in line
        assert line.count("%") == 3  # the token and its two alternatives
