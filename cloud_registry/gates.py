"""Health gates of a rollout: what the updated devices' telemetry says after the update, against before.

Pure functions over plain numbers, so the boundary semantics are tested
exactly (tests/cloud_registry/test_gates.py):
- an error-type gate (failure rate, error-rate increase, p95 regression,
  confidence PSI) fires only when its value is strictly above its threshold;
- a success threshold is met when the success share is at or above it.

"Before" is the same devices' telemetry on their previous version in the
baseline window before each one was updated; "after" is their telemetry on the
new version since each one reported SUCCEEDED.

A telemetry gate judges only on enough evidence (`pool`): a device counts once
its telemetry on each side holds at least `min_device_inferences` inferences,
on the new version over at least `min_baked_s` seconds of reporting
intervals, and the gates judge
once `min_devices` such devices report (every device with a baseline, when
fewer have one), and each pooled side holds `min_inferences`. Until then they
give no value, and a gate without a value does not fire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgewire.drift import psi

GATES = ("failure_rate", "error_rate_increase", "p95_regression", "confidence_psi")


@dataclass
class Window:
    """Telemetry of a set of devices over a time window, added up."""

    inferences: int = 0
    errors: int = 0
    p95_weighted: float = 0.0  # sum of count * p95 over intervals that report a p95
    p95_count: int = 0
    confidence: list[int] = field(default_factory=list)
    seconds: float = 0.0  # reporting intervals covered
    classes: list[int] = field(default_factory=list)  # predicted classes (the mix); raw telemetry only

    def add(
        self,
        count: int,
        errors: int,
        p95: float | None,
        confidence_hist: list[int] | None,
        interval_s: float = 0.0,
        class_hist: list[int] | None = None,
    ) -> None:
        self.seconds += interval_s
        self.inferences += count
        self.errors += errors
        if p95 is not None and count > 0:
            self.p95_weighted += count * p95
            self.p95_count += count
        self.confidence = _sum(self.confidence, confidence_hist)
        self.classes = _sum(self.classes, class_hist)

    def merge(self, other: Window) -> None:
        self.add(other.inferences, other.errors, None, other.confidence, other.seconds, other.classes)
        self.p95_weighted += other.p95_weighted
        self.p95_count += other.p95_count

    def enough(self, min_inferences: int, min_seconds: float) -> bool:
        """Evidence from one device: at least this many inferences (1 at least) over this long."""
        return self.inferences >= max(1, min_inferences) and self.seconds >= min_seconds

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.inferences if self.inferences else None

    @property
    def p95_ms(self) -> float | None:
        """Inference-weighted mean of the intervals' p95 latencies."""
        return self.p95_weighted / self.p95_count if self.p95_count else None


def _sum(total: list[int], more: list[int] | None) -> list[int]:
    if not more:
        return total
    width = max(len(total), len(more))
    return [(total[i] if i < len(total) else 0) + (more[i] if i < len(more) else 0) for i in range(width)]


def mean_confidence(hist: list[int]) -> float | None:
    """The mean top-class confidence of a histogram of equal bins over [0, 1] (bin centres)."""
    total = sum(hist)
    if not total:
        return None
    return sum((i + 0.5) / len(hist) * n for i, n in enumerate(hist)) / total


def field_values(before: Window, after: Window) -> dict[str, float | None]:
    """How a new version behaves on the devices' own inputs against their previous version: the shift of
    the mix of predicted classes (PSI; a model that answers one of ten classes for everything scores 8.3
    against a parent that predicted them all as often) and the drop of the mean confidence. The
    retraining loop's canary checks (cloud_registry.jobs.canary)."""
    mix = psi(before.classes, after.classes) if sum(before.classes) and sum(after.classes) else None
    was, now = mean_confidence(before.confidence), mean_confidence(after.confidence)
    drop = was - now if was is not None and now is not None else None
    return {"prediction_mix_psi": mix, "confidence_drop": drop}


def exceeds(value: float | None, threshold: float) -> bool:
    """An error-type gate fires strictly above its threshold; no value, no firing."""
    return value is not None and value > threshold


def meets(value: float, threshold: float) -> bool:
    """A success threshold is met at or above it."""
    return value >= threshold


@dataclass
class Evidence:
    """What the telemetry gates have to judge on, for the rollout status."""

    baseline_devices: int  # updated devices with enough telemetry on their previous version
    judged_devices: int  # ... and on the new version
    needed_devices: int  # how many the gates need: min_devices, or every baseline device when fewer

    @property
    def applicable(self) -> bool:
        """No device has a baseline: nothing to compare with, so the telemetry gates cannot judge at all."""
        return self.baseline_devices > 0

    @property
    def enough(self) -> bool:
        return self.applicable and self.judged_devices >= self.needed_devices


def pool(
    devices: list[tuple[Window, Window]], *, min_device_inferences: int, min_baked_s: float, min_devices: int
) -> tuple[Window, Window, Evidence]:
    """Add up (before, after) of the devices with enough evidence on both sides; say how many there are."""
    before, after = Window(), Window()
    baseline = judged = 0
    for device_before, device_after in devices:
        # The baseline is history (any length of it will do); the new version must have run a while.
        if not device_before.enough(min_device_inferences, 0.0):
            continue
        baseline += 1
        if device_after.enough(min_device_inferences, min_baked_s):
            judged += 1
            before.merge(device_before)
            after.merge(device_after)
    return before, after, Evidence(baseline, judged, max(1, min(min_devices, baseline)))


def telemetry_values(before: Window, after: Window, min_inferences: int) -> dict[str, float | None]:
    enough = max(1, min_inferences)
    if before.inferences < enough or after.inferences < enough:
        return {"error_rate_increase": None, "p95_regression": None, "confidence_psi": None}
    error_increase = None
    if before.error_rate is not None and after.error_rate is not None:
        error_increase = after.error_rate - before.error_rate
    regression = None
    if before.p95_ms and after.p95_ms is not None:
        regression = after.p95_ms / before.p95_ms - 1.0
    shift = None
    if sum(before.confidence) > 0 and sum(after.confidence) > 0:
        shift = psi(before.confidence, after.confidence)
    return {"error_rate_increase": error_increase, "p95_regression": regression, "confidence_psi": shift}


def crossed_gates(values: dict[str, Any], policy: Any) -> list[str]:
    """Names of the gates whose value is above its threshold, in GATES order."""
    thresholds = {
        "failure_rate": policy.max_failure_rate,
        "error_rate_increase": policy.max_error_rate_increase,
        "p95_regression": policy.max_p95_regression,
        "confidence_psi": policy.max_confidence_psi,
    }
    return [name for name in GATES if exceeds(values.get(name), thresholds[name])]
