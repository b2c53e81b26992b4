"""SamplingParams: defaults, every bound (valid and invalid), presets, immutability."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_backends.errors import ConfigurationError, ThinkingModeError
from qwen_backends.sampling import PRESETS, SamplingParams

# field -> (strategy of valid values, strategy of invalid values, the range text in the error)
FLOAT_BOUNDS = {
    "temperature": (
        st.floats(0, 2),
        st.floats(2, 1e9, exclude_min=True) | st.floats(-1e9, 0, exclude_max=True),
        "0 <= temperature <= 2",
    ),
    "top_p": (
        st.floats(0, 1, exclude_min=True),
        st.floats(-1e9, 0) | st.floats(1, 1e9, exclude_min=True),
        "0 < top_p <= 1",
    ),
    "min_p": (
        st.floats(0, 1),
        st.floats(-1e9, 0, exclude_max=True) | st.floats(1, 1e9, exclude_min=True),
        "0 <= min_p <= 1",
    ),
    "presence_penalty": (
        st.floats(0, 2),
        st.floats(2, 1e9, exclude_min=True) | st.floats(-1e9, 0, exclude_max=True),
        "0 <= presence_penalty <= 2",
    ),
    "repetition_penalty": (
        st.floats(0, 2, exclude_min=True),
        st.floats(-1e9, 0) | st.floats(2, 1e9, exclude_min=True),
        "0 < repetition_penalty <= 2",
    ),
}
INT_BOUNDS = {
    "top_k": (st.integers(0, 1_000_000), st.integers(max_value=-1), "0 <= top_k"),
    "max_new_tokens": (
        st.integers(1, 131_072),
        st.integers(max_value=0) | st.integers(min_value=131_073),
        "1 <= max_new_tokens <= 131072",
    ),
    "seed": (
        st.integers(0, 2**32 - 1),
        st.integers(max_value=-1) | st.integers(min_value=2**32),
        "0 <= seed <= 4294967295",
    ),
}
BOUNDS = {**FLOAT_BOUNDS, **INT_BOUNDS}


def test_defaults_are_qwen3_non_thinking_values() -> None:
    params = SamplingParams()
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (0.7, 0.8, 20, 0.0)
    assert (params.presence_penalty, params.repetition_penalty) == (0.0, 1.0)
    assert params.seed is None and params.stop == () and params.english_only is False
    assert SamplingParams.preset("non_thinking") == params
    assert (params.temperature, params.top_p) != (0.6, 0.95)  # the thinking-mode values


@pytest.mark.parametrize("field", sorted(BOUNDS))
@given(data=st.data())
def test_values_inside_the_range_are_accepted(field: str, data: st.DataObject) -> None:
    value = data.draw(BOUNDS[field][0])
    assert getattr(SamplingParams(**{field: value}), field) == value


@pytest.mark.parametrize("field", sorted(BOUNDS))
@given(data=st.data())
def test_values_outside_the_range_name_parameter_value_and_range(
    field: str, data: st.DataObject
) -> None:
    value = data.draw(BOUNDS[field][1])
    with pytest.raises(ConfigurationError) as caught:
        SamplingParams(**{field: value})
    message = str(caught.value)
    assert f"{field}=" in message and BOUNDS[field][2] in message
    assert "\n" not in message


@pytest.mark.parametrize("field", sorted(FLOAT_BOUNDS))
def test_nan_is_rejected(field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        SamplingParams(**{field: math.nan})


def test_temperature_zero_is_greedy() -> None:
    assert SamplingParams(temperature=0).is_greedy
    assert SamplingParams.preset("greedy").is_greedy
    assert not SamplingParams().is_greedy


def test_unknown_fields_are_rejected_with_their_name() -> None:
    with pytest.raises(ConfigurationError, match="max_tokens: is not a known setting"):
        SamplingParams(max_tokens=5)


@pytest.mark.parametrize("key", ["enable_thinking", "think", "thinking", "reasoning_effort"])
def test_thinking_switches_are_refused(key: str) -> None:
    with pytest.raises(ThinkingModeError, match=key):
        SamplingParams(**{key: True})


def test_frozen_and_replace_revalidates() -> None:
    params = SamplingParams()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        params.temperature = 1.0  # type: ignore[misc]
    assert params.replace(seed=5).seed == 5
    with pytest.raises(ConfigurationError, match="top_k"):
        params.replace(top_k=-3)


def test_stop_accepts_a_string_or_list_and_rejects_empty_strings() -> None:
    assert SamplingParams(stop="END").stop == ("END",)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    with pytest.raises(ConfigurationError, match="empty string"):
        SamplingParams(stop=["ok", ""])


def test_presets_and_unknown_preset() -> None:
    assert set(PRESETS) >= {"non_thinking", "greedy"}
    assert SamplingParams.preset("greedy", max_new_tokens=5).max_new_tokens == 5
    with pytest.raises(ConfigurationError, match="did you mean 'greedy'"):
        SamplingParams.preset("gredy")


# -- strict numbers and coerce (issue 13) ---------------------------------------------------


@pytest.mark.parametrize("field", ["top_k", "max_new_tokens", "seed"])
@pytest.mark.parametrize("flag", [True, False])
def test_bools_are_not_integers(field: str, flag: bool) -> None:
    with pytest.raises(ConfigurationError, match=rf"{field}={flag} is a bool; give an integer"):
        SamplingParams(**{field: flag})


@pytest.mark.parametrize("field", ["temperature", "top_p", "min_p", "repetition_penalty"])
def test_bools_are_not_numbers(field: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"{field}=True is a bool; give a number"):
        SamplingParams(**{field: True})


def test_integer_fields_refuse_fractions_but_take_numeric_text() -> None:
    with pytest.raises(ConfigurationError, match=r"max_new_tokens.*fractional part"):
        SamplingParams(max_new_tokens=2.5)
    # Environment variables and config files deliver text.
    params = SamplingParams(max_new_tokens="7", top_k="3", temperature="0.5")
    assert (params.max_new_tokens, params.top_k, params.temperature) == (7, 3, 0.5)


def test_coerce_accepts_every_sampling_form() -> None:
    custom = SamplingParams(seed=4)
    assert SamplingParams.coerce(None) == SamplingParams()
    assert SamplingParams.coerce(None, default=custom) is custom
    assert SamplingParams.coerce(custom) is custom
    assert SamplingParams.coerce("greedy") == SamplingParams.preset("greedy")
    assert SamplingParams.coerce({"top_k": 2}).top_k == 2


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("gredy", "unknown sampling preset 'gredy'; did you mean 'greedy'?"),
        (
            0.7,
            "sampling must be a SamplingParams, a dict of its fields, a preset name .* got float",
        ),
        ({1: 2}, "sampling keys must be field names"),
        ({"temprature": 0}, "temprature: is not a known setting"),
        ({"top_k": True}, "top_k=True is a bool"),
    ],
)
def test_coerce_refuses_clearly(value: object, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        SamplingParams.coerce(value)
