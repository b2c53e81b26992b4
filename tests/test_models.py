"""Where a model comes from: the path rule and the hub advice every loader shares."""

from __future__ import annotations

from qwen_backends.models import hub_hint


def test_offline_hub_advice_names_the_switches_and_the_local_alternative() -> None:
    hint = hub_hint("Qwen/Qwen3-4B", "QWEN_HF", offline=True)
    assert "HF_HUB_OFFLINE or QWEN_HF__LOCAL_FILES_ONLY" in hint
    assert "Qwen/Qwen3-4B is not in the local cache" in hint
    assert hint.endswith("hf download Qwen/Qwen3-4B")


def test_online_hub_advice_names_the_sections_revision_and_token() -> None:
    hint = hub_hint("Qwen/Qwen3-4B", "QWEN_MLX", offline=False, local="a converted folder")
    assert "QWEN_MLX__REVISION" in hint and "QWEN_MLX__TOKEN / HF_TOKEN" in hint
    assert hint.endswith("without network use a converted folder")


def test_a_backend_without_hub_settings_is_told_only_what_exists() -> None:
    for offline in (True, False):
        hint = hub_hint("org/repo-GGUF", None, offline=offline, local="a local .gguf file")
        assert "__" not in hint and "a local .gguf file" in hint  # no QWEN_X__FIELD named
