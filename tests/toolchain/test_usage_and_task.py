"""Usage errors in the error/hint form, --task against what a model says, and tensor-input manifests."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.cli import assert_refused, run


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["build", "m.onnx", "--target", "cpu", "--version", "abc"], ["'--version'", "edgectl build --help"]),
        (["build", "m.onnx"], ["missing option '--target'", "edgectl build --help"]),
        (["build"], ["missing argument", "edgectl build --help"]),
        (["build", "m.onnx", "-t", "cpu", "--no-such-flag"], ["no such option: --no-such-flag"]),
        (["no-such-command"], ["no such command 'no-such-command'", "edgectl --help"]),
        (["keys", "generate", "--bogus"], ["no such option: --bogus", "edgectl keys generate --help"]),
    ],
)
def test_usage_errors_are_one_error_line_and_a_hint(args, needles, tmp_path, capsys):
    result = run(capsys, *args)
    assert result.code == 2
    assert [line.split(":")[0] for line in result.error_lines] == ["error", "hint"], result.err
    assert "Usage:" not in result.err and "╭" not in result.err and "Traceback" not in result.err
    for needle in needles:
        assert needle in result.err, result.err


def test_help_and_a_bare_group_still_show_help(capsys):
    assert run(capsys, "build", "--help").code == 0
    bare = run(capsys, "keys")
    assert bare.code == 2 and "generate" in bare.out + bare.err and "error:" not in bare.err


def test_an_unknown_task_is_an_error_with_a_hint(keys, tmp_path, capsys):
    out = tmp_path / "out"
    result = run(
        capsys, "build", "m.onnx", "-t", "cpu", "--task", "segment", "--sign-key", keys[0], "--out", out
    )
    assert_refused(result, out, "task", "--help")


def _tiny_onnx(path, *, input_shape, output_shape, metadata=None):
    """x -> MatMul(w) -> y, with optional metadata_props."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)
    w = numpy_helper.from_array(np.full((input_shape[-1], output_shape[-1]), 0.1, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def test_task_detect_on_a_model_without_a_detector_head_is_refused(keys, tmp_path, capsys):
    model = _tiny_onnx(tmp_path / "mlp.onnx", input_shape=[1, 8], output_shape=[1, 4])
    out = tmp_path / "out"
    flags = ["-t", "cpu", "--precision", "fp32", "--sign-key", keys[0], "--out", out]
    result = run(capsys, "build", model, "--task", "detect", *flags)
    assert_refused(result, out, "not the Ultralytics head layout", "--task other")


def test_an_end2end_ultralytics_export_is_refused(keys, tmp_path, capsys):
    meta = {"task": "detect", "names": "{0: 'a', 1: 'b'}", "imgsz": "[8, 8]", "end2end": "True"}
    model = _tiny_onnx(
        tmp_path / "e2e.onnx", input_shape=[1, 3, 8, 8], output_shape=[1, 3, 8, 6], metadata=meta
    )
    out = tmp_path / "out"
    result = run(
        capsys, "build", model, "-t", "cpu", "--precision", "fp32", "--sign-key", keys[0], "--out", out
    )
    assert_refused(result, out, "NMS inside", "nms=False")


def test_ultralytics_classifier_metadata_gives_task_and_labels(tmp_path):
    from toolchain.sources import resolve_source

    meta = {"task": "classify", "names": "{0: 'cat', 1: 'dog'}", "imgsz": "[8, 8]", "author": "Ultralytics"}
    model = _tiny_onnx(
        tmp_path / "cls.onnx", input_shape=[1, 3, 8, 8], output_shape=[1, 3, 8, 2], metadata=meta
    )
    source = resolve_source(str(model))
    assert (source.task, source.labels, source.nms) == ("classify", ["cat", "dog"], None)
    assert source.input_shape == [1, 3, 8, 8] and source.preprocessing.resize_mode == "stretch"


def test_a_tensor_input_manifest_has_no_image_fields(keys, tmp_path, capsys):
    model = _tiny_onnx(tmp_path / "features.onnx", input_shape=[1, 8], output_shape=[1, 4])
    out = tmp_path / "out"
    flags = ["--precision", "fp32", "--sign-key", keys[0], "--out", out, "--bench-runs", "3"]
    result = run(capsys, "build", model, "-t", "cpu", "--name", "features", *flags)
    assert result.code == 0, result.err
    raw = json.loads((out / "features-v1-cpu" / "manifest.json").read_text())
    assert raw["preprocessing"] == {"input": "tensor"}

    from edgebundle import load_public_key, read_manifest, verify_bundle

    manifest = read_manifest(out / "features-v1-cpu")  # still reads, and the signature still holds
    assert manifest.preprocessing.input == "tensor"
    verify_bundle(out / "features-v1-cpu", load_public_key(keys[1]))


def test_a_relative_ultralytics_checkpoint_path_exports(yolo, monkeypatch):
    """`edgectl build runs/train/weights/best.pt`: Ultralytics loads the checkpoint from a working
    folder of its own, where the user's relative path named nothing (it failed with "No such file")."""
    from toolchain.onnx_export import export_onnx
    from toolchain.sources import resolve_source

    checkpoint, _ = yolo
    monkeypatch.chdir(checkpoint.parent.parent)
    source = resolve_source(f"{checkpoint.parent.name}/{checkpoint.name}")
    assert source.location == str(checkpoint.resolve())
    onnx_path, _ = export_onnx(source, [1, 3, 96, 96], 17)
    assert onnx.load(str(onnx_path)).graph.input[0].name
