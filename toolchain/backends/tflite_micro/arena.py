"""The tensor arena a model needs in TensorFlow Lite Micro: measured by running it, never guessed.

The measured figure is the smallest arena (in steps of 16 bytes, TFLM's
buffer alignment) with which the real interpreter allocates the model's
tensors and runs one real input to the same outputs as with a generous
arena. An arena that is too small makes TFLM either return an error or crash
the process ("Failed to allocate tail memory"), so every size is tried in a
forked child of a worker process that imports nothing but numpy and
tflite-micro: the build process (TensorFlow, torch, their threads) is never
forked and never at risk.

The worker also records what TFLM's RecordingMicroAllocator reports for the
model ("Arena allocation total ..."). That report is not the figure used: on a
tiny CNN it said 2720 bytes while the smallest arena that ran was larger,
because the planner's layout and alignment need a little more than the sum.

The host is 64-bit, so TFLM's own structures in the arena (tensor and node
bookkeeping, the "tail") are larger here than on a 32-bit MCU: for that part
the host figure is an upper bound. The tensor data (the "head") is planned the
same way on both. Kernels a device may use instead of TFLM's reference
kernels (CMSIS-NN, ESP-NN) can ask for scratch buffers the reference kernels
do not; the margin (`arena_margin`) covers that.

Usage of the worker: python -m toolchain.backends.tflite_micro.arena MODEL.tflite SAMPLE.npy UPPER_BYTES
                     python -m toolchain.backends.tflite_micro.arena --probe MODEL.tflite SAMPLE.npy BYTES...
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.backends.tflite_micro.model import MicroModel
from toolchain.errors import EdgectlError

ALIGNMENT = 16  # TFLM's MicroArenaBufferAlignment()
MARGIN_SHARE = 0.10  # of the measured arena: TFLM version drift between host and firmware
PROBE_TIMEOUT_S = 120


class ArenaMeasurementError(EdgectlError):
    """TFLM could not run the model on the host even with a generous arena."""


@dataclass(frozen=True)
class ArenaMeasurement:
    smallest_bytes: int  # the smallest arena that allocated and ran to the reference outputs
    recorded_total_bytes: int  # what TFLM's RecordingMicroAllocator reported (head + tail)
    recorded_head_bytes: int  # tensor data and scratch buffers (planned)
    recorded_tail_bytes: int  # persistent: TFLM's structures, per-op data
    probes: int  # arena sizes tried


def _align(value: int) -> int:
    return -(-value // ALIGNMENT) * ALIGNMENT


def cmsis_nn_scratch_bytes(model: MicroModel) -> int:
    """The largest im2col buffer CMSIS-NN's int8 convolution would request for one of the model's layers.

    arm_convolve_s8_get_buffer_size() on cores with the DSP extension (Cortex-M4, M7, M33):
    2 x input channels x kernel width x kernel height x sizeof(int16). Scratch buffers live in the
    arena only while their op runs, so the largest one counts, not the sum.
    """
    largest = 0
    for op in model.ops:
        if op.name != "CONV_2D" or len(op.inputs) < 2:
            continue
        filter_shape = model.tensors[op.inputs[1]].shape  # [out, kh, kw, in]
        if len(filter_shape) == 4 and filter_shape[1] * filter_shape[2] > 1:
            largest = max(largest, 2 * filter_shape[3] * filter_shape[1] * filter_shape[2] * 2)
    return largest


def arena_margin(measured: int, model: MicroModel) -> tuple[int, str]:
    """The margin added to the measured arena, and how it was set (stated in the manifest)."""
    share = _align(int(measured * MARGIN_SHARE))
    scratch = _align(cmsis_nn_scratch_bytes(model))
    rule = (
        f"{MARGIN_SHARE:.0%} of the measured arena ({share} B, TFLM version drift) + the largest CMSIS-NN "
        f"int8 convolution im2col buffer ({scratch} B; optimized kernels' scratch the host's reference "
        "kernels do not request)"
    )
    return share + scratch, rule


def _worker(*args: str, sample: np.ndarray) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="edgectl-arena-") as tmp:
        sample_path = Path(tmp) / "sample.npy"
        np.save(sample_path, sample, allow_pickle=False)
        root = str(Path(__file__).resolve().parents[3])  # the folder holding the toolchain package
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
            "OPENBLAS_NUM_THREADS": "1",  # the worker forks: keep it single-threaded
            "OMP_NUM_THREADS": "1",
        }
        arguments = [a if a != "SAMPLE" else str(sample_path) for a in args]
        return subprocess.run(
            [sys.executable, "-m", "toolchain.backends.tflite_micro.arena", *arguments],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )


def runs_with_arena(model_path: Path, sample: np.ndarray, sizes: list[int]) -> list[bool]:
    """Whether TFLM allocates and runs the model with each arena size (each tried in a forked child)."""
    proc = _worker("--probe", str(model_path), "SAMPLE", *map(str, sizes), sample=sample)
    if proc.returncode != 0:
        raise ArenaMeasurementError(
            f"the arena probe failed: {proc.stderr.strip()[-300:]}", hint="report this"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(model_path: Path, sample: np.ndarray, upper: int) -> ArenaMeasurement:
    """Search the smallest working arena for `model_path`, with `sample` as the input tensor's contents."""
    proc = _worker(str(model_path), "SAMPLE", str(upper), sample=sample)
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        raise ArenaMeasurementError(
            f"TensorFlow Lite Micro could not run the model on the host even with a {upper}-byte arena: "
            f"{lines[-1] if lines else 'no output'}",
            hint="report the model with this message; the op may need a kernel variant TFLM lacks",
        )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return ArenaMeasurement(**result)


# --- the worker (a child process: numpy and tflite-micro only) --------------------------------


def _probe(
    model: bytes, sample: np.ndarray, size: int, outputs: int, allocations: bool = False
) -> tuple[bool, bytes, str]:
    """Run the model with a `size`-byte arena in a forked child: (ran, output bytes, allocation report)."""
    read_out, write_out = os.pipe()
    read_err, write_err = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: whatever happens, it never returns
        status = 1
        try:
            import signal

            from tflite_micro.python.tflite_micro import runtime

            os.close(read_out)
            os.close(read_err)
            signal.alarm(PROBE_TIMEOUT_S)
            os.dup2(write_err, 2)  # TFLM's C++ reports (errors, allocations) go to stderr
            interpreter = runtime.Interpreter.from_bytes(model, arena_size=size)
            interpreter.set_input(sample, 0)
            interpreter.invoke()
            produced = b"".join(
                np.ascontiguousarray(interpreter.get_output(i)).tobytes() for i in range(outputs)
            )
            if allocations:
                interpreter.print_allocations()
            os.write(write_out, produced)
            status = 0
        except BaseException:  # any failure means: this arena does not work
            status = 1
        finally:
            os._exit(status)
    os.close(write_out)
    os.close(write_err)
    output, report = _read_all(read_out), _read_all(read_err)
    _, status = os.waitpid(pid, 0)
    ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return ok, output, report.decode("utf-8", "replace")


def _read_all(fd: int) -> bytes:
    chunks = []
    with os.fdopen(fd, "rb") as stream:
        while chunk := stream.read(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _recorded(report: str, what: str) -> int:
    match = re.search(rf"Arena allocation {what} (\d+) bytes", report)
    return int(match.group(1)) if match else 0


def search(model: bytes, sample: np.ndarray, upper: int) -> ArenaMeasurement:
    from toolchain.backends.tflite_micro.model import read_model

    outputs = len(read_model(model).outputs)
    ok, reference, report = _probe(model, sample, upper, outputs, allocations=True)
    if not ok:
        tail = [line for line in report.splitlines() if line.strip()]
        raise SystemExit(f"the model does not run with {upper} bytes: {tail[-1] if tail else 'TFLM crashed'}")
    works, fails = _align(upper), 0  # invariant: `works` runs to the reference outputs, `fails` does not
    recorded = _recorded(report, "total")
    # the first size tried is next to TFLM's own figure; then bisection (multiples of 16 that differ by
    # 32 or more have an aligned midpoint strictly between them)
    first = _align(recorded) if 0 < _align(recorded) < works else None
    probes = 1
    while first is not None or works - fails > ALIGNMENT:
        size, first = (first, None) if first is not None else (_align((works + fails) // 2), None)
        ok, output, _ = _probe(model, sample, size, outputs)
        probes += 1
        if ok and output == reference:
            works = size
        else:
            fails = size
    return ArenaMeasurement(
        smallest_bytes=works,
        recorded_total_bytes=recorded,
        recorded_head_bytes=_recorded(report, "head"),
        recorded_tail_bytes=_recorded(report, "tail"),
        probes=probes,
    )


def _main(argv: list[str]) -> None:
    probe = argv[0] == "--probe"
    arguments = argv[1:] if probe else argv
    model = Path(arguments[0]).read_bytes()
    sample = np.load(arguments[1], allow_pickle=False)
    if probe:
        from toolchain.backends.tflite_micro.model import read_model

        outputs = len(read_model(model).outputs)
        print(json.dumps([_probe(model, sample, int(size), outputs)[0] for size in arguments[2:]]))
    else:
        print(json.dumps(search(model, sample, int(arguments[2])).__dict__))


if __name__ == "__main__":
    _main(sys.argv[1:])
