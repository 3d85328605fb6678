"""Compressing a Core ML model's weights as asked (8-bit linear, or palettized), and saying what was
compressed in words nobody can take for full INT8: activations and compute stay float."""

from __future__ import annotations

from edgebundle.manifest import CoreMLWeights
from toolchain.backends.coreml.model import COMPRESSED_OPS, INT8_CONFIG
from toolchain.errors import UserInputError


def compress(ct, mlmodel, precision: str, palettize: int | None):
    """Compress the weights of `mlmodel` as asked: returns the model, the mode, its bits and granularity."""
    import coremltools.optimize.coreml as cto

    if precision == "int8" and palettize:
        raise UserInputError(
            "--palettize and --precision int8 are two ways to compress Core ML weights; pick one",
            hint="drop --palettize for 8-bit linear weights, or pass --precision fp16 with --palettize",
        )
    if precision == "int8":
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(**INT8_CONFIG))
        return cto.linear_quantize_weights(mlmodel, config=config), "int8-linear", 8, "per-channel"
    if palettize:
        config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=palettize))
        return cto.palettize_weights(mlmodel, config=config), "palettized", palettize, "per-tensor"
    compute = "fp32" if precision == "fp32" else "fp16"
    return mlmodel, compute, 32 if compute == "fp32" else 16, None


def op_counts(mlmodel) -> dict[str, int]:
    """How many ops of each type the package's ML Program has, read from the model's spec."""
    from collections import Counter

    spec = mlmodel.get_spec()
    program = spec.pipeline.models[0].mlProgram if spec.WhichOneof("Type") == "pipeline" else spec.mlProgram
    counts: Counter = Counter()
    for function in program.functions.values():
        for block in function.block_specializations.values():
            counts.update(op.type for op in block.operations)
    return dict(counts)


def compressed_tensors(mlmodel, mode: str) -> int:
    counts = op_counts(mlmodel)
    return sum(counts.get(op, 0) for op in COMPRESSED_OPS.get(mode, ()))


def weights_report(
    mode: str, bits: int, granularity: str | None, compressed: int, compute: str
) -> CoreMLWeights:
    """What is compressed, in words nobody can take for full INT8."""
    if mode == "int8-linear":
        summary = (
            f"weights only: {compressed} weight tensors stored as int8 (linear, symmetric, one scale per "
            f"output channel), dequantized to {compute} when Core ML loads the model; activations and compute "
            f"stay {compute}. This is not full INT8."
        )
    elif mode == "palettized":
        summary = (
            f"weights only: {compressed} weight tensors palettized to {bits} bits (a {2**bits}-entry lookup "
            f"table per tensor, k-means), expanded to {compute} when Core ML loads the model; activations and "
            f"compute stay {compute}"
        )
    else:
        summary = f"{compute} weights, activations and compute; nothing is quantized"
    return CoreMLWeights(
        mode=mode, bits=bits, granularity=granularity, compressed_tensors=compressed, summary=summary
    )
