"""`edgectl build --target <microcontroller>` end to end: real onnx2tf, TFLite converter and TFLite Micro.

The reference model (the digits CNN at its native 8x8 with 8/16/32 channels)
builds for every microcontroller board in one command and is judged in the
real TFLM interpreter; the demo model at full size (32x32, 32/64/128
channels) is refused by the smallest board with a fit report.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.cli import build_flags, run

pytestmark = pytest.mark.slow

MCUS = ("nucleo-l432kc", "nano33-ble", "esp32-s3", "stm32f746-disco")


def _assert_clean_failure(result, out: Path, *needles: str) -> None:
    assert result.code != 0
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.err
    assert [line for line in result.err.splitlines() if line.startswith("hint:")], result.err
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in result.err, result.err
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from toolchain.backends.tflite_micro.samples import train_micro_reference

    return train_micro_reference(tmp_path_factory.mktemp("micro-reference"))


@pytest.fixture(scope="module")
def built(reference, keys, tmp_path_factory):
    from edgectl.main import main

    out = tmp_path_factory.mktemp("micro")
    flags = build_flags(keys, out, calib=reference.calib, val=reference.val, shape="1,1,8,8", bench_runs="5")
    targets = [arg for name in MCUS for arg in ("--target", name)]
    assert main(["build", str(reference.model), "--name", "digits8", *targets, *map(str, flags)]) == 0
    return out


def _manifest(built: Path, target: str):
    from edgebundle import read_manifest

    return read_manifest(built / f"digits8-v1-{target}")


@pytest.mark.parametrize("target", MCUS)
def test_reference_builds_for_every_board_within_a_point_of_fp32_in_tflm(built, target):
    manifest = _manifest(built, target)
    assert (manifest.runtime, manifest.precision) == ("tflite-micro", "int8")
    assert manifest.toolchain.converter == "onnx2tf+tflite-converter+tflm"
    assert "tflite-micro" in manifest.toolchain.versions
    (artifact,) = manifest.artifacts
    assert artifact.path == "model_int8.micro.tflite" and artifact.format == "tflite-micro"
    report = artifact.validation
    assert report.data == "val" and report.samples > 500 and report.metric == "top1"
    assert report.reference["top1"] > 95.0
    assert report.drop_points <= 1.0 and report.passed
    spec = artifact.inputs[0]
    assert (spec.dtype, spec.shape, spec.layout) == ("int8", [1, 8, 8, 1], "NHWC")
    assert spec.quantization.zero_point == -128 and spec.quantization.scale == pytest.approx(
        1 / 255, rel=1e-3
    )
    assert artifact.outputs[0].dtype == "int8" and artifact.outputs[0].quantization is not None
    assert artifact.benchmark is not None and artifact.benchmark.threads == 1
    assert manifest.memory_fit is not None and manifest.memory_fit.fits


def test_the_bundled_model_runs_in_tflm_with_the_manifest_arena_and_its_accuracy(built, reference):
    """Quantize by hand with the manifest's numbers, run in TFLM with the manifest's arena: same top-1."""
    from tflite_micro.python.tflite_micro import runtime

    from toolchain import data as datasets

    bundle = built / "digits8-v1-nucleo-l432kc"
    manifest = _manifest(built, "nucleo-l432kc")
    spec, out_spec = manifest.artifacts[0].inputs[0], manifest.artifacts[0].outputs[0]
    val = datasets.load_classification_set(reference.val, manifest.preprocessing, spec.shape)
    model = (bundle / manifest.artifacts[0].path).read_bytes()
    interpreter = runtime.Interpreter.from_bytes(model, arena_size=manifest.memory_fit.arena_bytes)
    correct = 0
    for x, y in zip(val.inputs, val.labels, strict=True):
        q = np.clip(np.round(x / spec.quantization.scale) + spec.quantization.zero_point, -128, 127)
        interpreter.set_input(q.astype(np.int8).reshape(spec.shape), 0)
        interpreter.invoke()
        scores = interpreter.get_output(0).astype(np.float32) - out_spec.quantization.zero_point
        correct += int(scores.argmax() == y)
    top1 = 100 * correct / len(val.labels)
    assert top1 == pytest.approx(manifest.validation.artifact["top1"], abs=0.01)
    assert manifest.validation.reference["top1"] - top1 <= 1.0


def test_the_measured_arena_is_the_smallest_that_runs(built, reference):
    from toolchain.backends.tflite_micro.arena import ALIGNMENT, runs_with_arena
    from toolchain.backends.tflite_micro.model import read_model
    from toolchain.backends.tflite_micro.runner import quantize_input

    manifest = _manifest(built, "nucleo-l432kc")
    fit = manifest.memory_fit
    path = built / "digits8-v1-nucleo-l432kc" / manifest.artifacts[0].path
    model = read_model(path.read_bytes())
    health_sample = np.load(built / "digits8-v1-nucleo-l432kc" / "sample_input.npy")  # int8, NHWC
    sample = quantize_input(health_sample, model.tensors[model.inputs[0]])
    sizes = [fit.arena_measured_bytes - ALIGNMENT, fit.arena_measured_bytes, fit.arena_bytes]
    assert runs_with_arena(path, sample, sizes) == [False, True, True]
    # TFLM's own recording is not the answer: the smallest arena that runs is larger
    assert fit.arena_recorded_bytes < fit.arena_measured_bytes
    assert fit.arena_bytes == fit.arena_measured_bytes + fit.arena_margin_bytes > fit.arena_measured_bytes


@pytest.mark.parametrize("target", MCUS)
def test_flash_and_ram_figures_in_the_manifest(built, target):
    from targets import get_profile
    from toolchain.backends.tflite_micro.codesize import estimate

    manifest, profile = _manifest(built, target), get_profile(target)
    fit = manifest.memory_fit
    model_file = built / f"digits8-v1-{target}" / manifest.artifacts[0].path
    flash = {item.what: item for item in fit.flash.items}
    assert flash["model (.tflite flatbuffer)"].bytes == model_file.stat().st_size
    assert flash["model (.tflite flatbuffer)"].basis == "measured"
    code = estimate(list(fit.ops))
    assert flash["TFLM interpreter core"].bytes == code.core_bytes > 0
    assert flash["TFLM kernels of the model's 4 ops"].bytes == code.kernel_bytes > 0
    assert set(fit.ops) == {"CONV_2D", "MAX_POOL_2D", "MEAN", "FULLY_CONNECTED"}
    assert (
        fit.flash.capacity_bytes == profile.flash_kb * 1024
        and fit.ram.capacity_bytes == profile.sram_kb * 1024
    )
    for budget in (fit.flash, fit.ram):
        assert budget.needed_bytes == sum(item.bytes for item in budget.items)
        assert budget.fits == (budget.needed_bytes <= budget.capacity_bytes)
    ram = {item.what: item.bytes for item in fit.ram.items}
    assert ram["tensor arena (smallest that ran)"] == fit.arena_measured_bytes
    assert ram["arena margin"] == fit.arena_margin_bytes
    reserved = [item for item in fit.flash.items if item.basis == "board"]
    assert sum(item.bytes for item in reserved) == profile.options.get("flash_reserved_kb", 0) * 1024
    assert any("x86-64" in note for note in fit.notes) and any("64-bit host" in note for note in fit.notes)


def test_generated_sources_compile_and_hold_the_model_byte_for_byte(built, tmp_path):
    from toolchain.backends.tflite_micro.model import read_model
    from toolchain.backends.tflite_micro.ops import RESOLVER_METHODS

    bundle = built / "digits8-v1-stm32f746-disco"
    manifest = _manifest(built, "stm32f746-disco")
    firmware = bundle / "firmware"
    listed = {entry.path for entry in manifest.files}
    expected = {"model_data.h", "model_data.cc", "model_settings.h", "model_ops.h", "model_example.cc"}
    assert {f"firmware/{name}" for name in expected} <= listed
    compile_flags = ["g++", "-std=c++17", "-Wall", "-Werror", f"-I{firmware}"]
    subprocess.run(
        [*compile_flags, "-c", firmware / "model_data.cc", "-o", tmp_path / "model_data.o"], check=True
    )
    (tmp_path / "dump.cc").write_text(
        '#include <cstdio>\n#include "model_data.h"\n#include "model_settings.h"\n'
        "int main(int argc, char** argv) {\n"
        '  if (argc > 1) { std::printf("%d %d %d", edgectl::kTensorArenaSize, edgectl::kInputElements,\n'
        "                              edgectl::kNumLabels); return 0; }\n"
        "  std::fwrite(g_model_data, 1, g_model_data_len, stdout);\n"
        "  return reinterpret_cast<unsigned long>(g_model_data) % 16 == 0 ? 0 : 3;\n"
        "}\n"
    )
    binary = tmp_path / "dump"
    subprocess.run(
        [*compile_flags, tmp_path / "dump.cc", tmp_path / "model_data.o", "-o", binary], check=True
    )
    dumped = subprocess.run([binary], check=True, capture_output=True).stdout
    assert dumped == (bundle / manifest.artifacts[0].path).read_bytes()  # also: the array is 16-byte aligned
    settings = subprocess.run([binary, "settings"], check=True, capture_output=True, text=True).stdout
    assert settings == f"{manifest.memory_fit.arena_bytes} 64 10"
    # the resolver registers exactly the model's ops
    ops_header = (firmware / "model_ops.h").read_text()
    model = read_model(dumped)
    wanted = sorted(RESOLVER_METHODS[name] for name in model.op_counts)
    assert (
        sorted(
            line.split("resolver.")[1].split("(")[0]
            for line in ops_header.splitlines()
            if "resolver.Add" in line
        )
        == wanted
    )
    assert "MicroMutableOpResolver<kNumOps>" in ops_header and f"kNumOps = {len(wanted)};" in ops_header


def test_bundle_verifies_with_its_firmware_sources(built, keys):
    from edgebundle import load_public_key, verify_bundle

    manifest = verify_bundle(built / "digits8-v1-esp32-s3", load_public_key(keys[1]))
    assert (
        manifest.memory_fit.flash.items[-1].basis == "board"
    )  # the app partition of ESP-IDF's default table


def test_demo_model_at_full_size_does_not_fit_the_smallest_board(digits, keys, tmp_path, capsys):
    """The demo model (32x32 input, 32/64/128 channels) for the smallest board: refused, with a fit report."""
    out = tmp_path / "out"
    flags = build_flags(keys, out, calib=digits.calib, val=digits.val)
    result = run(capsys, "build", digits.model, "--target", "nucleo-l432kc", *flags)
    _assert_clean_failure(result, out, "does not fit nucleo-l432kc", "flash", "RAM")
    lines = result.err.splitlines()
    assert sum("DOES NOT FIT" in line for line in lines) == 2  # flash and RAM both
    assert any("model (.tflite flatbuffer)" in line for line in lines)
    assert any("tensor arena (smallest that ran)" in line for line in lines)
    advice = result.err.split("what would make it fit:")[1]
    assert "the heaviest layers: op 7 CONV_2D" in advice  # the last 128-channel conv holds the most weights
    assert "of the channels in every layer would fit" in advice
    assert "-> 1x32x32x32 needs the most arena" in advice  # a full-resolution 32-channel layer
    assert "or an input of about" in advice and "instead of 32x32" in advice
    hint = next(line for line in lines if line.startswith("hint:"))
    assert "stm32f746-disco" in hint and "nucleo-l432kc" not in hint


def test_a_board_with_too_little_ram_names_the_arena_not_the_flash(
    reference, keys, tmp_path, capsys, monkeypatch
):
    import yaml

    from targets.registry import ENV_VAR, SHIPPED_DIR

    profile = yaml.safe_load((SHIPPED_DIR / "nucleo-l432kc.yaml").read_text())
    profile.update(name="tiny-ram-board", sram_kb=4)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "tiny-ram-board.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "profiles"))
    out = tmp_path / "out"
    flags = build_flags(keys, out, calib=reference.calib, val=reference.val, shape="1,1,8,8")
    result = run(capsys, "build", reference.model, "--target", "tiny-ram-board", *flags)
    _assert_clean_failure(result, out, "does not fit tiny-ram-board: RAM", "needs the most arena")
    assert "flash:" not in result.err.split("what would make it fit:")[1]  # the flash fits: no advice for it


class _SignModel:
    @staticmethod
    def save(path: Path) -> None:
        import torch

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
                self.fc = torch.nn.Linear(4 * 8 * 8, 10)

            def forward(self, x):
                y = self.conv(x)
                return self.fc((torch.sign(y) * y).flatten(1))

        torch.jit.save(torch.jit.trace(Model().eval(), torch.rand(1, 1, 8, 8)), str(path))


def test_an_op_tflm_lacks_is_named_with_its_layer(reference, keys, tmp_path, capsys):
    model = tmp_path / "sign.pt"
    _SignModel.save(model)
    out = tmp_path / "out"
    flags = build_flags(keys, out, calib=reference.calib, val=reference.val, shape="1,1,8,8")
    result = run(capsys, "build", model, "--target", "stm32f746-disco", *flags)
    _assert_clean_failure(
        result,
        out,
        "TensorFlow Lite Micro has no kernel for SIGN",
        "layer 'tf.math.sign/Sign'",
        "ONNX node '/Sign'",
    )


def test_microcontrollers_build_int8_only(reference, keys, tmp_path, capsys):
    out = tmp_path / "out"
    flags = build_flags(keys, out, calib=reference.calib, val=reference.val, shape="1,1,8,8")
    result = run(capsys, "build", reference.model, "-t", "nano33-ble", "--precision", "fp32", *flags)
    _assert_clean_failure(result, out, "does not support --precision fp32", "it supports: int8")


def test_microcontrollers_need_calibration_data(reference, keys, tmp_path, capsys):
    out = tmp_path / "out"
    result = run(
        capsys, "build", reference.model, "-t", "nano33-ble", *build_flags(keys, out, shape="1,1,8,8")
    )
    _assert_clean_failure(result, out, "never invents")


def test_calibration_of_the_wrong_shape(reference, keys, tmp_path, capsys):
    wrong = tmp_path / "calib.npy"
    np.save(wrong, np.zeros((4, 1, 32, 32), dtype=np.float32))
    out = tmp_path / "out"
    flags = build_flags(keys, out, calib=wrong, val=reference.val, shape="1,1,8,8")
    result = run(capsys, "build", reference.model, "-t", "esp32-s3", *flags)
    _assert_clean_failure(result, out, "has shape [4, 1, 32, 32]", "[1, 1, 8, 8]")
