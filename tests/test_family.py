"""The family table: each backend's default model comes from its registration, never a guess."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qwen_backends.errors import ConfigurationError, UnknownBackendError
from qwen_backends.family import FAMILIES
from qwen_backends.registry import BACKENDS
from qwen_backends.settings import Settings


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_backend_gets_the_attribute_its_registration_names(family: str) -> None:
    table = FAMILIES[family]
    assert {backend: table.model_for(backend) for backend in BACKENDS} == {
        "hf": table.hf,
        "ollama": table.ollama,
        "unsloth": table.unsloth,
        "vllm": table.vllm,
        "llamacpp": table.gguf_repo,
        "mlx": table.mlx,
    }


def test_an_unknown_backend_is_an_error_not_the_hub_repo() -> None:
    with pytest.raises(UnknownBackendError, match="unknown backend 'olama'; did you mean 'ollama'"):
        FAMILIES["qwen3-4b"].model_for("olama")


@pytest.mark.parametrize("attribute", [None, "title", "gguf_file"])
def test_a_registration_without_a_family_model_says_how_to_name_one(
    attribute: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(BACKENDS, "hf", replace(BACKENDS["hf"], family_model=attribute))
    with pytest.raises(ConfigurationError, match=r"no default model .* set QWEN_MODEL or QWEN_HF"):
        FAMILIES["qwen3-4b"].model_for("hf")
    # an explicit model still works
    assert Settings(hf={"model": "./mine"}).model_name == "./mine"
