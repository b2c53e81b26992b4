"""The unsloth backend: wiring to the factory, the GPU-less error, and (on a GPU) a real load.

This machine has no GPU and no Unsloth, so what runs here is the refusal path: one sentence that
names what to use instead, raised before Unsloth is imported. With Unsloth and a GPU the
``importorskip`` tests load the tiny checkpoint through ``FastLanguageModel`` and fine-tune it
with the unsloth engine.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from qwen_backends.backends import unsloth as unsloth_backend
from qwen_backends.backends.hf import HFBackend
from qwen_backends.backends.unsloth import GPU_REQUIRED, UnslothBackend, import_unsloth
from qwen_backends.chat import render_prompt_ids
from qwen_backends.errors import BackendUnavailableError, MissingDependencyError, ModelNotFoundError
from qwen_backends.factory import backend_class, create_backend
from qwen_backends.registry import BACKENDS
from qwen_backends.sampling import SamplingParams
from qwen_backends.settings import Settings

NO_GPU = not (torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()))
needs_no_gpu = pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")


def test_the_gpu_message_is_the_one_sentence_users_see() -> None:
    assert GPU_REQUIRED == (
        "the unsloth backend needs an NVIDIA, AMD or Intel GPU (Colab, Lightning); on this "
        "machine use backend hf, or the peft fine-tuning engine"
    )


def test_unsloth_backend_reuses_the_hf_backend() -> None:
    assert issubclass(UnslothBackend, HFBackend)
    registration = BACKENDS["unsloth"]
    assert registration.target == "qwen_backends.backends.unsloth:UnslothBackend"
    assert (UnslothBackend.name, registration.extra) == ("unsloth", "unsloth")
    assert UnslothBackend.capabilities.english_only
    # only loading is replaced: generation, streaming and batching are inherited
    for hook in ("_generate", "_stream", "_generate_batch", "_prepare"):
        assert getattr(UnslothBackend, hook) is getattr(HFBackend, hook)
    assert "_load" in UnslothBackend.__dict__


@needs_no_gpu
def test_without_a_gpu_the_backend_refuses_before_importing_unsloth() -> None:
    modules_before = set(sys.modules)
    with pytest.raises(BackendUnavailableError) as caught:
        UnslothBackend(Settings(backend="unsloth"))
    assert str(caught.value) == GPU_REQUIRED
    assert caught.value.retryable is False
    assert "unsloth" not in set(sys.modules) - modules_before


@pytest.mark.skipif(importlib.util.find_spec("unsloth") is not None, reason="unsloth installed")
def test_the_factory_names_the_extra_when_unsloth_is_missing() -> None:
    with pytest.raises(MissingDependencyError, match=r"pip install 'qwen-backends\[unsloth\]'"):
        create_backend(backend="unsloth")
    with pytest.raises(MissingDependencyError, match="unsloth"):
        backend_class("unsloth")


@pytest.mark.parametrize(
    "failure",
    [
        "raise NotImplementedError('Unsloth cannot find any torch accelerator? You need a GPU.')",
        "raise RuntimeError('Unsloth: No NVIDIA GPU found? Unsloth currently only supports GPUs!')",
    ],
)
def test_unsloths_own_no_gpu_errors_become_the_same_sentence(
    failure: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in package whose import fails the way Unsloth's does on a GPU it cannot use
    # (torch reporting a device that Unsloth then rejects).
    package = tmp_path / "unsloth"
    package.mkdir()
    (package / "__init__.py").write_text(failure + "\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    monkeypatch.setattr(unsloth_backend, "has_supported_gpu", lambda: True)
    with pytest.raises(BackendUnavailableError) as caught:
        import_unsloth()
    assert str(caught.value) == GPU_REQUIRED
    assert isinstance(caught.value.__cause__, NotImplementedError | RuntimeError)


def test_other_import_failures_keep_their_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "unsloth"
    package.mkdir()
    (package / "__init__.py").write_text("import a_module_that_is_not_there\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    monkeypatch.setattr(unsloth_backend, "has_supported_gpu", lambda: True)
    with pytest.raises(MissingDependencyError, match="a_module_that_is_not_there"):
        import_unsloth()


@pytest.mark.parametrize(
    ("failure", "error", "words"),
    [
        (OSError("repo not found"), ModelNotFoundError, "check the hub id"),
        (RuntimeError("CUDA out of memory"), BackendUnavailableError, "load it in 4 bits"),
        (RuntimeError("weights do not match"), ModelNotFoundError, "weights do not match"),
    ],
)
def test_backend_and_engine_share_one_loader_that_translates_errors(
    monkeypatch: pytest.MonkeyPatch, failure: Exception, error: type[Exception], words: str
) -> None:
    from qwen_backends.finetune.config import FinetuneConfig
    from qwen_backends.finetune.engines import UnslothEngine

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs: object) -> tuple[object, object]:
            calls.append(kwargs)
            raise failure

    calls: list[dict[str, object]] = []
    fake = type(sys)("unsloth")
    fake.FastLanguageModel = FastLanguageModel  # type: ignore[attr-defined]
    monkeypatch.setattr(unsloth_backend, "import_unsloth", lambda: fake)
    loads = [
        lambda: UnslothBackend(Settings(backend="unsloth", model="some/model")),
        lambda: UnslothEngine(
            FinetuneConfig(engine="unsloth", model="some/model", data={"path": "x.jsonl"})
        ).load(),
    ]
    for load in loads:
        with pytest.raises(error, match=words) as caught:
            load()
        assert "'some/model'" in str(caught.value) and caught.value.__cause__ is failure
    assert [call["model_name"] for call in calls] == ["some/model", "some/model"]


# -- with Unsloth and a GPU -----------------------------------------------------------------------


@pytest.mark.gpu
def test_unsloth_loads_the_tiny_checkpoint_and_answers_non_thinking(tiny_model_dir: Path) -> None:
    pytest.importorskip("unsloth")
    if NO_GPU:
        pytest.skip("needs an NVIDIA, AMD or Intel GPU")
    settings = {"load_in_4bit": False, "dtype": "float16", "max_seq_length": 512}
    with create_backend(backend="unsloth", model=str(tiny_model_dir), unsloth=settings) as backend:
        assert isinstance(backend, UnslothBackend)
        assert backend.context_window == 512
        result = backend.generate("hi", SamplingParams.preset("greedy", max_new_tokens=8))
        assert result.prompt_tokens == len(render_prompt_ids(backend.tokenizer, "hi"))
        assert "<think>" not in result.text
        streamed = "".join(backend.stream("hi", SamplingParams.preset("greedy", max_new_tokens=8)))
        assert streamed == result.text


@pytest.mark.gpu
def test_the_unsloth_engine_teaches_the_sample_chats(tiny_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("unsloth")
    if NO_GPU:
        pytest.skip("needs an NVIDIA, AMD or Intel GPU")
    from qwen_backends.finetune import load_config, run_finetune
    from qwen_backends.finetune.data import assistant_turns, load_conversations

    config = load_config(
        Path(__file__).resolve().parents[2] / "configs" / "finetune" / "cpu_smoke.yaml",
        engine="unsloth",
        model=str(tiny_model_dir),
        dtype="auto",
        export={"output_dir": str(tmp_path / "out")},
        training={"max_steps": 40},
    )
    result = run_finetune(config)
    greedy = SamplingParams.preset("greedy", max_new_tokens=12)
    with result.load_backend() as backend:
        pairs = [assistant_turns(chat)[-1] for chat in load_conversations(config.data)]
        correct = sum(backend.generate(h, greedy).text.strip() == a for h, a in pairs)
    print(
        f"unsloth engine: loss {result.loss_before:.3f} -> {result.loss_after:.3f}, "
        f"{result.train_seconds:.1f} s, {correct}/8 exact"
    )
    assert correct >= 7
