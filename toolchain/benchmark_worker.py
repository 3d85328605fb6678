"""Child process of `toolchain.benchmark`: times one artifact and prints one JSON line.

Usage: python -m toolchain.benchmark_worker PATH RUNTIME THREADS RUNS WARMUP
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    # VmHWM belongs to this process image; ru_maxrss would carry the parent's peak across fork+exec.
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str]) -> None:
    path, runtime, threads, runs, warmup = Path(argv[0]), argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    import numpy as np

    from edgebase.deps import import_quietly, is_available
    from targets.runtimes import RUNTIMES
    from toolchain.runners import RUNNERS

    row = RUNTIMES.get(runtime)
    if row is not None and row.host_module and row.on_host and is_available(row.host_module.split(".")[0]):
        import_quietly(row.host_module)  # the runtime's import belongs to the baseline, not the model
    baseline = _rss_mb()
    start = time.perf_counter()
    runner = RUNNERS[runtime](path, threads or None)
    init_ms = (time.perf_counter() - start) * 1000
    rng = np.random.default_rng(0)
    if runner.input_dtype.kind == "f":
        x = rng.random(runner.input_shape).astype(runner.input_dtype)
    else:
        # quantized pixels take their whole range; other integers are ids (tokens), and 0 and 1 always exist
        info = np.iinfo(runner.input_dtype)
        low, high = (info.min, info.max) if info.bits == 8 else (0, 1)
        x = rng.integers(low, high, runner.input_shape, endpoint=True).astype(runner.input_dtype)
    for _ in range(warmup):
        runner.run(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner.run(x)
        times.append((time.perf_counter() - t0) * 1000)
    latencies = np.asarray(times)
    print(
        json.dumps(
            {
                "threads": threads or (os.cpu_count() or 1),
                "p50": round(float(np.percentile(latencies, 50)), 4),
                "p95": round(float(np.percentile(latencies, 95)), 4),
                "mean": round(float(latencies.mean()), 4),
                "throughput": round(1000.0 / float(latencies.mean()), 2),
                "init_ms": round(init_ms, 3),
                "peak_mb": round(max(_peak_rss_mb() - baseline, 0.0), 2),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
