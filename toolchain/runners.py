"""Run an artifact on the host, one table entry per runtime, for validation and benchmarks.

Each runtime's runner lives in its backend package (`toolchain/backends/<package>/runner.py`, its
`RUNNER`), found from the runtime table; this module holds the protocol they share, the table that
finds them, and the SavedModel runner (a Keras source's FP32 reference: a source, not a target).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from edgebase.deps import require
from edgebundle.manifest import TensorSpec
from targets.runtimes import RUNTIMES, runtime_for_suffix


class Runner(Protocol):
    """`run` takes a batch in the source's layout and float, or already in the artifact's own form."""

    input_name: str
    input_shape: list[int]  # the artifact's own input, as a benchmark feeds it
    input_dtype: np.dtype

    def run(self, batch: np.ndarray) -> list[np.ndarray]: ...

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """The batch exactly as the artifact takes it (layout, dtype, quantization)."""
        ...

    def io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]: ...


class SavedModelRunner:
    """TensorFlow running a SavedModel's serving_default signature: the FP32 reference of a Keras source."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        require("tensorflow", extra="tflite", purpose="running a TensorFlow SavedModel")
        from edgebase.deps import import_tensorflow

        tf = import_tensorflow()
        if threads:
            with contextlib.suppress(RuntimeError):  # fixed once TensorFlow has started
                tf.config.threading.set_intra_op_parallelism_threads(threads)
        self._loaded = tf.saved_model.load(str(path))
        self._signature = self._loaded.signatures["serving_default"]
        _, kwargs = self._signature.structured_input_signature
        ((self.input_name, spec),) = kwargs.items()
        self.input_shape = [d if d else 1 for d in spec.shape.as_list()]
        self.input_dtype = np.dtype(spec.dtype.as_numpy_dtype)
        self._output_names = sorted(self._signature.structured_outputs)

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        return batch.astype(self.input_dtype, copy=False)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        result = self._signature(**{self.input_name: self.prepare(batch)})
        return [result[name].numpy() for name in self._output_names]

    def io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        _, kwargs = self._signature.structured_input_signature

        def spec(name: str, value) -> TensorSpec:
            shape = [d if d is not None else -1 for d in value.shape.as_list()]
            return TensorSpec(name=name, shape=shape, dtype=np.dtype(value.dtype.as_numpy_dtype).name)

        outputs = self._signature.structured_outputs
        return [spec(n, v) for n, v in kwargs.items()], [spec(n, outputs[n]) for n in self._output_names]


class _RunnerTable(Mapping[str, Callable[[Path, int | None], Runner]]):
    """runtime -> runner: the `RUNNER` of `toolchain/backends/<package>/runner.py` for every row of the
    runtime table, imported when first asked for (Core ML's reads the package with coremltools' protos),
    and the SavedModel runner of a Keras source's reference."""

    def __getitem__(self, runtime: str) -> Callable[[Path, int | None], Runner]:
        if runtime == "tensorflow":
            return SavedModelRunner
        row = RUNTIMES[runtime]
        return importlib.import_module(f"toolchain.backends.{row.package}.runner").RUNNER

    def __iter__(self) -> Iterator[str]:
        return iter((*RUNTIMES, "tensorflow"))

    def __len__(self) -> int:
        return len(RUNTIMES) + 1


RUNNERS = _RunnerTable()


def runtime_for(path: Path) -> str:
    """The runtime of an artifact file or folder by its suffix (targets/runtimes.py), or TensorFlow for a SavedModel folder.

    A bundle may hold artifacts of more than one runtime (an `.ort` beside an `.onnx`, a `.tflite` GPU twin).
    """
    runtime = runtime_for_suffix(path.name)
    if runtime is not None:
        return runtime
    if path.is_dir():
        return "tensorflow"
    raise KeyError(f"no runtime takes {path.name}")


def runs_on_host(runtime: str) -> bool:
    """Whether artifacts of `runtime` can be run here (validated numerically and benchmarked)."""
    row = RUNTIMES.get(runtime)
    return row is None or row.on_host  # the SavedModel runner (a source, not a target) runs anywhere


def open_runner(runtime: str, path: Path, threads: int | None = None) -> Runner:
    return RUNNERS[runtime](path, threads)


def run_all(runner: Runner, inputs: np.ndarray) -> list[np.ndarray]:
    """Outputs for every sample, one at a time (edge artifacts have batch size 1), stacked per output."""
    per_output: list[list[np.ndarray]] = []
    for sample in inputs:
        outputs = runner.run(sample[None])
        if not per_output:
            per_output = [[] for _ in outputs]
        for slot, value in zip(per_output, outputs, strict=True):
            slot.append(value[0])
    return [np.stack(values) for values in per_output]
