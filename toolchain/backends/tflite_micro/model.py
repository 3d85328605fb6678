"""What a TFLite flatbuffer holds, as a microcontroller build needs to know it: ops, tensors, lifetimes.

Read with the flatbuffer schema that ships with the `tflite-micro` package, so
nothing here needs TensorFlow. The figures derived here (weight bytes per op,
activation bytes alive at each op) explain a fit report; the arena size itself
is measured by running the model (`toolchain.backends.tflite_micro.arena`), never derived.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

# Bytes per element of the tensor types a microcontroller model may hold; others count as 8 (upper bound).
_TYPE_BYTES = {
    "FLOAT32": 4,
    "FLOAT16": 2,
    "INT32": 4,
    "UINT8": 1,
    "INT64": 8,
    "BOOL": 1,
    "INT16": 2,
    "INT8": 1,
    "FLOAT64": 8,
    "UINT32": 4,
    "UINT16": 2,
}
_NUMPY_DTYPE = {
    "FLOAT32": "float32",
    "FLOAT16": "float16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
}


@dataclass
class Tensor:
    index: int
    name: str
    shape: list[int]
    type: str  # schema name: INT8, FLOAT32, ...
    constant: bool  # holds data in the flatbuffer (weights, biases, shape operands)
    scale: float | None = None  # per-tensor quantization, when the tensor has exactly one scale
    zero_point: int | None = None

    @property
    def bytes(self) -> int:
        count = 1
        for d in self.shape:
            count *= max(int(d), 1)
        return count * _TYPE_BYTES.get(self.type, 8)

    @property
    def numpy_dtype(self) -> str:
        return _NUMPY_DTYPE.get(self.type, "float32")


@dataclass
class Op:
    index: int
    name: str  # builtin operator name (CONV_2D) or the custom op's code
    custom: bool
    inputs: list[int]
    outputs: list[int]
    # what the op is called in the model: its first output tensor's name (the converter's layer name)
    layer: str = ""
    weight_bytes: int = 0  # constant inputs (weights, biases)


@dataclass
class MicroModel:
    tensors: list[Tensor]
    ops: list[Op]
    inputs: list[int]
    outputs: list[int]
    size_bytes: int
    # bytes of the non-constant tensors alive while each op runs (its inputs, outputs, and everything
    # produced earlier and consumed later): a lower bound of the arena's tensor area at that op
    live_bytes: list[int] = field(default_factory=list)

    @property
    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.name] = counts.get(op.name, 0) + 1
        return dict(sorted(counts.items()))

    @property
    def weight_bytes(self) -> int:
        return sum(t.bytes for t in self.tensors if t.constant)

    def peak_op(self) -> Op | None:
        """The op during which the most activation bytes are alive: the layer that sizes the arena."""
        if not self.ops:
            return None
        return self.ops[max(range(len(self.ops)), key=lambda i: self.live_bytes[i])]

    def heaviest_ops(self, count: int = 3) -> list[Op]:
        return sorted((op for op in self.ops if op.weight_bytes), key=lambda op: -op.weight_bytes)[:count]


@cache
def _enum_names(enum_name: str) -> dict[int, str]:
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    enum = getattr(schema, enum_name)
    return {value: key for key, value in vars(enum).items() if not key.startswith("_")}


def layer_label(tensor_name: str) -> str:
    """The op's own name in a converter's fused tensor name: 'm/tf.nn.relu/Relu;m/tf.nn.convolution/conv;Const_3'
    names a convolution with its activation fused in, so this returns 'tf.nn.convolution/conv'."""
    parts = [p for p in tensor_name.split(";") if p and not p.startswith(("Const", "tfl."))]
    if not parts:
        return tensor_name
    last = parts[-1]
    return last.split("/", 1)[1] if last.count("/") >= 2 else last


def read_model(model: bytes) -> MicroModel:
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    parsed = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    # control flow (IF, WHILE) brings more subgraphs: the main one is described here, all are measured
    graph = parsed.subgraphs[0]
    types = _enum_names("TensorType")
    builtins = _enum_names("BuiltinOperator")
    tensors = []
    for index, t in enumerate(graph.tensors or []):
        buffer = parsed.buffers[t.buffer] if parsed.buffers and t.buffer < len(parsed.buffers) else None
        constant = buffer is not None and (
            (buffer.data is not None and len(buffer.data) > 0) or bool(getattr(buffer, "size", 0))
        )
        scale = zero_point = None
        q = t.quantization
        if q is not None and q.scale is not None and len(q.scale) == 1:
            scale, zero_point = float(q.scale[0]), int(q.zeroPoint[0]) if q.zeroPoint is not None else 0
        tensors.append(
            Tensor(
                index=index,
                name=(t.name or b"").decode("utf-8", "replace"),
                shape=[int(d) for d in (t.shape if t.shape is not None else [])],
                type=types.get(t.type, str(t.type)),
                constant=constant,
                scale=scale,
                zero_point=zero_point,
            )
        )
    ops = []
    for index, o in enumerate(graph.operators or []):
        code = parsed.operatorCodes[o.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        custom = builtins.get(builtin) == "CUSTOM"
        name = (code.customCode or b"").decode() if custom else builtins.get(builtin, str(builtin))
        inputs = [int(i) for i in (o.inputs if o.inputs is not None else []) if i >= 0]
        outputs = [int(i) for i in (o.outputs if o.outputs is not None else []) if i >= 0]
        ops.append(
            Op(
                index=index,
                name=name,
                custom=custom,
                inputs=inputs,
                outputs=outputs,
                layer=layer_label(tensors[outputs[0]].name) if outputs else "",
                weight_bytes=sum(tensors[i].bytes for i in inputs if tensors[i].constant),
            )
        )
    result = MicroModel(
        tensors=tensors,
        ops=ops,
        inputs=[int(i) for i in graph.inputs],
        outputs=[int(i) for i in graph.outputs],
        size_bytes=len(model),
    )
    result.live_bytes = _live_bytes(result)
    return result


def _live_bytes(model: MicroModel) -> list[int]:
    first: dict[int, int] = {i: 0 for i in model.inputs}
    last: dict[int, int] = {}
    end = len(model.ops) - 1
    for op in model.ops:
        for i in op.outputs:
            first.setdefault(i, op.index)
        for i in op.inputs:
            last[i] = op.index
    for i in model.outputs:
        last[i] = end
    live = [0] * len(model.ops)
    for index, tensor in enumerate(model.tensors):
        if tensor.constant or index not in first:
            continue
        for op_index in range(first[index], last.get(index, first[index]) + 1):
            live[op_index] += tensor.bytes
    return live
