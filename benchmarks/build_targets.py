"""Benchmark: the demo model through every available target, FP32 vs the target's default precision.

Detectors have a benchmark of their own, beside the leading exporter: benchmarks/detector_int8.py.

Writes benchmarks/results/build_targets.{json,md,png}. Figures are measured on
the machine that runs the script; the host is recorded with them.

    .venv/bin/python benchmarks/build_targets.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rows(result, build_seconds: float) -> list[dict]:
    """One row per artifact in the bundle (android holds an int8 and an fp16 TFLite and an .ort file)."""
    manifest = result.manifest
    rows = []
    for artifact in manifest.artifacts:
        report, bench = artifact.validation, artifact.benchmark
        metric = report.metric
        rows.append(
            {
                "model": manifest.name,
                "target": result.target,
                "precision": artifact.precision,
                "file": artifact.path,
                "role": artifact.role,
                "artifact_bytes": bench.artifact_bytes,
                "metric": metric,
                "fp32": report.reference.get(metric),
                "artifact": report.artifact.get(metric),
                "drop_points": report.drop_points,
                "cosine": report.fidelity.cosine,
                "p50_ms": bench.latency_ms_p50,
                "p95_ms": bench.latency_ms_p95,
                "throughput_per_s": bench.throughput_per_s,
                "session_init_ms": bench.session_init_ms,
                "peak_memory_mb": bench.peak_memory_mb,
                "threads": bench.threads,
                "repair": report.repair.method if report.repair else None,
                "layers_kept_float": report.repair.layers_kept_float if report.repair else [],
                "repair_attempts": report.repair.attempts if report.repair else [],
                "build_seconds": round(build_seconds, 1),
            }
        )
    return rows


def bench_digits(work: Path, key: Path, runs: int) -> list[dict]:
    from targets import load_profiles
    from toolchain.converters import CONVERTERS
    from toolchain.demo import IMAGE_SIZE, train_digits_model
    from toolchain.pipeline import BuildRequest, build
    from toolchain.runners import runs_on_host

    data = train_digits_model(work / "digits", epochs=12)
    rows = []
    # microcontrollers: benchmarks/micro_targets.py (the 32x32 demo model does not fit the smallest board);
    # Core ML predicts only on macOS: benchmarks/coreml_sizes.py has its sizes and emulated accuracy
    chosen = (
        p
        for p in load_profiles().values()
        if p.runtime in CONVERTERS and p.runtime != "tflite-micro" and runs_on_host(p.runtime)
    )
    for profile in sorted(chosen, key=lambda p: p.name):
        for precision in dict.fromkeys(["fp32", profile.default_precision]):
            start = time.perf_counter()
            (result,) = build(
                BuildRequest(
                    model=str(data.model),
                    targets=[profile.name],
                    precision=precision,
                    calib=data.calib,
                    val=data.val,
                    max_drop=0.5,
                    name=f"digits-{precision}",
                    out=work / "bundles",
                    sign_key=key,
                    input_shape=[1, 1, IMAGE_SIZE, IMAGE_SIZE],
                    bench_runs=runs,
                )
            )
            rows += _rows(result, time.perf_counter() - start)
    return rows


def write_markdown(rows: list[dict], host: str, path: Path) -> None:
    lines = [
        "# Build benchmark",
        "",
        f"Host: {host}. Latency with the target profile's threads; peak memory is what loading and "
        "running the model adds to the runtime process.",
        "",
        "| model | target | file | precision | size KB | metric | FP32 | artifact | drop | p50 ms | p95 ms "
        "| init ms | peak MB | repair |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        repair = (
            f"{r['repair']} ({len(r['layers_kept_float'])} float)"
            if r["repair"] == "keep-float"
            else r["repair"]
        )
        lines.append(
            f"| {r['model']} | {r['target']} | {r['file']} | {r['precision']} | {r['artifact_bytes'] / 1024:.0f} | "
            f"{r['metric']} | {r['fp32']:.2f} | {r['artifact']:.2f} | {r['drop_points']:.2f} | {r['p50_ms']:.3f} | "
            f"{r['p95_ms']:.3f} | {r['session_init_ms']:.0f} | {r['peak_memory_mb']:.1f} | {repair or '-'} |"
        )
    repaired = [r for r in rows if len(r["repair_attempts"]) > 1]  # a search ran: the first attempt failed
    for r in repaired:
        lines += [
            "",
            f"## Accuracy repair of {r['model']} ({r['target']}, {r['file']})",
            "",
            "The first attempt failed the gate; the repair searched by measurement.",
            "",
            "| attempt | layers kept in float | " + r["metric"] + " | passed |",
            "|---|---|---|---|",
        ]
        for attempt in r["repair_attempts"]:
            method = attempt.get("method", "keep-float" if attempt["kept_float"] else "full-int8")
            lines.append(
                f"| {method} | {attempt['kept_float']} | {attempt[r['metric']]:.2f} | {attempt['passed']} |"
            )
        lines += ["", "Layers kept in float: " + ", ".join(f"`{n}`" for n in r["layers_kept_float"])]
    path.write_text("\n".join(lines) + "\n")


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(max(8, 0.55 * len(rows)), 11))
    labels = [f"{r['model']}\n{r['target']} {r['file']}" for r in rows]
    axes[0].bar(labels, [r["artifact_bytes"] / 1024 for r in rows], color="tab:blue")
    axes[0].set_title("artifact size (KB)")
    axes[1].bar(labels, [r["p50_ms"] for r in rows], color="tab:orange")
    axes[1].set_title("p50 latency (ms)")
    axes[2].bar(labels, [r["artifact"] for r in rows], color="tab:green")
    axes[2].set_title("task metric of the artifact (points)")
    for axis in axes:
        axis.tick_params(axis="x", labelsize=6, rotation=60)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    from edgebundle import generate_keypair
    from toolchain.benchmark import host_description

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgectl-bench-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("EDGECTL_CACHE_DIR", str(work / "cache"))
        key, _ = generate_keypair(work / "keys")
        rows = bench_digits(work, key, args.runs)
    host = host_description()
    (args.out / "build_targets.json").write_text(json.dumps({"host": host, "rows": rows}, indent=2) + "\n")
    write_markdown(rows, host, args.out / "build_targets.md")
    write_plot(rows, args.out / "build_targets.png")
    print((args.out / "build_targets.md").read_text())


if __name__ == "__main__":
    main()
