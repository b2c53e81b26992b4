"""Context sizes: what Qwen3-4B was trained for and what its KV cache would take."""

from __future__ import annotations

import pytest

from qwen_backends.context_size import (
    KV_BYTES_PER_TOKEN,
    MAX_CONTEXT,
    check_context_setting,
    check_loaded_context,
    kv_cache_bytes,
)
from qwen_backends.errors import ConfigurationError


def test_qwen3_4b_kv_cache_costs_147456_bytes_a_token() -> None:
    assert KV_BYTES_PER_TOKEN == 36 * 8 * 128 * 2 * 2 == 147_456
    assert kv_cache_bytes(32_768) == 4_831_838_208  # 4.5 GiB


def test_the_setting_allows_the_longest_release_and_no_more() -> None:
    assert check_context_setting(MAX_CONTEXT) == 262_144
    with pytest.raises(ConfigurationError, match=r"would take 134\.1 TiB \(147,456 bytes a tok"):
        check_context_setting(10**9)


def test_the_loaded_model_bounds_the_context_unless_yarn_extends_it() -> None:
    check_loaded_context(40_960, 40_960, memory=0)
    with pytest.raises(ConfigurationError) as caught:
        check_loaded_context(65_536, 40_960, memory=0)
    message = str(caught.value)
    assert "llamacpp.n_ctx=65,536 is more than the model's trained context of 40,960" in message
    assert "set llamacpp.n_ctx to 40,960 or less" in message and "\n" not in message
    check_loaded_context(131_072, 32_768, rope_factor=4.0, memory=0)


def test_a_kv_cache_larger_than_the_machine_is_refused() -> None:
    sixteen_gib = 16 * 2**30
    check_loaded_context(32_768, 40_960, memory=sixteen_gib)
    with pytest.raises(ConfigurationError, match=r"more than this machine's 16\.0 GiB of memory"):
        check_loaded_context(131_072, 32_768, rope_factor=4.0, memory=sixteen_gib)
