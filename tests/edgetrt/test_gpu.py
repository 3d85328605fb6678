"""Real TensorRT engine builds and inference: run only where `tensorrt` imports and a CUDA GPU exists.

No machine this project's CI runs on has TensorRT, so these skip there with
that reason. On a Jetson or a workstation with TensorRT they build engines
from the same plans the bundles carry and compare them with ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgetrt import EngineCache, TensorRTUnavailable, device_info, make_plan


def _unavailable() -> str | None:
    try:
        device_info()
    except TensorRTUnavailable as exc:
        return str(exc)
    return None


_WHY = _unavailable()
# decided at collection, so no fixture (model training) runs for tests that cannot
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"needs TensorRT and a CUDA GPU: {_WHY}")


def _device():
    return device_info()


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    import torch

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 5),
    ).eval()
    path = tmp_path_factory.mktemp("trt") / "tiny.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, 32, 32),),
        str(path),
        opset_version=17,
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
    )
    return path


def _plan(precision: str, onnx: str, explicit: bool = False):
    return make_plan(
        onnx=onnx,
        precision=precision,
        explicit_quantization=explicit,
        input_shapes={"x": [1, 3, 32, 32]},
        opset=17,
        options={"workspace_mb": 512},
        tensorrt_version=device_info().tensorrt_version,
        compute_capability=None,
    )


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_from_plan_matches_onnxruntime_and_is_cached(tiny_onnx, tmp_path, precision):
    info = _device()
    import onnxruntime as ort

    from edgetrt.build import engine_for
    from edgetrt.runner import TensorRTRunner

    plan = _plan(precision, tiny_onnx.name)
    cache = EngineCache(tmp_path / "engines")
    engine, key, built = engine_for(tiny_onnx, plan, cache, info)
    assert built and key.gpu_name == info.gpu_name
    again, _, built_again = engine_for(tiny_onnx, plan, cache, info)
    assert again == engine and not built_again, "second start loads the cached engine"
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    (expected,) = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    (got,) = TensorRTRunner(engine).run(x)
    cosine = float((got * expected).sum() / (np.linalg.norm(got) * np.linalg.norm(expected)))
    assert cosine > 0.999


def test_qdq_int8_engine_builds_and_agrees(tiny_onnx, tmp_path):
    info = _device()
    from edgetrt.build import engine_for
    from edgetrt.runner import TensorRTRunner
    from toolchain.backends.onnxruntime import quantize as quantize

    rng = np.random.default_rng(1)
    calibration = rng.random((32, 3, 32, 32), dtype=np.float32)
    qdq = quantize.quantize_int8(
        quantize.prepare(tiny_onnx, tmp_path / "prepared.onnx"),
        tmp_path / "qdq.onnx",
        calibration,
        "x",
        tmp_path / "calibration.json",
        config=quantize.tensorrt_explicit(),
    )
    plan = _plan("int8", qdq.name, explicit=True)
    engine, _, _ = engine_for(qdq, plan, EngineCache(tmp_path / "engines"), info)
    import onnxruntime as ort

    x = calibration[:1]
    (expected,) = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    (got,) = TensorRTRunner(engine).run(x)
    assert np.abs(got - expected).max() < 0.1 * (np.abs(expected).max() + 1e-6)


def test_build_on_a_gpu_ships_an_engine_valid_only_here(digits, keys, tmp_path):
    info = _device()
    from edgebundle import read_manifest
    from edgectl.main import main
    from tests.cli import build_flags

    flags = build_flags(keys, tmp_path, calib=digits.calib, val=digits.val, target="jetson-orin-nano")
    assert main(["build", str(digits.model), "--name", "digits", *map(str, flags)]) == 0
    manifest = read_manifest(tmp_path / "digits-v1-jetson-orin-nano")
    (engine,) = manifest.tensorrt.engines
    assert (engine.tensorrt_version, engine.gpu_name, engine.compute_capability) == (
        info.tensorrt_version,
        info.gpu_name,
        info.compute_capability,
    )
    artifact = next(a for a in manifest.artifacts if a.role == "engine")
    assert artifact.validation.passed and artifact.benchmark.latency_ms_p50 > 0
