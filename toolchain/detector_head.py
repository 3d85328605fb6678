"""The decode tail of a detection head, found from the graph alone, so that INT8 can keep it in float.

A YOLO-style head ends in feature maps (4-D: batch, channels, height, width, or their NHWC
twins). What follows them turns the maps into one row per anchor: per-scale reshapes, a
concatenation over scales, the distribution-focal-loss softmax and its fixed 1x1 conv, the
box arithmetic in pixels (anchor points, strides), the class sigmoid and the final concatenation
of boxes with scores. These ops carry a handful of multiplies per anchor, so running them in
float costs next to nothing, while quantizing them forces one int8 scale on pixel coordinates
(0..imgsz) and 0..1 scores, which erases the scores: measured on the tests' YOLO11n, full INT8
scores 0.0 mAP50-95 and INT8 with the tail in float loses 0.3 to 0.6 points (ONNX Runtime).

The rule: the tail starts at every op that takes a 4-D activation and gives a lower-rank one
(a Reshape or Flatten), and holds everything downstream of those ops. It is structural, so it
works for any head exported to ONNX or converted to TFLite, not only Ultralytics' naming.
Only detectors use it: a classifier's flatten before its last Gemm is where INT8 pays off.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from pathlib import Path

FLATTENING_OPS = frozenset({"Reshape", "Flatten", "RESHAPE"})


def _downstream(
    starts: Iterable[str], consumers: dict[str, list[str]], outputs: dict[str, list[str]]
) -> set[str]:
    """Every node reachable from `starts` (node ids), the starts included."""
    seen: set[str] = set()
    queue = deque(starts)
    while queue:
        node = queue.popleft()
        if node in seen:
            continue
        seen.add(node)
        for tensor in outputs[node]:
            queue.extend(consumers.get(tensor, []))
    return seen


def onnx_decode_tail(model_path: Path) -> list[str]:
    """Names of the ONNX nodes in the decode tail, in graph order (empty when the graph has none)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    ranks: dict[str, int] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.tensor_type.HasField("shape"):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    constants = {init.name for init in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    names = [node.name or f"#{index}" for index, node in enumerate(graph.node)]
    consumers: dict[str, list[str]] = {}
    outputs: dict[str, list[str]] = {}
    starts = []
    for name, node in zip(names, graph.node, strict=True):
        outputs[name] = list(node.output)
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(name)
        if node.op_type not in FLATTENING_OPS or not node.input or node.input[0] in constants:
            continue
        if ranks.get(node.input[0]) == 4 and ranks.get(node.output[0], 4) < 4:
            starts.append(name)
    tail = _downstream(starts, consumers, outputs)
    return [name for name in names if name in tail and not name.startswith("#")]


def tflite_decode_tail(model: bytes) -> list[str]:
    """Output tensor names of the TFLite ops in the decode tail, in graph order.

    These are the names TensorFlow's MLIR quantizer takes as its denylist (what it keeps in float).
    """
    from toolchain.backends.tflite.quantize import tensor_table

    ops = tensor_table(model)
    ranks = {index: rank for op in ops for index, _, rank in op["outputs"]}  # only produced tensors
    consumers: dict[str, list[str]] = {}
    outputs: dict[str, list[str]] = {}
    starts = []
    for number, op in enumerate(ops):
        node = str(number)
        outputs[node] = [str(index) for index, _, _ in op["outputs"]]
        for t in op["inputs"]:
            if t >= 0:
                consumers.setdefault(str(t), []).append(node)
        first = op["inputs"][0] if op["inputs"] else -1
        if op["op"] not in FLATTENING_OPS or first not in ranks:  # constants are not produced
            continue
        if ranks[first] == 4 and op["outputs"][0][2] < 4:
            starts.append(node)
    tail = _downstream(starts, consumers, outputs)
    return [name for number, op in enumerate(ops) if str(number) in tail for _, name, _ in op["outputs"]]


# Ultralytics' convention for TFLite detectors: box rows (cx, cy, w, h) normalized to 0..1 by the input
# size, so that `yolo val` / `YOLO(model.tflite)` (which multiplies them back) score the file as edgectl
# does. The model says so itself, in Ultralytics' way: a metadata.json entry of a zip appended to the
# flatbuffer (LiteRT ignores trailing bytes).
METADATA_ENTRY = "metadata.json"


def normalize_boxes(onnx_path: Path, out_path: Path) -> Path:
    """A copy of a detector whose box rows are divided by the input width and height before the final Concat.

    The head's output is Concat(boxes (1, 4, N), scores (1, classes, N)) on axis 1; a Mul by
    [1/W, 1/H, 1/W, 1/H] goes on the box input. Raises ExportError when the graph does not end that way.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from toolchain.errors import ExportError

    model = onnx.load(str(onnx_path))
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    output = graph.output[0].name
    concat = next((n for n in graph.node if output in n.output and n.op_type == "Concat"), None)
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.value_info}
    boxes = concat.input[0] if concat is not None else None
    axis = next((a.i for a in concat.attribute if a.name == "axis"), None) if concat is not None else None
    if boxes is None or axis != 1 or dims.get(boxes, [])[:2] != [1, 4]:
        raise ExportError(
            "this detector's output is not Concat(boxes (1, 4, N), scores) as edgectl's TFLite export expects",
            hint="export the model with Ultralytics' default head, or build --task other",
        )
    height, width = (d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[2:4])
    scale = np.array([1 / width, 1 / height, 1 / width, 1 / height], np.float32).reshape(1, 4, 1)
    graph.initializer.append(numpy_helper.from_array(scale, "edgectl_box_scale"))
    normalized = "edgectl_boxes_normalized"
    mul = helper.make_node("Mul", [boxes, "edgectl_box_scale"], [normalized], name="edgectl_normalize_boxes")
    concat.input[0] = normalized
    nodes = list(graph.node)
    graph.ClearField("node")
    at = nodes.index(concat)
    graph.node.extend([*nodes[:at], mul, *nodes[at:]])
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return out_path


def embed_metadata(model: bytes, metadata: dict) -> bytes:
    """The flatbuffer with a zip holding metadata.json appended, as Ultralytics' own TFLite exports carry."""
    import io
    import json
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(METADATA_ENTRY, json.dumps(metadata, sort_keys=True))
    return model + buffer.getvalue()


def embedded_metadata(path: Path) -> dict:
    """The metadata.json a TFLite file carries (edgectl's or Ultralytics'), or {} when it has none."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            if METADATA_ENTRY in archive.namelist():
                value = json.loads(archive.read(METADATA_ENTRY))
                return value if isinstance(value, dict) else {}
    except (zipfile.BadZipFile, OSError, ValueError):
        pass
    return {}


def ultralytics_metadata(labels: list[str], input_shape: list[int], name: str) -> dict:
    """Metadata in the keys Ultralytics' backends read: task, names, imgsz, stride, batch, channels."""
    from edgebase.deps import version_of

    height, width = input_shape[2], input_shape[3]
    return {
        "description": f"{name}: built by edgectl; box rows normalized to 0..1 by the input size",
        "author": "edgectl",
        "version": version_of("edgectl"),
        "task": "detect",
        "batch": 1,
        "channels": int(input_shape[1]),
        "imgsz": [int(height), int(width)],
        "stride": 32,
        "names": {str(i): label for i, label in enumerate(labels)},
        "edgectl_boxes": "normalized",
    }
