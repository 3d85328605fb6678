"""A YOLO detector from an Ultralytics yaml, trained here, through `edgectl build --precision int8`.

Full-integer INT8 of the whole YOLO graph destroys the class scores (the head concatenates pixel
boxes and 0..1 scores under one scale): 0.0 mAP50-95 on ONNX Runtime and LiteRT. The decode tail
after the last feature maps stays in float from the first attempt (`toolchain.detector_head`), and
the result must hold `--max-drop 1.0` while being faster than FP32 on the build host (the build
refuses a slower INT8, so a passing build is a measured "faster").
"""

from __future__ import annotations

import onnx
import pytest

from tests.cli import run

pytestmark = pytest.mark.slow


def _build_report(capsys, yolo, keys, out, target: str):
    checkpoint, data_yaml = yolo
    result = run(
        capsys,
        "build",
        checkpoint,
        "--target",
        target,
        "--precision",
        "int8",
        "--calib",
        data_yaml.parent / "images" / "train",
        "--calib-limit",
        "64",
        "--val",
        data_yaml,
        "--max-drop",
        "1.0",
        "--sign-key",
        keys[0],
        "--out",
        out,
        "--name",
        "shapes",
        "--bench-runs",
        "10",
        "--json",
    )
    assert result.code == 0, result.err
    (bundle,) = result.json()["bundles"]
    report = bundle["validation"]
    assert report["task"] == "detect" and report["metric"] == "mAP50-95" and report["data"] == "val"
    assert report["reference"]["mAP50-95"] > 20.0  # the detector learned something real
    assert report["passed"] and report["drop_points"] <= 1.0
    return report


def _build(capsys, yolo, keys, out, target: str):
    """A timed INT8 build (ONNX Runtime, LiteRT): the shipped model is measured faster than FP32."""
    report = _build_report(capsys, yolo, keys, out, target)
    repair = report["repair"]
    assert repair["method"] in ("decode-tail-float", "keep-float") and repair["activation_bits"] == 8
    first = repair["attempts"][0]
    assert first["method"] == "decode-tail-float" and first["kept_float"] == len(repair["decode_tail_float"])
    assert all("p50_vs_fp32" in row for row in repair["attempts"])  # every attempt timed
    assert repair["p50_vs_fp32"] <= 1.0
    return report, repair


def test_int8_yolo_for_cpu_keeps_only_the_decode_tail_float(yolo, keys, tmp_path, capsys):
    report, repair = _build(capsys, yolo, keys, tmp_path, "cpu")
    assert set(report["reference"]) >= {"mAP50-95", "mAP50"} and set(report["artifact"]) >= {
        "mAP50-95",
        "mAP50",
    }
    from edgebundle import read_manifest

    manifest = read_manifest(tmp_path / "shapes-v1-cpu")
    assert manifest.postprocessing.task == "detect" and manifest.postprocessing.nms is not None
    assert manifest.preprocessing.resize_mode == "letterbox"
    graph = onnx.load(str(tmp_path / "shapes-v1-cpu" / "model.onnx")).graph
    output_producer = next(n for n in graph.node if graph.output[0].name in n.output)
    assert output_producer.op_type == "Concat" and output_producer.name in repair["decode_tail_float"]
    # the tail is the decode arithmetic only (about 24 of 300 nodes); the convolutions are INT8
    assert len(repair["decode_tail_float"]) < 40
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 50
    quantized_convs = {n.input[0] for n in graph.node if n.op_type == "Conv"} & {
        n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"
    }
    assert len(quantized_convs) > 50  # nearly every conv reads an int8 activation


def test_int8_yolo_for_rpi5_is_full_integer_xnnpack_int8_not_int16(yolo, keys, tmp_path, capsys):
    report, _ = _build(capsys, yolo, keys, tmp_path, "rpi5")
    from edgebundle import read_manifest

    manifest = read_manifest(tmp_path / "shapes-v1-rpi5")
    (artifact,) = manifest.artifacts
    assert artifact.path == "model_int8.tflite" and artifact.inputs[0].layout == "NHWC"
    assert artifact.inputs[0].dtype == "int8"  # the image goes in as int8 ...
    assert artifact.outputs[0].dtype == "float32"  # ... and the boxes and scores come out in float
    assert manifest.preprocessing.layout == "NHWC" and manifest.preprocessing.resize_mode == "letterbox"
    from toolchain.backends.tflite.quantize import tensor_table

    ops = tensor_table((tmp_path / "shapes-v1-rpi5" / "model_int8.tflite").read_bytes())
    convs = [row for row in ops if row["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    int8_convs = [row for row in convs if row["dtype"] == "int8"]
    assert len(int8_convs) >= len(convs) - 2  # int8 convolutions, not int16 (only the DFL conv is float)

    # Ultralytics' own validator scores the artifact as edgectl's report does: the file carries Ultralytics'
    # metadata and its box rows are normalized, as Ultralytics' LiteRT backend expects
    assert artifact.boxes == "normalized"
    from ultralytics import YOLO

    data_yaml = yolo[1]
    model = YOLO(str(tmp_path / "shapes-v1-rpi5" / "model_int8.tflite"), task="detect")
    size = artifact.inputs[0].shape[1]
    metrics = model.val(
        data=str(data_yaml), imgsz=size, batch=1, conf=0.001, iou=0.7, plots=False, device="cpu", workers=0
    )
    assert abs(metrics.box.map * 100 - report["artifact"]["mAP50-95"]) <= 1.0
    assert list(model.names.values()) == ["square", "circle", "triangle"]  # the labels, from the file itself


def test_int8_yolo_for_jetson_orin_nano_qdq_keeps_only_the_decode_tail_float(yolo, keys, tmp_path, capsys):
    """TensorRT's Q/DQ model, validated in ONNX Runtime; its speed is the device's, so it is not timed here."""
    report = _build_report(capsys, yolo, keys, tmp_path, "jetson-orin-nano")
    assert report["repair"]["attempts"][0]["method"] == "decode-tail-float"
    assert report["repair"]["p50_vs_fp32"] is None


def test_int8_yolo_for_android_tflite_and_ort_both_hold(yolo, keys, tmp_path, capsys):
    _build(capsys, yolo, keys, tmp_path, "android")
    from edgebundle import read_manifest

    manifest = read_manifest(tmp_path / "shapes-v1-android")
    boxes = {a.path: a.boxes for a in manifest.artifacts}
    assert boxes["model_int8.tflite"] == "normalized" and boxes["model_int8.ort"] == "pixels"
    for artifact in manifest.artifacts:
        assert artifact.validation.passed and artifact.validation.drop_points <= 1.0, artifact.path
