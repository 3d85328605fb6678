"""The stages that measure a target's artifacts: validate (and gate), benchmark, device checks."""

from __future__ import annotations

import numpy as np

from toolchain import device_checks
from toolchain.stages.convert import evaluate
from toolchain.stages.gate import gate_error
from toolchain.stages.state import BuildState, TargetState


def _unjudged(build: BuildState, target: TargetState) -> list[str]:
    """The artifacts that no converter judged, which this stage runs on the evaluation data."""
    if build.evaluation is None:
        return []
    converted = target.converted
    return [
        item.path.name
        for index, item in enumerate(converted.artifacts)
        if (item.validation or (converted.validation if index == 0 else None)) is None
    ]


def describe_validate(build: BuildState, target: TargetState) -> str | None:
    names = _unjudged(build, target)
    return f"{target.profile.name}: validating {', '.join(names)}" if names else None


def validate(build: BuildState, target: TargetState) -> None:
    """Every artifact's report, with the converter's and the fallback's notes; a failing one is fatal."""
    converted = target.converted
    fp32_path, _ = target.fp32(build)
    target.reports = []
    for index, item in enumerate(converted.artifacts):
        report = item.validation or (converted.validation if index == 0 else None)
        if report is None and build.evaluation is not None:
            report = evaluate(build, fp32_path, item.path)
        if report is not None:
            extra = [target.fallback_note] if target.fallback_note and index == 0 else []
            update = {"notes": report.notes + item.notes + extra}
            if item.repair is not None and report.repair is None:
                update["repair"] = item.repair
            report = report.model_copy(update=update)
            if not report.passed:
                raise gate_error(target.profile, item.precision, report, item.path.name)
        target.reports.append(report)


def _on_host(target: TargetState) -> list[str]:
    from toolchain.runners import runs_on_host, runtime_for

    return [item.path.name for item in target.converted.artifacts if runs_on_host(runtime_for(item.path))]


def describe_benchmark(build: BuildState, target: TargetState) -> str | None:
    names = _on_host(target)  # Core ML predicts only on macOS: no host figures to give
    return f"{target.profile.name}: benchmarking {', '.join(names)}" if names else None


def benchmark(build: BuildState, target: TargetState) -> None:
    from toolchain.benchmark import benchmark as measure
    from toolchain.runners import runs_on_host, runtime_for

    target.benches = []
    for item in target.converted.artifacts:
        runtime = runtime_for(item.path)
        bench = None
        if runs_on_host(runtime):
            bench = measure(item.path, runtime, threads=target.profile.threads, runs=build.req.bench_runs)
        target.benches.append(bench)


def describe_device_checks(build: BuildState, target: TargetState) -> str | None:
    from toolchain.runners import runs_on_host, runtime_for

    if runs_on_host(runtime_for(target.converted.artifacts[0].path)):
        return f"{target.profile.name}: recording the health-check sample"
    return None


def device_check_files(build: BuildState, target: TargetState) -> None:
    """What the device agent checks a bundle with: a health sample (where the host can run the
    primary artifact, to record its expected outputs) and the drift reference."""
    from toolchain.runners import runs_on_host, runtime_for

    req, profile, evaluation = build.req, target.profile, build.evaluation
    primary = target.converted.artifacts[0].path
    target.health = None
    if runs_on_host(runtime_for(primary)):
        sample = device_checks.health_sample(
            evaluation.inputs if evaluation is not None else build.calibration,
            build.shape,
            np.dtype(target.inputs[0].dtype),
        )
        target.health = device_checks.write_health_sample(
            target.staging,
            primary,
            sample,
            threads=profile.threads,
            max_latency_ms=req.latency_budget_ms or profile.runtime_options().latency_budget_ms,
        )
    fp32_path, _ = target.fp32(build)
    target.drift = None
    if evaluation is not None and fp32_path in build.references:
        target.drift = device_checks.drift_reference(
            evaluation.inputs,
            build.references[fp32_path].outputs,
            target.task,
            None if build.pre.input == "tensor" else build.pre.layout,
            len(build.labels) or evaluation.num_classes,
        )
