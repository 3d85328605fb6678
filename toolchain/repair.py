"""Repair a quantized model that breaks the accuracy budget, by measurement alone.

1. Rank layers: quantize one layer at a time (all others float) and measure
   how far the outputs move from FP32 on a few calibration inputs. The error is
   taken per output channel, relative to that channel's own magnitude, and the
   worst channel counts: a head that concatenates pixel coordinates with
   0..1 class scores under one scale wipes out the scores while the
   whole-tensor error still looks small, and this measure sees it.
2. Keep the top-k ranked layers in float for k = 1, 2, 4, ... until the task
   metric on the validation data holds the budget, then bisect for the
   smallest such k. Every attempt is recorded in the report, with its host
   latency against the runtime's FP32 artifact where the caller can measure it
   (`toolchain.speed`): accuracy and speed are judged side by side.

Runtime-neutral: the caller passes functions that quantize, run and evaluate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgebundle.manifest import LayerRepair, ValidationReport
from toolchain.speed import SpeedCheck


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


def attempt_row(
    method: str, kept_float: int, report: ValidationReport, speed: SpeedCheck | None = None
) -> dict[str, float | int | str]:
    """One line of the attempts table: what was tried, its task metric, whether it passed, its speed."""
    metric = report.metric or "cosine"
    row: dict[str, float | int | str] = {
        "method": method,
        "kept_float": kept_float,
        metric: round(float(report.artifact.get(metric, report.fidelity.cosine)), 4),
        "passed": str(report.passed).lower(),
    }
    if speed is not None:
        row["p50_vs_fp32"] = round(speed.ratio, 3)
    return row


def search_keep_float(
    ranked: Sequence[str],
    quantize_keep_float: Callable[[list[str]], Path],
    evaluate: Callable[[Path], ValidationReport],
    speed: Callable[[Path], SpeedCheck] | None = None,
) -> RepairOutcome:
    """Smallest k such that keeping the k most sensitive layers in float passes the gate."""
    attempts: list[dict[str, float | int | str]] = []
    results: dict[int, tuple[Path, ValidationReport]] = {}

    def attempt(k: int) -> bool:
        path = quantize_keep_float(list(ranked[:k]))
        report = evaluate(path)
        results[k] = (path, report)
        attempts.append(attempt_row("keep-float", k, report, speed(path) if speed else None))
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


@dataclass
class Int8Search:
    """The shipped candidate of an INT8 search, with every attempt (accuracy and speed) in `repair`."""

    path: Path
    report: ValidationReport
    repair: LayerRepair | None
    speed: SpeedCheck | None


def int8_search(
    quantize: Callable[[list[str]], Path],
    evaluate: Callable[[Path], ValidationReport],
    rank: Callable[[list[str]], list[tuple[str, float]]],
    *,
    fixed_float: Sequence[str] = (),
    speed: Callable[[Path], SpeedCheck] | None = None,
    max_ranked: Callable[[int], int] = lambda n: n,
) -> Int8Search:
    """INT8 with `fixed_float` (a detector's decode tail) in float; if the gate fails, the ranked keep-float search.

    `quantize(keep)` writes a candidate with the `keep` ops in float; `rank(excluded)` ranks the other
    candidate ops by sensitivity; `max_ranked(n)` caps how many of n ranked ops may stay float. The
    result is the passing candidate with the fewest float ops, or, when none passes, the best attempt
    (its report says it failed: the caller decides what is fatal). Speed is measured on every attempt
    when `speed` is given and reported beside the metric; choosing by it is the caller's policy.
    """
    fixed = list(fixed_float)
    measured: dict[Path, SpeedCheck] = {}

    def timed(path: Path) -> SpeedCheck:
        if path not in measured:
            measured[path] = speed(path)
        return measured[path]

    first_method = "decode-tail-float" if fixed else "full-int8"
    first = quantize(fixed)
    report = evaluate(first)
    first_speed = timed(first) if speed else None
    attempts = [attempt_row(first_method, len(fixed), report, first_speed)]
    if report.passed:
        summary = None
        if fixed or speed:
            summary = LayerRepair(
                method="decode-tail-float" if fixed else "none",
                layers_kept_float=[],
                candidates_ranked=0,
                attempts=attempts,
                decode_tail_float=fixed,
                p50_vs_fp32=round(first_speed.ratio, 3) if first_speed else None,
            )
        return Int8Search(first, _with_repair(report, summary), summary, first_speed)

    ranked = [name for name, _ in rank(fixed)]
    outcome = search_keep_float(
        ranked[: max_ranked(len(ranked))],
        lambda keep: quantize(fixed + keep),
        evaluate,
        timed if speed else None,
    )
    attempts += outcome.attempts
    for row in outcome.attempts:
        row["kept_float"] = int(row["kept_float"]) + len(fixed)
    if outcome.path is None:
        summary = LayerRepair(
            method="none",
            layers_kept_float=[],
            candidates_ranked=len(ranked),
            attempts=attempts,
            decode_tail_float=fixed,
        )
        return Int8Search(first, _with_repair(outcome.report or report, summary), summary, first_speed)
    chosen_speed = timed(outcome.path) if speed else None
    summary = LayerRepair(
        method="keep-float",
        layers_kept_float=outcome.kept_float,
        candidates_ranked=len(ranked),
        attempts=attempts,
        decode_tail_float=fixed,
        p50_vs_fp32=round(chosen_speed.ratio, 3) if chosen_speed else None,
    )
    return Int8Search(outcome.path, _with_repair(outcome.report, summary), summary, chosen_speed)


def _with_repair(report: ValidationReport, repair: LayerRepair | None) -> ValidationReport:
    return report if repair is None else report.model_copy(update={"repair": repair})
