"""Opsets: an ONNX source keeps its opset where the target runs it, and is converted down only where needed.

onnx's version converter has no down-adapter for many ops whose definition did not change for the
types in use (Mul-14 only added bfloat16, Identity-16 optional types, Split-18 `num_outputs`); those
are restamped and checked against the original in ONNX Runtime. Only a real change of meaning
fails, naming the op.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.cli import assert_refused, build_flags, run
from toolchain.errors import ExportError
from toolchain.onnx_export import export_opset, model_opset
from toolchain.opset import _check_same_outputs, downgrade_opset
from toolchain.sources import SourceModel


def _model(nodes, inputs, outputs, initializers=(), opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _restampable_model():
    """Ops whose newest version has no down-adapter in onnx, each used as its older version allows."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 1])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 24])
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["sq"]),  # Mul-14: only bfloat16 added
        helper.make_node("Split", ["sq"], ["a", "b"], axis=1, num_outputs=2),  # Split-18 spelling
        helper.make_node("Sub", ["a", "b"], ["d"]),
        helper.make_node("ReduceMean", ["d", "axes"], ["y"], keepdims=1),  # axes as an input (18)
        helper.make_node("Reshape", ["x", "shape"], ["z"], allowzero=0),  # Reshape-14 at its default
    ]
    inits = [
        numpy_helper.from_array(np.asarray([2], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.asarray([1, 24], dtype=np.int64), "shape"),
    ]
    return _model(nodes, [x], [y, z], inits)


def test_ops_without_down_adapters_are_restamped_and_checked():
    model = _restampable_model()
    from onnx import version_converter

    with pytest.raises(Exception, match="No Adapter"):  # what the build used to fail with
        version_converter.convert_version(model, 13)
    converted = downgrade_opset(model, 13, "m.onnx", [1, 4, 6])
    assert model_opset(converted) == 13 and converted.ir_version == 7  # IR of the onnx release with opset 13
    onnx.checker.check_model(converted, full_check=True)
    ops = {n.op_type: n for n in converted.graph.node}
    assert [a.name for a in ops["Split"].attribute] == ["axis"] and len(ops["Split"].input) == 2
    assert {a.name for a in ops["ReduceMean"].attribute} == {"axes", "keepdims"}
    assert [a.name for a in ops["Reshape"].attribute] == []

    import onnxruntime as ort

    x = np.random.default_rng(0).random((1, 4, 6), dtype=np.float32)
    before, after = (
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
        for m in (model, converted)
    )
    for want, got in zip(before, after, strict=True):
        np.testing.assert_array_equal(want, got)


def test_a_real_change_of_meaning_fails_naming_the_op():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    scale = numpy_helper.from_array(np.ones(8, dtype=np.float32), "scale")
    model = _model(
        [helper.make_node("LayerNormalization", ["x", "scale"], ["y"])], [x], [y], [scale], opset=17
    )
    with pytest.raises(ExportError) as caught:
        downgrade_opset(model, 13, "ln.onnx", [1, 8])
    assert "LayerNormalization-17" in caught.value.message and "opset 13" in caught.value.message
    assert "re-export the model from its source at opset 13" in caught.value.hint


def test_a_type_the_old_version_lacks_fails_naming_the_op():
    x = helper.make_tensor_value_info("x", TensorProto.INT16, [1, 8])  # Mul-14 added the 8- and 16-bit ints
    y = helper.make_tensor_value_info("y", TensorProto.INT16, [1, 8])
    model = _model([helper.make_node("Mul", ["x", "x"], ["y"])], [x], [y], opset=17)
    with pytest.raises(ExportError) as caught:
        downgrade_opset(model, 13, "int16.onnx", [1, 8])
    assert "Mul-14" in caught.value.message and "tensor(int16)" in caught.value.message


def test_a_conversion_that_changes_the_outputs_is_refused():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])

    def times(k: float):
        two = numpy_helper.from_array(np.asarray([k], dtype=np.float32), "k")
        return _model([helper.make_node("Mul", ["x", "k"], ["y"])], [x], [y], [two], opset=13)

    _check_same_outputs(times(2), times(2), [1, 8], "m.onnx", 13, "restamping", "hint")
    with pytest.raises(ExportError, match="output 0 differs"):
        _check_same_outputs(times(2), times(3), [1, 8], "m.onnx", 13, "restamping", "hint")


def test_an_onnx_source_keeps_its_opset_where_the_target_runs_it(tmp_path):
    from targets import get_profile

    path = tmp_path / "m.onnx"
    onnx.save(_restampable_model(), path)
    source = SourceModel(str(path), "onnx", "0" * 64)
    assert export_opset(source, get_profile("cpu").opset_ceiling, 17) == 18  # ONNX Runtime 1.32 runs 18
    assert export_opset(source, get_profile("jetson-nano").opset_ceiling, 17) == 13  # TensorRT 8.2
    torch_source = SourceModel("m.pt", "torchscript", "0" * 64)
    assert export_opset(torch_source, get_profile("cpu").opset_ceiling, 17) == 17


def test_cpu_ceiling_is_what_onnxruntime_really_runs():
    """The cpu profile's ceiling is ONNX Runtime's own: a model at the ceiling loads and runs, one above does not."""
    import onnxruntime as ort

    from targets import get_profile

    ceiling = get_profile("cpu").opset_ceiling
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    for opset, runs in ((ceiling, True), (ceiling + 1, False)):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
        if runs:
            session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            assert session.run(None, {"x": np.ones((1, 4), np.float32)})[0].sum() == 4
        else:
            with pytest.raises(Exception, match="opset"):
                ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_a_model_that_cannot_go_down_is_refused_with_a_hint(keys, tmp_path, capsys):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    scale = numpy_helper.from_array(np.ones(8, dtype=np.float32), "scale")
    path = tmp_path / "ln.onnx"
    onnx.save(
        _model([helper.make_node("LayerNormalization", ["x", "scale"], ["y"])], [x], [y], [scale], opset=17),
        path,
    )
    out = tmp_path / "out"
    result = run(
        capsys,
        "build",
        path,
        "--target",
        "jetson-nano",
        "--precision",
        "fp16",
        "--sign-key",
        keys[0],
        "--out",
        out,
    )
    assert_refused(
        result, out, "LayerNormalization-17", "at most opset 13", "re-export the model from its source"
    )


@pytest.mark.slow
def test_opset_17_classifier_builds_for_jetson_nano(digits, keys, tmp_path, capsys):
    """An opset-17 ONNX classifier for TensorRT 8.2 (opset 13): onnx's converter has no adapter; restamped."""
    import torch

    from edgebundle import read_manifest

    module = torch.jit.load(str(digits.model), map_location="cpu").eval()
    path = tmp_path / "digits17.onnx"
    torch.onnx.export(module, (torch.zeros(1, 1, 32, 32),), str(path), opset_version=17, dynamo=False)
    assert model_opset(onnx.load(str(path))) == 17
    out = tmp_path / "out"
    flags = build_flags(keys, out, calib=digits.calib, val=digits.val, max_drop="0.5", bench_runs="3")
    result = run(capsys, "build", path, "--target", "jetson-nano", "--name", "digits", *flags)
    assert result.code == 0, result.err
    bundle = out / "digits-v1-jetson-nano"
    manifest = read_manifest(bundle)
    shipped = onnx.load(str(bundle / manifest.artifacts[0].path))
    assert model_opset(shipped) == 13 and manifest.toolchain.versions["opset"] == "13"
    report = manifest.validation
    assert report.gate == "labels" and report.passed and report.drop_points <= 0.5
