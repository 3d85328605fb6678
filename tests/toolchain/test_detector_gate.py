"""The detector gate without labels, on an Ultralytics-exported ONNX detector (opset 18, with its metadata).

Without `--val`, a detector is scored with mAP50-95 against the FP32 model's own detections on the
calibration images. Raw output cosine is never its gate: a full-INT8 YOLO whose pixel boxes and
0..1 scores share one scale keeps a cosine near 1 while it detects nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.cli import assert_refused, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def yolo_onnx(yolo, tmp_path_factory) -> Path:
    """The session's trained YOLO11n exported by Ultralytics itself, at opset 18 (its default)."""
    from ultralytics import YOLO

    checkpoint, _ = yolo
    work = tmp_path_factory.mktemp("yolo-onnx")
    local = work / checkpoint.name  # Ultralytics writes its export beside the checkpoint
    shutil.copy2(checkpoint, local)
    path = Path(YOLO(str(local)).export(format="onnx", opset=18))
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 18
    assert {p.key for p in model.metadata_props} >= {"task", "names", "imgsz", "stride"}
    return path


def _val_map(model: Path, data_yaml: Path, source) -> float:
    """mAP50-95 of a model file on the dataset's labeled val split, scored independently of any manifest."""
    from toolchain import data as datasets
    from toolchain.runners import open_runner, run_all, runtime_for
    from toolchain.validate import EvalData, task_metrics

    shape = source.input_shape
    pre = source.preprocessing
    det = datasets.load_detection_set(data_yaml, pre, shape)
    data = EvalData("val", "detect", det.inputs, boxes=det.boxes, num_classes=len(source.labels))
    outputs = run_all(open_runner(runtime_for(model), model), det.inputs)
    return task_metrics(outputs, data, source.nms)["mAP50-95"]


def test_ultralytics_onnx_is_recognised_as_a_detector_with_its_names(yolo_onnx):
    from edgebundle.manifest import NMSParams
    from toolchain.sources import resolve_source

    source = resolve_source(str(yolo_onnx))
    assert source.kind == "onnx" and source.task == "detect"
    assert source.labels == ["square", "circle", "triangle"]
    assert source.nms == NMSParams() and source.input_shape == [1, 3, 96, 96]
    assert source.preprocessing.resize_mode == "letterbox" and source.preprocessing.scale == pytest.approx(
        1 / 255
    )


def test_cpu_int8_without_val_ships_within_two_points_of_fp32_or_is_refused(
    yolo, yolo_onnx, keys, tmp_path, capsys
):
    """The issue's acceptance case: never the full INT8 that detects nothing, whatever its cosine."""
    from edgebundle import read_manifest
    from toolchain.sources import resolve_source

    _, data_yaml = yolo
    out = tmp_path / "out"
    result = run(
        capsys,
        "build",
        yolo_onnx,
        "--target",
        "cpu",
        "--precision",
        "int8",
        "--calib",
        data_yaml.parent / "images" / "train",
        "--calib-limit",
        "64",
        "--sign-key",
        keys[0],
        "--out",
        out,
        "--name",
        "shapes",
        "--bench-runs",
        "5",
    )
    if result.code != 0:  # refusing is allowed, by the accuracy gate; shipping a broken detector is not
        assert_refused(result, out, "mAP50-95")
        assert result.code == 3, result.err  # AccuracyGateError, not a conversion failure
        print(f"cpu int8 without --val: refused: {result.err}")
        return
    bundle = out / "shapes-v1-cpu"
    manifest = read_manifest(bundle)
    assert manifest.postprocessing.task == "detect"
    assert manifest.postprocessing.labels == ["square", "circle", "triangle"]
    report = manifest.validation
    assert report.gate == "fp32-detections" and report.data == "calib" and report.samples == 64
    assert report.metric == "mAP50-95" and report.passed and report.drop_points <= 1.0
    assert "gate: label-free: mAP50-95 against FP32's own detections on 64 calibration images" in result.out
    shipped = onnx.load(str(bundle / manifest.artifacts[0].path))
    assert max(o.version for o in shipped.opset_import if o.domain in ("", "ai.onnx")) == 18  # kept its opset

    source = resolve_source(str(yolo_onnx))
    fp32_map = _val_map(yolo_onnx, data_yaml, source)
    shipped_map = _val_map(bundle / manifest.artifacts[0].path, data_yaml, source)
    assert fp32_map > 20.0  # the detector learned something real
    assert fp32_map - shipped_map <= 2.0, (fp32_map, shipped_map)
    print(
        f"cpu int8 without --val: label-free drop {report.drop_points}, val mAP50-95 {fp32_map} -> {shipped_map}"
    )


def test_full_int8_that_detects_nothing_fails_the_label_free_gate(yolo, yolo_onnx, tmp_path):
    """Full-graph INT8 without repair: cosine near 1 (the old gate passed it), mAP against FP32 near 0."""
    from toolchain import data as datasets
    from toolchain.backends.onnxruntime.quantize import prepare, quantize_int8
    from toolchain.runners import open_runner, run_all, runtime_for
    from toolchain.sources import resolve_source
    from toolchain.validate import MIN_COSINE_WITHOUT_LABELS, judge, label_free_detection_data, task_metrics

    _, data_yaml = yolo
    source = resolve_source(str(yolo_onnx))
    pre = source.preprocessing.model_copy(update={"resize": (96, 96)})
    calib = datasets.load_calibration(data_yaml.parent / "images" / "train", pre, source.input_shape, 64)

    def outputs(path: Path) -> list[np.ndarray]:
        return run_all(open_runner(runtime_for(path), path), calib)

    reference = outputs(yolo_onnx)
    data = label_free_detection_data(calib, reference, source.nms)
    data.num_classes = len(source.labels)
    reference_metrics = task_metrics(reference, data, source.nms)
    assert reference_metrics["mAP50-95"] > 95.0  # FP32 against its own detections

    same = judge(data, reference, reference_metrics, reference, source.nms, 1.0)
    assert same.passed and same.gate == "fp32-detections" and same.drop_points == 0

    prepared = prepare(yolo_onnx, tmp_path / "prepared.onnx")
    broken = quantize_int8(prepared, tmp_path / "full_int8.onnx", calib, "images", tmp_path / "calib.cache")
    report = judge(data, reference, reference_metrics, outputs(broken), source.nms, 1.0)
    assert report.fidelity.cosine >= MIN_COSINE_WITHOUT_LABELS  # what the old, cosine gate let through
    assert not report.passed and report.gate == "fp32-detections"
    assert report.artifact["mAP50-95"] < 10.0 and report.drop_points > 80.0


def test_calibration_images_without_any_detection_are_refused(yolo_onnx, keys, tmp_path, capsys):
    from PIL import Image

    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(4):
        Image.new("RGB", (96, 96), (114, 114, 114)).save(blank / f"{i}.png")
    out = tmp_path / "out"
    result = run(
        capsys,
        "build",
        yolo_onnx,
        "-t",
        "cpu",
        "--precision",
        "int8",
        "--calib",
        blank,
        "--sign-key",
        keys[0],
        "--out",
        out,
    )
    assert_refused(result, out, "FP32 detects nothing", "--val")


def test_a_task_that_contradicts_the_metadata_is_refused(yolo_onnx, keys, tmp_path, capsys):
    out = tmp_path / "out"
    flags = ["--precision", "fp32", "--sign-key", keys[0], "--out", out]
    result = run(capsys, "build", yolo_onnx, "-t", "cpu", "--task", "classify", *flags)
    assert_refused(result, out, "--task classify contradicts", "its task is detect", "--task detect")


def test_task_detect_makes_a_bare_onnx_a_detector(yolo, yolo_onnx, keys, tmp_path, capsys):
    """Without metadata the file is task other; --task detect gates it on detections like a .pt source."""
    from edgebundle import read_manifest
    from toolchain.sources import resolve_source

    _, data_yaml = yolo
    model = onnx.load(str(yolo_onnx))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, bare)
    assert resolve_source(str(bare)).task == "other"
    out = tmp_path / "out"
    calib = data_yaml.parent / "images" / "val"
    flags = ["-t", "cpu", "--precision", "fp32", "--calib", calib, "--sign-key", keys[0], "--out", out]
    result = run(capsys, "build", bare, "--task", "detect", "--name", "bare", "--bench-runs", "3", *flags)
    assert result.code == 0, result.err
    manifest = read_manifest(out / "bare-v1-cpu")
    assert manifest.postprocessing.task == "detect" and manifest.postprocessing.nms is not None
    assert manifest.preprocessing.resize_mode == "letterbox"
    assert manifest.validation.gate == "fp32-detections" and manifest.validation.passed


def test_a_detector_without_ground_truth_never_passes_on_cosine():
    from toolchain.validate import EvalData, judge

    outputs = [np.random.default_rng(0).random((2, 7, 21), dtype=np.float32)]
    report = judge(EvalData("calib", "detect", np.zeros((2, 3, 8, 8))), outputs, {}, outputs, None, 1.0)
    assert report.fidelity.cosine == 1.0 and not report.passed and report.gate is None
