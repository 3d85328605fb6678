"""`edgectl export android` end to end: a real android bundle of the digits CNN, exported and run."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.cli import assert_refused, build_flags, run


@pytest.fixture(scope="module")
def bundles(digits, keys, tmp_path_factory) -> Path:
    """One build, two targets: the android bundle (int8 + fp16 GPU + .ort) and a cpu one (onnxruntime)."""
    from edgectl.main import main

    out = tmp_path_factory.mktemp("bundles")
    flags = build_flags(keys, out, calib=digits.calib, val=digits.val, target="android", max_drop="0.5")
    args = ["build", digits.model, "--name", "digits", "--target", "cpu", "--bench-runs", "5", *flags]
    # the export of an INT8 bundle is the subject; whether INT8 beats FP32 on this host is not
    args += ["--precision", "int8", "--allow-slower-int8"]
    assert main([str(a) for a in args]) == 0
    return out


@pytest.fixture(scope="module")
def android(bundles) -> Path:
    return bundles / "digits-v1-android"


@pytest.fixture(scope="module")
def exported(android, keys, tmp_path_factory) -> tuple[Path, dict]:
    """The android bundle exported once with --json: the output folder and the parsed JSON result."""
    from edgectl.main import main

    out = tmp_path_factory.mktemp("export") / "app"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["export", "android", str(android), "--out", str(out), "--key", str(keys[1]), "--json"])
    assert code == 0
    return out, json.loads(stdout.getvalue())


def _manifest(bundle: Path):
    from edgebundle import read_manifest

    return read_manifest(bundle)


def _info(out: Path):
    from mobile_export.android import AndroidModelInfo

    return AndroidModelInfo.model_validate_json((out / "model-info.json").read_text())


def _export(capsys, bundle: Path, out: Path, key: Path | None, *extra: object):
    args = ["export", "android", bundle, "--out", out, *extra]
    return run(capsys, *args, *(["--key", key] if key is not None else []))


# --------------------------------------------------------------------------- what gets written


def test_writes_assets_model_info_kotlin_and_readme(exported):
    out, _ = exported
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [
        "ModelRunner.kt",
        "README.md",
        "assets/labels.txt",
        "assets/model_fp16.tflite",
        "assets/model_int8.ort",
        "assets/model_int8.tflite",
        "model-info.json",
    ]
    assert (out / "assets/labels.txt").read_text().split() == [str(i) for i in range(10)]
    assert "ModelRunner.kt" in (out / "README.md").read_text()
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no staging folder left beside it


def test_model_info_matches_the_bundle(exported, android):
    from edgebundle import sha256_file

    out, _ = exported
    manifest, info = _manifest(android), _info(out)
    assert json.loads((out / "model-info.json").read_text())["schema"] == "edgectl.android-model-info/1"
    assert (info.bundle.name, info.bundle.version, info.bundle.target) == ("digits", 1, "android")
    assert info.bundle.source_sha256 == manifest.source.sha256
    assert info.task == "classify" and info.labels == [str(i) for i in range(10)]
    assert info.normalization.color == "GRAY" and info.normalization.scale == pytest.approx(1 / 255)
    assert info.normalization.mean == [0.0] and info.normalization.std == [1.0]

    by_role = {a.role: a for a in info.artifacts}
    assert set(by_role) == {"model", "gpu", "ort"}
    model = by_role["model"]
    assert model.path == "assets/model_int8.tflite" and model.precision == "int8"
    assert model.delegates == ["xnnpack", "nnapi"] and model.metadata_embedded
    tensor = model.inputs[0]
    assert (tensor.shape, tensor.dtype, tensor.layout) == ([1, 32, 32, 1], "int8", "NHWC")
    assert tensor.quantization.scale == pytest.approx(1 / 255, rel=1e-6)
    assert tensor.quantization.zero_point == -128
    assert tensor == _tensor_of(manifest, "model_int8.tflite")
    assert model.outputs[0].shape == [1, 10] and model.outputs[0].quantization is not None
    assert by_role["gpu"].delegates == ["gpu"] and by_role["gpu"].inputs[0].dtype == "float32"
    ort = by_role["ort"]
    assert ort.runtime == "onnxruntime-mobile" and not ort.metadata_embedded
    assert (ort.inputs[0].shape, ort.inputs[0].layout) == ([1, 1, 32, 32], "NCHW")
    for artifact in info.artifacts:
        assert artifact.validation is not None and artifact.validation.passed
        assert artifact.benchmark is not None and artifact.benchmark.latency_ms_p50 > 0

    # hashes and sizes are of the files as written (metadata included), and the size check adds them up
    assert {f.path for f in info.files} == {
        "assets/labels.txt",
        "assets/model_fp16.tflite",
        "assets/model_int8.ort",
        "assets/model_int8.tflite",
    }
    for item in info.files:
        assert item.sha256 == sha256_file(out / item.path) and item.size == (out / item.path).stat().st_size
    assert info.size.total_bytes == sum(f.size for f in info.files)
    assert info.size.limit_mb == 200 and info.size.status == "ok"


def _tensor_of(manifest, path: str):
    from mobile_export.common import tensor_info

    artifact = next(a for a in manifest.artifacts if a.path == path)
    return tensor_info(artifact.inputs[0])


def test_exported_int8_model_gives_the_bundles_outputs_and_classifies(exported, android, digits):
    from ai_edge_litert.interpreter import Interpreter

    from toolchain.data import load_classification_set

    out, _ = exported
    manifest, info = _manifest(android), _info(out)
    spec = info.artifacts[0].inputs[0]
    data = load_classification_set(digits.val, manifest.preprocessing, spec.shape)
    # quantized as the Kotlin runner does, from model-info's numbers alone
    q = spec.quantization
    quantized = np.clip(np.round(data.inputs / q.scale) + q.zero_point, -128, 127).astype(np.int8)

    def logits(path: Path) -> np.ndarray:
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        results = []
        for sample in quantized:
            interpreter.set_tensor(source["index"], sample[None])
            interpreter.invoke()
            results.append(interpreter.get_tensor(sink["index"])[0].copy())
        return np.stack(results)

    exported_logits = logits(out / "assets/model_int8.tflite")
    assert np.array_equal(exported_logits, logits(android / "model_int8.tflite"))
    accuracy = float((exported_logits.argmax(1) == data.labels).mean())
    assert accuracy > 0.95, accuracy


def test_embedded_model_info_reads_back(exported):
    from mobile_export.android import read_model_info
    from mobile_export.tflite_metadata import read_metadata

    out, _ = exported
    info = _info(out)
    expected = info.model_copy(update={"files": [], "size": None})
    for name in ("model_int8.tflite", "model_fp16.tflite"):
        assert read_model_info(out / "assets" / name) == expected
    assert read_metadata((out / "assets/model_int8.tflite").read_bytes(), "no-such-entry") is None


def test_embedding_keeps_the_fp16_model_exact(exported, android):
    from ai_edge_litert.interpreter import Interpreter

    out, _ = exported
    batch = np.random.default_rng(0).random((1, 32, 32, 1), dtype=np.float32)
    results = []
    for path in (android / "model_fp16.tflite", out / "assets/model_fp16.tflite"):
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], batch)
        interpreter.invoke()
        results.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy())
    assert np.array_equal(*results)


def test_kotlin_runner_has_this_models_numbers(exported):
    from mobile_export.android_kotlin import kotlin_float

    out, _ = exported
    info = _info(out)
    kotlin = (out / "ModelRunner.kt").read_text()
    quant = info.artifacts[0].inputs[0].quantization
    assert f"TensorSpec(intArrayOf(1, 32, 32, 1), DType.INT8, {kotlin_float(quant.scale)}, -128)" in kotlin
    assert kotlin_float(quant.scale) == "0.003921569f"
    assert "TensorSpec(intArrayOf(1, 32, 32, 1), DType.FLOAT32)" in kotlin  # the GPU model's input
    out_quant = info.artifacts[0].outputs[0].quantization
    assert f"DType.INT8, {kotlin_float(out_quant.scale)}, {out_quant.zero_point})" in kotlin
    for line in (
        "const val HEIGHT = 32",
        "const val WIDTH = 32",
        "const val CHANNELS = 1",
        "const val PIXEL_SCALE = 0.003921569f",
        '"model_int8.tflite"',
        '"model_fp16.tflite"',
        "import org.tensorflow.lite.Interpreter",
        "GpuDelegate(compatibility.bestOptionsForThisDevice)",
        "fun classify(bitmap: Bitmap",
        "package com.example.model",
    ):
        assert line in kotlin, line
    assert not re.search(r"@[A-Z_]+@", kotlin)
    assert kotlin.count("{") == kotlin.count("}") and kotlin.count("(") == kotlin.count(")")


def test_json_result_is_the_only_stdout(exported):
    out, result = exported
    assert result["schema"] == "edgectl.export/1"
    assert result["platform"] == "android" and result["out"] == str(out)
    assert result["size"]["status"] == "ok" and result["warnings"] == []
    paths = {f["path"] for f in result["files"]}
    assert {"model-info.json", "ModelRunner.kt", "README.md", "assets/model_int8.tflite"} <= paths


# --------------------------------------------------------------------------- options


def test_archive_key_from_environment_force_and_package(bundles, keys, tmp_path, capsys, monkeypatch):
    out = tmp_path / "app"
    out.mkdir()
    (out / "old.txt").write_text("from an earlier export")
    monkeypatch.setenv("EDGECTL_PUBLIC_KEY", str(keys[1]))
    archive = bundles / "digits-v1-android.edgebundle"
    result = _export(capsys, archive, out, None, "--force", "--package", "org.example.digits")
    assert result.code == 0, result.err
    assert not (out / "old.txt").exists() and (out / "model-info.json").is_file()
    assert "package org.example.digits" in (out / "ModelRunner.kt").read_text()
    assert "exported digits v1" in result.out


def test_size_near_the_limit_warns(android, keys, tmp_path, capsys):
    out = tmp_path / "app"
    total = sum(f.size for f in _manifest(android).files) / (1024 * 1024)
    result = _export(capsys, android, out, keys[1], "--size-limit-mb", f"{total / 0.9:.3f}", "--json")
    assert result.code == 0, result.err
    assert result.json()["size"]["status"] == "warn" and result.json()["warnings"]
    assert "warning:" in result.err and "app download limit" in result.err


def test_cpu_only_bundle_gets_a_cpu_runner(android, keys, tmp_path, capsys):
    """A LiteRT bundle with one INT8 model (as for a Raspberry Pi) exports without GPU code."""
    from edgebundle import load_private_key, write_bundle

    manifest = _manifest(android)
    primary = manifest.artifacts[0]
    staging = tmp_path / "staging"
    staging.mkdir()
    for name in (primary.path, manifest.health.sample_input, manifest.health.sample_outputs):
        shutil.copyfile(android / name, staging / name)
    pi = manifest.model_copy(update={"target": "rpi5", "artifacts": [primary], "files": []})
    write_bundle(staging, pi, load_private_key(keys[0]), tmp_path, "digits-v1-rpi5")

    out = tmp_path / "app"
    result = _export(capsys, tmp_path / "digits-v1-rpi5", out, keys[1])
    assert result.code == 0, result.err
    info = _info(out)
    assert [a.delegates for a in info.artifacts] == [["xnnpack"]]
    # no labels.txt in this bundle: written from the manifest's labels
    assert (out / "assets/labels.txt").read_text().split() == info.labels == [str(i) for i in range(10)]
    kotlin = (out / "ModelRunner.kt").read_text()
    assert "GpuDelegate" not in kotlin and "class ModelRunner(context: Context, threads: Int" in kotlin
    assert "fun inputFromBitmap" in kotlin


def test_token_input_gets_a_token_helper():
    from edgebundle.manifest import (
        Artifact,
        Manifest,
        Postprocessing,
        Preprocessing,
        SourceInfo,
        TensorSpec,
        ToolchainInfo,
    )
    from mobile_export.android import model_info
    from mobile_export.android_kotlin import kotlin_runner

    manifest = Manifest(
        name="tokens",
        version=3,
        created_at="2026-01-01T00:00:00+00:00",
        target="android",
        runtime="tflite",
        precision="fp32",
        artifacts=[
            Artifact(
                path="model.tflite",
                format="tflite",
                precision="fp32",
                inputs=[TensorSpec(name="ids", shape=[1, 32], dtype="int32")],
                outputs=[TensorSpec(name="logits", shape=[1, 4], dtype="float32")],
            )
        ],
        preprocessing=Preprocessing(input="tensor", layout="NC"),
        postprocessing=Postprocessing(task="other"),
        source=SourceInfo(kind="onnx", filename="tokens.onnx", sha256="0" * 64),
        toolchain=ToolchainInfo(edgectl="0", converter="test"),
    )
    info = model_info(manifest, has_labels=False, embed=True)
    assert info.artifacts[0].inputs[0].layout is None
    kotlin = kotlin_runner(manifest, info, "com.example.tokens")
    assert "fun inputFromTokens(ids: IntArray" in kotlin
    assert "TensorSpec(intArrayOf(1, 32), DType.INT32)" in kotlin
    assert "Bitmap" not in kotlin
    assert "GpuDelegate" in kotlin  # a float model on android may take the GPU delegate itself


# --------------------------------------------------------------------------- refusals


def test_missing_bundle(keys, tmp_path, capsys):
    out = tmp_path / "app"
    assert_refused(_export(capsys, tmp_path / "nope", out, keys[1]), out, "does not exist")


def test_tampered_file_is_refused(android, keys, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(android, bundle)
    (bundle / "labels.txt").write_text("cat\ndog\n")
    out = tmp_path / "app"
    assert_refused(_export(capsys, bundle, out, keys[1]), out, "labels.txt")


def test_bad_signature_is_refused(android, keys, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(android, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["version"] = 2
    (bundle / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, separators=(",", ":")))
    out = tmp_path / "app"
    assert_refused(_export(capsys, bundle, out, keys[1]), out, "signature")


def test_wrong_key_is_refused(android, tmp_path, capsys):
    from edgebundle import generate_keypair

    _, other = generate_keypair(tmp_path / "other")
    out = tmp_path / "app"
    assert_refused(_export(capsys, android, out, other), out, "signature")


def test_no_key_is_refused(android, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("EDGECTL_PUBLIC_KEY", raising=False)
    out = tmp_path / "app"
    assert_refused(_export(capsys, android, out, None), out, "--key")


def test_non_tflite_bundle_is_refused(bundles, keys, tmp_path, capsys):
    out = tmp_path / "app"
    result = _export(capsys, bundles / "digits-v1-cpu.edgebundle", out, keys[1])
    assert_refused(result, out, "onnxruntime", "--target android")


def test_out_that_is_a_file_is_refused(android, keys, tmp_path, capsys):
    out = tmp_path / "app"
    out.write_text("a file")
    result = _export(capsys, android, out, keys[1])
    assert result.code != 0 and "not a folder" in result.err
    assert out.read_text() == "a file"


def test_non_empty_out_without_force_is_refused(android, keys, tmp_path, capsys):
    out = tmp_path / "app"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _export(capsys, android, out, keys[1])
    assert result.code != 0 and "--force" in result.err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_over_the_size_limit_is_refused_and_writes_nothing(android, keys, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "app"
    result = _export(capsys, android, out, keys[1], "--size-limit-mb", "0.5")
    assert result.code != 0
    assert "app download limit" in result.err and "will not fit" in result.err
    assert list(tmp_path.iterdir()) == []  # not even the parent folders


def test_over_the_limit_after_embedding_removes_the_staged_output(android, keys, tmp_path, capsys):
    """Raw files just fit, the files with metadata embedded do not: the half-made output goes."""
    out = tmp_path / "new" / "app"
    raw = sum(f.size for f in _manifest(android).files)
    result = _export(capsys, android, out, keys[1], "--size-limit-mb", f"{(raw + 1000) / (1024 * 1024):.7f}")
    assert result.code != 0 and "will not fit" in result.err
    assert list(tmp_path.iterdir()) == []


def test_bad_package_is_refused(android, keys, tmp_path, capsys):
    out = tmp_path / "app"
    assert_refused(_export(capsys, android, out, keys[1], "--package", "com.example.my-app"), out, "package")
