"""What every converter gets and returns, and the table they register into."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgebase.deps import is_available
from edgebundle.manifest import LayerRepair, NMSParams, Precision, Preprocessing, ValidationReport
from targets import TargetProfile
from targets.runtimes import RUNTIME_NAMES
from toolchain.errors import (
    CalibrationError,
    ConverterUnavailableError,
    Int8TooSlowError,
    MissingDependencyError,
)

if TYPE_CHECKING:
    from toolchain.repair import Int8Search
    from toolchain.sources import SourceModel
    from toolchain.speed import SpeedCheck

# Every runtime a target profile may name (the rows of targets/runtimes.py); those without a
# registered converter fail with ConverterUnavailableError until their converter lands.
KNOWN_RUNTIMES = RUNTIME_NAMES


@dataclass
class BuildContext:
    """Everything a converter needs for one target, prepared once by the pipeline."""

    fp32_onnx: Path | None  # None for a Keras source, which only TFLite targets take
    profile: TargetProfile
    precision: Precision
    workdir: Path
    input_name: str
    calibration: np.ndarray | None
    # Runs an artifact of this target's runtime on the evaluation data and judges it.
    evaluate: Callable[[Path], ValidationReport]
    # Raw outputs of an artifact on a few calibration inputs, for sensitivity ranking.
    sample_outputs: Callable[[Path], list[np.ndarray]]
    sample_reference: list[np.ndarray]
    progress: Callable[[str, int, int], None] = lambda _label, _done, _total: None
    task: str = "other"
    saved_model: Path | None = None  # a TensorFlow source, already a SavedModel
    # The model as the user gave it and its input shape, for converters that start from the framework
    # model rather than ONNX (Core ML from PyTorch); `toolchain.sources` knows how to load it.
    source: SourceModel | None = None
    input_shape: list[int] = field(default_factory=list)
    preprocessing: Preprocessing | None = None  # the source's (layout, color, normalization)
    labels: list[str] = field(default_factory=list)
    nms: NMSParams | None = None
    palettize: int | None = None  # --palettize BITS: weight palettization where the converter offers it
    # Host p50 of a candidate against a baseline artifact of the same runtime, runs interleaved
    # (`toolchain.speed`); None where that runtime does not run on this host.
    speed: Callable[[Path, Path], SpeedCheck] | None = None
    int16_activations: bool = False  # --int16-activations: the user accepts TFLite's slower int16 kernels
    allow_slower_int8: bool = False  # --allow-slower-int8: INT8 for its size, even when not faster than FP32


@dataclass
class ConvertedArtifact:
    path: Path
    role: str
    format: str
    precision: Precision
    validation: ValidationReport | None = None  # when the converter already judged it
    repair: LayerRepair | None = None
    notes: list[str] = field(default_factory=list)  # added to the artifact's validation notes
    boxes: str | None = None  # a detector's box rows: "pixels", or "normalized" to 0..1 by the input size


@dataclass
class ConverterResult:
    artifacts: list[ConvertedArtifact]
    validation: ValidationReport | None = None  # the primary artifact's (artifacts[0]), when already judged
    repair: LayerRepair | None = None
    versions: dict[str, str] = field(default_factory=dict)
    converter: str | None = None  # the tool chain used, when it depends on the source (default: the name)
    # Files for the bundle that are not artifacts (generated C++ sources, build plans): bundle-relative
    # posix path -> file. The pipeline copies them in; the manifest's sha256 list covers them.
    extra_files: dict[str, Path] = field(default_factory=dict)
    # Runtime-specific manifest sections, by Manifest field name (e.g. memory_fit for microcontrollers).
    manifest_sections: dict[str, Any] = field(default_factory=dict)


class Converter:
    runtime: ClassVar[str]
    name: ClassVar[str]
    # (module, extra) pairs that must be importable
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()
    # Source kinds (toolchain.sources.SOURCE_KINDS) this converter takes; None: every kind that exports
    # to ONNX. Checked before any export, so a wrong pairing fails in a second.
    source_kinds: ClassVar[frozenset[str] | None] = None
    # Whether INT8 here is calibrated on the user's data (False for weight-only quantization).
    int8_needs_calibration: ClassVar[bool] = True

    def check_available(self) -> None:
        for module, extra in self.requires:
            if not is_available(module):
                raise MissingDependencyError(module, extra, f"the {self.runtime} converter")

    def accepts(self, source_kind: str) -> bool:
        if self.source_kinds is not None:
            return source_kind in self.source_kinds
        from toolchain.sources import SOURCE_KINDS

        return SOURCE_KINDS[source_kind].export is not None

    def convert(self, ctx: BuildContext) -> ConverterResult:
        raise NotImplementedError


def require_calibration(ctx: BuildContext, alternative: str = "fp32") -> np.ndarray:
    """The user's calibration inputs; INT8 without them is an error (edgectl never invents data)."""
    if ctx.calibration is None:
        raise CalibrationError(
            "INT8 needs calibration data from you; edgectl never invents it",
            hint=f"pass --calib with a folder of representative inputs (or a .npy), or --precision {alternative}",
        )
    return ctx.calibration


CONVERTERS: dict[str, Converter] = {}


def register(cls: type[Converter]) -> type[Converter]:
    if cls.runtime not in KNOWN_RUNTIMES:
        raise ValueError(f"unknown runtime {cls.runtime!r}; known: {', '.join(KNOWN_RUNTIMES)}")
    if cls.runtime in CONVERTERS:
        raise ValueError(f"a converter for {cls.runtime!r} is already registered")
    CONVERTERS[cls.runtime] = cls()
    return cls


def get_converter(profile: TargetProfile) -> Converter:
    converter = CONVERTERS.get(profile.runtime)
    if converter is None:
        available = sorted(CONVERTERS)
        raise ConverterUnavailableError(
            f"target {profile.name} needs a {profile.runtime} converter, which this version of edgectl does not have yet",
            hint=f"build for a target whose runtime is one of: {', '.join(available)} ('edgectl targets' lists them)",
        )
    return converter


def require_fast_int8(ctx: BuildContext, result: Int8Search, fp32_what: str) -> Int8Search:
    """Refuse an INT8 candidate that holds the budget but runs slower than the runtime's FP32 artifact.

    INT8 is asked for to be faster; one that is slower is never shipped silently. Under
    `--precision auto` the pipeline then ships the float artifact instead and says why. With
    `--allow-slower-int8` (INT8 for its size) it ships, and its notes say how much slower it measured.
    """
    from toolchain.speed import MAX_RATIO, host_int8_caveat

    if result.speed is None or result.speed.faster or not result.report.passed:
        return result
    caveat = host_int8_caveat()
    caveat = f" ({caveat})" if caveat else ""
    if ctx.allow_slower_int8:
        note = f"INT8 shipped although not faster than {fp32_what} (--allow-slower-int8): {result.speed.describe()}{caveat}"
        report = result.report.model_copy(update={"notes": [*result.report.notes, note]})
        return dataclasses.replace(result, report=report)
    repair = result.repair
    if repair is None or repair.method == "none":
        how = "full INT8"
    elif repair.method == "keep-float":
        how = f"{len(repair.layers_kept_float)} layer(s) and {len(repair.decode_tail_float)} decode-tail op(s) in float"
    else:
        how = f"{len(repair.decode_tail_float)} decode-tail op(s) in float"
    error = Int8TooSlowError(
        f"{ctx.profile.name} int8: the INT8 model that holds the accuracy budget ({how}) is not faster than "
        f"{fp32_what}: {result.speed.describe()}, above the {MAX_RATIO:g}x allowed{caveat}",
        hint="build --precision auto (ships the faster float artifact), or pass --allow-slower-int8 for INT8's size"
        + (", or give more representative --calib data" if repair and repair.layers_kept_float else ""),
    )
    error.report = result.report
    error.attempts = result.repair.attempts if result.repair else None
    raise error
