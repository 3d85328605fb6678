"""Converting an ONNX model down to a lower opset, checked numerically.

onnx's version converter lacks many down-adapters, and a model that only stamps a newer opset often
means the same under an older one. So `downgrade_opset` first tries onnx's converter, then restamps
the model (`restamp_opset`: node by node, rewriting the few ops whose inputs moved, e.g. a
reduction's `axes`, and refusing any op whose meaning changed); either way the converted model must
give the original's outputs on the same input, or the build fails naming the op.
"""

from __future__ import annotations

import numpy as np

from edgebase.deps import require
from edgebundle.manifest import ORT_DTYPES
from toolchain.errors import ExportError
from toolchain.onnx_export import DEFAULT_DOMAINS, model_opset

# Reductions whose `axes` moved from an attribute to an input, and the opset where it moved.
_AXES_INPUT_SINCE = {
    **dict.fromkeys(
        (
            "ReduceMean",
            "ReduceMax",
            "ReduceMin",
            "ReduceProd",
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceSumSquare",
        ),
        18,
    ),
    "ReduceSum": 13,
    "Squeeze": 13,
    "Unsqueeze": 13,
}


class _NotExpressible(Exception):
    """A node whose meaning at the model's opset has no equivalent at the lower one."""

    def __init__(self, node, version: int, reason: str) -> None:
        super().__init__(reason)
        self.op = f"{node.op_type}-{version}"
        self.node = node.name or node.op_type
        self.reason = reason


def _type_string(elem_type: int) -> str:
    import onnx

    return f"tensor({onnx.TensorProto.DataType.Name(elem_type).lower()})"


def _value_types(model) -> dict[str, int]:
    """Element type of every value shape inference can tell (graph and sub-graph values)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    types: dict[str, int] = {}

    def visit(graph) -> None:
        for value in [*graph.input, *graph.output, *graph.value_info]:
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
                types[value.name] = value.type.tensor_type.elem_type
        for init in graph.initializer:
            types[init.name] = init.data_type
        for node in graph.node:
            for attr in node.attribute:
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    visit(sub)

    visit(inferred.graph)
    return types


def _value_shapes(model) -> dict[str, list[int]]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return {}
    graph = inferred.graph
    return {
        v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
        for v in [*graph.input, *graph.output, *graph.value_info]
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")
    }


def _constant(graph, name: str):
    """The value of an initializer (or a Constant node's output) in `graph`, else None."""
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and list(node.output) == [name]:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


def _rewrite(graph, node, new_version: int, target: int, shapes: dict[str, list[int]]) -> None:
    """Rewrite a node whose newer form has an exact older spelling (e.g. Split-18 num_outputs -> split)."""
    import numpy as np
    from onnx import helper, numpy_helper

    attrs = {a.name: a for a in node.attribute}
    op = node.op_type
    if op == "Split" and target < 18 and "num_outputs" in attrs:
        count = attrs["num_outputs"].i
        axis = attrs["axis"].i if "axis" in attrs else 0
        dims = shapes.get(node.input[0], [])
        size = dims[axis] if dims and -len(dims) <= axis < len(dims) else -1
        if size <= 0:
            raise _NotExpressible(node, new_version, "num_outputs on an axis whose size is not static")
        chunk = -(-size // count)  # Split-18: every output but the last has ceil(size / num_outputs)
        sizes = [chunk] * (count - 1) + [size - chunk * (count - 1)]
        if len(node.output) != count or sizes[-1] <= 0:
            raise _NotExpressible(node, new_version, f"num_outputs={count} does not divide axis size {size}")
        name = f"{node.name or 'split'}_sizes"
        graph.initializer.append(numpy_helper.from_array(np.asarray(sizes, dtype=np.int64), name))
        node.attribute.remove(attrs["num_outputs"])
        del node.input[1:]
        node.input.append(name)
    since = _AXES_INPUT_SINCE.get(op)
    if since is not None and target < since <= new_version:
        if "noop_with_empty_axes" in attrs:
            if attrs["noop_with_empty_axes"].i:
                raise _NotExpressible(node, new_version, "noop_with_empty_axes=1 has no older equivalent")
            node.attribute.remove(attrs["noop_with_empty_axes"])
        if len(node.input) > 1 and node.input[1]:
            axes = _constant(graph, node.input[1])
            if axes is None:
                raise _NotExpressible(node, new_version, "its axes are computed at run time, not constant")
            del node.input[1:]
            node.attribute.append(helper.make_attribute("axes", [int(a) for a in np.asarray(axes).ravel()]))
    if op == "Split" and target < 13 and len(node.input) > 1 and node.input[1]:
        split = _constant(graph, node.input[1])
        if split is None:
            raise _NotExpressible(node, new_version, "its split sizes are computed at run time")
        del node.input[1:]
        node.attribute.append(helper.make_attribute("split", [int(v) for v in np.asarray(split).ravel()]))


def _allowed(schema, formal) -> set[str] | None:
    for constraint in schema.type_constraints:
        if constraint.type_param_str == formal.type_str:
            return set(constraint.allowed_type_strs)
    return {formal.type_str} if formal.type_str.startswith("tensor(") else None


def _drop_default_attributes(node, new, old) -> None:
    """An attribute the older version lacks, set to its default (Reshape-14 allowzero=0), means nothing."""
    from onnx import helper

    for attr in list(node.attribute):
        spec = new.attributes.get(attr.name)
        if attr.name in old.attributes or spec is None or not spec.default_value.name:
            continue
        if helper.get_attribute_value(attr) == helper.get_attribute_value(spec.default_value):
            node.attribute.remove(attr)


def _check_expressible(node, old, new_version: int, types: dict[str, int]) -> None:
    """Every attribute, input and type the node uses must exist in the older schema."""
    from onnx.defs import OpSchema

    variadic = OpSchema.FormalParameterOption.Variadic
    for attr in node.attribute:
        if attr.name not in old.attributes:
            raise _NotExpressible(
                node, new_version, f"attribute {attr.name} does not exist in {old.name}-{old.since_version}"
            )
    for kind, names, formals in (("input", node.input, old.inputs), ("output", node.output, old.outputs)):
        used = list(names)
        while used and not used[-1]:
            used.pop()
        if len(used) > len(formals) and not (formals and formals[-1].option == variadic):
            raise _NotExpressible(
                node, new_version, f"{len(used)} {kind}s, {old.name}-{old.since_version} takes {len(formals)}"
            )
        for index, name in enumerate(used):
            formal = formals[min(index, len(formals) - 1)]
            if not name and formal.option == OpSchema.FormalParameterOption.Single:
                raise _NotExpressible(
                    node,
                    new_version,
                    f"{kind} {formal.name} is optional here but required in {old.name}-{old.since_version}",
                )
            if not name or name not in types:
                continue
            allowed = _allowed(old, formal)
            if allowed is not None and _type_string(types[name]) not in allowed:
                raise _NotExpressible(
                    node,
                    new_version,
                    f"{kind} {index} is {_type_string(types[name])}, which "
                    f"{old.name}-{old.since_version} does not take",
                )


def restamp_opset(model, target: int):
    """Stamp `model` with the lower opset `target`, op by op, where each op means the same there.

    For every node whose operator changed between `target` and the model's opset, the older
    definition must take what the node uses (attributes, inputs, types); the few new spellings
    that have an exact old one are rewritten (Split-18 `num_outputs` -> a `split` input,
    reductions' `axes` input -> attribute). Anything else raises `_NotExpressible`.
    """
    import onnx
    from onnx import defs

    model = onnx.ModelProto.FromString(model.SerializeToString())
    current = model_opset(model)
    types = _value_types(model)
    shapes = _value_shapes(model)

    def visit(graph) -> None:
        for node in graph.node:
            for attr in node.attribute:
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    visit(sub)
            if node.domain not in DEFAULT_DOMAINS:
                continue
            try:
                new_version = defs.get_schema(node.op_type, current).since_version
            except defs.SchemaError:
                continue  # not a standard op (a model-local function): the checker below judges it
            try:
                old = defs.get_schema(node.op_type, target)
            except defs.SchemaError:
                raise _NotExpressible(
                    node, new_version, f"the operator does not exist before opset {new_version}"
                ) from None
            if old.since_version == new_version:
                continue
            _rewrite(graph, node, new_version, target, shapes)
            _drop_default_attributes(node, defs.get_schema(node.op_type, current), old)
            _check_expressible(node, old, new_version, types)

    visit(model.graph)
    for function in model.functions:
        visit(function)
        for imp in function.opset_import:
            if imp.domain in DEFAULT_DOMAINS and imp.version > target:
                imp.version = target
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS:
            imp.version = target
    return model


def _ir_version_for(opset: int) -> int:
    """The IR version of the first onnx release with `opset`: what a runtime of that age reads."""
    from onnx import helper

    versions = [ir for _, ir, ai_onnx, *_ in helper.VERSION_TABLE if ai_onnx == opset]
    return min(versions) if versions else helper.VERSION_TABLE[-1][1]


def downgrade_opset(model, target: int, filename: str, shape: list[int]):
    """Convert `model` down to opset `target`, then check it against the original in ONNX Runtime.

    onnx's version converter goes first; where it has no down-adapter (it lacks them for many ops
    whose definition only gained types or optional attributes: Mul-14, Split-18 ...), each op is
    restamped instead (`restamp_opset`). Only a real change of meaning fails, naming the op.
    """
    import onnx
    from onnx import version_converter

    current = model_opset(model)
    hint = (
        f"re-export the model from its source at opset {target} or lower, e.g. "
        f"torch.onnx.export(..., opset_version={target}) or YOLO(MODEL).export(format='onnx', opset={target})"
    )
    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
        how = "onnx's version converter"
    except Exception:
        try:
            converted = restamp_opset(model, target)
            how = "restamping"
        except _NotExpressible as exc:
            raise ExportError(
                f"{filename} uses opset {current}; the target runs at most opset {target}, and "
                f"{exc.op} (node {exc.node}) has no equivalent there: {exc.reason}",
                hint=hint,
            ) from exc
        try:
            onnx.checker.check_model(converted, full_check=True)
        except Exception as exc:
            raise ExportError(
                f"{filename} uses opset {current}; restamped to opset {target} it is not valid: "
                f"{str(exc).strip().splitlines()[0][:200]}",
                hint=hint,
            ) from exc
    if not converted.functions:  # model-local functions need IR 8
        converted.ir_version = min(converted.ir_version, _ir_version_for(target))
    _check_same_outputs(model, converted, shape, filename, target, how, hint)
    return converted


def _check_same_outputs(original, converted, shape, filename: str, target: int, how: str, hint: str) -> None:
    """Run both models in ONNX Runtime on the same random input; a conversion must not change the outputs."""
    import onnxruntime as ort

    require("onnxruntime", extra="build", purpose="checking an opset conversion")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        sessions = [
            ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
            for m in (original, converted)
        ]
    except Exception as exc:
        raise ExportError(
            f"{filename}: cannot check its conversion to opset {target} in ONNX Runtime ({how}): "
            f"{str(exc).strip().splitlines()[0][:200]}",
            hint=hint,
        ) from exc
    feed = {}
    rng = np.random.default_rng(0)
    for arg in sessions[0].get_inputs():
        dims = (
            shape
            if len(sessions[0].get_inputs()) == 1
            else [d if isinstance(d, int) else 1 for d in arg.shape]
        )
        dtype = np.dtype(ORT_DTYPES.get(arg.type, "float32"))
        feed[arg.name] = (
            rng.random(dims).astype(dtype)
            if dtype.kind == "f"
            else rng.integers(0, 2, size=dims).astype(dtype)
        )
    try:
        expected, got = (session.run(None, feed) for session in sessions)
    except Exception as exc:
        raise ExportError(
            f"{filename}: cannot run it at input shape {shape} to check its conversion to opset {target}: "
            f"{str(exc).strip().splitlines()[0][:200]}",
            hint="pass --input-shape matching the model's input",
        ) from exc
    for index, (want, have) in enumerate(zip(expected, got, strict=True)):
        want, have = np.asarray(want), np.asarray(have)
        scale = max(float(np.abs(want.astype(np.float64)).max()) if want.size else 0.0, 1.0)
        if want.shape != have.shape or (
            want.size
            and float(np.abs(want.astype(np.float64) - have.astype(np.float64)).max()) > 1e-4 * scale
        ):
            raise ExportError(
                f"{filename}: converted to opset {target} ({how}), output {index} differs from the original's",
                hint=hint,
            )
