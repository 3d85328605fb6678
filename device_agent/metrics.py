"""Inference counters: per telemetry interval (count, errors, p50 / p95, throughput) and since start (Prometheus).

`record` is on the hot path: a lock, two additions, a bisect. Interval
latencies are kept by reservoir sampling, so memory stays bounded at any rate.
"""

from __future__ import annotations

import bisect
import random
import threading
import time

from edgewire import InferenceStats

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
RESERVOIR = 20_000


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted, non-empty list (numpy's default method)."""
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


class InferenceMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0
        self.errors_total = 0
        self.latency_sum_ms = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self._random = random.Random(0)
        self._start_interval(time.monotonic())

    def _start_interval(self, now: float) -> None:
        self._interval_start = now
        self._count = 0
        self._errors = 0
        self._latencies: list[float] = []

    def record(self, latency_ms: float) -> None:
        with self._lock:
            self.total += 1
            self.latency_sum_ms += latency_ms
            self.buckets[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
            self._count += 1
            if len(self._latencies) < RESERVOIR:
                self._latencies.append(latency_ms)
            else:
                slot = self._random.randrange(self._count)
                if slot < RESERVOIR:
                    self._latencies[slot] = latency_ms

    def error(self) -> None:
        with self._lock:
            self.errors_total += 1
            self._errors += 1

    def take_interval(self) -> tuple[InferenceStats, float]:
        """The interval's statistics and its length in seconds; starts the next interval."""
        now = time.monotonic()
        with self._lock:
            count, errors, latencies, start = self._count, self._errors, self._latencies, self._interval_start
            self._start_interval(now)
        elapsed = max(now - start, 1e-6)
        latencies.sort()
        stats = InferenceStats(
            count=count,
            errors=errors,
            latency_ms_p50=round(percentile(latencies, 0.50), 3) if latencies else None,
            latency_ms_p95=round(percentile(latencies, 0.95), 3) if latencies else None,
            throughput_per_s=round(count / elapsed, 3),
        )
        return stats, elapsed

    def prometheus(self) -> list[str]:
        with self._lock:
            total, errors, latency_sum, buckets = (
                self.total,
                self.errors_total,
                self.latency_sum_ms,
                list(self.buckets),
            )
        lines = [
            "# HELP edgectl_agent_inferences_total Inferences run since the agent started.",
            "# TYPE edgectl_agent_inferences_total counter",
            f"edgectl_agent_inferences_total {total}",
            "# HELP edgectl_agent_inference_errors_total Inferences that failed since the agent started.",
            "# TYPE edgectl_agent_inference_errors_total counter",
            f"edgectl_agent_inference_errors_total {errors}",
            "# HELP edgectl_agent_inference_latency_seconds Time in the runtime per inference.",
            "# TYPE edgectl_agent_inference_latency_seconds histogram",
        ]
        cumulative = 0
        for bound, count in zip(LATENCY_BUCKETS_MS, buckets, strict=False):
            cumulative += count
            lines.append(
                f'edgectl_agent_inference_latency_seconds_bucket{{le="{bound / 1000:g}"}} {cumulative}'
            )
        lines.append(f'edgectl_agent_inference_latency_seconds_bucket{{le="+Inf"}} {total}')
        lines.append(f"edgectl_agent_inference_latency_seconds_sum {latency_sum / 1000:.6f}")
        lines.append(f"edgectl_agent_inference_latency_seconds_count {total}")
        return lines
