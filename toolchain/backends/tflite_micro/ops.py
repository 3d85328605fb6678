"""The ops TensorFlow Lite Micro can run, and the `MicroMutableOpResolver` method that registers each.

The table is data. Its keys are exactly the builtin operators for which the
installed `tflite-micro` binary exports a `Register_<OP>()` kernel (a test
checks this against the binary's symbol table); the method names are those of
`tensorflow/lite/micro/micro_mutable_op_resolver.h` in upstream TFLM
(https://github.com/tensorflow/tflite-micro), which the generated `model_ops.h`
calls. Custom ops (those a model names by string) are not registered by
edgectl: a model that uses one is refused with its name.
"""

from __future__ import annotations

from pathlib import Path

from toolchain.backends.tflite_micro.model import MicroModel, Op
from toolchain.errors import EdgectlError

RESOLVER_METHODS: dict[str, str] = {
    "ABS": "AddAbs",
    "ADD": "AddAdd",
    "ADD_N": "AddAddN",
    "ARG_MAX": "AddArgMax",
    "ARG_MIN": "AddArgMin",
    "ASSIGN_VARIABLE": "AddAssignVariable",
    "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_MATMUL": "AddBatchMatMul",
    "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "BROADCAST_ARGS": "AddBroadcastArgs",
    "BROADCAST_TO": "AddBroadcastTo",
    "CALL_ONCE": "AddCallOnce",
    "CAST": "AddCast",
    "CEIL": "AddCeil",
    "CONCATENATION": "AddConcatenation",
    "CONV_2D": "AddConv2D",
    "COS": "AddCos",
    "CUMSUM": "AddCumSum",
    "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DEQUANTIZE": "AddDequantize",
    "DIV": "AddDiv",
    "DYNAMIC_UPDATE_SLICE": "AddDynamicUpdateSlice",
    "ELU": "AddElu",
    "EMBEDDING_LOOKUP": "AddEmbeddingLookup",
    "EQUAL": "AddEqual",
    "EXP": "AddExp",
    "EXPAND_DIMS": "AddExpandDims",
    "FILL": "AddFill",
    "FLOOR": "AddFloor",
    "FLOOR_DIV": "AddFloorDiv",
    "FLOOR_MOD": "AddFloorMod",
    "FULLY_CONNECTED": "AddFullyConnected",
    "GATHER": "AddGather",
    "GATHER_ND": "AddGatherNd",
    "GREATER": "AddGreater",
    "GREATER_EQUAL": "AddGreaterEqual",
    "HARD_SWISH": "AddHardSwish",
    "IF": "AddIf",
    "L2_NORMALIZATION": "AddL2Normalization",
    "L2_POOL_2D": "AddL2Pool2D",
    "LEAKY_RELU": "AddLeakyRelu",
    "LESS": "AddLess",
    "LESS_EQUAL": "AddLessEqual",
    "LOG": "AddLog",
    "LOGICAL_AND": "AddLogicalAnd",
    "LOGICAL_NOT": "AddLogicalNot",
    "LOGICAL_OR": "AddLogicalOr",
    "LOGISTIC": "AddLogistic",
    "LOG_SOFTMAX": "AddLogSoftmax",
    "MAXIMUM": "AddMaximum",
    "MAX_POOL_2D": "AddMaxPool2D",
    "MEAN": "AddMean",
    "MINIMUM": "AddMinimum",
    "MIRROR_PAD": "AddMirrorPad",
    "MUL": "AddMul",
    "NEG": "AddNeg",
    "NOT_EQUAL": "AddNotEqual",
    "PACK": "AddPack",
    "PAD": "AddPad",
    "PADV2": "AddPadV2",
    "PRELU": "AddPrelu",
    "QUANTIZE": "AddQuantize",
    "READ_VARIABLE": "AddReadVariable",
    "REDUCE_ALL": "AddReduceAll",
    "REDUCE_MAX": "AddReduceMax",
    "REDUCE_MIN": "AddReduceMin",
    "RELU": "AddRelu",
    "RELU6": "AddRelu6",
    "RESHAPE": "AddReshape",
    "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor",
    "REVERSE_V2": "AddReverseV2",
    "ROUND": "AddRound",
    "RSQRT": "AddRsqrt",
    "SELECT_V2": "AddSelectV2",
    "SHAPE": "AddShape",
    "SIN": "AddSin",
    "SLICE": "AddSlice",
    "SOFTMAX": "AddSoftmax",
    "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd",
    "SPACE_TO_DEPTH": "AddSpaceToDepth",
    "SPLIT": "AddSplit",
    "SPLIT_V": "AddSplitV",
    "SQRT": "AddSqrt",
    "SQUARE": "AddSquare",
    "SQUARED_DIFFERENCE": "AddSquaredDifference",
    "SQUEEZE": "AddSqueeze",
    "STRIDED_SLICE": "AddStridedSlice",
    "SUB": "AddSub",
    "SUM": "AddSum",
    "SVDF": "AddSvdf",
    "TANH": "AddTanh",
    "TRANSPOSE": "AddTranspose",
    "TRANSPOSE_CONV": "AddTransposeConv",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
    "UNPACK": "AddUnpack",
    "VAR_HANDLE": "AddVarHandle",
    "WHILE": "AddWhile",
    "ZEROS_LIKE": "AddZerosLike",
}

# Ops whose float tensors are expected in a full-integer model: they convert at its edges.
_CONVERSION_OPS = {"QUANTIZE", "DEQUANTIZE"}


class UnsupportedOpError(EdgectlError):
    """The model uses an op that TensorFlow Lite Micro has no kernel for."""


def unsupported_ops(model: MicroModel) -> list[Op]:
    return [op for op in model.ops if op.custom or op.name not in RESOLVER_METHODS]


def float_ops(model: MicroModel) -> list[Op]:
    """Ops that still compute in float in a model meant to be full-integer (TFLM runs them, slowly)."""
    found = []
    for op in model.ops:
        if op.name in _CONVERSION_OPS:
            continue
        touched = [model.tensors[i] for i in op.inputs + op.outputs if not model.tensors[i].constant]
        if any(t.type == "FLOAT32" for t in touched):
            found.append(op)
    return found


def onnx_nodes_by_type(onnx_path: Path | None) -> dict[str, list[str]]:
    """ONNX node names by lower-case op type, to name the source layer a TFLite op came from."""
    if onnx_path is None:
        return {}
    import onnx

    nodes: dict[str, list[str]] = {}
    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        nodes.setdefault(node.op_type.lower(), []).append(node.name or node.op_type)
    return nodes


def describe_op(op: Op, onnx_nodes: dict[str, list[str]]) -> str:
    """'SIGN (op 3, layer 'tf.math.sign/Sign', from ONNX node '/Sign')'."""
    what = f"custom op '{op.name}'" if op.custom else op.name
    text = f"{what} (op {op.index}, layer '{op.layer}'"
    # converter layer names end in the TensorFlow op type ('.../Sign'), which is the ONNX op type too
    source = onnx_nodes.get(op.layer.rsplit("/", 1)[-1].lower(), [])
    if source:
        quoted = ", ".join(f"'{name}'" for name in source[:3]) + (", ..." if len(source) > 3 else "")
        text += f", from ONNX node{'s' if len(source) > 1 else ''} {quoted}"
    return text + ")"


def check_supported(model: MicroModel, target: str, onnx_path: Path | None = None) -> None:
    missing = unsupported_ops(model)
    if not missing:
        return
    nodes = onnx_nodes_by_type(onnx_path)
    listed = "; ".join(describe_op(op, nodes) for op in missing)
    kinds = sorted({op.name for op in missing})
    raise UnsupportedOpError(
        f"target {target}: TensorFlow Lite Micro has no kernel for {', '.join(kinds)}: {listed}",
        hint="replace those layers with ops TFLite Micro runs (docs/micro.md lists them), "
        "or build for a Linux target such as rpi4",
    )


def resolver_methods(model: MicroModel) -> list[str]:
    """The resolver calls that register exactly the model's ops, in a stable (alphabetical) order."""
    return [RESOLVER_METHODS[name] for name in sorted({op.name for op in model.ops})]
