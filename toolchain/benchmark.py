"""Benchmark an artifact: latency percentiles, throughput, session init time and peak memory.

Each benchmark runs in a fresh child process so that its peak resident memory
is the artifact's alone, not what the build loaded before. Peak memory is
reported as the rise of the child's peak RSS over its RSS after importing the
runtime, i.e. what loading and running this model costs on top of the runtime.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

from edgebundle.manifest import BenchmarkReport
from toolchain.errors import EdgectlError


def cpuinfo_field(name: str, cpuinfo: str | None = None) -> str | None:
    """The first `name : value` of /proc/cpuinfo (or of the `cpuinfo` text given), None when absent."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return None


def host_description() -> str:
    import os

    cpu = cpuinfo_field("model name") or platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}"


def benchmark(
    path: Path, runtime: str, *, threads: int | None, runs: int = 100, warmup: int = 10
) -> BenchmarkReport:
    if runs < 1 or warmup < 0:
        raise EdgectlError("--runs must be at least 1", hint="e.g. --runs 100")
    command = [
        sys.executable,
        "-m",
        "toolchain.benchmark_worker",
        str(path),
        runtime,
        str(threads or 0),
        str(runs),
        str(warmup),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgectlError(
            f"benchmark of {path.name} failed: {last}", hint="run 'edgectl verify' on the bundle"
        )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return BenchmarkReport(
        runs=runs,
        warmup=warmup,
        threads=result["threads"],
        latency_ms_p50=result["p50"],
        latency_ms_p95=result["p95"],
        latency_ms_mean=result["mean"],
        throughput_per_s=result["throughput"],
        session_init_ms=result["init_ms"],
        peak_memory_mb=result["peak_mb"],
        artifact_bytes=path.stat().st_size,
        host=host_description(),
    )
