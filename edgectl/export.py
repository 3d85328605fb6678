"""`edgectl export`: a verified bundle as the files a mobile app project takes."""

from __future__ import annotations

from pathlib import Path

import typer

export_app = typer.Typer(help="Export a verified bundle into a mobile app project.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")


@export_app.command("android")
def android_command(
    bundle: Path = typer.Argument(..., help="Bundle folder or .edgebundle archive (runtime tflite)."),
    out: Path = typer.Option(..., "--out", help="Output folder: assets/, model-info.json, ModelRunner.kt."),
    public_key: Path | None = typer.Option(
        None,
        "--key",
        "--public-key",
        envvar="EDGECTL_PUBLIC_KEY",
        help="Ed25519 public key (signing.pub): the bundle is verified before anything is read.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace the content of a non-empty --out."),
    size_limit_mb: float | None = typer.Option(
        None,
        "--size-limit-mb",
        help="App download limit for the size check (default: the target profile's app_download_limit_mb).",
    ),
    package: str = typer.Option("com.example.model", "--package", help="Kotlin package of ModelRunner.kt."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Write the models, labels, model-info.json and a LiteRT Kotlin runner for an Android app."""
    from edgectl.output import console, emit_json, err_console, human_bytes
    from mobile_export.android import export_android

    result = export_android(
        bundle, out, public_key, force=force, size_limit_mb=size_limit_mb, package=package
    )
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True, markup=True)
    if as_json:
        emit_json("export", result.model_dump(mode="json"))
        return
    console.print(f"exported {result.name} v{result.version} ({result.target}) for Android to {result.out}")
    for item in result.files:
        console.print(f"  {item.path}  {human_bytes(item.size)}", highlight=False)
    size = result.size
    console.print(
        f"assets {human_bytes(size.total_bytes)}: {size.fraction:.1%} of the {size.limit_mb:g} MB "
        f"app download limit ({size.status})"
    )


@export_app.command("ios")
def ios_command(
    bundle: Path = typer.Argument(..., help="Bundle folder or .edgebundle archive (runtime coreml)."),
    out: Path = typer.Option(
        ..., "--out", help="Output folder: the .mlpackage, model-info.json, Swift, README."
    ),
    public_key: Path | None = typer.Option(
        None,
        "--key",
        "--public-key",
        envvar="EDGECTL_PUBLIC_KEY",
        help="Ed25519 public key (signing.pub): the bundle is verified before anything is read.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace the content of a non-empty --out."),
    size_limit_mb: float | None = typer.Option(
        None,
        "--size-limit-mb",
        help="Size guidance for a model in the app bundle (default: the profile's on_demand_guidance_mb).",
    ),
    class_name: str | None = typer.Option(
        None, "--class-name", help="Swift class Xcode generates (default: from the bundle's name)."
    ),
    author: str = typer.Option("", "--author", help="Author written into the package's metadata."),
    license_text: str = typer.Option("", "--license", help="License written into the package's metadata."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Write the Core ML package, model-info.json and Swift (Vision or the generated class) for an iOS app."""
    from edgectl.output import console, emit_json, err_console, human_bytes
    from mobile_export.ios import export_ios

    result = export_ios(
        bundle,
        out,
        public_key,
        force=force,
        size_limit_mb=size_limit_mb,
        class_name=class_name,
        author=author,
        license_text=license_text,
    )
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True, markup=True)
    if as_json:
        emit_json("export", result.model_dump(mode="json"))
        return
    console.print(f"exported {result.name} v{result.version} ({result.target}) for iOS to {result.out}")
    console.print(f"  {result.package}/  {human_bytes(result.size.total_bytes)}", highlight=False)
    for item in result.files:
        if not item.path.startswith(result.package + "/"):
            console.print(f"  {item.path}  {human_bytes(item.size)}", highlight=False)
    size = result.size
    console.print(
        f"package {human_bytes(size.total_bytes)}: {size.fraction:.1%} of the {size.limit_mb:g} MB "
        f"guidance for models in the app bundle ({size.status})"
    )
