"""The numerical check of a Core ML package where Core ML cannot run: an FP16 emulation in ONNX Runtime.

Core ML predicts only on macOS. On other hosts the build judges, with the pipeline's own metrics and
gate on the user's validation data, the FP32 ONNX reference rewritten so that it carries the package's
numerical choices:

- every weight the package stores compressed (int8 or palettized) is replaced by the package's own
  values, decompressed as Core ML decompresses them (read back from the saved package and matched to the
  reference's weights by shape and nearest values);
- every other weight, the input and every intermediate tensor is rounded to FP16 (a Cast to float16 and
  back after each op), as an FP16 ML Program stores them.

Arithmetic stays FP32, so this bounds the error of FP16 storage and of the weight compression, not of
Core ML's kernels (which may also accumulate in FP16) nor of its runtime: it is reported as exactly that.
PyTorch computing in FP16 on the same inputs gives errors of the same size (tests/toolchain/test_coreml_emulate.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# A package weight matches a reference weight when their relative L2 distance is below this: int8 and
# palettized weights are within a few percent of the originals, two different layers' weights are not.
MATCH_TOLERANCE = 0.3


@dataclass
class Emulation:
    path: Path
    rounded_tensors: int  # tensors rounded to FP16 after the op that makes them
    from_package: int  # reference weights replaced by the package's decompressed weights
    compressed: int  # weights the package stores compressed
    unmatched: list[str] = field(default_factory=list)  # compressed package weights with no reference weight
    fp16: bool = True

    def describe(self) -> str:
        weights = (
            f"{self.from_package} of the package's {self.compressed} compressed weights as stored in it"
            if self.compressed
            else ""
        )
        if self.fp16:
            what = f"{weights}, every other weight" if weights else "every weight"
            what += f", the input and {self.rounded_tensors} "
            what += "intermediate tensors rounded to FP16 as the package stores them"
        else:
            what = weights or "nothing changed: the package computes in FP32 with the source's weights"
        return (
            "Core ML cannot predict on this host (macOS only): the figures are the FP32 ONNX reference with "
            f"{what}, run by ONNX Runtime in FP32 arithmetic; this bounds the error of the package's number "
            "formats, not of Core ML's kernels"
        )


def _rounded(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float16).astype(np.float32)


def _match(package_weights: list[tuple[str, np.ndarray]], initializers: dict[str, np.ndarray]):
    """Pair each package weight with the reference weight it was made from: same size, nearest values."""
    pairs = []
    for name, dense in package_weights:
        for init_name, original in initializers.items():
            if original.size != dense.size:
                continue
            if original.shape == dense.shape:
                candidate = dense
            elif (
                dense.ndim == 2 and original.shape == dense.T.shape
            ):  # MatMul keeps (in, out), Core ML (out, in)
                candidate = dense.T
            else:
                continue
            norm = float(np.linalg.norm(original)) or 1.0
            distance = float(np.linalg.norm(candidate.astype(np.float64) - original)) / norm
            if distance < MATCH_TOLERANCE:
                pairs.append((distance, name, init_name, candidate))
    used_package, used_reference, chosen = set(), set(), {}
    for _distance, name, init_name, candidate in sorted(pairs, key=lambda p: p[0]):
        if name in used_package or init_name in used_reference:
            continue
        used_package.add(name)
        used_reference.add(init_name)
        chosen[init_name] = np.ascontiguousarray(candidate, dtype=np.float32)
    unmatched = [name for name, _ in package_weights if name not in used_package]
    return chosen, unmatched


def emulate(
    reference: Path,
    out: Path,
    package_weights: list[tuple[str, np.ndarray]] | None = None,
    *,
    fp16: bool = True,
) -> Emulation:
    """Write `out`: the ONNX model `reference` with the package's weights and, with `fp16`, FP16 rounding."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(reference)))
    graph = model.graph
    package_weights = package_weights or []
    initializers = {
        i.name: numpy_helper.to_array(i) for i in graph.initializer if i.data_type == TensorProto.FLOAT
    }
    from_package, unmatched = _match(package_weights, initializers)
    keep = (lambda array: array) if not fp16 else _rounded
    for init in graph.initializer:
        if init.name in initializers:
            value = from_package.get(init.name)
            value = keep(value if value is not None else initializers[init.name])
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    if not fp16:
        onnx.save(model, str(out))
        return Emulation(Path(out), 0, len(from_package), len(package_weights), unmatched, fp16=False)
    for node in graph.node:  # constants written as Constant nodes (anchors, strides) are weights too
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.t.data_type == TensorProto.FLOAT:
                    attribute.t.CopyFrom(
                        numpy_helper.from_array(_rounded(numpy_helper.to_array(attribute.t)))
                    )

    typed = list(graph.value_info) + list(graph.output) + list(graph.input)
    floats = {v.name for v in typed if v.type.tensor_type.elem_type == TensorProto.FLOAT}

    def round_trip(source: str, target: str) -> list:
        half = f"{target}__fp16"
        return [
            helper.make_node("Cast", [source], [half], to=TensorProto.FLOAT16, name=f"{target}__to_fp16"),
            helper.make_node("Cast", [half], [target], to=TensorProto.FLOAT, name=f"{target}__to_fp32"),
        ]

    nodes, renamed = [], {}
    for graph_input in graph.input:
        if graph_input.name in floats and graph_input.name not in initializers:
            renamed[graph_input.name] = f"{graph_input.name}__rounded"
            nodes += round_trip(graph_input.name, renamed[graph_input.name])
    rounded = 0
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in renamed:
                node.input[index] = renamed[name]
        produced = [name for name in node.output if name in floats and node.op_type != "Constant"]
        for index, name in enumerate(node.output):
            if name in produced:
                node.output[index] = f"{name}__fp32"
        nodes.append(node)
        for name in produced:
            nodes += round_trip(f"{name}__fp32", name)
            rounded += 1
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return Emulation(
        path=Path(out),
        rounded_tensors=rounded,
        from_package=len(from_package),
        compressed=len(package_weights),
        unmatched=unmatched,
        fp16=True,
    )
