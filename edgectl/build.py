"""`edgectl build`: convert, quantize, validate, benchmark and sign, per target."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("build")(build_command)


def build_command(
    model: str = typer.Argument(
        ...,
        help="ONNX, TorchScript, .pt2, Ultralytics .pt/.yaml, .keras, SavedModel folder, or package.module:factory.",
    ),
    target: list[str] = typer.Option(..., "--target", "-t", help="Target profile; repeat for several."),
    precision: str = typer.Option(
        "auto", "--precision", help="auto (the target's default), fp32, fp16 or int8."
    ),
    calib: Path | None = typer.Option(None, "--calib", help="Calibration data: image folder, .npy or .npz."),
    val: Path | None = typer.Option(
        None, "--val", help="Validation data: folder of class sub-folders, .npz (x, y), or YOLO data.yaml."
    ),
    max_drop: float = typer.Option(1.0, "--max-drop", help="Largest task-metric drop allowed, in points."),
    name: str | None = typer.Option(None, "--name", help="Model name in the bundle (default: file stem)."),
    version: int = typer.Option(1, "--version", help="Model version, an integer that only grows."),
    out: Path = typer.Option(Path("build"), "--out", help="Output folder for bundles."),
    sign_key: Path | None = typer.Option(
        None, "--sign-key", envvar="EDGECTL_SIGN_KEY", help="Ed25519 private key (edgectl keys generate)."
    ),
    weights: Path | None = typer.Option(
        None, "--weights", help="State-dict file for a package.module:factory."
    ),
    input_shape: str | None = typer.Option(
        None, "--input-shape", help="Input shape, batch first: 1,3,224,224."
    ),
    layout: str | None = typer.Option(None, "--layout", help="NCHW or NHWC (default: the model's own)."),
    color: str | None = typer.Option(None, "--color", help="RGB (default), BGR or GRAY."),
    scale: float | None = typer.Option(None, "--scale", help="Pixel scale before mean/std (default 1/255)."),
    mean: str | None = typer.Option(
        None, "--mean", help="Per-channel mean after scaling, e.g. 0.485,0.456,0.406."
    ),
    std: str | None = typer.Option(None, "--std", help="Per-channel std after scaling."),
    labels: Path | None = typer.Option(None, "--labels", help="Class labels, one per line."),
    task: str | None = typer.Option(
        None,
        "--task",
        help="detect, classify or other, for a model that does not say (Ultralytics models do; default: "
        "classify for a (1, classes) output, else other).",
    ),
    calib_limit: int = typer.Option(128, "--calib-limit", help="At most this many calibration samples."),
    bench_runs: int = typer.Option(50, "--bench-runs", help="Timed runs in the benchmark."),
    latency_budget_ms: float | None = typer.Option(
        None,
        "--latency-budget-ms",
        help="Health-check budget for one inference on the device (default: the profile's, else none).",
    ),
    palettize: int | None = typer.Option(
        None, "--palettize", help="Core ML: palettize weights to 4, 6 or 8 bits (weights only)."
    ),
    parent_version: int | None = typer.Option(
        None, "--parent-version", help="Lineage: the version this one was trained from."
    ),
    training_data: str | None = typer.Option(
        None, "--training-data", help="Lineage: a reference to the training data (URI or hash)."
    ),
    trigger: str | None = typer.Option(
        None, "--trigger", help="Lineage: what started this build (manual, drift, schedule, ...)."
    ),
    int16_activations: bool = typer.Option(
        False,
        "--int16-activations",
        help="TFLite INT8: allow int16 activations when int8 cannot hold --max-drop (reference kernels: "
        "much slower than FP32).",
    ),
    allow_slower_int8: bool = typer.Option(
        False,
        "--allow-slower-int8",
        help="Ship INT8 for its size even when it measures no faster than FP32 on this host (said in the notes).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Build signed bundles of MODEL for each --target."""
    from edgectl.output import RichReporter, emit_json, parse_numbers
    from toolchain.errors import UserInputError
    from toolchain.pipeline import BuildRequest, build

    if sign_key is None:
        raise UserInputError(
            "bundles are always signed: no --sign-key given",
            hint="create one with 'edgectl keys generate --out keys' and pass --sign-key keys/signing.key",
        )
    request = BuildRequest(
        model=model,
        targets=target,
        precision=precision,
        calib=calib,
        val=val,
        max_drop=max_drop,
        name=name,
        version=version,
        out=out,
        sign_key=sign_key,
        weights=weights,
        input_shape=parse_numbers(input_shape, int, "--input-shape"),
        layout=layout,
        color=color,
        scale=scale,
        mean=parse_numbers(mean, float, "--mean"),
        std=parse_numbers(std, float, "--std"),
        labels=labels,
        task=task,
        calib_limit=calib_limit,
        bench_runs=bench_runs,
        latency_budget_ms=latency_budget_ms,
        palettize=palettize,
        parent_version=parent_version,
        training_data=training_data,
        trigger=trigger,
        int16_activations=int16_activations,
        allow_slower_int8=allow_slower_int8,
    )
    with RichReporter(enabled=not as_json and sys.stderr.isatty()) as reporter:
        results = build(request, reporter)
    if as_json:
        emit_json("build", {"bundles": [bundle_record(r) for r in results]})
    else:
        print_results(results)


def artifact_bytes(manifest) -> int:
    """Size of the primary artifact: a file, or a folder of files (a Core ML .mlpackage)."""
    path = manifest.artifacts[0].path
    return sum(f.size for f in manifest.files if f.path == path or f.path.startswith(path + "/"))


def bundle_record(result) -> dict:
    manifest = result.manifest
    return {
        "target": result.target,
        "precision": result.precision,
        "bundle": str(result.bundle),
        "archive": str(result.archive),
        "artifact_bytes": artifact_bytes(manifest),
        "validation": manifest.validation.model_dump(mode="json") if manifest.validation else None,
        "benchmark": manifest.benchmark.model_dump(mode="json") if manifest.benchmark else None,
        "stage_seconds": result.stage_seconds,
    }


def result_row(result) -> dict:
    """The figures of one bundle, as the build and demo tables show them."""
    manifest = result.manifest
    report, bench = manifest.validation, manifest.benchmark
    metric = report.metric if report else None
    fit = manifest.memory_fit
    return {
        "target": result.target,
        "runtime": manifest.runtime,
        "precision": result.precision,
        "artifact_bytes": artifact_bytes(manifest),
        "metric": metric,
        "reference": report.reference.get(metric) if metric else None,
        "artifact": report.artifact.get(metric) if metric else None,
        "drop_points": report.drop_points if report else None,
        "cosine": report.fidelity.cosine if report else None,
        "p50_ms": bench.latency_ms_p50 if bench else None,
        "p95_ms": bench.latency_ms_p95 if bench else None,
        "layers_kept_float": report.repair.layers_kept_float if report and report.repair else [],
        "memory_fit": None
        if fit is None
        else {
            "flash_needed_bytes": fit.flash.needed_bytes,
            "flash_capacity_bytes": fit.flash.capacity_bytes,
            "ram_needed_bytes": fit.ram.needed_bytes,
            "ram_capacity_bytes": fit.ram.capacity_bytes,
            "arena_bytes": fit.arena_bytes,
        },
        "bundle": str(result.archive),
    }


def print_results(results, title: str = "edgectl build") -> None:
    from rich.table import Table

    from edgectl.output import console, human_bytes

    table = Table(title=title)
    for column in (
        "target",
        "precision",
        "size",
        "metric",
        "FP32",
        "artifact",
        "drop",
        "p50 ms",
        "p95 ms",
        "bundle",
    ):
        table.add_column(column, justify="right" if column not in ("target", "bundle", "metric") else "left")
    num = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    for result in results:
        row = result_row(result)
        table.add_row(
            row["target"],
            row["precision"],
            human_bytes(row["artifact_bytes"]) if row["artifact_bytes"] else "-",
            row["metric"] or "fidelity",
            num(row["reference"]),
            num(row["artifact"]),
            num(row["drop_points"]),
            num(row["p50_ms"], 3),
            num(row["p95_ms"], 3),
            Path(row["bundle"]).name,
        )
    console.print(table)
    for result in results:
        report = result.manifest.validation
        if report and report.gate:
            console.print(f"{result.target}: gate: {gate_text(report)}")
        summary = quantization_summary(result.precision, report)
        if summary:
            console.print(f"{result.target}: {summary}")
        for note in report.notes if report else []:
            console.print(f"{result.target}: note: {note}")
        fit = result.manifest.memory_fit
        if fit is not None:
            console.print(
                f"{result.target}: flash {human_bytes(fit.flash.needed_bytes)} of "
                f"{human_bytes(fit.flash.capacity_bytes)}, RAM {human_bytes(fit.ram.needed_bytes)} of "
                f"{human_bytes(fit.ram.capacity_bytes)}; tensor arena {fit.arena_bytes} bytes "
                f"({fit.arena_measured_bytes} measured + {fit.arena_margin_bytes} margin)"
            )


def quantization_summary(precision: str, report) -> str | None:
    """What the build really did to reach INT8: activation bits, what stayed float and why, the speed."""
    if precision != "int8" or report is None or report.repair is None:
        return None
    repair = report.repair
    parts = [f"int8 weights, int{repair.activation_bits} activations"]
    if repair.decode_tail_float:
        parts.append(f"{len(repair.decode_tail_float)} decode-tail op(s) kept in float by rule")
    if repair.layers_kept_float:
        shown = ", ".join(repair.layers_kept_float[:8]) + (
            " ..." if len(repair.layers_kept_float) > 8 else ""
        )
        parts.append(f"{len(repair.layers_kept_float)} layer(s) kept in float by measurement ({shown})")
    elif not repair.decode_tail_float:
        parts.append("no layer kept in float")
    parts.append("no QAT")
    if repair.p50_vs_fp32 is not None:
        parts.append(f"host p50 {repair.p50_vs_fp32:.2f}x FP32")
    return "; ".join(parts)


def gate_text(report) -> str:
    """What judged the artifact, in one line (the report's `gate`)."""
    from toolchain.validate import MIN_COSINE_WITHOUT_LABELS

    budget = f"at most {report.max_drop_points:g} points"
    if report.gate == "labels":
        return f"{report.metric} drop against FP32 on {report.samples} labeled --val samples, {budget}"
    if report.gate == "fp32-detections":
        return (
            f"label-free: {report.metric} against FP32's own detections on {report.samples} calibration "
            f"images (no --val labels), drop {budget}"
        )
    if report.gate == "top1-agreement":
        return f"top-1 agreement with FP32 on {report.samples} --calib inputs (no --val labels), {budget} disagree"
    return f"output cosine >= {MIN_COSINE_WITHOUT_LABELS} against FP32 on {report.samples} --calib inputs (no --val labels)"
