"""`edgectl optimize`: prune whole channels, fine-tune, and report before/after, so `build` gets a faster model."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

SPARSE_REG_DEFAULT = 5e-3  # toolchain.optimize.request.SPARSE_REG; not imported, so --help stays light


def register(app: typer.Typer) -> None:
    app.command("optimize")(optimize_command)


def optimize_command(
    model: str = typer.Argument(
        ..., help="Ultralytics detector .pt, TorchScript (an nn.Sequential), or package.module:factory."
    ),
    prune: float = typer.Option(
        ..., "--prune", help="Fraction of each layer's channels to remove, in (0, 1)."
    ),
    train: Path = typer.Option(
        ..., "--train", help="Fine-tuning data: folder of class sub-folders, .npz (x, y), or YOLO data.yaml."
    ),
    val: Path = typer.Option(
        ..., "--val", help="Validation data: folder of class sub-folders, .npz (x, y), or YOLO data.yaml."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for the pruned model, its .pruning.json and report."),
    epochs: int = typer.Option(10, "--epochs", help="Fine-tuning epochs."),
    max_drop: float = typer.Option(
        1.0, "--max-drop", help="Largest task-metric drop allowed after fine-tuning, in points."
    ),
    weights: Path | None = typer.Option(
        None, "--weights", help="State-dict file for a package.module:factory."
    ),
    input_shape: str | None = typer.Option(
        None, "--input-shape", help="Input shape, batch first: 1,3,224,224."
    ),
    scale: float | None = typer.Option(None, "--scale", help="Pixel scale before mean/std (default 1/255)."),
    mean: str | None = typer.Option(None, "--mean", help="Per-channel mean after scaling."),
    std: str | None = typer.Option(None, "--std", help="Per-channel std after scaling."),
    distill: bool | None = typer.Option(
        None,
        "--distill/--no-distill",
        help="Distil from the unpruned model while fine-tuning (default: classifiers yes, detectors no).",
    ),
    batch: int = typer.Option(64, "--batch", help="Classifier fine-tuning batch size."),
    lr: float = typer.Option(1e-3, "--lr", help="Classifier fine-tuning learning rate (AdamW, cosine)."),
    round_to: int = typer.Option(
        1,
        "--round-to",
        help="Keep channel counts multiples of this (8 suits SIMD; costs accuracy at small widths).",
    ),
    sparse_epochs: int = typer.Option(
        0,
        "--sparse-epochs",
        help="Train this many epochs with Torch-Pruning's group-lasso regularizer before pruning (0: none).",
    ),
    sparse_reg: float = typer.Option(
        SPARSE_REG_DEFAULT, "--sparse-reg", help="Group-lasso coefficient of --sparse-epochs."
    ),
    threads: int = typer.Option(1, "--threads", help="ONNX Runtime threads for the latency figures."),
    bench_runs: int = typer.Option(50, "--bench-runs", help="Timed runs of each model."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Prune MODEL's channels with Torch-Pruning, fine-tune it, and write it for `edgectl build`."""
    from edgectl.output import RichReporter, emit_json, parse_numbers
    from toolchain.errors import AccuracyGateError, UserInputError
    from toolchain.optimize import OptimizeRequest, optimize

    if not 0.0 < prune < 1.0:
        raise UserInputError(
            f"--prune {prune} is outside (0, 1)",
            hint="it is the fraction of channels to remove from each layer, e.g. --prune 0.3",
        )
    if epochs < 1:
        raise UserInputError(f"--epochs {epochs} must be at least 1", hint="e.g. --epochs 10")
    if sparse_epochs < 0:
        raise UserInputError(
            f"--sparse-epochs {sparse_epochs} is negative", hint="0 for none, e.g. --sparse-epochs 20"
        )
    if not 0.0 < sparse_reg <= 1.0:
        raise UserInputError(
            f"--sparse-reg {sparse_reg} is outside (0, 1]", hint=f"the default is {SPARSE_REG_DEFAULT:g}"
        )
    request = OptimizeRequest(
        model=model,
        prune=prune,
        train=train,
        val=val,
        out=out,
        epochs=epochs,
        max_drop=max_drop,
        weights=weights,
        input_shape=parse_numbers(input_shape, int, "--input-shape"),
        scale=scale,
        mean=parse_numbers(mean, float, "--mean"),
        std=parse_numbers(std, float, "--std"),
        distill=distill,
        batch=batch,
        lr=lr,
        round_to=round_to,
        sparse_epochs=sparse_epochs,
        sparse_reg=sparse_reg,
        threads=threads,
        bench_runs=bench_runs,
    )
    try:
        with RichReporter(enabled=not as_json and sys.stderr.isatty()) as reporter:
            report = optimize(request, reporter)
    except AccuracyGateError as exc:  # errors never go to stdout, not even under --json
        print_attempts(getattr(exc, "pruning_attempts", []), stderr=True)
        raise
    if as_json:
        emit_json("optimize", {"passed": True, **report.model_dump(mode="json")})
    else:
        print_report(report)


def print_attempts(attempts, stderr: bool = False) -> None:
    from rich.table import Table

    from edgectl.output import console, err_console

    table = Table(title="pruning attempts")
    for column in ("ratio", "metric", "before", "after", "drop", "MACs", "params", "within --max-drop"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for a in attempts:
        table.add_row(
            f"{a.ratio:.0%}",
            a.metric,
            f"{a.before:.2f}",
            f"{a.after:.2f}",
            f"{a.drop_points:.2f}",
            f"{a.macs / 1e6:.1f}M",
            f"{a.params / 1e6:.3f}M",
            "yes" if a.passed else "no",
        )
    (err_console if stderr else console).print(table)


def print_report(report) -> None:
    from rich.table import Table

    from edgectl.output import console, human_bytes

    table = Table(
        title=f"edgectl optimize: {report.ratio:.0%} of the channels pruned, {report.epochs} epochs"
        + (f" after {report.sparse_epochs} of sparse training" if report.sparse_epochs else "")
    )
    for column in ("", "params", "MACs", "FP32 ONNX", "p50 ms", *report.before.metrics):
        table.add_column(column, justify="left" if not column else "right")
    for name, stats in (("before", report.before), ("after", report.after)):
        table.add_row(
            name,
            f"{stats.params / 1e6:.3f}M",
            f"{stats.macs / 1e6:.1f}M",
            human_bytes(stats.onnx_bytes),
            f"{stats.latency_ms_p50:.3f}",
            *(f"{stats.metrics.get(k, 0.0):.2f}" for k in report.before.metrics),
        )
    console.print(table)
    layers = Table(title="channels per layer")
    for column in ("layer", "kind", "before", "after"):
        layers.add_column(column, justify="left" if column in ("layer", "kind") else "right")
    for row in report.layers:
        layers.add_row(row.layer, row.kind, str(row.before), str(row.after))
    console.print(layers)
    if len(report.attempts) > 1:
        print_attempts(report.attempts)
    console.print(
        f"{report.speedup:.2f}x faster FP32 on this host; distilled: {'yes' if report.distilled else 'no'}; "
        f"sparse training: {f'{report.sparse_epochs} epochs' if report.sparse_epochs else 'no'}",
        highlight=False,
    )
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(
        f"wrote {report.model} and {report.sidecar.name}; build it: edgectl build {report.model} ..."
    )
