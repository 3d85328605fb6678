"""A YOLO detector from an Ultralytics yaml, trained here, through `edgectl build --target cpu --precision int8`.

The acceptance case of the accuracy gate: ONNX Runtime's static INT8 over the
whole YOLO graph destroys the class scores (the head concatenates pixel boxes
and 0..1 scores under one scale). The gate must catch it and the repair must
fix it by measurement.
"""

from __future__ import annotations

import onnx
import pytest

from tests.cli import run

pytestmark = pytest.mark.slow


def test_int8_yolo_build_reports_map_and_repairs_the_head(yolo, keys, tmp_path, capsys):
    checkpoint, data_yaml = yolo
    result = run(
        capsys,
        "build",
        checkpoint,
        "--target",
        "cpu",
        "--precision",
        "int8",
        "--calib",
        data_yaml.parent / "images" / "train",
        "--calib-limit",
        "64",
        "--val",
        data_yaml,
        "--max-drop",
        "5",
        "--sign-key",
        keys[0],
        "--out",
        tmp_path,
        "--name",
        "shapes",
        "--json",
    )
    assert result.code == 0, result.err
    (bundle,) = result.json()["bundles"]
    report = bundle["validation"]
    assert report["task"] == "detect" and report["metric"] == "mAP50-95" and report["data"] == "val"
    assert set(report["reference"]) >= {"mAP50-95", "mAP50"} and set(report["artifact"]) >= {
        "mAP50-95",
        "mAP50",
    }
    assert report["reference"]["mAP50-95"] > 20.0  # the detector learned something real
    assert report["passed"] and report["drop_points"] <= 5.0

    repair = report["repair"]
    assert repair is not None, "full-graph INT8 passed the gate: the known failure was not reproduced"
    full_int8 = repair["attempts"][0]
    assert full_int8["kept_float"] == 0 and full_int8["mAP50-95"] < 5.0  # caught, not shipped
    assert repair["layers_kept_float"]
    # the most sensitive layer is, by measurement, the node that writes the model's output
    from edgebundle import read_manifest

    manifest = read_manifest(tmp_path / "shapes-v1-cpu")
    assert manifest.postprocessing.task == "detect" and manifest.postprocessing.nms is not None
    assert manifest.preprocessing.resize_mode == "letterbox"
    graph = onnx.load(str(tmp_path / "shapes-v1-cpu" / "model.onnx")).graph
    output_producer = next(n for n in graph.node if graph.output[0].name in n.output)
    assert output_producer.name == repair["layers_kept_float"][0]
    assert output_producer.op_type == "Concat"
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 50  # most of the graph stays INT8


def test_int8_yolo_for_rpi5_is_repaired_not_shipped_at_zero_map(yolo, keys, tmp_path, capsys):
    """Full-integer TFLite zeroes the detector (the ecosystem's known failure); the repair brings it back."""
    checkpoint, data_yaml = yolo
    result = run(
        capsys,
        "build",
        checkpoint,
        "--target",
        "rpi5",
        "--calib",
        data_yaml.parent / "images" / "train",
        "--calib-limit",
        "64",
        "--val",
        data_yaml,
        "--max-drop",
        "5",
        "--sign-key",
        keys[0],
        "--out",
        tmp_path,
        "--name",
        "shapes",
        "--json",
    )
    assert result.code == 0, result.err
    (bundle,) = result.json()["bundles"]
    report = bundle["validation"]
    assert report["metric"] == "mAP50-95" and report["reference"]["mAP50-95"] > 20.0
    assert report["passed"] and report["drop_points"] <= 5.0
    repair = report["repair"]
    assert repair is not None and repair["method"] in ("keep-float", "int16-activations")
    full_int8 = repair["attempts"][0]
    assert full_int8["method"] == "full-int8" and full_int8["mAP50-95"] < 5.0

    from edgebundle import read_manifest

    manifest = read_manifest(tmp_path / "shapes-v1-rpi5")
    (artifact,) = manifest.artifacts
    assert artifact.path == "model_int8.tflite" and artifact.inputs[0].layout == "NHWC"
    assert artifact.inputs[0].dtype == "int8"  # the image goes in as int8 ...
    assert artifact.outputs[0].dtype == "float32"  # ... and the boxes and scores come out in float
    assert manifest.preprocessing.layout == "NHWC" and manifest.preprocessing.resize_mode == "letterbox"
