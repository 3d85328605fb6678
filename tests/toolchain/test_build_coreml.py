"""`edgectl build --target ios` end to end: real coremltools, every package read back from disk.

The digits CNN (TorchScript) and a YOLO detector from an Ultralytics yaml build for iOS in FP16 and with
INT8 weights. Core ML predicts only on macOS: elsewhere a package is checked structurally and judged by
the FP16 emulation (toolchain/backends/coreml/emulate.py), and the tests that need Core ML's own predictions
skip, saying why.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from edgebase import deps
from tests.cli import build_flags, run

pytestmark = pytest.mark.slow

MACOS = sys.platform == "darwin"
needs_macos = pytest.mark.skipif(
    not MACOS, reason=f"Core ML predicts only on macOS; this host is {sys.platform}"
)
CHECKS = {
    "loads back from disk",
    "model type",
    "deployment target",
    "input name",
    "input type",
    "input shape",
    "image scale and bias",
    "outputs",
    "labels",
    "weights",
    "metadata",
}


def _manifest(bundle: Path):
    from edgebundle import read_manifest

    return read_manifest(bundle)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _weights_file(bundle: Path) -> int:
    return (bundle / "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin").stat().st_size


@pytest.fixture(scope="module")
def digits_ios(digits, keys, tmp_path_factory) -> Path:
    """The digits CNN for ios: FP16 (the profile's default), INT8 weights, 4-bit palettized weights."""
    from edgectl.main import main

    out = tmp_path_factory.mktemp("ios-digits")
    common = [
        *map(str, build_flags(keys, out, calib=digits.calib, val=digits.val, max_drop="0.5")),
        "--target",
        "ios",
    ]
    for extra in (
        [],
        ["--precision", "int8", "--name", "digits8"],
        # 4-bit palettization moves this small CNN's top-1 by 0 to 0.6 points from one trained model to the
        # next; these tests are about its size and visible error, so its gate is wider (a flag given twice:
        # the last one wins).
        ["--palettize", "4", "--name", "digits4", "--max-drop", "2"],
    ):
        args = ["build", str(digits.model), "--name", "digits", *common, *extra]
        assert main(args) == 0, extra
    return out


@pytest.fixture(scope="module")
def yolo_ios(yolo, keys, tmp_path_factory) -> Path:
    """The shapes detector for ios: FP16 and INT8 weights (--calib only because the pipeline asks for it)."""
    from edgectl.main import main

    checkpoint, data_yaml = yolo
    out = tmp_path_factory.mktemp("ios-yolo")
    flags = [
        "--target",
        "ios",
        "--val",
        str(data_yaml),
        "--max-drop",
        "2",
        "--sign-key",
        str(keys[0]),
        "--out",
        str(out),
    ]
    calib = ["--calib", str(data_yaml.parent / "images" / "train"), "--calib-limit", "8"]
    assert main(["build", str(checkpoint), "--name", "shapes", *flags]) == 0
    assert main(["build", str(checkpoint), "--name", "shapes8", "--precision", "int8", *calib, *flags]) == 0
    return out


# --------------------------------------------------------------------------- the classifier


def test_fp16_digits_is_an_ml_program_image_classifier(digits_ios):
    from toolchain.backends.coreml.package import read_package

    bundle = digits_ios / "digits-v1-ios"
    manifest = _manifest(bundle)
    assert (manifest.runtime, manifest.precision, manifest.toolchain.converter) == (
        "coreml",
        "fp16",
        "coremltools",
    )
    (artifact,) = manifest.artifacts
    assert (artifact.path, artifact.format) == ("model.mlpackage", "mlpackage")
    assert any(f.path == "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin" for f in manifest.files)
    coreml = manifest.coreml
    assert coreml.model_type == "mlprogram" and coreml.compute_precision == "fp16"
    assert (coreml.deployment_target, coreml.specification_version, coreml.compute_units) == (
        "iOS16",
        7,
        "ALL",
    )
    assert {c.name for c in coreml.structural_checks} == CHECKS and all(
        c.passed for c in coreml.structural_checks
    )

    (image,) = coreml.inputs
    assert (image.kind, image.name, image.color, image.shape) == ("image", "image", "GRAY", [1, 32, 32])
    assert coreml.image_scale == pytest.approx(1 / 255) and coreml.image_bias == [0.0]
    assert coreml.labels == [str(i) for i in range(10)] == manifest.postprocessing.labels
    assert coreml.softmax_added  # the CNN ends in logits; Vision reads probabilities
    assert coreml.weights.mode == "fp16" and coreml.weights.compressed_tensors == 0

    info = read_package(bundle / "model.mlpackage")  # read back from the signed bundle itself
    assert info.classifier and info.labels == coreml.labels and info.predicted_feature == "classLabel"
    assert info.metadata["edgectl.source_sha256"] == manifest.source.sha256
    assert info.metadata["edgectl.version"] == manifest.toolchain.edgectl
    assert info.metadata["com.apple.coreml.model.preview.type"] == "imageClassifier"
    assert "image classifier from digits_cnn.pt" in info.description
    assert artifact.inputs[0].shape == [1, 1, 32, 32] and artifact.inputs[0].dtype == "uint8"
    assert artifact.outputs[0].name == "classLabel_probs" and artifact.outputs[0].shape == [1, 10]


def test_fp16_validation_says_what_ran(digits_ios):
    manifest = _manifest(digits_ios / "digits-v1-ios")
    report = manifest.validation
    assert report.data == "val" and report.metric == "top1" and report.samples > 500
    assert report.reference["top1"] > 95 and report.drop_points <= 0.5 and report.passed
    coreml = manifest.coreml
    assert coreml.macos_predict is MACOS
    if not MACOS:
        assert coreml.numerical_check.startswith("Core ML cannot predict on this host")
        assert coreml.numerical_check in report.notes
        # the emulation really rounds: it is not the FP32 reference again
        assert 0 < report.fidelity.max_abs_error < 0.1
    assert manifest.benchmark is None and manifest.health is None  # nothing runs Core ML here


def test_int8_weights_halve_the_package_and_say_weights_only(digits_ios, yolo_ios):
    from toolchain.backends.coreml.package import read_package

    for fp16, int8, compressed in (
        ("digits-v1-ios", "digits8-v1-ios", 5),
        ("shapes-v1-ios", "shapes8-v1-ios", 72),
    ):
        root = digits_ios if fp16.startswith("digits") else yolo_ios
        manifest = _manifest(root / int8)
        assert manifest.precision == "int8"
        weights = manifest.coreml.weights
        assert (weights.mode, weights.bits, weights.granularity) == ("int8-linear", 8, "per-channel")
        assert weights.compressed_tensors == compressed
        assert "weights only" in weights.summary and "not full INT8" in weights.summary
        assert weights.summary in manifest.validation.notes
        info = read_package(root / int8 / "model.mlpackage")
        assert info.op_counts["constexpr_affine_dequantize"] == compressed
        if not MACOS:  # the emulation ran with the package's own int8 weights, every one of them
            assert (
                f"{compressed} of the package's {compressed} compressed weights"
                in manifest.coreml.numerical_check
            )
        assert manifest.validation.passed
        package_ratio = _size(root / int8 / "model.mlpackage") / _size(root / fp16 / "model.mlpackage")
        weights_ratio = _weights_file(root / int8) / _weights_file(root / fp16)
        assert package_ratio <= 0.55, package_ratio  # measured 0.52 and 0.53: the spec does not shrink
        assert weights_ratio <= 0.52, weights_ratio  # measured 0.51: int8 values, per-channel scales


def test_palettized_weights_are_smaller_and_their_error_shows(digits_ios):
    from toolchain.backends.coreml.package import read_package

    manifest = _manifest(digits_ios / "digits4-v1-ios")
    weights = manifest.coreml.weights
    assert manifest.precision == "fp16" and (weights.mode, weights.bits) == ("palettized", 4)
    assert "palettized to 4 bits" in weights.summary and "weights only" in weights.summary
    assert (
        read_package(digits_ios / "digits4-v1-ios/model.mlpackage").op_counts["constexpr_lut_to_dense"] == 5
    )
    int8 = _size(digits_ios / "digits8-v1-ios/model.mlpackage")
    assert _size(digits_ios / "digits4-v1-ios/model.mlpackage") < int8
    if not MACOS:  # 16 values per tensor move the outputs far more than FP16 rounding alone
        fp16 = _manifest(digits_ios / "digits-v1-ios").validation.fidelity.max_abs_error
        assert manifest.validation.fidelity.max_abs_error > 5 * fp16


# --------------------------------------------------------------------------- the detector


def test_yolo_package_is_a_pipeline_vision_reads_as_objects(yolo_ios):
    from toolchain.backends.coreml.package import read_package

    manifest = _manifest(yolo_ios / "shapes-v1-ios")
    coreml = manifest.coreml
    assert coreml.model_type == "pipeline" and all(c.passed for c in coreml.structural_checks)
    assert {c.name for c in coreml.structural_checks} == CHECKS | {"nms", "threshold inputs"}
    image, iou, confidence = coreml.inputs
    assert (image.kind, image.color, image.shape) == ("image", "RGB", [3, 96, 96])
    assert (iou.name, iou.kind, iou.optional) == ("iouThreshold", "double", True)
    assert (confidence.name, confidence.kind, confidence.optional) == ("confidenceThreshold", "double", True)
    assert [(o.name, o.dtype, o.shape) for o in coreml.outputs] == [
        ("confidence", "float32", [-1, 80]),
        ("coordinates", "float32", [-1, 4]),
    ]
    nms = coreml.nms
    assert (nms.confidence_threshold, nms.iou_threshold, nms.per_class) == (0.25, 0.7, True)
    assert (nms.classes, nms.confidence_columns) == (3, 80)
    assert nms.max_detections == 12 * 12 + 6 * 6 + 3 * 3  # every anchor of a 96 px input may come out
    assert coreml.labels[:3] == manifest.postprocessing.labels == ["square", "circle", "triangle"]
    info = read_package(yolo_ios / "shapes-v1-ios/model.mlpackage")
    assert info.sub_models == ["mlProgram", "nonMaximumSuppression"]
    assert info.metadata["com.apple.coreml.model.preview.type"] == "objectDetector"
    report = manifest.validation
    assert report.metric == "mAP50-95" and report.reference["mAP50-95"] > 20 and report.passed
    assert report.drop_points <= 2


def test_converted_detector_decodes_like_ultralytics(yolo):
    """The exact module that is converted, run in PyTorch, then Core ML's NMS as its spec defines it,
    against Ultralytics' own predictions: same boxes, same classes, same scores (not 1.0)."""
    import torch
    from PIL import Image

    from edgebundle.manifest import NMSParams
    from toolchain.backends.coreml import detector as coreml_detector
    from toolchain.backends.coreml import model as coreml_model
    from toolchain.detection import xywh_to_xyxy
    from toolchain.source_export import load_ultralytics
    from toolchain.sources import resolve_source

    checkpoint, data_yaml = yolo
    source = resolve_source(str(checkpoint))
    params = NMSParams()
    image = coreml_model.image_input(source.preprocessing, source.input_shape)
    plan = coreml_model.Conversion(
        module=coreml_model.source_module(source),
        input_shape=source.input_shape,
        image=image,
        head=coreml_detector.detector_head(len(source.labels), 96, 96),
    )
    wrapper = plan.wrapped()
    ultralytics = load_ultralytics(str(checkpoint))
    images = sorted((data_yaml.parent / "images" / "val").glob("*"))[:12]
    compared = 0
    for path in images:
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255  # already 96 x 96
        x = torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy())
        with torch.no_grad():
            confidence, coordinates = (t.numpy() for t in wrapper(x))
            expected = ultralytics.predict(
                x, conf=params.conf_threshold, iou=params.iou_threshold, verbose=False
            )[0]
        assert (
            confidence.shape[1] == 80 and np.count_nonzero(confidence, axis=1).max() <= 1
        )  # one class per row
        kept_confidence, kept_coordinates = coreml_detector.nms_reference(
            confidence, coordinates, params.conf_threshold, params.iou_threshold, params.max_detections
        )
        scores = kept_confidence.sum(axis=1)  # what Vision reports as the observation's confidence
        classes = kept_confidence.argmax(axis=1)
        boxes = np.clip(
            xywh_to_xyxy(kept_coordinates * 96), 0, 96
        )  # Ultralytics clips to the image, as Vision does
        want_boxes = expected.boxes.xyxy.numpy()
        order = np.argsort(-expected.boxes.conf.numpy(), kind="stable")
        assert len(boxes) == len(want_boxes), path.name
        np.testing.assert_allclose(scores, expected.boxes.conf.numpy()[order], atol=1e-4)
        np.testing.assert_array_equal(classes, expected.boxes.cls.numpy()[order].astype(int))
        np.testing.assert_allclose(boxes, want_boxes[order], atol=1e-2)  # pixels of a 96 px image
        compared += len(boxes)
        if len(scores):
            assert scores.min() >= params.conf_threshold and scores.max() < 1.0
    assert compared >= 12  # the trained detector finds shapes: the comparison is not vacuous


@needs_macos
def test_core_ml_predictions_match_ultralytics_on_macos(yolo, yolo_ios):
    """Core ML's own pipeline (ML Program + NMS) on the validation images against Ultralytics' predictions."""
    import coremltools as ct
    from PIL import Image

    from toolchain.detection import xywh_to_xyxy
    from toolchain.source_export import load_ultralytics

    checkpoint, data_yaml = yolo
    model = ct.models.MLModel(str(yolo_ios / "shapes-v1-ios/model.mlpackage"))
    ultralytics = load_ultralytics(str(checkpoint))
    for path in sorted((data_yaml.parent / "images" / "val").glob("*"))[:12]:
        image = Image.open(path).convert("RGB")
        result = model.predict({"image": image, "iouThreshold": 0.7, "confidenceThreshold": 0.25})
        expected = ultralytics.predict(str(path), conf=0.25, iou=0.7, imgsz=96, verbose=False)[0]
        confidence = np.asarray(result["confidence"])
        assert len(confidence) == len(expected.boxes), path.name
        if len(confidence):
            order = np.argsort(-expected.boxes.conf.numpy())
            np.testing.assert_allclose(
                np.sort(confidence.sum(1))[::-1], expected.boxes.conf.numpy()[order], atol=0.02
            )
            boxes = xywh_to_xyxy(np.asarray(result["coordinates"]) * 96)
            assert np.abs(np.sort(boxes, axis=0) - np.sort(expected.boxes.xyxy.numpy(), axis=0)).max() < 1.5


@needs_macos
def test_core_ml_classifier_predictions_on_macos(digits, digits_ios):
    from toolchain.backends.coreml.runner import CoreMLRunner
    from toolchain.data import load_classification_set

    manifest = _manifest(digits_ios / "digits-v1-ios")
    runner = CoreMLRunner(digits_ios / "digits-v1-ios/model.mlpackage")
    data = load_classification_set(digits.val, manifest.preprocessing, [1, 1, 32, 32])
    probabilities = np.concatenate([runner.run(x[None])[0] for x in data.inputs[:100]])
    assert float((probabilities.argmax(1) == data.labels[:100]).mean()) > 0.95
    assert manifest.coreml.macos_predict


def test_runner_reads_the_spec_and_refuses_to_predict_off_macos(yolo_ios):
    from toolchain.backends.coreml.runner import CoreMLRunner
    from toolchain.runners import open_runner, runs_on_host, runtime_for

    package = yolo_ios / "shapes-v1-ios/model.mlpackage"
    assert runtime_for(package) == "coreml" and runs_on_host("coreml") is MACOS
    runner = open_runner("coreml", package)
    assert isinstance(runner, CoreMLRunner)
    inputs, outputs = runner.io_specs()
    assert [(t.name, t.shape, t.dtype) for t in inputs] == [("image", [1, 3, 96, 96], "uint8")]
    assert [(t.name, t.shape) for t in outputs] == [("confidence", [-1, 80]), ("coordinates", [-1, 4])]
    pixels = runner.prepare(np.full((1, 3, 96, 96), 0.5, dtype=np.float32))
    assert pixels.dtype == np.uint8 and int(pixels[0, 0, 0, 0]) == 128  # 0.5 * 255, back to a pixel
    if not MACOS:
        with pytest.raises(RuntimeError, match="only on macOS"):
            runner.run(np.zeros((1, 3, 96, 96), dtype=np.float32))


# --------------------------------------------------------------------------- structural checks


@pytest.fixture(scope="module")
def digits_plan(digits):
    """How the converter plans the digits classifier, and what the structural checks expect of it."""
    from edgebase.deps import version_of
    from toolchain.backends.coreml import checks as coreml_checks
    from toolchain.backends.coreml import model as coreml_model
    from toolchain.sources import resolve_source

    source = resolve_source(str(digits.model))
    from edgebundle.manifest import Preprocessing

    pre = Preprocessing(color="GRAY", mean=[0.0], std=[1.0])
    image = coreml_model.image_input(pre, [1, 1, 32, 32])
    labels = [str(i) for i in range(10)]
    plan = coreml_model.Conversion(
        module=coreml_model.source_module(source),
        input_shape=[1, 1, 32, 32],
        image=image,
        labels=labels,
        softmax=True,
    )
    expected = coreml_checks.Expected(
        input_name="image",
        input_shape=[1, 1, 32, 32],
        image=image,
        labels=labels,
        classifier=True,
        nms=None,
        output_names=[],
        deployment_target="iOS16",
        compute_precision="fp16",
        weights_mode="fp16",
        source_sha256=source.sha256,
        edgectl_version=version_of("edgectl"),
    )
    return plan, expected, source


def _checked(plan, expected, source, tmp_path: Path) -> dict[str, bool]:
    """Convert `plan` as the converter does, save, read back, check: {check name: passed}."""
    from edgebase.deps import version_of
    from toolchain.backends.coreml import checks as coreml_checks
    from toolchain.backends.coreml import compress as coreml_compress
    from toolchain.backends.coreml import model as coreml_model
    from toolchain.backends.coreml import package as coreml_package

    ct = deps.import_coremltools()
    mlmodel = coreml_model.convert(ct, plan)
    weights = coreml_compress.weights_report("fp16", 16, None, 0, "fp16")
    coreml_model.describe(
        mlmodel,
        source=source,
        task="classify",
        precision="fp16",
        weights=weights,
        preprocessing=None,
        edgectl_version=version_of("edgectl"),
    )
    package = tmp_path / "model.mlpackage"
    mlmodel.save(str(package))
    checks = coreml_checks.structural_checks(coreml_package.read_package(package), expected)
    return {c.name: c.passed for c in checks}


def test_structural_checks_pass_a_correct_package(digits_plan, tmp_path):
    results = _checked(*digits_plan, tmp_path)
    assert set(results) == CHECKS and all(results.values()), results


@pytest.mark.parametrize(
    ("bug", "caught"),
    [
        ({"input_name": "input_1"}, {"input name"}),
        ({"input_shape": [1, 1, 28, 28], "image": "28x28"}, {"input shape"}),
        ({"labels": [], "output_names": ["logits"]}, {"labels", "outputs"}),
    ],
    ids=["wrong-input-name", "wrong-shape", "missing-labels"],
)
def test_structural_checks_catch_a_broken_package(digits_plan, tmp_path, bug, caught):
    plan, expected, source = digits_plan
    if bug.get("image") == "28x28":
        bug = {**bug, "image": dataclasses.replace(plan.image, shape=(1, 1, 28, 28))}
    results = _checked(dataclasses.replace(plan, **bug), expected, source, tmp_path)
    assert {name for name, passed in results.items() if not passed} == caught, results


def test_a_package_failing_its_checks_fails_the_build(digits, keys, tmp_path, capsys, monkeypatch):
    """A conversion bug (here: a renamed input) stops the build with one error; no bundle is written."""
    from toolchain.backends.coreml import model as coreml_model

    real = coreml_model.convert
    monkeypatch.setattr(
        coreml_model, "convert", lambda ct, plan: real(ct, dataclasses.replace(plan, input_name="x"))
    )
    result = run(capsys, "build", digits.model, "--target", "ios", *build_flags(keys, tmp_path))
    assert result.code != 0 and "Traceback" not in result.err
    assert "fails its structural checks: input name" in result.err and "hint:" in result.err
    assert not list(tmp_path.glob("*-ios*"))


def test_onnx_source_is_refused_with_a_hint(digits, keys, tmp_path, capsys):
    import shutil

    from toolchain.onnx_export import export_onnx
    from toolchain.sources import resolve_source

    onnx_path, _ = export_onnx(resolve_source(str(digits.model)), [1, 1, 32, 32], 17)
    model = tmp_path / "digits.onnx"
    shutil.copyfile(onnx_path, model)
    result = run(capsys, "build", model, "--target", "ios", *build_flags(keys, tmp_path / "out"))
    assert result.code == 2
    assert result.error_lines[0] == (
        "error: digits.onnx is an ONNX model; target ios (coreml) cannot build from it"
    )
    assert result.error_lines[1].endswith("or pass the PyTorch model it came from")
    assert "cpu" in result.error_lines[1]  # the targets that do take an ONNX model
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_palettize_with_int8_is_refused(digits, keys, tmp_path, capsys):
    flags = build_flags(keys, tmp_path, calib=digits.calib, precision="int8", palettize="6")
    result = run(capsys, "build", digits.model, "--target", "ios", *flags)
    assert result.code == 2 and "--palettize and --precision int8" in result.err and "hint:" in result.err


def test_an_operation_coremltools_cannot_convert_is_an_error_with_a_hint():
    import torch

    from toolchain.backends.coreml import model as coreml_model
    from toolchain.errors import ExportError

    class Inverse(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.inv(x[0, 0] + torch.eye(4))  # traced on zeros: keep it invertible

    ct = deps.import_coremltools()
    plan = coreml_model.Conversion(module=Inverse(), input_shape=[1, 1, 4, 4], image=None, output_names=["y"])
    with pytest.raises(ExportError, match=r"cannot convert the model \(operator linalg_inv\)") as caught:
        coreml_model.convert(ct, plan)
    assert "replace that operation" in caught.value.hint


def test_detector_labels_must_match_its_classes(yolo, keys, tmp_path, capsys):
    checkpoint, _ = yolo
    labels = tmp_path / "labels.txt"
    labels.write_text("square\ncircle\n")
    result = run(
        capsys,
        "build",
        checkpoint,
        "--target",
        "ios",
        "--labels",
        labels,
        *build_flags(keys, tmp_path / "o", shape="1,3,96,96"),
    )
    assert result.code == 2
    assert result.error_lines == [
        "error: the detector scores 3 classes but has 2 labels",
        "hint: pass --labels with 3 lines, or none to use the model's own names",
    ]


def test_torch_export_source_converts(tmp_path):
    """A torch.export program (.pt2) refuses eval(); the converter traces it as it is."""
    import torch

    from edgebundle.manifest import Preprocessing
    from toolchain.backends.coreml import model as coreml_model
    from toolchain.backends.coreml import package as coreml_package
    from toolchain.demo import _make_model
    from toolchain.sources import resolve_source

    model, _ = _make_model()
    path = tmp_path / "digits.pt2"
    torch.export.save(torch.export.export(model.eval(), (torch.zeros(1, 1, 32, 32),)), path)
    source = resolve_source(str(path))
    assert source.kind == "torch-export"
    image = coreml_model.image_input(Preprocessing(color="GRAY"), [1, 1, 32, 32])
    plan = coreml_model.Conversion(
        module=coreml_model.source_module(source),
        input_shape=[1, 1, 32, 32],
        image=image,
        output_names=["logits"],
    )
    ct = deps.import_coremltools()
    coreml_model.convert(ct, plan).save(str(tmp_path / "model.mlpackage"))
    info = coreml_package.read_package(tmp_path / "model.mlpackage")
    assert [(f.name, f.kind, f.shape) for f in info.inputs] == [("image", "image", [1, 32, 32])]
    assert [(f.name, f.shape) for f in info.outputs] == [("logits", [1, 10])]
