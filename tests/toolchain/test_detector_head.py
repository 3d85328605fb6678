"""The decode tail and the normalized-box convention, on small graphs built here, and the refusal of a
head that does not end the way edgectl's TFLite export needs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.cli import assert_refused, run
from toolchain.detector_head import (
    embed_metadata,
    embedded_metadata,
    normalize_boxes,
    onnx_decode_tail,
)


def _head(path, *, final: str = "Concat") -> None:
    """x (1,3,8,8) -> Conv -> feature map (1,6,8,8) -> Reshape (1,6,64) -> Split boxes/scores -> ... -> out."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(6, 3, 1, 1)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([1, 6, 64], np.int64), "shape"),
        numpy_helper.from_array(np.array([4, 2], np.int64), "split"),
        numpy_helper.from_array(np.float32(8.0), "stride"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["feat"], name="conv"),
        helper.make_node("Reshape", ["feat", "shape"], ["flat"], name="flatten_scale"),
        helper.make_node("Split", ["flat", "split"], ["box_raw", "cls_raw"], axis=1, name="split"),
        helper.make_node("Mul", ["box_raw", "stride"], ["boxes"], name="box_math"),
        helper.make_node("Sigmoid", ["cls_raw"], ["scores"], name="sigmoid"),
    ]
    if final == "Concat":
        nodes.append(helper.make_node("Concat", ["boxes", "scores"], ["out"], axis=1, name="concat"))
    else:  # scores first: not the layout whose box rows can be normalized
        nodes.append(helper.make_node("Concat", ["scores", "boxes"], ["out"], axis=1, name="concat"))
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 6, 64])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_the_decode_tail_is_everything_after_the_last_feature_maps(tmp_path):
    _head(tmp_path / "head.onnx")
    tail = onnx_decode_tail(tmp_path / "head.onnx")
    assert tail == ["flatten_scale", "split", "box_math", "sigmoid", "concat"]  # not the conv


def test_normalized_boxes_are_the_pixel_boxes_over_the_input_size(tmp_path):
    import onnxruntime as ort

    _head(tmp_path / "head.onnx")
    normalize_boxes(tmp_path / "head.onnx", tmp_path / "norm.onnx")
    x = np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)
    pixels = ort.InferenceSession(str(tmp_path / "head.onnx")).run(None, {"x": x})[0]
    normalized = ort.InferenceSession(str(tmp_path / "norm.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(normalized[:, :4] * 8, pixels[:, :4], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(normalized[:, 4:], pixels[:, 4:])  # scores untouched


def test_metadata_rides_after_the_flatbuffer_and_reads_back(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(embed_metadata(b"TFL3" + bytes(64), {"task": "detect", "imgsz": [96, 96]}))
    assert path.read_bytes().startswith(b"TFL3")
    assert embedded_metadata(path) == {"task": "detect", "imgsz": [96, 96]}
    (tmp_path / "plain.tflite").write_bytes(b"TFL3" + bytes(64))
    assert embedded_metadata(tmp_path / "plain.tflite") == {}


def test_a_detector_head_without_the_final_concat_is_refused_for_tflite(keys, tmp_path, capsys):
    _head(tmp_path / "odd.onnx", final="scores-first")
    out = tmp_path / "out"
    result = run(
        capsys, "build", tmp_path / "odd.onnx", "--target", "rpi5", "--precision", "fp32", "--task", "detect",
        "--sign-key", keys[0], "--out", out,
    )  # fmt: skip
    assert_refused(result, out, "is not Concat(boxes (1, 4, N), scores)")
