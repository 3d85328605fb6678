"""Benchmark: Core ML package sizes for iOS by weight format, with the emulated accuracy of each.

Builds the digits CNN and a YOLO11n trained from its Ultralytics yaml on the generated shapes data for
the `ios` target in FP32, FP16, INT8 weights and 8-, 6- and 4-bit palettized weights, and records the
package size, the weight file size, the ratio to FP16, the task metric (top-1 or mAP50-95) against FP32
and the build time. Off macOS the metric is the FP16 emulation's (toolchain/backends/coreml/emulate.py), which the
table says; no latency is measured (Core ML runs on Apple devices only).

Writes benchmarks/results/coreml_sizes.{json,md}.

    .venv/bin/python benchmarks/coreml_sizes.py [--out benchmarks/results]
        [--digits DIR]             reuse a digits folder written by toolchain.demo.train_digits_model
        [--yolo CHECKPOINT DATA]   reuse a detector and its data.yaml (tests.samples)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = [  # (label, --precision, --palettize)
    ("fp32", "fp32", None),
    ("fp16", "fp16", None),
    ("int8 weights", "int8", None),
    ("palettized 8-bit", "fp16", 8),
    ("palettized 6-bit", "fp16", 6),
    ("palettized 4-bit", "fp16", 4),
]


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _build(
    model: str, name: str, key: Path, out: Path, calib: Path, val: Path, precision: str, palettize, **extra
):
    from toolchain.pipeline import BuildRequest, build

    start = time.perf_counter()
    (result,) = build(
        BuildRequest(
            model=model,
            targets=["ios"],
            precision=precision,
            palettize=palettize,
            calib=calib,
            val=val,
            max_drop=100.0,  # measure every variant, gate none
            name=name,
            out=out,
            sign_key=key,
            **extra,
        )
    )
    return result, time.perf_counter() - start


def bench(label: str, model: str, key: Path, out: Path, calib: Path, val: Path, **extra) -> list[dict]:
    rows = []
    for variant, precision, palettize in VARIANTS:
        name = f"{label}-{variant.replace(' ', '-')}"
        result, seconds = _build(model, name, key, out, calib, val, precision, palettize, **extra)
        manifest, package = result.manifest, result.bundle / result.manifest.artifacts[0].path
        report = manifest.validation
        rows.append(
            {
                "model": label,
                "variant": variant,
                "precision": manifest.precision,
                "weights": manifest.coreml.weights.mode,
                "compressed_tensors": manifest.coreml.weights.compressed_tensors,
                "package_bytes": _size(package),
                "weight_file_bytes": (package / "Data/com.apple.CoreML/weights/weight.bin").stat().st_size,
                "metric": report.metric,
                "fp32": report.reference.get(report.metric),
                "package_metric": report.artifact.get(report.metric),
                "drop_points": report.drop_points,
                "cosine": report.fidelity.cosine,
                "max_abs_error": report.fidelity.max_abs_error,
                "numerical_check": "macOS predict" if manifest.coreml.macos_predict else "FP16 emulation",
                "build_seconds": round(seconds, 1),
            }
        )
        print(f"{label} {variant}: {rows[-1]['package_bytes']} bytes", file=sys.stderr)
    fp16 = next(r for r in rows if r["variant"] == "fp16")
    for row in rows:
        row["vs_fp16"] = round(row["package_bytes"] / fp16["package_bytes"], 3)
        row["weight_file_vs_fp16"] = round(row["weight_file_bytes"] / fp16["weight_file_bytes"], 3)
    return rows


def markdown(rows: list[dict], host: str) -> str:
    lines = [
        "# Core ML package sizes (target ios)",
        "",
        f"Host: {host}. Metric: the package's numerical check on this host "
        f"({', '.join(sorted({r['numerical_check'] for r in rows}))}). The FP16 emulation is FP32 arithmetic "
        "with the package's own weights and every tensor rounded to FP16, on the validation data; it is not "
        "Core ML's kernels. Sizes are the sum of the package's files. No latency: Core ML runs on Apple "
        "devices only.",
        "",
        "| model | weights | package | weight file | vs FP16 | metric | FP32 | package | drop | max abs error |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['package_bytes'] / 1024:,.0f} KiB | "
            f"{r['weight_file_bytes'] / 1024:,.0f} KiB | {r['vs_fp16']:.3f} | {r['metric']} | {r['fp32']:.2f} | "
            f"{r['package_metric']:.2f} | {r['drop_points']:.2f} | {r['max_abs_error']:.4g} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--digits", type=Path, help="a folder written by train_digits_model (digits_cnn.pt, calib, val)"
    )
    parser.add_argument("--yolo", nargs=2, type=Path, metavar=("CHECKPOINT", "DATA_YAML"))
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from edgebundle import generate_keypair

    with tempfile.TemporaryDirectory(prefix="coreml-bench-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("YOLO_CONFIG_DIR", str(work / "yolo-config"))
        key, _ = generate_keypair(work / "keys")
        if args.digits:
            digits_dir, trained = args.digits, f"given: {args.digits}"
        else:
            from toolchain.demo import train_digits_model

            digits_dir = train_digits_model(work / "digits", epochs=8).model.parent
            trained = "trained here: train_digits_model(epochs=8)"
        rows = bench(
            "digits",
            str(digits_dir / "digits_cnn.pt"),
            key,
            work / "out",
            digits_dir / "calib",
            digits_dir / "val",
            input_shape=[1, 1, 32, 32],
        )
        if args.yolo:
            checkpoint, data_yaml = args.yolo
            detector = f"given: {checkpoint}"
        else:
            from tests.samples import make_shapes_detection_dataset, train_tiny_yolo

            data_yaml = make_shapes_detection_dataset(work / "shapes", val=48)
            checkpoint = train_tiny_yolo(data_yaml, work / "train")
            detector = "trained here: train_tiny_yolo(yolo11n.yaml) on make_shapes_detection_dataset(val=48)"
        calib = data_yaml.parent / "images" / "train"
        rows += bench("yolo11n-shapes", str(checkpoint), key, work / "out", calib, data_yaml, calib_limit=16)
    host = (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    document = {"host": host, "digits": trained, "detector": detector, "rows": rows}
    (args.out / "coreml_sizes.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / "coreml_sizes.md").write_text(markdown(rows, host))
    print(markdown(rows, host))


if __name__ == "__main__":
    main()
