"""Before and after, measured the same way: the FP32 ONNX export `edgectl build` makes, in ONNX Runtime.

Latency is the p50 of single-sample runs of both models in one process, interleaved run by run (and
in alternating order), so a noisy shared host slows both alike and their ratio stays meaningful.
Accuracy is the build's own task metric on --val (top-1, or mAP50-95 with mAP50), so the figures here
are the ones `build` reports as FP32 for the same model.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgebundle.manifest import NMSParams
from toolchain import data as datasets
from toolchain.validate import EvalData, task_metrics

WARMUP_RUNS = 5


def fp32_onnx(source, shape: list[int]) -> Path:
    from toolchain.onnx_export import export_onnx
    from toolchain.stages.prepare import PREFERRED_OPSET

    return export_onnx(source, shape, PREFERRED_OPSET)[0]


def evaluation_data(val: Path, task: str, pre, shape: list[int], num_classes: int, limit: int) -> EvalData:
    if task == "detect":
        det = datasets.load_detection_set(val, pre, shape, limit)
        return EvalData(
            "val", task, det.inputs, boxes=det.boxes, class_names=det.class_names, num_classes=num_classes
        )
    cls = datasets.load_classification_set(val, pre, shape, limit)
    return EvalData("val", "classify", cls.inputs, labels=cls.labels, class_names=cls.class_names)


def accuracy(onnx_path: Path, evaluation: EvalData, nms: NMSParams | None, threads: int) -> dict[str, float]:
    from toolchain.runners import open_runner, run_all

    return task_metrics(
        run_all(open_runner("onnxruntime", onnx_path, threads), evaluation.inputs), evaluation, nms
    )


def interleaved_p50(paths: list[Path], sample: np.ndarray, *, runs: int, threads: int) -> list[float]:
    """p50 latency in ms of each model, all run in this process, one after the other on every round."""
    from toolchain.runners import open_runner

    runners = [open_runner("onnxruntime", path, threads) for path in paths]
    batch = sample[None].astype(np.float32)
    for _ in range(WARMUP_RUNS):
        for runner in runners:
            runner.run(batch)
    times: list[list[float]] = [[] for _ in paths]
    for round_index in range(runs):
        order = range(len(runners)) if round_index % 2 == 0 else reversed(range(len(runners)))
        for index in order:
            start = time.perf_counter()
            runners[index].run(batch)
            times[index].append(time.perf_counter() - start)
    return [round(float(np.median(t)) * 1000, 4) for t in times]
