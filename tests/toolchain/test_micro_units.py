"""TFLite Micro pieces that need no conversion: the op table and the code-size table against the
installed binary, the flatbuffer reader, the runner's routing, the generated C array, the fit arithmetic."""

from __future__ import annotations

import re
import subprocess

import pytest

from toolchain.backends.tflite_micro import codesize as micro_codesize
from toolchain.backends.tflite_micro.ops import RESOLVER_METHODS

# Registrations in the TFLM binary that are not builtin operators (custom ops, internal variants).
NOT_BUILTIN = {
    "BASIC_CLASSIFIER",
    "CIRCULAR_BUFFER",
    "DECODE",
    "DETECTION_POSTPROCESS",
    "ETHOSU",
    "L2NORM_REF",
}


def _registered_kernels() -> set[str]:
    symbols = subprocess.run(
        ["nm", "-C", str(micro_codesize.shared_object())], capture_output=True, text=True, check=True
    ).stdout
    return set(re.findall(r"tflite::micro::Register_([A-Z0-9_]+)\(\)", symbols))


def test_op_table_is_exactly_the_builtins_the_installed_tflm_has_kernels_for():
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    builtins = {name for name in vars(schema.BuiltinOperator) if not name.startswith("_")}
    assert set(RESOLVER_METHODS) == _registered_kernels() - NOT_BUILTIN
    assert set(RESOLVER_METHODS) <= builtins
    assert all(re.fullmatch(r"Add[A-Z][A-Za-z0-9]*", method) for method in RESOLVER_METHODS.values())
    assert len(set(RESOLVER_METHODS.values())) == len(RESOLVER_METHODS)


def test_kernel_size_table_regenerates_from_the_installed_binary():
    """The shipped table is what `python -m toolchain.backends.tflite_micro.codesize` measures on this tflite-micro."""
    assert micro_codesize.measure() == micro_codesize.load_table()


def test_code_size_of_a_set_of_ops_counts_shared_helpers_once():
    table = micro_codesize.load_table()
    assert set(RESOLVER_METHODS) <= set(table["kernels"])
    one = micro_codesize.estimate(["CONV_2D"])
    four = micro_codesize.estimate(["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "AVERAGE_POOL_2D"])
    assert one.core_bytes == four.core_bytes > 10_000
    assert one.kernel_bytes == one.per_op["CONV_2D"] > 0
    assert max(four.per_op.values()) < four.kernel_bytes < sum(four.per_op.values())  # shared code once
    assert micro_codesize.estimate(["NOT_AN_OP"]).unknown == ["NOT_AN_OP"]


def test_micro_artifacts_route_to_the_tflm_runner():
    from pathlib import Path

    from toolchain.backends.tflite_micro.runner import MicroRunner
    from toolchain.runners import RUNNERS, runtime_for

    assert runtime_for(Path("model_int8.micro.tflite")) == "tflite-micro"
    assert runtime_for(Path("model_int8.tflite")) == "tflite"
    assert RUNNERS["tflite-micro"] is MicroRunner


def test_layer_labels_name_the_op_not_its_fused_activation():
    from toolchain.backends.tflite_micro.model import layer_label

    fused = (
        "model_2/tf.nn.relu_1/Relu;model_2/tf.math.add_3/Add;model_2/tf.nn.convolution_3/convolution;Const_1"
    )
    assert layer_label(fused) == "tf.nn.convolution_3/convolution"
    assert layer_label("model/tf.math.sign/Sign") == "tf.math.sign/Sign"
    assert layer_label("PartitionedCall:0") == "PartitionedCall:0"


def test_c_array_compiles_and_round_trips_every_byte_value(tmp_path):
    from toolchain.backends.tflite_micro.codegen import model_data_cc, model_data_h

    data = bytes(range(256)) * 3 + b"\x00\x7f"  # every value, a length that is no multiple of 16
    (tmp_path / "model_data.h").write_text(model_data_h("test", data))
    (tmp_path / "model_data.cc").write_text(model_data_cc("test", data))
    (tmp_path / "main.cc").write_text(
        '#include <cstdio>\n#include "model_data.h"\n'
        "int main() { std::fwrite(g_model_data, 1, g_model_data_len, stdout); return 0; }\n"
    )
    flags = ["g++", "-std=c++17", "-Wall", "-Werror", f"-I{tmp_path}"]
    subprocess.run(
        [*flags, tmp_path / "main.cc", tmp_path / "model_data.cc", "-o", tmp_path / "dump"], check=True
    )
    assert subprocess.run([tmp_path / "dump"], check=True, capture_output=True).stdout == data


@pytest.mark.parametrize(("measured", "conv_in", "expected_scratch"), [(5488, 32, 1152), (72176, 128, 4608)])
def test_arena_margin_states_its_parts(measured, conv_in, expected_scratch):
    from toolchain.backends.tflite_micro.arena import arena_margin
    from toolchain.backends.tflite_micro.model import MicroModel, Op, Tensor

    tensors = [
        Tensor(0, "in", [1, 8, 8, conv_in], "INT8", False),
        Tensor(1, "filter", [16, 3, 3, conv_in], "INT8", True),
        Tensor(2, "out", [1, 8, 8, 16], "INT8", False),
    ]
    model = MicroModel(tensors, [Op(0, "CONV_2D", False, [0, 1], [2])], [0], [2], 0)
    margin, rule = arena_margin(measured, model)
    share = -(-int(measured * 0.10) // 16) * 16
    assert margin == share + expected_scratch
    assert f"{share} B" in rule and f"{expected_scratch} B" in rule and "CMSIS-NN" in rule
