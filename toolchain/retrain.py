"""The toolchain's part of the retraining loop: a bundle's top-1 on a labeled `.npz` (the held-out feedback
samples the registry's jobs compare a candidate and its parent on), with the same runners and metric
as `edgectl build`'s validation.

The `.npz` is the registry's dataset format: `x` (inputs as the model takes them before quantization,
images channels-first), `y` (class indices), `ids` (sample ids), `layout` ("NCHW" or "none").
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.errors import UserInputError


@dataclass
class Evaluation:
    bundle: Path
    name: str
    version: int
    target: str
    metric: str
    value: float
    samples: int
    predictions: list[int]  # the predicted class of each sample, in order: for agreement and class mix


def load_labeled(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a dataset .npz; UserInputError for anything else."""
    if not path.is_file() or path.suffix != ".npz":
        raise UserInputError(
            f"{path} is not a .npz file", hint="pass the held-out .npz a retraining job wrote"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data.files or "y" not in data.files:
                raise UserInputError(
                    f"{path} needs arrays 'x' (inputs) and 'y' (class indices)",
                    hint="numpy.savez(path, x=inputs, y=labels)",
                )
            x, y = data["x"].astype(np.float32), data["y"].astype(np.int64)
    except (OSError, ValueError) as exc:
        raise UserInputError(f"cannot read {path}: {exc}", hint="save it with numpy.savez") from None
    if len(x) == 0 or len(x) != len(y):
        raise UserInputError(
            f"{path}: x and y must be non-empty and of equal length", hint="check the arrays"
        )
    return x, y


def evaluate_bundle(bundle: Path, x: np.ndarray, y: np.ndarray) -> Evaluation:
    """Top-1 (in points) of the bundle's primary artifact on (x, y), one sample at a time as on a device."""
    from edgebundle import extract_archive, read_manifest
    from toolchain.runners import open_runner, run_all, runs_on_host

    with tempfile.TemporaryDirectory(prefix="edgectl-evaluate-") as tmp:
        root = bundle if bundle.is_dir() else extract_archive(bundle, Path(tmp) / "bundle")
        manifest = read_manifest(root)
        if manifest.postprocessing.task != "classify":
            raise UserInputError(
                f"{bundle.name} is a {manifest.postprocessing.task} model; held-out evaluation takes classifiers",
                hint="evaluate detectors with edgectl build --val",
            )
        if not runs_on_host(manifest.runtime):
            raise UserInputError(
                f"this host cannot run {manifest.runtime} artifacts", hint="evaluate on a host that runs them"
            )
        expected = list(manifest.artifacts[0].inputs[0].shape)
        runner = open_runner(manifest.runtime, root / manifest.artifacts[0].path)
        if x.shape[1:] != tuple(expected[1:]) and sorted(x.shape[1:]) != sorted(expected[1:]):
            raise UserInputError(
                f"{bundle.name} takes inputs of shape {expected}; the data holds {list(x.shape)}",
                hint="evaluate on data of this model's input size",
            )
        outputs = run_all(runner, x)
    predictions = outputs[0].reshape(len(y), -1).argmax(axis=1)
    return Evaluation(
        bundle=bundle,
        name=manifest.name,
        version=manifest.version,
        target=manifest.target,
        metric="top1",
        value=round(100.0 * float(np.mean(predictions == y)), 4),
        samples=len(y),
        predictions=[int(p) for p in predictions],
    )
