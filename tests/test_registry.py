"""The registry: every list of backends derives from it, so adding one touches no other list."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest
import tomllib

from qwen_backends.cli import build_parser
from qwen_backends.cli.info import collect
from qwen_backends.registry import BACKENDS, Registration
from qwen_backends.settings import Section, Settings

ROOT = Path(__file__).resolve().parents[1]


def test_each_registration_names_a_lazy_class_with_the_same_name() -> None:
    for name, registration in BACKENDS.items():
        module_name, _, class_name = registration.target.partition(":")
        assert module_name == f"qwen_backends.backends.{module_name.rsplit('.', 1)[-1]}"
        module = importlib.import_module(module_name)
        assert getattr(module, class_name).name == name


def test_each_backend_has_a_settings_section_of_its_name() -> None:
    for name in BACKENDS:
        section = Settings.model_fields[name].default_factory()  # type: ignore[misc]
        assert isinstance(section, Section), name
        assert "model" in type(section).model_fields, name


def test_each_extra_is_declared_in_pyproject() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for registration in BACKENDS.values():
        assert registration.extra in extras


def test_settings_accept_exactly_the_registered_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in BACKENDS:
        assert Settings(backend=name).backend == name
    monkeypatch.setitem(BACKENDS, "newcomer", Registration("m:C", "hf", (), "a new runtime"))
    with pytest.raises(Exception, match="did you mean 'newcomer'"):
        Settings(backend="newcomr")


def test_cli_choices_and_info_list_every_backend() -> None:
    parser = build_parser()
    generate = next(
        action
        for action in parser._subparsers._actions  # type: ignore[union-attr]
        if isinstance(action, argparse._SubParsersAction)
    ).choices["generate"]
    backend_flag = next(a for a in generate._actions if "--backend" in a.option_strings)
    assert list(backend_flag.choices) == list(BACKENDS)  # type: ignore[arg-type]
    report = collect(Settings())
    assert list(report["backends"]) == list(BACKENDS)
    assert {registration.extra for registration in BACKENDS.values()} <= set(report["extras"])


def test_configuration_docs_cover_every_backend_section() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for name in BACKENDS:
        assert f"QWEN_{name.upper()}__MODEL" in text, name


def test_fine_tuning_engines_are_registered_the_same_way() -> None:
    from qwen_backends.finetune.config import FinetuneConfig
    from qwen_backends.finetune.engines import ENGINES, engine_class

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for name, registration in ENGINES.items():
        assert isinstance(registration, Registration)
        module_name, _, class_name = registration.target.partition(":")
        assert getattr(importlib.import_module(module_name), class_name).name == name
        assert registration.extra in extras
    assert engine_class("peft").name == "peft"
    with pytest.raises(Exception, match="did you mean 'peft'"):
        FinetuneConfig(engine="pef", data={"path": "x.jsonl"})


#: Registered backends the conformance suite cannot run here, and why.
NOT_IN_CONFORMANCE = {"unsloth": "needs a GPU; its generation is the hf backend's, inherited"}


def test_the_adding_a_backend_checklist_holds_for_every_backend() -> None:
    """docs/adding_a_backend.md: module, section, registry line, extra, tests, conformance param."""
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "conformance"))
    try:
        from harnesses import BUILDERS, HARNESSES, SERVER_HARNESSES
    finally:
        sys.path.remove(str(ROOT / "tests" / "conformance"))
    checklist = (ROOT / "docs" / "adding_a_backend.md").read_text()
    assert "registry.py" in checklist and "HARNESSES" in checklist
    for name in BACKENDS:
        assert (ROOT / "qwen_backends" / "backends" / f"{name}.py").is_file(), name
        assert (ROOT / "tests" / "backends" / f"test_{name}.py").is_file(), name
        assert name in HARNESSES or name in NOT_IN_CONFORMANCE, (
            f"add {name!r} to HARNESSES in tests/conformance/harnesses.py"
        )
    assert set(HARNESSES) == set(BUILDERS) and set(SERVER_HARNESSES) <= set(HARNESSES)
