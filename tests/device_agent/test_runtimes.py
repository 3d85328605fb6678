"""The runtime table: every entry has a test of its own here, on a real model where the runtime exists."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

import device_agent.runtimes as runtimes
from device_agent.errors import RuntimeUnavailable
from device_agent.health import check_health
from device_agent.metrics import InferenceMetrics
from device_agent.pipeline import Pipeline
from device_agent.runtimes import (
    RUNTIMES,
    SessionOptions,
    check_available,
    open_session,
    ort_providers,
    register,
)
from edgebundle.manifest import (
    Artifact,
    HealthCheck,
    Postprocessing,
    Preprocessing,
    QuantParams,
    TensorRTPlan,
    TensorSpec,
)
from tests.device_agent.bundles import (
    LABELS,
    classifier_bundle,
    expected_logits,
    manifest_for,
    publish,
    weights,
)

RUNTIME_TESTS = {
    "onnxruntime": "test_onnxruntime_runs_the_bundle_model_exactly",
    "tflite": "test_tflite_runs_float_and_full_integer_models",
    "tensorrt": "test_tensorrt_uses_the_engine_cached_for_this_device_and_says_what_is_missing",
}


def test_every_registered_runtime_has_a_test_of_its_own():
    assert set(RUNTIMES) == set(RUNTIME_TESTS)
    assert all(callable(globals().get(name)) for name in RUNTIME_TESTS.values())


def test_the_table_refuses_a_second_registration_and_unknown_runtimes():
    with pytest.raises(ValueError, match="twice"):
        register("onnxruntime", requires=(), formats=("onnx",), extra="agent")(lambda *a: None)
    with pytest.raises(RuntimeUnavailable, match="not one this agent runs") as caught:
        check_available("coreml")
    assert caught.value.hint


def test_onnxruntime_runs_the_bundle_model_exactly(tmp_path, signing):
    built = classifier_bundle(tmp_path, signing.private, 4)
    session = open_session(built.folder, built.manifest, SessionOptions(threads=1))
    x = np.random.default_rng(0).uniform(size=(1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(session.run([x])[0], expected_logits(x, 4), rtol=1e-5, atol=1e-6)
    assert session.details["providers"] == "CPUExecutionProvider"
    assert session.inputs[0].shape == (1, 3, 8, 8) and session.outputs[0].dtype == "float32"


def test_onnxruntime_providers_take_the_best_present_and_refuse_absent_ones(tmp_path):
    assert ort_providers("auto", ["CPUExecutionProvider"], None) == ["CPUExecutionProvider"]
    gpu = ort_providers(
        "auto", ["CUDAExecutionProvider", "CPUExecutionProvider", "TensorrtExecutionProvider"], tmp_path
    )
    assert [p if isinstance(p, str) else p[0] for p in gpu] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert gpu[0][1]["trt_engine_cache_path"] == str(tmp_path / "ort-tensorrt")
    with pytest.raises(RuntimeUnavailable, match="CUDAExecutionProvider"):
        ort_providers(["CUDAExecutionProvider"], ["CPUExecutionProvider"], None)


def test_a_model_the_runtime_cannot_load_is_a_runtime_error_with_a_hint(tmp_path, signing):
    built = classifier_bundle(tmp_path, signing.private, 1)
    (built.folder / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(RuntimeUnavailable, match=r"cannot load model\.onnx"):
        open_session(built.folder, built.manifest, SessionOptions())


# --------------------------------------------------------------------------- TFLite

_CONVERT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf

    out, version = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(version)
    w, b = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
    def model(x):
        return tf.matmul(tf.reduce_mean(x, axis=[1, 2]), w) + b

    def converter():
        return tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)

    open(f"{out}/float.tflite", "wb").write(converter().convert())
    quantized = converter()
    quantized.optimizations = [tf.lite.Optimize.DEFAULT]
    samples = np.random.default_rng(1).uniform(0, 1, size=(64, 1, 8, 8, 3)).astype(np.float32)
    quantized.representative_dataset = lambda: ([s] for s in samples)
    quantized.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    quantized.inference_input_type = tf.int8
    quantized.inference_output_type = tf.int8
    open(f"{out}/int8.tflite", "wb").write(quantized.convert())
    """
)


@pytest.fixture(scope="module")
def tflite_models(tmp_path_factory):
    """A float and a full-integer TFLite model of the v5 classifier, converted by TensorFlow in a child process."""
    folder = tmp_path_factory.mktemp("tflite")
    subprocess.run(
        [sys.executable, "-c", _CONVERT, str(folder), "5"], check=True, capture_output=True, timeout=600
    )
    return folder


def _tflite_bundle(root, key, model_path, *, int8: bool):
    from ai_edge_litert.interpreter import Interpreter

    staging = root / ("stage-int8" if int8 else "stage-float")
    staging.mkdir(parents=True)
    (staging / "model.tflite").write_bytes(model_path.read_bytes())
    interpreter = Interpreter(model_path=str(staging / "model.tflite"))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def spec(detail) -> TensorSpec:
        scale, zero_point = detail["quantization"]
        quant = QuantParams(scale=float(scale), zero_point=int(zero_point)) if scale else None
        return TensorSpec(
            name=detail["name"],
            shape=[int(d) for d in detail["shape"]],
            dtype=np.dtype(detail["dtype"]).name,
            quantization=quant,
            layout="NHWC" if detail is inp else None,
        )

    # The health sample in the artifact's exact input form, and its raw outputs on this host.
    x = np.random.default_rng(9).uniform(0, 1, size=(1, 8, 8, 3)).astype(np.float32)
    if int8:
        scale, zero_point = inp["quantization"]
        x = np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    np.save(staging / "sample_input.npy", x)
    np.savez(staging / "sample_outputs.npz", output_0=interpreter.get_tensor(out["index"]))
    artifact = Artifact(
        path="model.tflite",
        format="tflite",
        precision="int8" if int8 else "fp32",
        inputs=[spec(inp)],
        outputs=[spec(out)],
    )
    manifest = manifest_for(
        "tiny-tflite", 5, "rpi5", "tflite", artifact,
        preprocessing=Preprocessing(layout="NHWC", scale=1 / 255, mean=[0.0], std=[1.0]),
        postprocessing=Postprocessing(task="classify", labels=LABELS),
        health=HealthCheck(sample_input="sample_input.npy", sample_outputs="sample_outputs.npz", min_cosine=0.999),
    )  # fmt: skip
    return publish(staging, manifest, key, root / "out")


def test_tflite_runs_float_and_full_integer_models(tmp_path, signing, tflite_models):
    x = np.random.default_rng(2).uniform(0, 1, size=(1, 8, 8, 3)).astype(np.float32)
    want = expected_logits(x.transpose(0, 3, 1, 2), 5)
    for int8, tolerance in ((False, 1e-5), (True, 0.08)):
        built = _tflite_bundle(
            tmp_path / str(int8),
            signing.private,
            tflite_models / ("int8.tflite" if int8 else "float.tflite"),
            int8=int8,
        )
        pipeline = Pipeline(built.folder, built.manifest, "a", SessionOptions(threads=1), InferenceMetrics())
        assert pipeline.session.details["runtime"] == "tflite"
        assert pipeline.session.inputs[0].dtype == ("int8" if int8 else "float32")
        result = pipeline.infer_tensors(
            [x.astype(np.float32)] if not int8 else [x]
        )  # floats are quantized for int8
        np.testing.assert_allclose(
            result.outputs[0], want, atol=tolerance
        )  # int8 outputs come back dequantized
        assert result.predictions[0].class_id == int(np.argmax(want))
        report = check_health(pipeline, runs=2)
        assert report.passed, report.reason
        assert report.cosines[0] > 0.999


def test_the_int8_sample_check_compares_raw_integers(tmp_path, signing, tflite_models):
    built = _tflite_bundle(tmp_path, signing.private, tflite_models / "int8.tflite", int8=True)
    sample = built.folder / "sample_outputs.npz"
    raw = np.load(sample)["output_0"]
    assert raw.dtype == np.int8
    np.savez(sample, output_0=-raw)  # what a different model would have said
    pipeline = Pipeline(built.folder, built.manifest, "a", SessionOptions(threads=1), InferenceMetrics())
    report = check_health(pipeline, runs=1)
    assert not report.passed and "cosine" in report.reason


# --------------------------------------------------------------------------- TensorRT


def test_tensorrt_uses_the_engine_cached_for_this_device_and_says_what_is_missing(
    tmp_path, signing, monkeypatch
):
    import edgetrt.build
    import edgetrt.runner
    from edgetrt import EngineCache, engine_key
    from edgetrt.device import DeviceInfo

    # Here there is no TensorRT: the entry says so, and which extra brings it.
    with pytest.raises(RuntimeUnavailable, match="needs tensorrt") as caught:
        check_available("tensorrt")
    assert "jetson" in caught.value.hint

    built = classifier_bundle(tmp_path, signing.private, 1)
    plan = TensorRTPlan(
        onnx="model.onnx", precision="fp16", explicit_quantization=False, builder_flags=["FP16"], workspace_mb=256,
        input_shapes={"x": [1, 3, 8, 8]}, opset=18, tensorrt_versions=">=10.3,<11", trtexec="trtexec --onnx=model.onnx",
    )  # fmt: skip
    manifest = built.manifest.model_copy(update={"runtime": "tensorrt", "tensorrt": plan})
    onnx_sha = next(f.sha256 for f in manifest.files if f.path == "model.onnx")
    orin = DeviceInfo("10.3.0", "Orin (nvgpu)", "8.7")
    EngineCache(tmp_path / "engines" / "tensorrt").store(
        engine_key("10.3.0", "Orin (nvgpu)", "8.7", plan, onnx_sha), b"ENGINE", builder="test"
    )

    opened = []

    class Runner:  # stands in for TensorRT itself, which needs an NVIDIA GPU
        def __init__(self, engine: bytes) -> None:
            opened.append(engine)
            self.inputs = [("x", (1, 3, 8, 8), np.float32)]
            self.outputs = [("logits", (1, 4), np.float32)]

        def run(self, x):
            return [expected_logits(x, 1)]

    monkeypatch.setattr(edgetrt.build, "device_info", lambda: orin)
    monkeypatch.setattr(edgetrt.runner, "TensorRTRunner", Runner)
    load = RUNTIMES["tensorrt"].load
    session = load(
        built.folder, manifest.artifacts[0], manifest, SessionOptions(cache_dir=tmp_path / "engines")
    )
    assert opened == [b"ENGINE"], "the engine cached for exactly this TensorRT, GPU and plan"
    assert session.details["engine"] == "from the engine cache" and session.details["gpu"] == "Orin (nvgpu)"
    x = np.ones((1, 3, 8, 8), np.float32)
    np.testing.assert_allclose(session.run([x])[0], expected_logits(x, 1))

    # Another GPU has no engine here, and this machine cannot build one: an error that names why.
    monkeypatch.setattr(edgetrt.build, "device_info", lambda: DeviceInfo("10.3.0", "Xavier", "7.2"))
    with pytest.raises(RuntimeError, match="TensorRT"):
        load(built.folder, manifest.artifacts[0], manifest, SessionOptions(cache_dir=tmp_path / "engines"))
    # A bundle without a plan cannot become an engine.
    with pytest.raises(RuntimeUnavailable, match="no TensorRT build plan"):
        load(
            built.folder,
            manifest.artifacts[0],
            manifest.model_copy(update={"tensorrt": None}),
            SessionOptions(cache_dir=tmp_path),
        )
    assert weights(1)[0].shape == (3, 4) and isinstance(runtimes, types.ModuleType)
