"""`edgectl build --target jetson-nano / jetson-orin-nano`: ONNX + build plan, Q/DQ INT8 validated in ONNX Runtime.

No machine here has TensorRT: what is checked is what the bundle promises a
device (static ONNX at the profile's opset, the plan, the Q/DQ form TensorRT's
explicit quantization takes) and the accuracy of that exact Q/DQ model on the
validation data. Engine builds run where TensorRT and a GPU exist
(tests/edgetrt/test_gpu.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.cli import build_flags

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def jetson(digits, keys, tmp_path_factory):
    from edgectl.main import main

    out = tmp_path_factory.mktemp("jetson")
    flags = build_flags(keys, out, calib=digits.calib, val=digits.val, max_drop="0.5", bench_runs="5")
    targets = ["--target", "jetson-nano", "--target", "jetson-orin-nano"]
    assert main(["build", str(digits.model), "--name", "digits", *targets, *map(str, flags)]) == 0
    return out


def _onnx(path):
    import onnx

    return onnx.load(str(path))


def test_nano_bundle_is_fp16_onnx_at_its_opset_with_a_plan(jetson):
    from edgebundle import read_manifest

    bundle = jetson / "digits-v1-jetson-nano"
    manifest = read_manifest(bundle)
    assert manifest.runtime == "tensorrt" and manifest.precision == "fp16"
    (artifact,) = manifest.artifacts
    model = _onnx(bundle / artifact.path)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) <= 13  # TensorRT 8.2
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert shape == [1, 1, 32, 32], "static shapes: TensorRT on the device builds for exactly this"
    plan = manifest.tensorrt
    assert plan.onnx == artifact.path and plan.precision == "fp16" and not plan.explicit_quantization
    assert plan.builder_flags == ["FP16"] and plan.compute_capability == "5.3"
    assert plan.tensorrt_versions == ">=8.2,<9" and plan.input_shapes == {artifact.inputs[0].name: shape}
    assert plan.trtexec.startswith(f"trtexec --onnx={artifact.path} ")
    assert "--fp16" in plan.trtexec and "--int8" not in plan.trtexec
    assert "--workspace=1024" in plan.trtexec  # TensorRT 8.2 predates --memPoolSize
    report = artifact.validation
    assert any("FP16 copy" in note for note in report.notes)
    assert report.drop_points <= 0.5 and report.fidelity.cosine > 0.999
    assert report.fidelity.max_abs_error > 0, "an FP16 model differs from FP32: it really ran in FP16"


def test_orin_int8_is_a_symmetric_qdq_model_within_budget(jetson):
    from edgebundle import read_manifest
    from toolchain.backends.onnxruntime.quantize import TENSORRT_INT8_OPS

    bundle = jetson / "digits-v1-jetson-orin-nano"
    manifest = read_manifest(bundle)
    assert manifest.precision == "int8"
    (artifact,) = manifest.artifacts
    plan = manifest.tensorrt
    assert plan.explicit_quantization and plan.builder_flags == ["FP16", "INT8"]
    assert plan.tensorrt_versions == ">=10.3,<11" and "--memPoolSize=workspace:2048M" in plan.trtexec
    assert plan.dla_core is None  # the Orin Nano has no DLA
    report = artifact.validation
    assert report.reference["top1"] > 95 and report.drop_points <= 0.5 and report.passed

    import onnx
    from onnx import numpy_helper

    model = _onnx(bundle / artifact.path)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert quantize and len(dequantize) >= len(quantize)
    for node in quantize + dequantize:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), f"{node.name}: symmetric, zero point 0"
    for node in quantize:  # every Q feeds DQs only, and every DQ feeds one op TensorRT runs in INT8
        for dq in consumers[node.output[0]]:
            assert dq.op_type == "DequantizeLinear"
            (user,) = consumers[dq.output[0]]  # one consumer per DQ: TensorRT fuses per consumer
            assert user.op_type in TENSORRT_INT8_OPS, user.op_type
    producer = {out: node for node in model.graph.node for out in node.output}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    per_channel = 0
    for conv in convs:
        dq = producer.get(conv.input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue  # kept in float by the repair
        q = producer[dq.input[0]]  # float weights behind a Q/DQ pair: TensorRT quantizes them itself
        assert q.op_type == "QuantizeLinear" and q.input[0] in inits
        weight, scale = inits[q.input[0]], inits[dq.input[1]]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in dq.attribute}
        if scale.size == weight.shape[attrs.get("axis", 1)] and scale.size > 1:
            per_channel += 1
    assert per_channel >= len(convs) - 2, "weights are quantized per output channel"


def test_int8_jetson_bundle_for_nano_is_refused(digits, keys, tmp_path, capsys):
    from tests.cli import run

    flags = build_flags(keys, tmp_path, calib=digits.calib, target="jetson-nano", precision="int8")
    result = run(capsys, "build", digits.model, *flags)
    assert result.code == 2
    assert result.error_lines[0] == "error: target jetson-nano does not support --precision int8"
    assert result.error_lines[1] == "hint: it supports: fp32, fp16"


def test_yolo_builds_for_both_jetsons_and_int8_holds_one_map_point(yolo, keys, tmp_path_factory):
    from edgebundle import read_manifest
    from edgectl.main import main

    checkpoint, data_yaml = yolo
    out = tmp_path_factory.mktemp("jetson-yolo")
    flags = ["--calib", data_yaml.parent / "images" / "train", "--calib-limit", "64", "--val", data_yaml]
    flags += ["--max-drop", "1.0"]
    flags += ["--sign-key", keys[0], "--out", out, "--bench-runs", "3", "--name", "shapes"]
    targets = ["--target", "jetson-nano", "--target", "jetson-orin-nano"]
    assert main(["build", str(checkpoint), *targets, *map(str, flags)]) == 0
    nano = read_manifest(out / "shapes-v1-jetson-nano")
    orin = read_manifest(out / "shapes-v1-jetson-orin-nano")
    assert nano.precision == "fp16" and orin.precision == "int8"
    for manifest in (nano, orin):
        report = manifest.validation
        assert report.metric == "mAP50-95" and "mAP50" in report.artifact
        assert report.drop_points <= 1.0 and report.passed
        assert manifest.tensorrt.input_shapes and manifest.postprocessing.nms is not None
    assert orin.validation.reference["mAP50-95"] > 20.0, "a detector that learned the shapes"
