"""What a training entry point gets and returns: the only part of edgectl a model owner's code sees.

Standard library only, so training code can import it for type hints in any environment, or ignore it:
a callable entry point receives a `TrainingJob` and returns a `TrainingResult` or a dict of the same
fields; a command entry point reads the same fields from `{job}` (job.json, also $EDGECTL_JOB) and
writes the result fields to `{out_dir}/result.json`. Paths in a result may be relative to `out_dir`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainingJob:
    job_id: int
    model: str  # the model's name
    parent_version: int
    new_version: int
    parent_model: Path  # the parent version's source model file: its weights (TorchScript, ONNX, ...)
    training_data: str | None  # the original training data reference (the parent's lineage, or the policy's)
    samples: Path  # .npz: x (inputs as the model takes them, images NCHW), y (class index), ids (sample ids)
    labels: list[str]  # class names, index = class
    preprocessing: dict[str, Any]  # the parent manifest's (scale, mean, std, layout, color, resize)
    input_shape: list[int]  # batch first, in the source's layout
    out_dir: Path  # write the new model (and anything else) here
    params: dict[str, Any] = field(default_factory=dict)  # the policy's entry_point.params

    @classmethod
    def read(cls, path: Path | str) -> TrainingJob:
        data = json.loads(Path(path).read_text())
        for key in ("parent_model", "samples", "out_dir"):
            data[key] = Path(data[key])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str, indent=2)


@dataclass
class TrainingResult:
    model: Path  # the new model file, of a kind `edgectl build` reads
    val: Path | None = None  # labeled data for the build's accuracy gate and drift reference (folder or .npz)
    calib: Path | None = None  # calibration data (folder, .npy or .npz); default: the training samples
    metrics: dict[str, Any] = field(default_factory=dict)  # anything to record with the job
    build_args: list[str] = field(default_factory=list)  # extra `edgectl build` flags (e.g. --weights W)

    @classmethod
    def from_any(cls, value: Any, out_dir: Path) -> TrainingResult:
        data = (
            value if isinstance(value, dict) else asdict(value) if isinstance(value, TrainingResult) else None
        )
        if data is None:
            raise TypeError(
                f"a training entry point returns a TrainingResult or a dict, not {type(value).__name__}"
            )
        unknown = set(data) - {"model", "val", "calib", "metrics", "build_args"}
        if unknown or "model" not in data:
            raise ValueError(f"a training result needs 'model' and takes no {sorted(unknown)}")

        def path(item: Any) -> Path | None:
            if item is None:
                return None
            item = Path(item)
            return item if item.is_absolute() else out_dir / item

        return cls(
            model=path(data["model"]),  # type: ignore[arg-type]
            val=path(data.get("val")),
            calib=path(data.get("calib")),
            metrics=dict(data.get("metrics") or {}),
            build_args=[str(a) for a in data.get("build_args") or []],
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str, indent=2)
