"""The FP16 emulation that stands in for Core ML's predictions off macOS (toolchain/backends/coreml/emulate.py).

What it must be to mean anything: it really rounds (ONNX Runtime does not fold the casts away), its error
is the size of PyTorch's own FP16 error on the same inputs, and it carries the package's compressed
weights exactly, so a 4-bit package shows its compression error.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgebase import deps

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(digits):
    from toolchain.onnx_export import export_onnx
    from toolchain.sources import resolve_source

    source = resolve_source(str(digits.model))
    path, _ = export_onnx(source, [1, 1, 32, 32], 17)
    return path, source


@pytest.fixture(scope="module")
def inputs(digits):
    from edgebundle.manifest import Preprocessing
    from toolchain.data import load_calibration

    return load_calibration(digits.calib, Preprocessing(color="GRAY"), [1, 1, 32, 32], 32)


def _outputs(path, inputs) -> np.ndarray:
    from toolchain.runners import open_runner, run_all

    return run_all(open_runner("onnxruntime", path), inputs)[0]


def test_fp16_emulation_rounds_and_matches_pytorch_half_in_size(reference, inputs, tmp_path):
    import torch

    from toolchain.backends.coreml.emulate import emulate

    path, source = reference
    emulation = emulate(path, tmp_path / "fp16.onnx")
    assert emulation.fp16 and emulation.rounded_tensors >= 15 and emulation.compressed == 0
    fp32 = _outputs(path, inputs)
    emulated = _outputs(emulation.path, inputs)
    emulation_error = np.abs(emulated - fp32).max()

    module = torch.jit.load(source.location).eval()
    with torch.no_grad():
        half = module.half()(torch.from_numpy(inputs).half()).float().numpy()
    torch_error = np.abs(half - fp32).max()
    assert emulation_error > 0  # the casts survived ONNX Runtime's graph optimizations
    assert torch_error / 4 < emulation_error < torch_error * 4, (emulation_error, torch_error)
    assert (emulated.argmax(1) == fp32.argmax(1)).all()


def test_fp32_emulation_is_the_reference(reference, inputs, tmp_path):
    from toolchain.backends.coreml.emulate import emulate

    path, _ = reference
    emulation = emulate(path, tmp_path / "fp32.onnx", fp16=False)
    assert not emulation.fp16 and "nothing changed" in emulation.describe()
    np.testing.assert_array_equal(_outputs(emulation.path, inputs), _outputs(path, inputs))


def test_compressed_weights_come_from_the_package(reference, inputs, tmp_path):
    """A 4-bit palettized package: the emulation takes its 16-value weights, one per reference weight."""
    import onnx
    from onnx import numpy_helper

    from edgebundle.manifest import Preprocessing
    from toolchain.backends.coreml import compress as coreml_compress
    from toolchain.backends.coreml import model as coreml_model
    from toolchain.backends.coreml import package as coreml_package
    from toolchain.backends.coreml.emulate import emulate

    path, source = reference
    ct = deps.import_coremltools()
    image = coreml_model.image_input(Preprocessing(color="GRAY"), [1, 1, 32, 32])
    plan = coreml_model.Conversion(
        module=coreml_model.source_module(source), input_shape=[1, 1, 32, 32], image=image
    )
    mlmodel, mode, _, _ = coreml_compress.compress(ct, coreml_model.convert(ct, plan), "fp16", 4)
    package = tmp_path / "p4.mlpackage"
    mlmodel.save(str(package))
    dense = coreml_package.dense_weights(coreml_package.read_package(package))
    assert mode == "palettized" and len(dense) == 5
    assert all(len(np.unique(values)) <= 16 for _, values in dense)

    emulation = emulate(path, tmp_path / "p4.onnx", dense)
    assert (emulation.from_package, emulation.compressed, emulation.unmatched) == (5, 5, [])
    replaced = [
        i for i in onnx.load(str(emulation.path)).graph.initializer if i.name.startswith("onnx::Conv")
    ]
    assert sum(len(np.unique(numpy_helper.to_array(i))) <= 16 for i in replaced) == 5
    fp16_only = np.abs(
        _outputs(emulate(path, tmp_path / "fp16.onnx").path, inputs) - _outputs(path, inputs)
    ).max()
    palettized = np.abs(_outputs(emulation.path, inputs) - _outputs(path, inputs)).max()
    assert palettized > 5 * fp16_only  # the compression error is in the figures, not only FP16 rounding
