"""The gate: the one place that decides an artifact's validation is fatal, and says why in one line."""

from __future__ import annotations

from edgebundle.manifest import ValidationReport
from targets import TargetProfile
from toolchain.errors import AccuracyGateError


def gate_error(
    profile: TargetProfile, precision: str, report: ValidationReport, artifact: str = ""
) -> AccuracyGateError:
    kept = len(report.repair.layers_kept_float) if report.repair else 0
    if report.metric:
        what = (
            f"{report.metric} {report.reference[report.metric]:.2f} -> {report.artifact[report.metric]:.2f} "
            f"(drop {report.drop_points:.2f} points)"
        )
    else:
        what = f"output cosine {report.fidelity.cosine:.4f}, top-1 agreement {report.fidelity.top1_agreement}"
    if report.gate == "fp32-detections":
        what += " against FP32's own detections (no --val)"
    tail = len(report.repair.decode_tail_float) if report.repair else 0
    repaired = f" even with {kept} layers kept in float" if kept else ""
    if tail:
        repaired += f" {'and' if kept else 'with'} the {tail}-op decode tail in float"
    which = f" ({artifact})" if artifact else ""
    error = AccuracyGateError(
        f"{profile.name} {precision}{which}: {what} breaks --max-drop {report.max_drop_points}{repaired}",
        hint="give more representative --calib data, raise --max-drop, or build --precision fp32",
    )
    error.report = report
    error.attempts = report.repair.attempts if report.repair else None
    return error
