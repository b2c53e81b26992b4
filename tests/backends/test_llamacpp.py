"""The llamacpp backend on real GGUFs converted from the tiny checkpoint by llama.cpp's converter.

The GGUFs are built once (``qwen_backends.testing.tiny_gguf``, ~30 s each) and cached outside the
repository; the hf backend on the same checkpoint is the reference for prompts and greedy text.
llama.cpp runs with one thread: on two shared cores more threads stall.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (extra 'llamacpp')")

from qwen_backends.backends.base import Generation, ModelBackend
from qwen_backends.backends.llamacpp import LlamaCppBackend
from qwen_backends.chat import render_prompt_ids
from qwen_backends.errors import (
    ContextLengthError,
    GenerationError,
    ModelNotFoundError,
    ThinkingModeError,
)
from qwen_backends.factory import create_backend
from qwen_backends.sampling import SamplingParams
from qwen_backends.settings import Settings
from qwen_backends.testing import tiny_gguf

#: Options every test backend uses: one thread, a small context (fast to allocate).
TEST_OPTIONS: dict[str, Any] = {"n_threads": 1, "n_threads_batch": 1, "n_ctx": 2048}
GREEDY = SamplingParams.preset("greedy", max_new_tokens=24)
CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nBlue."},
        {"role": "user", "content": "Et en français, « rouge » ? Schöne Grüße 😀"},
    ],
    [{"role": "user", "content": "Write    spaced ---- text\n\n\tand tabs"}],
]


def llamacpp_backend(quant: str = "q8_0", size: str = "tiny", **options: Any) -> LlamaCppBackend:
    """A llamacpp backend on the cached GGUF of the ``size`` checkpoint (for other suites too)."""
    backend = create_backend(
        backend="llamacpp", model=str(tiny_gguf(quant, size)), llamacpp={**TEST_OPTIONS, **options}
    )
    assert isinstance(backend, LlamaCppBackend)
    return backend


@pytest.fixture(scope="module")
def q8() -> Iterator[LlamaCppBackend]:
    with llamacpp_backend("q8_0") as backend:
        yield backend  # type: ignore[misc]


@pytest.fixture(scope="module")
def hf(tiny_model_dir: Path) -> Iterator[ModelBackend]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with create_backend(backend="hf", model=str(tiny_model_dir)) as backend:
        yield backend
    torch.set_num_threads(previous)


def _recording(backend: LlamaCppBackend) -> tuple[list[int], Callable[[], None]]:
    """Record every token llama.cpp produces for the next calls; returns (tokens, undo)."""
    tokens: list[int] = []
    original = backend.llama.generate

    def generate(*args: Any, **kwargs: Any) -> Iterator[int]:
        for token in original(*args, **kwargs):
            tokens.append(token)
            yield token

    backend.llama.generate = generate

    def undo() -> None:
        backend.llama.generate = original

    return tokens, undo


# -- prompts -------------------------------------------------------------------------------------


def test_the_embedded_template_renders_the_projects_prompt_ids(
    q8: LlamaCppBackend, offline_tokenizer: Any
) -> None:
    assert q8.tokenizer_source == "embedded"
    assert q8.embedded_template == offline_tokenizer.chat_template
    for messages in CONVERSATIONS:
        expected = render_prompt_ids(offline_tokenizer, messages)
        assert q8.prompt_ids(messages) == expected
        assert q8.count_prompt_tokens(messages) == len(expected)
        # llama.cpp's own tokenizer reads the rendered text into the same ids
        text = q8.rendered_prompt(messages)
        assert q8.llama.tokenize(text.encode(), add_bos=False, special=True) == expected
    assert q8.prompt_ids("hi")[-7:] == [151644, 77091, 198, 151667, 271, 151668, 271]


def test_prompt_counts_equal_the_hf_backend(q8: LlamaCppBackend, hf: ModelBackend) -> None:
    for messages in CONVERSATIONS:
        assert q8.generate(messages, GREEDY.replace(max_new_tokens=2)).prompt_tokens == (
            hf.count_prompt_tokens(messages)
        )


def test_a_tokenizer_folder_beside_the_gguf_is_used_and_thinking_only_is_refused(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.gguf").symlink_to(tiny_gguf("q8_0"))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(tiny_model_dir / name, folder / name)
    options = {"backend": "llamacpp", "model": str(folder / "model.gguf"), "llamacpp": TEST_OPTIONS}
    with create_backend(**options) as backend:
        assert isinstance(backend, LlamaCppBackend)
        assert backend.tokenizer_source == "directory"
        assert backend.prompt_ids("hi")[-4:] == [151667, 271, 151668, 271]
    # a thinking-only template beside the GGUF is refused when loading
    (folder / "chat_template.jinja").write_text(
        "{{- '<|im_start|>user\\n' + messages[-1]['content'] + "
        "'<|im_end|>\\n<|im_start|>assistant\\n<think>\\n' }}"
    )
    with pytest.raises(ThinkingModeError, match="thinking-only"):
        create_backend(**options)


# -- greedy parity with transformers -------------------------------------------------------------


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_greedy_text_and_counts_match_the_hf_backend(quant: str, hf: ModelBackend) -> None:
    with llamacpp_backend(quant) as backend:
        for messages in CONVERSATIONS[:3]:
            ours, theirs = backend.generate(messages, GREEDY), hf.generate(messages, GREEDY)
            assert (ours.text, ours.completion_tokens, ours.finish_reason) == (
                theirs.text,
                theirs.completion_tokens,
                theirs.finish_reason,
            )
            assert ours.prompt_tokens == theirs.prompt_tokens


def mapped(path: Path) -> bool:
    """Whether this process maps ``path`` into memory (Linux)."""
    with open("/proc/self/maps", encoding="utf-8") as maps:
        return any(line.rstrip().endswith(str(path)) for line in maps)


def test_use_mmap_false_reads_the_gguf_instead_of_mapping_it() -> None:
    # f16: no module fixture holds this file open.
    with llamacpp_backend("f16") as backend:
        path = Path(backend.model_path).resolve()
        assert mapped(path), "llama.cpp maps the GGUF by default"
        expected = backend.generate(CONVERSATIONS[0], GREEDY).text
    with llamacpp_backend("f16", use_mmap=False) as backend:
        assert not mapped(path)
        assert backend.generate(CONVERSATIONS[0], GREEDY).text == expected


# -- sampling ------------------------------------------------------------------------------------


def test_max_new_tokens_ends_with_length(q8: LlamaCppBackend) -> None:
    result = q8.generate("hi", SamplingParams(seed=1, max_new_tokens=7))
    assert isinstance(result, Generation) and result.seconds > 0
    assert (result.finish_reason, result.completion_tokens) == ("length", 7)


def test_the_same_seed_gives_the_same_text_and_another_seed_differs(q8: LlamaCppBackend) -> None:
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=24)
    first = q8.generate("hi", params.replace(seed=5)).text
    assert q8.generate("hi", params.replace(seed=5)).text == first
    assert q8.generate("hi", params.replace(seed=6)).text != first


def test_every_sampling_value_reaches_llama_generate(q8: LlamaCppBackend) -> None:
    params = SamplingParams(
        temperature=0.3,
        top_p=0.5,
        top_k=0,
        min_p=0.1,
        presence_penalty=1.5,
        repetition_penalty=1.2,
        seed=9,
        english_only=True,
    )
    kwargs = q8.generate_kwargs(params)
    assert (kwargs["temp"], kwargs["top_p"], kwargs["top_k"], kwargs["min_p"]) == (
        0.3,
        0.5,
        0,
        0.1,
    )
    assert (kwargs["presence_penalty"], kwargs["repeat_penalty"]) == (1.5, 1.2)
    assert (kwargs["typical_p"], kwargs["mirostat_mode"], kwargs["frequency_penalty"]) == (
        1.0,
        0,
        0.0,
    )
    assert kwargs["logits_processor"] and q8.llama._seed == 9
    # the penalty window covers every generated token by default
    assert q8.llama.last_n_tokens_size == q8.context_window


def test_a_penalty_changes_greedy_output(q8: LlamaCppBackend) -> None:
    plain = q8.generate("hi", GREEDY)
    penalised = q8.generate("hi", GREEDY.replace(repetition_penalty=1.8, presence_penalty=2.0))
    assert plain.text.count("\n") > 10  # the random model repeats newlines greedily
    assert penalised.text != plain.text


def test_stop_strings_cut_the_text_and_the_count(q8: LlamaCppBackend) -> None:
    params = SamplingParams(temperature=1.0, seed=11, max_new_tokens=40)
    full = q8.generate("hi", params)
    stop = full.text.strip()[8:12]
    assert len(stop) == 4
    cut = q8.generate("hi", params.replace(stop=(stop,)))
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.finish_reason == "stop"
    assert 0 < cut.completion_tokens < full.completion_tokens
    streamed = q8.stream("hi", params.replace(stop=(stop,)))
    assert "".join(streamed) == cut.text
    assert streamed.generation is not None
    assert streamed.generation.completion_tokens == cut.completion_tokens


def test_english_only_samples_only_english_tokens(
    q8: LlamaCppBackend, offline_tokenizer: Any
) -> None:
    from qwen_backends.vocab import allowed_token_ids

    allowed = set(allowed_token_ids(offline_tokenizer, tier="english"))
    params = SamplingParams(temperature=1.5, top_p=1.0, top_k=0, max_new_tokens=60, seed=2)
    tokens, undo = _recording(q8)
    try:
        free = q8.generate("hi", params)
        free_tokens = list(tokens)
        tokens.clear()
        english = q8.generate("hi", params.replace(english_only=True))
    finally:
        undo()
    assert free_tokens and any(t not in allowed for t in free_tokens)  # unconstrained strays
    assert len(tokens) == english.completion_tokens
    assert all(t in allowed for t in tokens)
    assert free.text != english.text


# -- streaming, batch, async ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [GREEDY, SamplingParams(temperature=0.9, seed=4, max_new_tokens=30)],
    ids=["greedy", "sampled"],
)
def test_streaming_equals_generate(q8: LlamaCppBackend, params: SamplingParams) -> None:
    whole = q8.generate(CONVERSATIONS[2], params)
    stream = q8.stream(CONVERSATIONS[2], params)
    pieces = list(stream)
    assert len(pieces) > 1
    assert "".join(pieces) == whole.text
    assert stream.generation is not None
    assert (stream.generation.completion_tokens, stream.generation.finish_reason) == (
        whole.completion_tokens,
        whole.finish_reason,
    )


def test_batch_is_sequential_and_async_runs_on_a_thread(q8: LlamaCppBackend) -> None:
    assert q8.capabilities.native_batching is False
    assert q8.capabilities.english_only and q8.capabilities.renders_locally
    batch = q8.generate_batch(CONVERSATIONS[:3], GREEDY)
    assert [g.text for g in batch] == [q8.generate(c, GREEDY).text for c in CONVERSATIONS[:3]]
    assert asyncio.run(q8.agenerate(CONVERSATIONS[1], GREEDY)).text == batch[1].text


def test_closing_a_stream_early_frees_the_backend(q8: LlamaCppBackend) -> None:
    stream = q8.stream("hi", SamplingParams(seed=1, max_new_tokens=50))
    next(stream)
    stream.close()
    assert q8.generate("hi", GREEDY.replace(max_new_tokens=3)).completion_tokens == 3


# -- counting and decoding -----------------------------------------------------------------------


def _scripted(backend: LlamaCppBackend, script: list[int]) -> Callable[[], None]:
    """Make llama.cpp 'generate' ``script`` (to test what the backend does with the ids)."""
    original = backend.llama.generate

    def generate(*args: Any, **kwargs: Any) -> Iterator[int]:
        yield from script

    backend.llama.generate = generate
    return lambda: setattr(backend.llama, "generate", original)


def test_a_token_longer_than_32_bytes_is_decoded(
    q8: LlamaCppBackend, offline_tokenizer: Any
) -> None:
    long_id = offline_tokenizer.convert_tokens_to_ids("=" * 64)
    assert isinstance(long_id, int) and long_id < 151_643
    # the upstream bug this guards against: detokenize returns nothing for it
    assert q8.llama.detokenize([long_id]) == b""
    undo = _scripted(q8, [9707, long_id, 13, q8.im_end_id])
    try:
        result = q8.generate("hi", GREEDY)
        streamed = "".join(q8.stream("hi", GREEDY))
    finally:
        undo()
    assert result.text == "Hello" + "=" * 64 + "." == streamed
    # the end-of-turn token is counted (llama.cpp's usage would say 3)
    assert (result.completion_tokens, result.finish_reason) == (4, "stop")


def test_thinking_is_removed_and_characters_are_never_split(
    q8: LlamaCppBackend, offline_tokenizer: Any
) -> None:
    ids = offline_tokenizer("<think>\nplan\n</think>\n\nOK 😀", add_special_tokens=False)[
        "input_ids"
    ]
    undo = _scripted(q8, [*ids, q8.im_end_id])
    try:
        pieces = list(q8.stream("hi", GREEDY))
    finally:
        undo()
    assert "".join(pieces) == "OK 😀"
    assert not any("\ufffd" in piece for piece in pieces)
    # an answer cut inside a character ends at the last complete one
    first_byte = offline_tokenizer("A𝔘", add_special_tokens=False)["input_ids"][:-1]
    assert len(first_byte) == 2
    undo = _scripted(q8, first_byte)
    try:
        cut = q8.generate("hi", GREEDY.replace(max_new_tokens=2))
    finally:
        undo()
    assert (cut.text, cut.finish_reason, cut.completion_tokens) == ("A", "length", 2)


# -- errors --------------------------------------------------------------------------------------


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        create_backend(backend="llamacpp", model=str(tmp_path / "missing.gguf"))


def test_a_file_that_is_not_a_gguf_is_a_clear_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes((tiny_model_dir / "config.json").read_bytes())
    with pytest.raises(ModelNotFoundError, match="not a GGUF file"):
        create_backend(backend="llamacpp", model=str(fake))
    with pytest.raises(ModelNotFoundError, match="is a folder"):
        create_backend(backend="llamacpp", model=str(tiny_model_dir))


def test_a_hub_repo_offline_is_a_clear_error() -> None:
    with pytest.raises(ModelNotFoundError, match="downloads are off"):
        create_backend(backend="llamacpp", model="nobody/no-such-gguf-repo")


def test_a_prompt_too_long_for_the_context_is_refused(q8: LlamaCppBackend) -> None:
    with llamacpp_backend(n_ctx=64) as small:
        with pytest.raises(ContextLengthError, match="exceeds the context window of 64"):
            small.generate("hi", GREEDY.replace(max_new_tokens=60))
        with pytest.raises(ContextLengthError):
            list(small.stream("word " * 80, GREEDY))
        assert small.generate("hi", GREEDY.replace(max_new_tokens=40)).prompt_tokens == 13


def test_a_closed_backend_refuses_and_closing_twice_is_fine() -> None:
    backend = llamacpp_backend()
    backend.close()
    backend.close()
    with pytest.raises(GenerationError, match="was closed"):
        backend.generate("hi", GREEDY)


def test_readiness_and_settings() -> None:
    settings = Settings(backend="llamacpp")
    assert settings.model_name == "unsloth/Qwen3-4B-GGUF"  # the hybrid family's GGUF repo
    assert settings.gguf_filename == "*Q4_K_M.gguf"
    instruct = Settings(backend="llamacpp", family="qwen3-4b-instruct-2507")
    assert instruct.model_name == "unsloth/Qwen3-4B-Instruct-2507-GGUF"
    assert (settings.llamacpp.n_ctx, settings.llamacpp.n_gpu_layers) == (8_192, 0)
    assert "offline" in LlamaCppBackend.readiness(settings)
    local = Settings(backend="llamacpp", model=str(tiny_gguf("q8_0")))
    assert LlamaCppBackend.readiness(local) == "ready"
    missing = Settings(backend="llamacpp", model="/nowhere/x.gguf")
    assert LlamaCppBackend.readiness(missing).startswith("cannot start")


def test_a_context_longer_than_the_gguf_was_trained_for_is_refused_before_loading() -> None:
    from qwen_backends.errors import ConfigurationError

    model = str(tiny_gguf("q8_0"))
    with pytest.raises(ConfigurationError, match="trained context of 40,960") as caught:
        create_backend(backend="llamacpp", model=model, llamacpp={"n_ctx": 65_536})
    assert "QWEN_LLAMACPP__N_CTX" in str(caught.value) and "\n" not in str(caught.value)
