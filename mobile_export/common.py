"""What every mobile exporter shares: a verified bundle, model-info pieces, the size check, atomic output.

An exporter never reads a bundle it has not verified: `open_bundle` puts a
checked copy in a temporary folder and hands back its manifest. The model-info
models here (tensors, normalization, validation and benchmark summaries) are
the platform-neutral parts of the Android and iOS model-info documents. The
output folder appears under its final name only once complete.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgebase.errors import HintedError
from edgebundle.manifest import BenchmarkReport, Manifest, Preprocessing, TensorSpec, ValidationReport

DEFAULT_APP_DOWNLOAD_LIMIT_MB = 200
WARN_FRACTION = 0.8
MB = 1024 * 1024
PUBLIC_KEY_ENV = "EDGECTL_PUBLIC_KEY"


def template(name: str) -> str:
    """A Kotlin or Swift source fragment from `mobile_export/templates/` (placeholders are `@NAME@`)."""
    from importlib.resources import files

    return (files("mobile_export") / "templates" / name).read_text(encoding="utf-8")


class UserInputError(HintedError):
    """A flag, path or bundle given to an exporter is wrong (printed as `error:` and `hint:`, exit 2)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuantInfo(_Model):
    scale: float
    zero_point: int


class TensorInfo(_Model):
    """One input or output, as the runtime on the phone sees it (copied from the manifest's TensorSpec)."""

    name: str
    shape: list[int]
    dtype: str
    layout: str | None = Field(
        default=None, description="NHWC or NCHW for an image tensor; None for anything else."
    )
    quantization: QuantInfo | None = Field(
        default=None, description="Present when the tensor is integer: real = (q - zero_point) * scale."
    )


class BundleInfo(_Model):
    """Which signed bundle an export came from."""

    name: str
    version: int
    target: str
    runtime: str
    precision: str
    created_at: str
    key_id: str | None
    source_kind: str
    source_filename: str
    source_sha256: str


def bundle_info(manifest: Manifest) -> BundleInfo:
    return BundleInfo(
        name=manifest.name,
        version=manifest.version,
        target=manifest.target,
        runtime=manifest.runtime,
        precision=manifest.precision,
        created_at=manifest.created_at,
        key_id=manifest.key_id,
        source_kind=manifest.source.kind,
        source_filename=manifest.source.filename,
        source_sha256=manifest.source.sha256,
    )


class Normalization(_Model):
    """How a camera frame becomes the model's input: x = (pixel * scale - mean[c]) / std[c]."""

    input: str = Field(
        default="image", description="image, or tensor: fed as the input spec says; the rest does not apply."
    )
    color: str
    resize: tuple[int, int] | None = Field(description="(height, width) fed to the model.")
    resize_mode: str
    letterbox_fill: int
    scale: float
    mean: list[float]
    std: list[float]


class ValidationSummary(_Model):
    data: str
    samples: int
    metric: str | None
    reference: dict[str, float]
    artifact: dict[str, float]
    drop_points: float | None
    max_drop_points: float
    cosine: float
    passed: bool
    repair: str | None = Field(default=None, description="Repair method, when INT8 needed one.")


class BenchmarkSummary(_Model):
    latency_ms_p50: float
    latency_ms_p95: float
    threads: int
    host: str


class SizeCheck(_Model):
    """The app's assets against the target's app download limit."""

    total_bytes: int
    limit_mb: float
    limit_bytes: int
    fraction: float = Field(description="total_bytes / limit_bytes.")
    status: Literal["ok", "warn", "over"] = Field(description="warn above 80% of the limit, over above 100%.")

    def message(self, target: str) -> str:
        share = f"{self.total_bytes / MB:.1f} MB, {self.fraction:.0%} of the {self.limit_mb:g} MB"
        if self.status == "over":
            return f"the assets are {share} app download limit of target {target}: the app will not fit"
        return f"the assets are {share} app download limit of target {target}"


class ExportedFile(_Model):
    path: str = Field(description="Relative to the output folder.")
    size: int
    sha256: str


@dataclass(frozen=True)
class VerifiedBundle:
    """A checked copy of a bundle: its folder (temporary) and its signed manifest."""

    root: Path
    manifest: Manifest


# --------------------------------------------------------------------------- the bundle


@contextlib.contextmanager
def open_bundle(bundle: Path, public_key: Path | None) -> Iterator[VerifiedBundle]:
    """Verify `bundle` (folder or archive) with `public_key` and yield a checked copy of it.

    The copy lives in a temporary folder removed on exit. A bad signature or a
    changed file raises the edgebundle error before the caller sees anything.
    """
    from edgebundle import load_public_key, open_verified

    if public_key is None:
        raise UserInputError(
            "exporting needs the bundle's public key to verify it first: no --key given",
            hint=f"pass --key keys/signing.pub (or set {PUBLIC_KEY_ENV})",
        )
    key = load_public_key(public_key)
    with tempfile.TemporaryDirectory(prefix="edgectl-export-") as tmp:
        root = Path(tmp) / "bundle"
        manifest = open_verified(Path(bundle), key, root)
        yield VerifiedBundle(root=root, manifest=manifest)


def require_runtime(manifest: Manifest, runtimes: tuple[str, ...], command: str, other_hint: str) -> None:
    """A UserInputError unless the bundle's runtime is one this exporter takes."""
    if manifest.runtime not in runtimes:
        raise UserInputError(
            f"bundle {manifest.name} v{manifest.version} is a {manifest.runtime} bundle (target "
            f"{manifest.target}); {command} takes {' or '.join(runtimes)} bundles",
            hint=other_hint,
        )


# --------------------------------------------------------------------------- model-info pieces


def tensor_info(spec: TensorSpec, default_layout: str | None = None) -> TensorInfo:
    """The manifest's tensor; with `default_layout`, an image layout is worked out where the manifest has none."""
    quant = spec.quantization
    integer = spec.dtype in ("int8", "uint8", "int32", "int64")
    layout = spec.layout if spec.layout in ("NHWC", "NCHW") else None
    if layout is None and default_layout is not None:
        layout = image_layout(spec, default_layout)
    return TensorInfo(
        name=spec.name,
        shape=list(spec.shape),
        dtype=spec.dtype,
        layout=layout,
        quantization=QuantInfo(scale=quant.scale, zero_point=quant.zero_point) if quant and integer else None,
    )


def normalization(pre: Preprocessing) -> Normalization:
    return Normalization(
        input=pre.input,
        color=pre.color,
        resize=pre.resize,
        resize_mode=pre.resize_mode,
        letterbox_fill=pre.letterbox_fill,
        scale=pre.scale,
        mean=list(pre.mean),
        std=list(pre.std),
    )


def image_layout(spec: TensorSpec, default: str) -> str | None:
    """NHWC or NCHW for a 4-D image tensor, None for anything else (tokens, feature vectors)."""
    if len(spec.shape) != 4 or spec.dtype in ("int32", "int64"):
        return None
    if spec.layout in ("NHWC", "NCHW"):
        return spec.layout
    channels = (1, 3, 4)
    if spec.shape[-1] in channels and spec.shape[1] not in channels:
        return "NHWC"
    if spec.shape[1] in channels and spec.shape[-1] not in channels:
        return "NCHW"
    return default if default in ("NHWC", "NCHW") else "NHWC"


def validation_summary(report: ValidationReport | None) -> ValidationSummary | None:
    if report is None:
        return None
    return ValidationSummary(
        data=report.data,
        samples=report.samples,
        metric=report.metric,
        reference=dict(report.reference),
        artifact=dict(report.artifact),
        drop_points=report.drop_points,
        max_drop_points=report.max_drop_points,
        cosine=report.fidelity.cosine,
        passed=report.passed,
        repair=report.repair.method if report.repair else None,
    )


def benchmark_summary(report: BenchmarkReport | None) -> BenchmarkSummary | None:
    if report is None:
        return None
    return BenchmarkSummary(
        latency_ms_p50=report.latency_ms_p50,
        latency_ms_p95=report.latency_ms_p95,
        threads=report.threads,
        host=report.host,
    )


# --------------------------------------------------------------------------- size check


def app_download_limit_mb(target: str) -> float:
    """The target profile's `app_download_limit_mb` option; the default when the profile is unknown here."""
    from targets import UnknownTargetError, get_profile

    try:
        profile = get_profile(target)
    except UnknownTargetError:
        return DEFAULT_APP_DOWNLOAD_LIMIT_MB
    return float(getattr(profile.runtime_options(), "app_download_limit_mb", DEFAULT_APP_DOWNLOAD_LIMIT_MB))


def check_size(total_bytes: int, limit_mb: float) -> SizeCheck:
    """Raw bytes against the limit. Stores compress the download a little; raw bytes err on the safe side."""
    limit_bytes = int(limit_mb * MB)
    fraction = total_bytes / limit_bytes if limit_bytes > 0 else float("inf")
    status = "over" if fraction > 1.0 else "warn" if fraction > WARN_FRACTION else "ok"
    return SizeCheck(
        total_bytes=total_bytes,
        limit_mb=limit_mb,
        limit_bytes=limit_bytes,
        fraction=round(fraction, 4),
        status=status,
    )


# --------------------------------------------------------------------------- the output folder


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse an --out that is a file, or a non-empty folder without --force; before any work is done."""
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        raise UserInputError(f"--out {out} exists and is not a folder", hint="pass a new folder")
    if any(out.iterdir()) and not force:
        raise UserInputError(
            f"--out {out} is not empty", hint="pass a new folder, or --force to replace its content"
        )


@contextlib.contextmanager
def staged_output(out: Path, force: bool) -> Iterator[Path]:
    """Yield a fresh folder next to `out`; on success it replaces `out` in one rename, on failure it goes.

    With `force`, a non-empty `out` steps aside first and is removed only once
    the new folder is in place. On failure, parent folders made for `out` go too.
    """
    out = Path(out)
    check_out_dir(out, force)
    made = [p for p in (out.parent, *out.parent.parents) if not os.path.lexists(p)]
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.export-{secrets.token_hex(6)}"
    work.mkdir(mode=0o755)
    old = None
    try:
        yield work
        check_out_dir(out, force)  # someone may have written there meanwhile
        if os.path.lexists(out) and any(out.iterdir()):
            old = out.parent / f".{out.name}.old-{secrets.token_hex(6)}"
            os.rename(out, old)
        os.rename(work, out)  # replaces an empty folder
    except BaseException:
        if old is not None and not os.path.lexists(out):
            os.rename(old, out)
            old = None
        shutil.rmtree(work, ignore_errors=True)
        for folder in made:  # innermost first: a failed export leaves no trace, not even --out's parents
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
