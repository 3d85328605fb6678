"""Export a source to ONNX once, simplify it, check it, and cache it across targets and builds.

The cache key is everything that changes the bytes: the source hash, the
input shape, the opset and the versions of the exporting libraries. Entries
are written to a temporary name and renamed, so a crash never leaves a
half-written model that a later build would trust.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebase.deps import require, version_of
from edgebundle.manifest import TensorSpec
from toolchain.cache import cache_key, cached
from toolchain.errors import ExportError, UserInputError
from toolchain.source_export import load_torch_module
from toolchain.sources import SOURCE_KINDS, SourceModel

DEFAULT_DOMAINS = ("", "ai.onnx")

ONNX_DTYPES = {1: "float32", 10: "float16", 3: "int8", 2: "uint8", 6: "int32", 7: "int64"}


def model_opset(model) -> int:
    """The default-domain opset a loaded ONNX model imports (0 when it imports none)."""
    return max((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), default=0)


def export_opset(source: SourceModel, ceiling: int, preferred: int) -> int:
    """The opset of the FP32 ONNX model for a target that runs at most `ceiling`.

    An ONNX source keeps its own opset when the target runs it, and is converted down to the ceiling
    otherwise (checked numerically, see `toolchain.opset.downgrade_opset`); edgectl's own exports use `preferred`.
    """
    if source.kind == "onnx":
        import onnx

        try:
            current = model_opset(onnx.load(source.location, load_external_data=False))
        except Exception:  # not readable as ONNX: the exporter refuses it with a hint
            current = 0
        if current > 0:
            return min(current, ceiling)
    return min(preferred, ceiling)


def onnx_input_shape(path: Path) -> list[int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(graph_inputs) != 1:
        raise UserInputError(
            f"{path.name} has {len(graph_inputs)} inputs; edgectl builds single-input models",
            hint="wrap the model so it takes one tensor",
        )
    return [d.dim_value if d.dim_value > 0 else -1 for d in graph_inputs[0].type.tensor_type.shape.dim]


def tensor_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def spec(value) -> TensorSpec:
        tensor_type = value.type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else -1 for d in tensor_type.shape.dim]
        return TensorSpec(
            name=value.name, shape=shape, dtype=ONNX_DTYPES.get(tensor_type.elem_type, "float32")
        )

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def _finalize(raw: Path, dest: Path, shape: list[int]) -> None:
    """Static input shape, named nodes, simplified graph, then shape inference."""
    import onnx

    model = onnx.load(str(raw))
    initializers = {i.name for i in model.graph.initializer}
    graph_input = next(i for i in model.graph.input if i.name not in initializers)
    dims = graph_input.type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise UserInputError(
            f"--input-shape {shape} has {len(shape)} axes, the model's input has {len(dims)}",
            hint="give one size per axis, batch first, e.g. 1,3,224,224",
        )
    for dim, size in zip(dims, shape, strict=True):
        if dim.dim_value > 0 and dim.dim_value != size:
            raise UserInputError(
                f"--input-shape {shape} does not fit the model's input {[d.dim_value for d in dims]}",
                hint="leave --input-shape out, or match the model's fixed axes",
            )
        dim.ClearField("dim_param")
        dim.dim_value = size
    for output in model.graph.output:  # let inference fill them from the now static input
        for dim in output.type.tensor_type.shape.dim:
            if dim.dim_value <= 0:
                dim.ClearField("dim_param")
    used: set[str] = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    import onnxslim

    try:
        model = onnxslim.slim(model)
    except Exception as exc:  # simplification is an optimisation; an un-simplified model is still right
        import logging

        logging.getLogger(__name__).warning("onnxslim could not simplify the graph: %s", exc)
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(dest))


def _cache_key(source: SourceModel, shape: list[int], opset: int) -> str:
    payload = {
        "source": source.sha256,
        "kind": source.kind,
        "shape": shape,
        "opset": opset,
        "versions": [version_of(d) for d in ("edgectl", "torch", "onnx", "onnxslim", "ultralytics")],
    }
    return cache_key(payload)


def export_onnx(source: SourceModel, shape: list[int], opset: int) -> tuple[Path, bool]:
    """Return (path of the cached FP32 ONNX model, whether it came from the cache)."""
    kind = SOURCE_KINDS[source.kind]
    require("onnx", extra="build", purpose="exporting to ONNX")
    require(kind.needs, extra="build", purpose=f"reading a {source.kind} model")
    if any(d <= 0 for d in shape):
        raise UserInputError(
            f"the input shape {shape} is not fully known", hint="pass --input-shape, e.g. 1,3,224,224"
        )

    def make(work: Path) -> Path:
        raw = work / "raw.onnx"
        kind.export(source, shape, raw, opset)
        staged = work / "model.onnx"
        _finalize(raw, staged, shape)
        if source.kind != "onnx":
            check_export(source, staged, shape)
        return staged

    name = f"{_cache_key(source, shape, opset)}.onnx"
    return cached("onnx", name, make, complete=Path.is_file, prefix="edgectl-export-")


def check_export(source: SourceModel, onnx_path: Path, shape: list[int], atol: float = 1e-3) -> None:
    """Run the source in PyTorch and the export in ONNX Runtime on the same input; they must agree."""
    import onnxruntime as ort
    import torch

    module = load_torch_module(source)
    if module is None:
        return  # Ultralytics checks its own export; its eval output is a tuple of train-time tensors
    rng = np.random.default_rng(0)
    x = rng.random(shape, dtype=np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x))
    expected = expected[0] if isinstance(expected, (tuple, list)) else expected
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    expected = expected.numpy()
    if got.shape != expected.shape:
        raise ExportError(
            f"the ONNX export's output shape {list(got.shape)} differs from the source's {list(expected.shape)}",
            hint="export the model to ONNX yourself and pass the .onnx file",
        )
    scale = max(float(np.abs(expected).max()), 1.0)
    error = float(np.abs(got - expected).max())
    if error > atol * scale:
        raise ExportError(
            f"the ONNX export differs from the source model (max abs error {error:.3g})",
            hint="export the model to ONNX yourself and pass the .onnx file",
        )
