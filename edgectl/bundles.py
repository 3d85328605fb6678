"""`edgectl inspect`, `verify` and `bench`: look into, check and time a bundle."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_command)
    app.command("verify")(verify_command)
    app.command("bench")(bench_command)


def inspect_command(
    bundle: Path = typer.Argument(..., help="Bundle folder or .edgebundle archive."),
    as_json: bool = typer.Option(False, "--json", help="The whole manifest as JSON."),
) -> None:
    """Show a bundle's manifest (without checking its signature: use verify for that)."""
    from edgebundle import read_manifest
    from edgectl.output import console, emit_json, human_bytes

    manifest = read_manifest(bundle)
    if as_json:
        emit_json("inspect", {"manifest": manifest.model_dump(mode="json")})
        return
    console.print(
        f"[bold]{manifest.name}[/] v{manifest.version}  target {manifest.target} ({manifest.runtime})"
    )
    console.print(f"precision {manifest.precision}, created {manifest.created_at}, key {manifest.key_id}")
    console.print(
        f"source {manifest.source.kind} {manifest.source.filename} sha256 {manifest.source.sha256[:16]}…"
    )
    for artifact in manifest.artifacts:
        size = next((f.size for f in manifest.files if f.path == artifact.path), 0)
        console.print(
            f"artifact {artifact.path} [{artifact.format}, {artifact.precision}] {human_bytes(size)}"
        )
        for tensor in artifact.inputs:
            console.print(f"  input  {tensor.name} {tensor.shape} {tensor.dtype}")
        for tensor in artifact.outputs:
            console.print(f"  output {tensor.name} {tensor.shape} {tensor.dtype}")
    pre = manifest.preprocessing
    console.print(
        f"preprocessing {pre.layout} {pre.color} resize {pre.resize} ({pre.resize_mode}) "
        f"scale {pre.scale:.6g} mean {pre.mean} std {pre.std}"
    )
    post = manifest.postprocessing
    console.print(f"task {post.task}, {len(post.labels)} labels" + (f", NMS {post.nms}" if post.nms else ""))
    if manifest.validation:
        report = manifest.validation
        console.print(
            f"validation on {report.samples} {report.data} samples: reference {report.reference} "
            f"artifact {report.artifact} drop {report.drop_points} (max {report.max_drop_points}) "
            f"cosine {report.fidelity.cosine} -> {'passed' if report.passed else 'FAILED'}"
        )
        if report.repair:
            console.print(f"layers kept in float: {', '.join(report.repair.layers_kept_float)}")
    if manifest.benchmark:
        bench = manifest.benchmark
        console.print(
            f"benchmark ({bench.threads} threads, {bench.host}): p50 {bench.latency_ms_p50:.3f} ms "
            f"p95 {bench.latency_ms_p95:.3f} ms, init {bench.session_init_ms:.1f} ms, "
            f"peak memory +{bench.peak_memory_mb:.1f} MB"
        )


def verify_command(
    bundle: Path = typer.Argument(..., help="Bundle folder or .edgebundle archive."),
    public_key: Path = typer.Option(..., "--public-key", help="Ed25519 public key (signing.pub)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Exit 0 only when the signature and every file hash hold."""
    from edgebundle import load_public_key, verify_bundle
    from edgectl.output import console, emit_json

    manifest = verify_bundle(bundle, load_public_key(public_key))
    if as_json:
        emit_json(
            "verify",
            {
                "verified": True,
                "name": manifest.name,
                "version": manifest.version,
                "target": manifest.target,
                "key_id": manifest.key_id,
                "files": len(manifest.files),
            },
        )
    else:
        console.print(
            f"verified: {manifest.name} v{manifest.version} for {manifest.target}, "
            f"{len(manifest.files)} files, key {manifest.key_id}"
        )


def bench_command(
    bundle: Path = typer.Argument(..., help="Bundle folder or .edgebundle archive."),
    runs: int = typer.Option(100, "--runs", help="Timed runs."),
    threads: int | None = typer.Option(None, "--threads", help="Threads (default: the target profile's)."),
    public_key: Path | None = typer.Option(
        None, "--public-key", help="Verify the bundle with this key before running it."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Benchmark a bundle's primary artifact on this machine."""
    import tempfile

    from edgebundle import extract_archive, load_public_key, open_verified, read_manifest
    from edgectl.output import console, emit_json
    from targets import get_profile
    from toolchain.benchmark import benchmark
    from toolchain.errors import UserInputError
    from toolchain.runners import RUNNERS

    with tempfile.TemporaryDirectory(prefix="edgectl-bench-") as tmp:
        if public_key is not None:
            root = Path(tmp) / "bundle"
            manifest = open_verified(bundle, load_public_key(public_key), root)
        elif bundle.is_dir():
            root = bundle
            manifest = read_manifest(root)
        else:
            root = extract_archive(bundle, Path(tmp) / "bundle")
            manifest = read_manifest(root)
        if manifest.runtime not in RUNNERS:
            raise UserInputError(
                f"this host cannot run {manifest.runtime} artifacts yet", hint="benchmark it on the device"
            )
        threads = threads or get_profile(manifest.target).threads
        report = benchmark(root / manifest.artifacts[0].path, manifest.runtime, threads=threads, runs=runs)
    if as_json:
        emit_json("bench", {"bundle": str(bundle), "benchmark": report.model_dump(mode="json")})
    else:
        console.print(
            f"{manifest.name} v{manifest.version} {manifest.target} {manifest.precision}: "
            f"p50 {report.latency_ms_p50:.3f} ms, p95 {report.latency_ms_p95:.3f} ms, "
            f"{report.throughput_per_s:.1f}/s, init {report.session_init_ms:.1f} ms, "
            f"peak memory +{report.peak_memory_mb:.1f} MB ({report.threads} threads)"
        )
