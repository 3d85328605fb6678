"""Repair a quantized model that breaks the accuracy budget, by measurement alone.

1. Rank layers: quantize one layer at a time (all others float) and measure
   how far the outputs move from FP32 on a few calibration inputs. The error is
   taken per output channel, relative to that channel's own magnitude, and the
   worst channel counts: a head that concatenates pixel coordinates with
   0..1 class scores under one scale wipes out the scores while the
   whole-tensor error still looks small, and this measure sees it.
2. Keep the top-k ranked layers in float for k = 1, 2, 4, ... until the task
   metric on the validation data holds the budget, then bisect for the
   smallest such k. Every attempt is recorded in the report.

Runtime-neutral: the caller passes functions that quantize, run and evaluate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgebundle.manifest import LayerRepair, ValidationReport


def channel_error(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """Worst relative L2 error over output channels (axis 1 of samples-first arrays)."""
    worst = 0.0
    for ref, cand in zip(reference, candidate, strict=True):
        ref64 = ref.astype(np.float64).reshape(ref.shape[0], ref.shape[1] if ref.ndim > 1 else 1, -1)
        cand64 = cand.astype(np.float64).reshape(ref64.shape)
        diff = np.sqrt(((cand64 - ref64) ** 2).sum(axis=(0, 2)))
        norm = np.sqrt((ref64**2).sum(axis=(0, 2)))
        scale = max(float(norm.max()), 1e-12) * 1e-6  # ignore channels that are all but zero
        worst = max(worst, float((diff / np.maximum(norm, scale)).max()))
    return worst


def rank_layers(
    candidates: Sequence[str],
    quantize_only: Callable[[str], Path],
    run: Callable[[Path], list[np.ndarray]],
    reference: list[np.ndarray],
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[str, float]]:
    """Sensitivity of each candidate layer, most sensitive first."""
    scores = []
    for index, name in enumerate(candidates):
        scores.append((name, channel_error(reference, run(quantize_only(name)))))
        if progress:
            progress(index + 1, len(candidates))
    return sorted(scores, key=lambda item: item[1], reverse=True)


@dataclass
class RepairOutcome:
    path: Path | None
    report: ValidationReport | None
    kept_float: list[str]
    attempts: list[dict[str, float | int | str]] = field(default_factory=list)

    def summary(self, ranked: int) -> LayerRepair:
        return LayerRepair(
            layers_kept_float=self.kept_float, candidates_ranked=ranked, attempts=self.attempts
        )


def search_keep_float(
    ranked: Sequence[str],
    quantize_keep_float: Callable[[list[str]], Path],
    evaluate: Callable[[Path], ValidationReport],
) -> RepairOutcome:
    """Smallest k such that keeping the k most sensitive layers in float passes the gate."""
    attempts: list[dict[str, float | int | str]] = []
    results: dict[int, tuple[Path, ValidationReport]] = {}

    def attempt(k: int) -> bool:
        path = quantize_keep_float(list(ranked[:k]))
        report = evaluate(path)
        results[k] = (path, report)
        metric = report.metric or "cosine"
        value = report.artifact.get(metric, report.fidelity.cosine)
        attempts.append({"kept_float": k, metric: value, "passed": str(report.passed).lower()})
        return report.passed

    low, high, k = 0, None, 1
    while k <= len(ranked):
        if attempt(k):
            high = k
            break
        low, k = k, k * 2
    if high is None and (k // 2) < len(ranked):
        if attempt(len(ranked)):
            high = len(ranked)
        else:
            low = len(ranked)
    if high is None:
        return RepairOutcome(None, results.get(low, (None, None))[1], list(ranked), attempts)
    while high - low > 1:
        middle = (low + high) // 2
        if attempt(middle):
            high = middle
        else:
            low = middle
    path, report = results[high]
    return RepairOutcome(path, report, list(ranked[:high]), attempts)
