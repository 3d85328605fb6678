"""What the build's stages share: the build's state, and each target's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edgebundle.bundle import BundleLocation
    from edgebundle.manifest import Manifest, Precision, Preprocessing, TensorSpec, ValidationReport
    from targets import TargetProfile
    from toolchain.converters import Converter, ConverterResult
    from toolchain.pipeline import BuildRequest, Reporter
    from toolchain.sources import SourceModel
    from toolchain.validate import EvalData


@dataclass
class Reference:
    """The FP32 reference of one exported model: its outputs and scores on the evaluation data, and
    its outputs on the few inputs that rank layer sensitivity."""

    outputs: list[np.ndarray]
    metrics: dict[str, float]
    sample_outputs: list[np.ndarray]


@dataclass
class BuildState:
    """Shared by every target of one build; filled by the build's stages, read by the targets'."""

    req: BuildRequest
    reporter: Reporter
    targets: list[TargetState] = field(default_factory=list)
    private_key: Any = None
    # the source and what it says about itself
    source: SourceModel | None = None
    pruning: Any = None  # `edgectl optimize`'s record of how it pruned this very file, if it did
    tensorflow_source: bool = False
    shape: list[int] = field(default_factory=list)
    pre: Preprocessing | None = None
    name: str = ""
    calibration: np.ndarray | None = None
    snapshots: dict[str, str] = field(default_factory=dict)
    # made once, for the first target that needs them
    exported: dict[int | str, tuple[Path, bool]] = field(default_factory=dict)  # opset or "tf"
    references: dict[Path, Reference] = field(default_factory=dict)
    evaluation: EvalData | None = None
    evaluation_loaded: bool = False
    sensitivity_inputs: np.ndarray | None = None  # a few inputs for ranking layer sensitivity
    labels: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # the build stages' times


@dataclass
class TargetState:
    """One target of the build: planned first, then filled stage by stage."""

    profile: TargetProfile
    converter: Converter
    precision: Precision
    workdir: Path | None = None
    staging: Path | None = None
    # the FP32 reference this target converts from
    export_key: int | str = 0
    opset: int = 0
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    task: str = "other"
    # the conversion and what was measured of it
    converted: ConverterResult | None = None
    fallback_note: str | None = None
    reports: list[ValidationReport | None] = field(default_factory=list)  # one per artifact
    benches: list[Any] = field(default_factory=list)  # one per artifact; None off the host
    health: Any = None
    drift: Any = None
    manifest: Manifest | None = None
    location: BundleLocation | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def fp32(self, build: BuildState) -> tuple[Path, bool]:
        """The FP32 reference's path, and whether it came from the export cache."""
        return build.exported[self.export_key]
