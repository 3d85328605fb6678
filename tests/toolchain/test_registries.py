"""Registries and tests cannot drift apart: every converter and runner has its own test module."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolchain.converters import CONVERTERS, KNOWN_RUNTIMES, Converter, register
from toolchain.runners import RUNNERS

TESTS = Path(__file__).parent
# runtime -> the test module that builds a real artifact with that converter
CONVERTER_TESTS = {
    "coreml": "test_build_coreml.py",
    "onnxruntime": "test_build_cpu.py",
    "tensorrt": "test_build_tensorrt.py",
    "tflite": "test_build_tflite.py",
    "tflite-micro": "test_build_micro.py",
}


def test_every_converter_has_its_own_end_to_end_test():
    assert set(CONVERTERS) == set(CONVERTER_TESTS), (
        "add a test module for the new converter to CONVERTER_TESTS"
    )
    for runtime, module in CONVERTER_TESTS.items():
        assert (TESTS / module).is_file(), runtime


def test_every_converter_can_be_validated_on_the_host():
    assert set(CONVERTERS) <= set(RUNNERS)


def test_registering_an_unknown_runtime_fails_at_registration():
    with pytest.raises(ValueError, match="unknown runtime"):

        @register
        class _Bogus(Converter):
            runtime = "warp-drive"


def test_registering_twice_fails():
    with pytest.raises(ValueError, match="already registered"):

        @register
        class _Again(Converter):
            runtime = "onnxruntime"

    assert "warp-drive" not in KNOWN_RUNTIMES


def test_every_runtime_row_has_a_converter_a_runner_and_a_real_extra():
    """A row in targets/runtimes.py is a promise: something builds it and something runs it on the host."""
    import tomllib

    from targets.runtimes import RUNTIMES

    extras = tomllib.loads((TESTS.parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert set(RUNTIMES) == set(KNOWN_RUNTIMES) == set(CONVERTERS)
    assert set(RUNTIMES) <= set(RUNNERS)
    for row in RUNTIMES.values():
        assert row.extra in extras, row
        assert row.suffixes and all(s.startswith(".") for s in row.suffixes), row


def test_every_runtime_is_one_backend_package_whose_convert_module_registers_it():
    """`toolchain/backends/<package>/convert.py` holds the converter and `runner.py` the host runner
    (its `RUNNER`), both found from the runtime table's row; nothing else registers one."""
    import importlib
    import inspect

    from targets.runtimes import RUNTIMES
    from toolchain.runners import RUNNERS

    backends = TESTS.parents[1] / "toolchain" / "backends"
    packages = {p.name for p in backends.iterdir() if (p / "__init__.py").is_file()}
    assert packages == {row.package for row in RUNTIMES.values()}
    for runtime, converter in CONVERTERS.items():
        module = Path(inspect.getfile(type(converter)))
        assert module == backends / RUNTIMES[runtime].package / "convert.py", runtime
    for runtime, row in RUNTIMES.items():
        runner = importlib.import_module(f"toolchain.backends.{row.package}.runner")
        assert RUNNERS[runtime] is runner.RUNNER, runtime
    assert "tensorflow" in RUNNERS and "no-such-runtime" not in RUNNERS


def test_suffixes_name_one_runtime_each_and_the_longest_wins():
    from toolchain.runners import runtime_for

    assert runtime_for(Path("m.micro.tflite")) == "tflite-micro"
    assert runtime_for(Path("m.tflite")) == "tflite"
    assert runtime_for(Path("m.ORT")) == "onnxruntime"
    with pytest.raises(KeyError):
        runtime_for(Path("m.bin"))
