"""A CPU fine-tune exported to GGUF answers through llama.cpp exactly as the merged model does.

One run of ``configs/finetune/cpu_smoke.yaml`` with ``export.gguf: [q8_0]``: the peft engine
merges, converts with llama.cpp's converter, and the pipeline checks the GGUF in the llamacpp
backend (template, end token, trained answers). The test then asks every training question
through both backends, greedy, as a user would after ``qwen-backends finetune``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (extra 'llamacpp')")

from qwen_backends.finetune import FinetuneResult, load_config, run_finetune
from qwen_backends.finetune.data import assistant_turns, load_conversations
from qwen_backends.sampling import SamplingParams

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "finetune"
GREEDY = SamplingParams.preset("greedy", max_new_tokens=12)


@pytest.fixture(scope="module")
def trained(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FinetuneResult]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    config = load_config(
        CONFIGS / "cpu_smoke.yaml",
        model=str(tiny_model_dir),
        export={"output_dir": str(tmp_path_factory.mktemp("gguf-smoke")), "gguf": ["q8_0"]},
        training={"progress_bar": False},
    )
    yield run_finetune(config)
    torch.set_num_threads(previous)


def test_the_gguf_answers_exactly_as_the_merged_model(trained: FinetuneResult) -> None:
    assert trained.merged_dir is not None
    assert [p.name for p in trained.gguf_files] == ["qwen3-smoke.Q8_0.gguf"]
    config = load_config(CONFIGS / "cpu_smoke.yaml")
    questions = [assistant_turns(chat)[-1] for chat in load_conversations(config.data)]
    options = {"n_threads": 1, "n_threads_batch": 1, "n_ctx": 1024}
    with (
        trained.load_backend("llamacpp", llamacpp=options) as ours,
        trained.load_backend() as merged,
    ):
        assert (ours.name, merged.name) == ("llamacpp", "hf")
        correct = 0
        for history, answer in questions:
            got, expected = ours.generate(history, GREEDY), merged.generate(history, GREEDY)
            assert (got.text, got.finish_reason) == (expected.text, expected.finish_reason)
            assert (got.prompt_tokens, got.completion_tokens) == (
                expected.prompt_tokens,
                expected.completion_tokens,
            )
            correct += got.text.strip() == answer
    assert correct >= 7


def test_the_modelfile_beside_the_gguf_imports_it(trained: FinetuneResult) -> None:
    gguf = trained.gguf_files[0]
    assert trained.modelfile == gguf.parent / "Modelfile"
    assert f"FROM ./{gguf.name}\n" in trained.modelfile.read_text()
    assert f"GGUF: {gguf}  (QWEN_BACKEND=llamacpp QWEN_MODEL={gguf})" in trained.summary()


def test_the_cli_generates_with_the_gguf(trained: FinetuneResult) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "QWEN_BACKEND": "llamacpp", "QWEN_MODEL": str(trained.gguf_files[0])}
    env["QWEN_LLAMACPP__N_THREADS"] = "1"
    env["QWEN_LLAMACPP__N_CTX"] = "1024"
    done = subprocess.run(
        [sys.executable, "-m", "qwen_backends.cli", "generate", "What is the capital of France?",
         "--preset", "greedy", "--max-new-tokens", "16"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Paris."
