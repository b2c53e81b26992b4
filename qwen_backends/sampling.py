"""The one sampling object every backend maps: :class:`SamplingParams`.

Defaults are Qwen3's recommended NON-THINKING values (temperature 0.7, top_p 0.8, top_k 20,
min_p 0). The model's own ``generation_config.json`` carries the *thinking* values (0.6 / 0.95),
which is why backends pass every field explicitly instead of leaning on runtime defaults.

All ranges are checked in one place (:meth:`SamplingParams._check_ranges`); a violation names
the parameter, the offending value and the allowed range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qwen_backends.errors import ConfigurationError, did_you_mean
from qwen_backends.thinking import reject_thinking

__all__ = ["PRESETS", "SamplingParams", "validation_message"]


def validation_message(
    exc: ValidationError, prefix: str, model: type[BaseModel] | None = None
) -> str:
    """Flatten a pydantic ``ValidationError`` into one line naming each bad field.

    With ``model`` (the class validated), an unknown key gets a did-you-mean suggestion from
    the keys known at its place.
    """
    parts = []
    for error in exc.errors():
        location = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            known = _known_keys(model, error["loc"][:-1]) if model is not None else ()
            hint = did_you_mean(str(error["loc"][-1]), known) if error["loc"] else ""
            message = f"is not a known setting ({hint.strip() or 'check the spelling'})"
            if location.startswith("qwen_"):  # an unknown QWEN_ name in .env
                location = location.upper()
        elif error["type"] != "value_error" and "input" in error:
            message = f"{message} (got {error['input']!r})"
        if error["type"] == "value_error" and location.rsplit(".", 1)[-1] in message:
            parts.append(message)
        else:
            parts.append(f"{location}: {message}" if location else message)
    return f"invalid {prefix}: " + "; ".join(parts)


def _known_keys(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """The field names of the model found at ``path`` inside ``model`` (empty if none)."""
    current: type[BaseModel] = model
    for part in path:
        field = current.model_fields.get(str(part))
        inner = field.annotation if field is not None else None
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return []
        current = inner
    return list(current.model_fields)


class SamplingParams(BaseModel):
    """How to pick tokens, shared by every backend.

    Construct with keyword arguments (``SamplingParams(temperature=0.2)``), from a preset
    (``SamplingParams.preset("greedy")``), or derive a copy (``params.replace(seed=1)``);
    :meth:`coerce` accepts any of the forms a ``sampling=`` argument may take.
    Invalid values raise :class:`~qwen_backends.errors.ConfigurationError` (a ``ValueError``).
    Numbers are numbers: ``True``/``False`` are refused for numeric fields (``top_k=True`` is not
    1), and integer fields refuse fractions (``max_new_tokens=2.5``); numeric strings from
    environment variables and config files are accepted.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(
        0.7, description="Softmax temperature, 0 <= t <= 2. 0 means greedy decoding."
    )
    top_p: float = Field(0.8, description="Nucleus sampling mass, 0 < p <= 1. 1 turns it off.")
    top_k: int = Field(20, description="Keep the k most likely tokens, k >= 0. 0 turns it off.")
    min_p: float = Field(
        0.0, description="Drop tokens below min_p x the top probability, 0 <= p <= 1. 0 is off."
    )
    max_new_tokens: int = Field(
        1024, description="Most tokens to generate, 1 <= n <= 131072 (the YaRN context)."
    )
    presence_penalty: float = Field(
        0.0,
        description="Subtract this from the logit of every token already generated, 0..2. "
        "Qwen suggests 1.5 for quantized models that repeat themselves. 0 is off.",
    )
    repetition_penalty: float = Field(
        1.0, description="Multiplicative (CTRL-style) penalty, 0 < r <= 2. 1 is off."
    )
    seed: int | None = Field(
        None, description="Per-call random seed, 0 <= seed < 2**32. None draws a fresh one."
    )
    stop: tuple[str, ...] = Field(
        (), description="Stop when any of these strings is produced (not included in the text)."
    )
    english_only: bool = Field(
        False,
        description="Restrict sampling to the English-tier tokens of the vocabulary "
        "(see qwen_backends.vocab). Backends that cannot do this raise instead.",
    )
    logprobs: bool = Field(
        False,
        description="Report each generated token's log-probability (Generation.logprobs): the "
        "log-softmax of the model's raw logits at that step, before temperature, penalties, "
        "top-k/top-p/min-p and any mask. Backends that cannot raise instead.",
    )
    top_logprobs: int = Field(
        0,
        description="With logprobs: also the n most likely tokens at each step, 0 <= n <= 20.",
    )

    #: (minimum, maximum, minimum-is-exclusive) per numeric field.
    _BOUNDS: ClassVar[dict[str, tuple[float, float, bool]]] = {
        "temperature": (0.0, 2.0, False),
        "top_p": (0.0, 1.0, True),
        "top_k": (0, 1_000_000, False),
        "min_p": (0.0, 1.0, False),
        "max_new_tokens": (1, 131_072, False),
        "presence_penalty": (0.0, 2.0, False),
        "repetition_penalty": (0.0, 2.0, True),
        "seed": (0, 2**32 - 1, False),
        "top_logprobs": (0, 20, False),
    }

    def __init__(self, **data: Any) -> None:
        reject_thinking(data, "SamplingParams")
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigurationError(
                validation_message(exc, "sampling parameters", SamplingParams)
            ) from None

    @field_validator(
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "max_new_tokens",
        "presence_penalty",
        "repetition_penalty",
        "seed",
        "top_logprobs",
        mode="before",
    )
    @classmethod
    def _no_bools(cls, value: Any, info: Any) -> Any:
        if isinstance(value, bool):
            kind = "an integer" if info.field_name in _INT_FIELDS else "a number"
            raise ValueError(f"{info.field_name}={value!r} is a bool; give {kind}")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_tuple(cls, value: Any) -> Any:
        if isinstance(value, str):
            return (value,)
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _check_ranges(self) -> SamplingParams:
        for name, (low, high, exclusive) in self._BOUNDS.items():
            value = getattr(self, name)
            if value is None:
                continue
            too_low = value <= low if exclusive else value < low
            if too_low or value > high or (isinstance(value, float) and math.isnan(value)):
                opener = "<" if exclusive else "<="
                raise ValueError(
                    f"{name}={value!r} is out of range; allowed: "
                    f"{_fmt(low)} {opener} {name} <= {_fmt(high)}"
                )
        for text in self.stop:
            if not text:
                raise ValueError("stop contains an empty string; remove it")
        if self.top_logprobs and not self.logprobs:
            raise ValueError(
                f"top_logprobs={self.top_logprobs} needs logprobs=True; set both, or drop "
                "top_logprobs"
            )
        return self

    @property
    def is_greedy(self) -> bool:
        """True when decoding always takes the most likely token (temperature 0)."""
        return self.temperature == 0.0

    def replace(self, **changes: Any) -> SamplingParams:
        """Return a validated copy with ``changes`` applied."""
        return SamplingParams(**{**self.model_dump(), **changes})

    @classmethod
    def coerce(cls, value: Any, default: SamplingParams | None = None) -> SamplingParams:
        """Turn anything a ``sampling=`` argument accepts into :class:`SamplingParams`.

        Parameters
        ----------
        value
            ``None`` (``default``), a :class:`SamplingParams` (returned as is), a mapping of its
            fields (``{"temperature": 0}``), or a preset name (``"greedy"``, see :data:`PRESETS`).
        default
            What ``None`` means (a backend passes ``settings.sampling``); ``None``: the
            defaults, Qwen3's non-thinking values.

        Raises
        ------
        ConfigurationError
            For an unknown preset, an invalid field, or a value of another type.
        """
        if value is None:
            return default if default is not None else cls()
        if isinstance(value, SamplingParams):
            return value
        if isinstance(value, str):
            return cls.preset(value)
        if isinstance(value, Mapping):
            bad = [key for key in value if not isinstance(key, str)]
            if bad:
                raise ConfigurationError(
                    f"sampling keys must be field names (strings), got {bad[0]!r}"
                )
            return cls(**value)
        raise ConfigurationError(
            f"sampling must be a SamplingParams, a dict of its fields, a preset name "
            f"({', '.join(PRESETS)}) or None; got {type(value).__name__}"
        )

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SamplingParams:
        """Return the named preset (see :data:`PRESETS`), optionally with overrides."""
        try:
            values = PRESETS[name]
        except KeyError:
            raise ConfigurationError(
                f"unknown sampling preset {name!r}; {did_you_mean(name, PRESETS)}choose one of "
                f"{', '.join(PRESETS)}"
            ) from None
        return cls(**{**values, **overrides})


_INT_FIELDS = frozenset({"top_k", "max_new_tokens", "seed", "top_logprobs"})


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


#: Named sampling presets. ``non_thinking`` is Qwen3's recommendation for non-thinking mode and
#: equals the defaults; ``greedy`` always takes the most likely token (deterministic).
PRESETS: dict[str, dict[str, Any]] = {
    "non_thinking": {},
    "greedy": {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0},
    "quantized": {"presence_penalty": 1.5},
}
