"""The registry: every list of backends derives from it, so adding one touches no other list."""

from __future__ import annotations

import argparse
import ast
import importlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import tomllib
from pydantic import SecretStr

from qwen_backends.cli import build_parser
from qwen_backends.cli.info import collect
from qwen_backends.errors import ConfigurationError, MissingDependencyError, UnknownBackendError
from qwen_backends.factory import readiness
from qwen_backends.family import FAMILIES
from qwen_backends.registry import BACKENDS, ENGINES, Registration, load_target
from qwen_backends.settings import Section, Settings, mask_url

ROOT = Path(__file__).resolve().parents[1]


def test_each_registration_names_a_lazy_class_with_the_same_name() -> None:
    for name, registration in BACKENDS.items():
        module_name, _, class_name = registration.target.partition(":")
        assert module_name == f"qwen_backends.backends.{module_name.rsplit('.', 1)[-1]}"
        module = importlib.import_module(module_name)
        assert getattr(module, class_name).name == name
        # the readiness probe defaults to the class's own
        assert load_target(registration.readiness_target) == getattr(module, class_name).readiness


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


def build_parser_choices() -> list[str]:
    """The CLI's ``generate --backend`` choices, built now."""
    generate = next(
        action
        for action in build_parser()._subparsers._actions  # type: ignore[union-attr]
        if isinstance(action, argparse._SubParsersAction)
    ).choices["generate"]
    flag = next(a for a in generate._actions if "--backend" in a.option_strings)
    return list(flag.choices or ())


def test_cli_choices_and_info_list_every_backend() -> None:
    assert build_parser_choices() == list(BACKENDS)
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


# -- registering a backend for a while (the API docs/adding_a_backend.md uses) ----------------


class EchoSettings(Section):
    """Settings of a backend registered only by these tests."""

    model: str | None = None
    url: str = "http://127.0.0.1:9/v1"
    key: SecretStr = SecretStr("EMPTY")


def echo_readiness(settings: Settings) -> str:
    """The probe the test registration names (reads the section, like a real probe)."""
    return f"ready at {mask_url(settings.section(EchoSettings, 'echo').url)}"


ECHO = Registration(
    "qwen_backends.backends.hf:HFBackend",
    "hf",
    (),
    "a backend that exists only in this test",
    settings=f"{__name__}:EchoSettings",
    family_model="hf",
    readiness=f"{__name__}:echo_readiness",
    url_fields=("url",),
)


def test_a_registered_backend_gets_its_section_family_model_probe_and_masking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fields_before = list(Settings.model_fields)
    with BACKENDS.registered("echo", ECHO):
        # its section is a Settings field of its name, before the other sections
        assert list(Settings.model_fields) == [
            *fields_before[: fields_before.index("evaluation")],
            "echo",
            *fields_before[fields_before.index("evaluation") :],
        ]
        monkeypatch.setenv("QWEN_ECHO__URL", "https://bob:hunter2@echo.example/v1")
        monkeypatch.setenv("QWEN_ECHO__KEY", "k-secret")
        settings = Settings(backend="echo")
        assert isinstance(settings.selected, EchoSettings)
        assert settings.section(EchoSettings).key.get_secret_value() == "k-secret"
        assert Settings(echo={"model": "own"}, backend="echo").model_name == "own"
        # the family default its registration names
        assert settings.model_name == FAMILIES["qwen3-4b"].hf
        # masking by field type and the registration's URL fields, never by name
        redacted = settings.redacted()
        assert redacted["echo"]["url"] == "https://***@echo.example/v1"
        assert redacted["echo"]["key"] == "**********"
        assert "hunter2" not in str(redacted) and "k-secret" not in str(redacted)
        # info's verdict comes from the registered probe
        assert readiness("echo", settings) == "ready at https://***@echo.example/v1"
        assert "echo" in build_parser_choices()
    assert list(Settings.model_fields) == fields_before
    assert "echo" not in BACKENDS
    with pytest.raises(ConfigurationError, match="echo"):
        Settings(echo={"model": "own"})
    with pytest.raises(ConfigurationError, match="has no EchoSettings settings section"):
        Settings().section(EchoSettings, "echo")


@pytest.mark.parametrize(
    ("name", "registration", "message"),
    [
        ("hf", ECHO, "'hf' is already registered"),
        ("Echo", ECHO, "not a lowercase identifier"),
        ("echo-2", ECHO, "not a lowercase identifier"),
        ("sampling", ECHO, "'sampling' is also a general setting"),
        ("echo", replace(ECHO, settings=f"{__name__}:echo_readiness"), "is not a Section"),
        ("echo", replace(ECHO, settings=f"{__name__}:NoSuchSettings"), "cannot be imported"),
        ("echo", replace(ECHO, settings="no_such_module_xyz:S"), "cannot be imported"),
        ("echo", replace(ECHO, url_fields=("host",)), "url_fields name host, which EchoSettings"),
    ],
)
def test_a_refused_registration_leaves_everything_as_it_was(
    name: str, registration: Registration, message: str
) -> None:
    backends_before, fields_before = dict(BACKENDS), list(Settings.model_fields)
    with pytest.raises(ConfigurationError, match=message):
        BACKENDS.register(name, registration)
    assert dict(BACKENDS) == backends_before
    assert list(Settings.model_fields) == fields_before
    assert Settings(hf={"dtype": "float32"}).hf.dtype == "float32"


@pytest.mark.parametrize("field", ["target", "settings", "readiness"])
@pytest.mark.parametrize("value", ["qwen_backends.settings.HFSettings", "a b:C", "m:"])
def test_registration_targets_must_be_module_colon_name(field: str, value: str) -> None:
    changes: dict[str, Any] = {field: value}
    with pytest.raises(ConfigurationError, match=f"{field}=.* is not 'module:Name'"):
        replace(ECHO, **changes)


def test_unregistering_an_unknown_name_has_a_did_you_mean() -> None:
    with pytest.raises(UnknownBackendError, match="did you mean 'ollama'"):
        BACKENDS.unregister("olama")


def test_one_resolve_serves_backends_and_engines() -> None:
    from qwen_backends.factory import backend_class
    from qwen_backends.finetune.engines import Engine, engine_class

    for registry, resolve in ((BACKENDS, backend_class), (ENGINES, engine_class)):
        with pytest.raises(UnknownBackendError, match=f"unknown {registry.kind} 'nope'"):
            resolve("nope")
        needy = Registration(
            "qwen_backends.finetune.engines:Engine", "extra_x", ("no_such_module_xyz",), "x"
        )
        with registry.registered("needy", needy):
            with pytest.raises(MissingDependencyError) as caught:
                resolve("needy")
            assert f"the needy {registry.kind} needs no_such_module_xyz" in str(caught.value)
            assert "pip install 'qwen-backends[extra_x]'" in str(caught.value)
        with registry.registered("light", replace(needy, requires=())):
            assert resolve("light") is Engine
        assert "needy" not in registry and "light" not in registry


def test_the_sections_spelt_out_for_the_type_checker_are_the_registered_ones() -> None:
    """Each TYPE_CHECKING annotation in Settings names a backend and its registered section."""
    tree = ast.parse((ROOT / "qwen_backends" / "settings.py").read_text())
    settings_class = next(
        node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings"
    )
    block = next(
        node
        for node in settings_class.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    declared = {
        ast.unparse(node.target): ast.unparse(node.annotation)
        for node in block.body
        if isinstance(node, ast.AnnAssign)
    }
    registered = {
        name: registration.settings.partition(":")[2]
        for name, registration in BACKENDS.items()
        if registration.settings and registration.settings.startswith("qwen_backends.settings:")
    }
    assert declared.items() <= registered.items()
    assert set(declared) == {"hf", "ollama", "unsloth", "vllm", "llamacpp", "mlx"}
