"""The convert stage: a target's converter, fed one `BuildContext`, with `--precision auto`'s fallback."""

from __future__ import annotations

import dataclasses
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

from edgebundle.manifest import ValidationReport
from toolchain.converters import BuildContext
from toolchain.errors import AccuracyGateError
from toolchain.stages.gate import gate_error
from toolchain.stages.state import BuildState, TargetState
from toolchain.validate import align_outputs, judge


def evaluate(build: BuildState, fp32_path: Path, path: Path) -> ValidationReport:
    """Run an artifact on the evaluation data and judge it against its FP32 reference."""
    from toolchain.runners import open_runner, run_all, runtime_for

    reference = build.references[fp32_path]
    outputs = run_all(open_runner(runtime_for(path), path), build.evaluation.inputs)
    return judge(
        build.evaluation,
        reference.outputs,
        reference.metrics,
        align_outputs(reference.outputs, outputs),
        build.source.nms,
        build.req.max_drop,
    )


def sample_outputs(build: BuildState, fp32_path: Path, path: Path) -> list[np.ndarray]:
    """An artifact's outputs on the sensitivity inputs, aligned to the reference's."""
    from toolchain.runners import open_runner, run_all, runtime_for

    outputs = run_all(open_runner(runtime_for(path), path), build.sensitivity_inputs)
    return align_outputs(build.references[fp32_path].sample_outputs, outputs)


def describe(build: BuildState, target: TargetState) -> str:
    return f"{target.profile.name}: converting to {target.precision}"


def convert(build: BuildState, target: TargetState) -> None:
    from toolchain.runners import runs_on_host
    from toolchain.speed import host_threads, relative_latency

    req, profile = build.req, target.profile
    fp32_path, _ = target.fp32(build)
    speed = None
    if runs_on_host(profile.runtime) and build.sensitivity_inputs is not None:
        speed = partial(
            relative_latency, sample=build.sensitivity_inputs[:1], threads=host_threads(profile.threads)
        )
    reference = build.references.get(fp32_path)
    ctx = BuildContext(
        fp32_onnx=None if build.tensorflow_source else fp32_path,
        saved_model=fp32_path if build.tensorflow_source else None,
        profile=profile,
        precision=target.precision,
        workdir=target.workdir,
        input_name=target.inputs[0].name,
        calibration=build.calibration,
        evaluate=partial(evaluate, build, fp32_path),
        sample_outputs=partial(sample_outputs, build, fp32_path),
        sample_reference=reference.sample_outputs if reference else [],
        progress=build.reporter.advance,
        task=target.task,
        source=build.source,
        input_shape=list(build.shape),
        preprocessing=build.pre,
        labels=build.labels,
        nms=build.source.nms,
        palettize=req.palettize,
        speed=speed,
        int16_activations=req.int16_activations,
        allow_slower_int8=req.allow_slower_int8,
    )
    target.converted, target.precision, target.fallback_note = _convert(target.converter, ctx, req.precision)


def _convert(converter, ctx: BuildContext, asked: str):
    """Convert; under `--precision auto`, an INT8 that breaks the budget or is slower than FP32 gives way.

    Returns the result, the precision it has, and the note that says why it is not INT8 (or None).
    With `--precision int8` the error stands, with the table of attempts.
    """
    try:
        converted = converter.convert(ctx)
        report = converted.validation
        if ctx.precision == "int8" and report is not None and not report.passed:
            raise gate_error(ctx.profile, "int8", report, converted.artifacts[0].path.name)
        return converted, ctx.precision, None
    except AccuracyGateError as exc:
        if asked != "auto" or ctx.precision != "int8":
            raise
        fallback = "fp16" if "fp16" in ctx.profile.precisions else "fp32"
        workdir = Path(tempfile.mkdtemp(prefix="fallback-", dir=ctx.workdir))
        converted = converter.convert(dataclasses.replace(ctx, precision=fallback, workdir=workdir))
        note = f"--precision auto shipped {fallback}, not int8: {exc.message}"
        return converted, fallback, note
