"""`edgectl demo`: train the digits CNN and build it for every target with a converter."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)


def demo_command(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the model, data, keys and bundles."),
    epochs: int = typer.Option(12, "--epochs", help="Training epochs of the digits CNN."),
    max_drop: float = typer.Option(0.5, "--max-drop", help="Largest top-1 drop allowed, in points."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Train a CNN on scikit-learn's digits (no download) and run `build` for every available target."""
    from edgebundle import generate_keypair
    from targets import load_profiles
    from toolchain.cli.build import print_results, result_row
    from toolchain.cli.output import RichReporter, console, emit_json
    from toolchain.converters import CONVERTERS
    from toolchain.demo import IMAGE_SIZE, train_digits_model
    from toolchain.pipeline import BuildRequest, build

    show = not as_json and sys.stderr.isatty()
    with RichReporter(enabled=show) as reporter:
        reporter.stage("training the digits CNN")
        data = train_digits_model(out / "data", epochs=epochs, progress=reporter.advance)
        key = out / "keys" / "signing.key"
        if not key.exists():
            generate_keypair(out / "keys")
        available = sorted(p.name for p in load_profiles().values() if p.runtime in CONVERTERS)
        common = dict(
            model=str(data.model),
            calib=data.calib,
            val=data.val,
            max_drop=max_drop,
            out=out / "bundles",
            sign_key=key,
            input_shape=[1, 1, IMAGE_SIZE, IMAGE_SIZE],
        )
        results = build(BuildRequest(targets=available, name="digits-cnn", **common), reporter)
        # an FP32 twin of every quantized bundle, so the table shows what quantization bought
        quantized = [r.target for r in results if r.precision != "fp32"]
        if quantized:
            results += build(
                BuildRequest(targets=quantized, precision="fp32", name="digits-cnn-fp32", **common), reporter
            )
    results.sort(key=lambda r: (r.target, r.precision))
    if as_json:
        emit_json(
            "demo",
            {
                "training_top1": data.val_accuracy,
                "targets": available,
                "rows": [result_row(r) for r in results],
            },
        )
        return
    console.print(f"digits CNN trained: top-1 {data.val_accuracy:.2f}% on {data.val} (PyTorch)")
    print_results(results, title="edgectl demo: digits CNN")
    console.print(
        f"keys in {out / 'keys'}; verify with: edgectl verify BUNDLE --public-key {out / 'keys/signing.pub'}"
    )
