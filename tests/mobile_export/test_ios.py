"""`edgectl export ios` end to end: real ios bundles of the digits CNN and the shapes detector, exported.

Swift is not compiled here (no Xcode on this host): the tests check that the generated file carries this
model's names, sizes and thresholds, and the package, model-info.json and metadata are checked for real.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from tests.cli import assert_refused, build_flags, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundles(digits, yolo, keys, tmp_path_factory) -> Path:
    """digits for ios and cpu (one build), the shapes detector for ios."""
    from edgectl.main import main

    out = tmp_path_factory.mktemp("bundles")
    flags = build_flags(keys, out, calib=digits.calib, val=digits.val, bench_runs="3")
    args = ["build", digits.model, "--name", "digits", "--target", "ios", "--target", "cpu", *flags]
    assert main([str(a) for a in args]) == 0
    checkpoint, data_yaml = yolo
    args = ["build", checkpoint, "--name", "shapes", "--target", "ios", "--val", data_yaml, "--max-drop", "2"]
    assert main([str(a) for a in [*args, "--sign-key", keys[0], "--out", out]]) == 0
    return out


def _export_json(bundle: Path, out: Path, key: Path, *extra: str) -> dict:
    from edgectl.main import main

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["export", "ios", str(bundle), "--out", str(out), "--key", str(key), "--json", *extra])
    assert code == 0
    return json.loads(stdout.getvalue())


@pytest.fixture(scope="module")
def digits_app(bundles, keys, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "digits-app"
    extra = ("--author", "Edge Team", "--license", "Apache-2.0")
    return out, _export_json(bundles / "digits-v1-ios", out, keys[1], *extra)


@pytest.fixture(scope="module")
def shapes_app(bundles, keys, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "shapes-app"
    return out, _export_json(bundles / "shapes-v1-ios", out, keys[1])


def _info(out: Path):
    from mobile_export.ios import IOSModelInfo

    return IOSModelInfo.model_validate_json((out / "model-info.json").read_text())


def _manifest(bundle: Path):
    from edgebundle import read_manifest

    return read_manifest(bundle)


def _export(capsys, bundle: Path, out: Path, key: Path | None, *extra: object):
    return run(
        capsys, "export", "ios", bundle, "--out", out, *extra, *(["--key", key] if key is not None else [])
    )


# --------------------------------------------------------------------------- what gets written


def test_writes_package_model_info_swift_and_readme(digits_app):
    out, result = digits_app
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [
        "Digits+Vision.swift",
        "Digits.mlpackage/Data/com.apple.CoreML/model.mlmodel",
        "Digits.mlpackage/Data/com.apple.CoreML/weights/weight.bin",
        "Digits.mlpackage/Manifest.json",
        "README.md",
        "model-info.json",
    ]
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no staging folder left beside it
    assert result["schema"] == "edgectl.export/1" and result["platform"] == "ios"
    assert (result["package"], result["snippet"]) == ("Digits.mlpackage", "Digits+Vision.swift")
    assert result["warnings"] == [] and result["size"]["status"] == "ok"
    readme = (out / "README.md").read_text()
    assert "Digits.mlpackage" in readme and "iOS 16" in readme and "generates the class `Digits`" in readme


def test_model_info_matches_the_bundle(digits_app, bundles):
    from edgebundle import sha256_file

    out, _ = digits_app
    manifest, info = _manifest(bundles / "digits-v1-ios"), _info(out)
    assert json.loads((out / "model-info.json").read_text())["schema"] == "edgectl.ios-model-info/1"
    assert (info.bundle.name, info.bundle.version, info.bundle.target) == ("digits", 1, "ios")
    assert info.bundle.source_sha256 == manifest.source.sha256 and info.bundle.key_id == manifest.key_id
    assert (info.package, info.class_name, info.task) == ("Digits.mlpackage", "Digits", "classify")
    assert info.labels == [str(i) for i in range(10)]
    assert info.inputs == manifest.coreml.inputs and info.outputs == manifest.coreml.outputs
    image = info.image
    assert (image.color, image.height, image.width, image.resize_mode) == ("GRAY", 32, 32, "stretch")
    assert image.scale == pytest.approx(1 / 255) and image.bias == [0.0] and image.std_in_model == []
    assert info.thresholds is None
    assert (info.deployment_target, info.compute_units, info.compute_precision) == ("iOS16", "ALL", "fp16")
    assert info.weights == manifest.coreml.weights
    assert info.validation.passed and info.validation.metric == "top1"
    assert info.structural_checks and all(c.passed for c in info.structural_checks)
    assert info.numerical_check == manifest.coreml.numerical_check
    assert info.stamped.version == "1" and info.stamped.author == "Edge Team"
    assert info.stamped.license == "Apache-2.0"
    for item in info.files:
        assert item.sha256 == sha256_file(out / item.path) and item.size == (out / item.path).stat().st_size
    assert {f.path for f in info.files} == {
        "Digits.mlpackage/Manifest.json",
        "Digits.mlpackage/Data/com.apple.CoreML/model.mlmodel",
        "Digits.mlpackage/Data/com.apple.CoreML/weights/weight.bin",
    }
    assert info.size.total_bytes == sum(f.size for f in info.files)
    assert info.size.limit_mb == 100 and info.size.status == "ok"  # the ios profile's on_demand_guidance_mb


def test_package_is_the_bundles_with_only_its_metadata_stamped(digits_app, bundles):
    from mobile_export.coreml_metadata import read_metadata
    from toolchain.backends.coreml.package import read_package

    out, _ = digits_app
    bundle, exported = bundles / "digits-v1-ios/model.mlpackage", out / "Digits.mlpackage"
    weights = "Data/com.apple.CoreML/weights/weight.bin"
    assert (bundle / weights).read_bytes() == (exported / weights).read_bytes()
    meta = read_metadata(exported)
    assert (meta["version"], meta["author"], meta["license"]) == ("1", "Edge Team", "Apache-2.0")
    assert meta["edgectl.bundle"] == "digits v1 (ios)"
    assert meta["edgectl.key_id"] == _manifest(bundles / "digits-v1-ios").key_id
    assert meta["edgectl.source_sha256"] == read_metadata(bundle)["edgectl.source_sha256"]
    before, after = read_package(bundle), read_package(exported)
    assert after.inputs == before.inputs and after.outputs == before.outputs and after.labels == before.labels
    assert after.op_counts == before.op_counts and after.image_scale == before.image_scale


def test_classifier_swift_uses_vision_with_this_models_numbers(digits_app):
    out, _ = digits_app
    swift = (out / "Digits+Vision.swift").read_text()
    for line in (
        "final class DigitsClassifier {",
        "static let inputSize = CGSize(width: 32, height: 32)",
        "let model = try VNCoreMLModel(for: Digits(configuration: configuration).model)",
        "request.imageCropAndScaleOption = .scaleFill",
        "as? [VNClassificationObservation]",
        "computeUnits: MLComputeUnits = .all",
        "import Vision",
    ):
        assert line in swift, line
    assert "Thresholds" not in swift and "gray" not in swift  # no NMS, no letterbox for this model
    assert "@" not in swift.replace("@objc", "")
    assert swift.count("{") == swift.count("}") and swift.count("(") == swift.count(")")


def test_detector_export_carries_thresholds_letterbox_and_vision_semantics(shapes_app, bundles):
    out, result = shapes_app
    info = _info(out)
    assert (info.class_name, info.task, info.labels) == ("Shapes", "detect", ["square", "circle", "triangle"])
    t = info.thresholds
    assert (t.confidence, t.iou, t.max_detections, t.classes, t.confidence_columns) == (0.25, 0.7, 189, 3, 80)
    assert (t.confidence_input, t.iou_input) == ("confidenceThreshold", "iouThreshold")
    assert "VNRecognizedObjectObservation.confidence" in t.score
    image = info.image
    assert (image.resize_mode, image.letterbox_fill, image.color) == ("letterbox", 114, "RGB")
    assert [i.name for i in info.inputs] == ["image", "iouThreshold", "confidenceThreshold"]
    assert info.validation.metric == "mAP50-95" and info.validation.passed
    swift = (out / result["snippet"]).read_text()
    assert result["snippet"] == "Shapes+Vision.swift"
    for line in (
        "final class ShapesDetector {",
        "init(confidenceThreshold: Double = 0.25, iouThreshold: Double = 0.7, computeUnits: MLComputeUnits = .all)",
        'model.inputImageFeatureName = "image"',
        "model.featureProvider = ShapesThresholds(iou: iouThreshold, confidence: confidenceThreshold)",
        "as? [VNRecognizedObjectObservation]",
        "confidence: observation.confidence",
        "CIColor(red: 114 / 255, green: 114 / 255, blue: 114 / 255)",
        'case "iouThreshold": return MLFeatureValue(double: iou)',
        "static let inputSize = CGSize(width: 96, height: 96)",
    ):
        assert line in swift, line
    assert "labels.first?.confidence" not in swift  # the share of the row, always 1: never the score
    assert swift.count("{") == swift.count("}") and swift.count("(") == swift.count(")")
    readme = (out / "README.md").read_text()
    assert "Core ML's NMS (confidence 0.25, IoU 0.7, at most 189 boxes" in readme and "letterbox" in readme


def test_tensor_model_gets_the_generated_class_call():
    from edgebundle.manifest import (
        Artifact,
        CoreMLFeature,
        CoreMLReport,
        CoreMLWeights,
        Manifest,
        Postprocessing,
        Preprocessing,
        SourceInfo,
        TensorSpec,
        ToolchainInfo,
    )
    from mobile_export.ios import model_info
    from mobile_export.ios_swift import swift_file_name, swift_snippet

    features_in = [CoreMLFeature(name="features", kind="multiarray", shape=[1, 8], dtype="float32")]
    features_out = [CoreMLFeature(name="scores", kind="multiarray", shape=[1, 2], dtype="float32")]
    manifest = Manifest(
        name="sensor-model",
        version=4,
        created_at="2026-01-01T00:00:00+00:00",
        target="ios",
        runtime="coreml",
        precision="fp16",
        artifacts=[
            Artifact(
                path="model.mlpackage",
                format="mlpackage",
                precision="fp16",
                inputs=[TensorSpec(name="features", shape=[1, 8], dtype="float32")],
                outputs=[TensorSpec(name="scores", shape=[1, 2], dtype="float32")],
            )
        ],
        preprocessing=Preprocessing(input="tensor", layout="NC"),
        postprocessing=Postprocessing(task="other"),
        source=SourceInfo(kind="torchscript", filename="sensor.pt", sha256="0" * 64),
        toolchain=ToolchainInfo(edgectl="0", converter="coremltools"),
        coreml=CoreMLReport(
            model_type="mlprogram",
            deployment_target="iOS16",
            specification_version=7,
            compute_precision="fp16",
            compute_units="CPU_AND_NE",
            weights=CoreMLWeights(mode="fp16", bits=16, compressed_tensors=0, summary="fp16"),
            inputs=features_in,
            outputs=features_out,
            macos_predict=False,
        ),
    )
    info = model_info(manifest, "SensorModel")
    assert info.image is None and swift_file_name(info) == "SensorModel+Run.swift"
    swift = swift_snippet(manifest, info)
    assert (
        "func runSensorModel(_ values: [Float], computeUnits: MLComputeUnits = .cpuAndNeuralEngine)" in swift
    )
    assert "let input = try MLMultiArray(shape: [1, 8], dataType: .float32)" in swift
    assert "return try model.prediction(features: input).scores" in swift
    assert "import CoreML" in swift and "Vision" not in swift and "CIImage" not in swift


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("digits", "Digits"),
        ("yolo11n-shapes", "Yolo11nShapes"),
        ("3d_parts", "Model3dParts"),
        ("a.b_c", "ABC"),
    ],
)
def test_class_name_from_the_bundle_name(name, expected):
    from mobile_export.ios import class_name_for

    assert class_name_for(name) == expected


# --------------------------------------------------------------------------- options


def test_archive_key_from_environment_force_and_class_name(bundles, keys, tmp_path, capsys, monkeypatch):
    out = tmp_path / "app"
    out.mkdir()
    (out / "old.txt").write_text("from an earlier export")
    monkeypatch.setenv("EDGECTL_PUBLIC_KEY", str(keys[1]))
    archive = bundles / "shapes-v1-ios.edgebundle"
    result = _export(capsys, archive, out, None, "--force", "--class-name", "ShapeFinder")
    assert result.code == 0, result.err
    assert not (out / "old.txt").exists() and (out / "ShapeFinder.mlpackage").is_dir()
    assert "final class ShapeFinderDetector" in (out / "ShapeFinder+Vision.swift").read_text()
    assert "exported shapes v1" in result.out and "100 MB guidance" in result.out


def test_size_over_the_guidance_warns_and_still_exports(bundles, keys, tmp_path, capsys):
    out = tmp_path / "app"
    result = _export(capsys, bundles / "shapes-v1-ios", out, keys[1], "--size-limit-mb", "1", "--json")
    assert result.code == 0, result.err
    document = result.json()
    assert document["size"]["status"] == "over" and document["size"]["limit_mb"] == 1
    (warning,) = document["warnings"]
    assert "on-demand resource or a background asset" in warning and "warning:" in result.err
    assert _info(out).size.status == "over"


def test_without_coremltools_the_package_is_copied_unstamped(bundles, keys, tmp_path, capsys, monkeypatch):
    import edgebase.deps

    real = edgebase.deps.is_available
    monkeypatch.setattr(
        edgebase.deps, "is_available", lambda module: module != "coremltools" and real(module)
    )
    out = tmp_path / "app"
    result = _export(capsys, bundles / "digits-v1-ios", out, keys[1], "--json")
    assert result.code == 0, result.err
    assert "coremltools is not installed" in result.json()["warnings"][0]
    model = "Data/com.apple.CoreML/model.mlmodel"
    assert (out / "Digits.mlpackage" / model).read_bytes() == (
        bundles / "digits-v1-ios/model.mlpackage" / model
    ).read_bytes()
    assert _info(out).stamped is None


# --------------------------------------------------------------------------- refusals


def test_missing_bundle(keys, tmp_path, capsys):
    out = tmp_path / "app"
    assert_refused(_export(capsys, tmp_path / "nope", out, keys[1]), out, "does not exist")


def test_tampered_file_is_refused(bundles, keys, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(bundles / "digits-v1-ios", bundle)
    weights = bundle / "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    out = tmp_path / "app"
    assert_refused(_export(capsys, bundle, out, keys[1]), out, "weight.bin")


def test_bad_signature_is_refused(bundles, keys, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(bundles / "digits-v1-ios", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["version"] = 2
    (bundle / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, separators=(",", ":")))
    out = tmp_path / "app"
    assert_refused(_export(capsys, bundle, out, keys[1]), out, "signature")


def test_wrong_key_is_refused(bundles, tmp_path, capsys):
    from edgebundle import generate_keypair

    _, other = generate_keypair(tmp_path / "other")
    out = tmp_path / "app"
    assert_refused(_export(capsys, bundles / "digits-v1-ios", out, other), out, "signature")


def test_no_key_is_refused(bundles, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("EDGECTL_PUBLIC_KEY", raising=False)
    out = tmp_path / "app"
    assert_refused(_export(capsys, bundles / "digits-v1-ios", out, None), out, "--key")


def test_non_coreml_bundle_is_refused(bundles, keys, tmp_path, capsys):
    out = tmp_path / "app"
    result = _export(capsys, bundles / "digits-v1-cpu.edgebundle", out, keys[1])
    assert_refused(result, out, "onnxruntime", "--target ios")


def test_bundle_without_a_coreml_section_is_refused(bundles, keys, tmp_path, capsys):
    from edgebundle import load_private_key, write_bundle

    manifest = _manifest(bundles / "digits-v1-ios")
    staging = tmp_path / "staging"
    shutil.copytree(bundles / "digits-v1-ios/model.mlpackage", staging / "model.mlpackage")
    older = manifest.model_copy(update={"coreml": None, "files": []})
    write_bundle(staging, older, load_private_key(keys[0]), tmp_path, "digits-v1-ios")
    out = tmp_path / "app"
    assert_refused(_export(capsys, tmp_path / "digits-v1-ios", out, keys[1]), out, "no coreml section")


def test_out_that_is_a_file_is_refused(bundles, keys, tmp_path, capsys):
    out = tmp_path / "app"
    out.write_text("a file")
    result = _export(capsys, bundles / "digits-v1-ios", out, keys[1])
    assert result.code != 0 and "not a folder" in result.err and "hint:" in result.err
    assert out.read_text() == "a file"


def test_non_empty_out_without_force_is_refused(bundles, keys, tmp_path, capsys):
    out = tmp_path / "app"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _export(capsys, bundles / "digits-v1-ios", out, keys[1])
    assert result.code != 0 and "--force" in result.err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_bad_class_name_is_refused(bundles, keys, tmp_path, capsys):
    out = tmp_path / "app"
    result = _export(capsys, bundles / "digits-v1-ios", out, keys[1], "--class-name", "my-model")
    assert_refused(result, out, "Swift type name")


def test_non_positive_size_limit_is_refused(bundles, keys, tmp_path, capsys):
    out = tmp_path / "app"
    result = _export(capsys, bundles / "digits-v1-ios", out, keys[1], "--size-limit-mb", "0")
    assert_refused(result, out, "--size-limit-mb must be positive")
