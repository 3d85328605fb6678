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
    target: list[str] = typer.Option(
        [], "--target", "-t", help="Only these targets (repeat); default: every target with a converter."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Train a CNN on scikit-learn's digits (no download) and run `build` for every available target."""
    from edgebundle import generate_keypair
    from edgectl.build import print_results, result_row
    from edgectl.output import RichReporter, console, emit_json
    from targets import load_profiles
    from toolchain.converters import CONVERTERS
    from toolchain.demo import IMAGE_SIZE, train_digits_model
    from toolchain.pipeline import BuildRequest, build

    # targets first (a typo fails in a second, before training): the user's, else every one with a converter
    if target:
        from targets import get_profile

        profiles = [get_profile(name) for name in dict.fromkeys(target)]
    else:
        profiles = [p for p in load_profiles().values() if p.runtime in CONVERTERS]
    # microcontrollers get the 8x8 reference CNN: the 32x32 demo model does not fit the smallest board
    available = sorted(p.name for p in profiles if p.runtime != "tflite-micro")
    micro = sorted(p.name for p in profiles if p.runtime == "tflite-micro")
    show = not as_json and sys.stderr.isatty()
    with RichReporter(enabled=show) as reporter:
        reporter.stage("training the digits CNN")
        data = train_digits_model(out / "data", epochs=epochs, progress=reporter.advance)
        key = out / "keys" / "signing.key"
        if not key.exists():
            generate_keypair(out / "keys")
        common = dict(
            model=str(data.model),
            calib=data.calib,
            val=data.val,
            max_drop=max_drop,
            out=out / "bundles",
            sign_key=key,
            input_shape=[1, 1, IMAGE_SIZE, IMAGE_SIZE],
        )
        results = (
            build(BuildRequest(targets=available, name="digits-cnn", **common), reporter) if available else []
        )
        # an FP32 twin of every quantized bundle, so the table shows what quantization bought
        quantized = [r.target for r in results if r.precision != "fp32"]
        if quantized:
            results += build(
                BuildRequest(targets=quantized, precision="fp32", name="digits-cnn-fp32", **common), reporter
            )
        if micro:
            from toolchain.backends.tflite_micro.samples import REFERENCE_SHAPE, train_micro_reference

            reporter.stage("training the 8x8 digits CNN for microcontrollers")
            small = train_micro_reference(out / "data-micro", epochs=epochs, progress=reporter.advance)
            micro_request = {
                **common,
                "model": str(small.model),
                "calib": small.calib,
                "val": small.val,
                "input_shape": REFERENCE_SHAPE,
            }
            results += build(BuildRequest(targets=micro, name="digits-cnn-8x8", **micro_request), reporter)
    results.sort(key=lambda r: (r.target, r.precision))
    if as_json:
        emit_json(
            "demo",
            {
                "training_top1": data.val_accuracy,
                "targets": available + micro,
                "rows": [result_row(r) for r in results],
            },
        )
        return
    console.print(f"digits CNN trained: top-1 {data.val_accuracy:.2f}% on {data.val} (PyTorch)")
    print_results(results, title="edgectl demo: digits CNN")
    console.print(
        f"keys in {out / 'keys'}; verify with: edgectl verify BUNDLE --public-key {out / 'keys/signing.pub'}"
    )
