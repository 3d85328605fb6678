"""The optimize run: checks first, then per ratio prune -> fine-tune -> measure, under the --max-drop budget.

Everything that can fail in a second fails first (the ratio, the torch-pruning extra, a source with no
weights, data that does not fit the model), before minutes of fine-tuning. Each attempt prunes a fresh
copy of the source; when the fine-tuned model loses more than --max-drop points, a lower ratio is tried
(two thirds, then one third of the asked one), and when none holds the budget the run fails with the
table of attempts. Files are written into a hidden staging folder inside --out and moved into place
only once complete: a failed run leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edgebase.deps import require, version_of
from toolchain.errors import AccuracyGateError, UserInputError
from toolchain.optimize.request import (
    Attempt,
    ModelStats,
    OptimizeReport,
    OptimizeRequest,
    PruningRecord,
    file_sha256,
    method_text,
    sidecar_path,
)

RETRY_FRACTIONS = (1.0, 2 / 3, 1 / 3)  # of the asked ratio, tried in turn while --max-drop is broken


def attempt_ratios(ratio: float) -> list[float]:
    ratios: list[float] = []
    for fraction in RETRY_FRACTIONS:
        value = round(ratio * fraction, 3)
        if value >= 0.01 and value not in ratios:
            ratios.append(value)
    return ratios


def _yaml_classes(path: Path) -> int:
    import yaml

    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserInputError(f"cannot read dataset file {path}: {exc}", hint="check the YAML") from exc
    names = spec.get("names") if isinstance(spec, dict) else None
    if not names:
        raise UserInputError(f"{path} has no 'names'", hint="use the Ultralytics data.yaml format")
    return len(names)


def _check_data(req: OptimizeRequest, task: str, num_classes: int) -> None:
    """The training and validation data exist and are of the kind this model trains on."""
    for flag, path in (("--train", req.train), ("--val", req.val)):
        if not path.exists():
            raise UserInputError(f"{flag} data {path} does not exist", hint=f"check the {flag} path")
    if task == "detect":
        if req.train.suffix.lower() not in (".yaml", ".yml") or not req.train.is_file():
            raise UserInputError(
                f"--train {req.train} is not a dataset yaml; Ultralytics detectors fine-tune through "
                "Ultralytics' trainer on one",
                hint="pass the dataset's data.yaml (train: and val: splits, names:)",
            )
        classes = _yaml_classes(req.train)
        if classes != num_classes:
            raise UserInputError(
                f"--train {req.train.name} has {classes} classes; the model detects {num_classes}",
                hint="fine-tune on the dataset the detector was trained for (the same names:)",
            )
        return
    for flag, path in (("--train", req.train), ("--val", req.val)):
        if not (path.is_dir() or path.suffix == ".npz"):
            raise UserInputError(
                f"{flag} {path} is neither a folder of class sub-folders nor an .npz; classifiers train on those",
                hint="lay it out as DIR/<class name>/<image>, or numpy.savez(path, x=inputs, y=labels)",
            )


def _labeled_set(path: Path, flag: str, pre, shape: list[int], num_classes: int, limit: int):
    """A classification set whose inputs have the model's shape and whose labels are the model's classes."""
    from toolchain import data as datasets

    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            x = arrays["x"] if "x" in arrays.files else None
        if x is not None and tuple(x.shape[1:]) != tuple(shape[1:]):
            raise UserInputError(
                f"{flag} {path.name} holds inputs of shape {list(x.shape[1:])}; the model takes {shape[1:]}",
                hint=f"save inputs of shape (N, {', '.join(str(d) for d in shape[1:])})",
            )
    labeled = datasets.load_classification_set(path, pre, shape, limit)
    classes = int(labeled.labels.max()) + 1
    folder_classes = len(labeled.class_names) if path.is_dir() else classes
    if classes > num_classes or (path.is_dir() and folder_classes != num_classes):
        raise UserInputError(
            f"{flag} {path.name} has {max(classes, folder_classes)} classes; the model outputs {num_classes}",
            hint="fine-tune on data labelled with the model's own classes",
        )
    return labeled


def _array_sha256(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.dtype.str}{list(array.shape)}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _staging(out: Path) -> tuple[Path, bool]:
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".edgectl-optimize-", dir=out))
    except OSError as exc:
        raise UserInputError(
            f"output directory {out} is not writable: {exc.strerror or exc}",
            hint="pass --out with a writable folder",
        ) from exc
    return staging, created


def optimize(req: OptimizeRequest, reporter=None) -> OptimizeReport:
    from toolchain.pipeline import Reporter
    from toolchain.sources import resolve_source
    from toolchain.stages.prepare import effective_preprocessing

    reporter = reporter or Reporter()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
    warnings.filterwarnings("ignore", message=r".*_decide_input_format.*")
    # 1. everything cheap first
    require("torch_pruning", extra="prune", purpose="structured pruning (edgectl optimize)")
    require("torch", extra="build", purpose="pruning a PyTorch model")
    from toolchain.optimize import torch_source

    reporter.stage("reading the model")
    source = resolve_source(req.model, req.weights)
    torch_source.check_prunable(source)
    shape = req.input_shape or source.input_shape
    if shape is None:
        raise UserInputError(
            f"{source.filename} does not say its input shape", hint="pass --input-shape, e.g. 1,3,224,224"
        )
    overrides = SimpleNamespace(layout=None, color=None, scale=req.scale, mean=req.mean, std=req.std)
    pre = effective_preprocessing(overrides, source.preprocessing, shape)
    model = torch_source.load(source, shape)
    _check_data(req, model.task, model.num_classes)

    staging, created = _staging(req.out)
    try:
        report = _run(req, reporter, source, model, shape, pre, staging)
        for staged in sorted(p for p in staging.iterdir() if p.is_file()):
            os.replace(staged, req.out / staged.name)
        return report
    except BaseException:
        if created:
            shutil.rmtree(req.out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _sparse_start(req: OptimizeRequest, reporter, source, model, shape, example, train_x, train_y, staging):
    """What each attempt prunes a fresh copy of: the source, or (with --sparse-epochs) the source after
    group-lasso sparse training, which runs once however many ratios are tried."""
    import copy

    from toolchain.optimize import finetune, prune, torch_source
    from toolchain.sources import resolve_source

    def loaded(of):
        candidate = torch_source.load(of, shape)
        torch_source.make_prunable(candidate)
        return candidate

    if not req.sparse_epochs:
        return lambda: loaded(source)
    label = f"sparse training, {req.sparse_epochs} epochs (group lasso, reg {req.sparse_reg:g})"
    reporter.stage(label)
    sparse = loaded(source)
    regularize = prune.sparsity_regularizer(
        sparse.module, example, torch_source.kept_layers(sparse), req.sparse_reg
    )
    if model.task == "classify":
        finetune.finetune_classifier(
            sparse.module, model.module, train_x, train_y, epochs=req.sparse_epochs, batch=req.batch, lr=req.lr,
            seed=req.seed, distill=False, progress=reporter.advance, label=label, regularize=regularize,
        )  # fmt: skip
        return lambda: copy.deepcopy(sparse)
    checkpoint = finetune.finetune_detector(
        sparse.module, checkpoint=source.location, train_args=model.train_args, data_yaml=req.train,
        imgsz=shape[2], epochs=req.sparse_epochs, seed=req.seed, distill=False,
        workdir=staging / "sparse-work", progress=reporter.advance, label=label, regularize=regularize,
    )  # fmt: skip
    kept = staging / "sparse-work" / "sparse.pt"  # outside the files published into --out
    shutil.copyfile(checkpoint, kept)
    sparse_source = resolve_source(str(kept))
    return lambda: loaded(sparse_source)


def _run(req: OptimizeRequest, reporter, source, model, shape, pre, staging: Path) -> OptimizeReport:
    import torch

    from toolchain.optimize import finetune, measure, prune, torch_source
    from toolchain.sources import resolve_source

    example = torch.zeros(*shape)
    reporter.stage("loading the training and validation data")
    train_x = train_y = None
    if model.task == "classify":
        labeled = _labeled_set(req.train, "--train", pre, shape, model.num_classes, limit=1 << 30)
        train_x, train_y = labeled.inputs, labeled.labels
        _labeled_set(req.val, "--val", pre, shape, model.num_classes, limit=req.val_limit)
        data_sha256 = _array_sha256(train_x, train_y)
    else:
        data_sha256 = file_sha256(req.train)
    evaluation = measure.evaluation_data(req.val, model.task, pre, shape, model.num_classes, req.val_limit)
    metric = evaluation.metric

    reporter.stage("scoring the unpruned model (FP32 ONNX)")
    before_onnx = measure.fp32_onnx(source, shape)
    before_metrics = measure.accuracy(before_onnx, evaluation, source.nms, req.threads)
    torch_source.make_prunable(model)  # same function; names the layers as the pruned model will
    macs_before, params_before = prune.count(model.module, example)
    channels_before = prune.channel_counts(model.module)

    distilled = req.distill if req.distill is not None else model.task == "classify"
    fresh = _sparse_start(req, reporter, source, model, shape, example, train_x, train_y, staging)
    dest = staging / f"{model.stem}-pruned.pt"
    attempts: list[Attempt] = []
    after_onnx = after_metrics = None
    macs_after = params_after = 0
    channels_after: dict = {}
    for ratio in attempt_ratios(req.prune):
        reporter.stage(f"pruning {ratio:.0%} of the channels")
        candidate = fresh()
        prune.prune(candidate.module, example, ratio, torch_source.kept_layers(candidate), req.round_to)
        macs_after, params_after = prune.count(candidate.module, example)
        channels_after = prune.channel_counts(candidate.module)
        label = f"fine-tuning at {ratio:.0%} pruned"
        reporter.stage(label)
        if model.task == "classify":
            finetune.finetune_classifier(
                candidate.module,
                model.module,
                train_x,
                train_y,
                epochs=req.epochs,
                batch=req.batch,
                lr=req.lr,
                seed=req.seed,
                distill=distilled,
                progress=reporter.advance,
                label=label,
            )
            torch_source.write_torchscript(candidate.module, shape, dest)
        else:
            checkpoint = finetune.finetune_detector(
                candidate.module,
                checkpoint=source.location,
                train_args=model.train_args,
                data_yaml=req.train,
                imgsz=shape[2],
                epochs=req.epochs,
                seed=req.seed,
                distill=distilled,
                workdir=staging / "work",
                progress=reporter.advance,
                label=label,
            )
            shutil.copyfile(checkpoint, dest)
            shutil.rmtree(staging / "work", ignore_errors=True)
        reporter.stage(f"scoring the {ratio:.0%} pruned model (FP32 ONNX)")
        pruned_source = resolve_source(str(dest))
        after_onnx = measure.fp32_onnx(pruned_source, shape)
        after_metrics = measure.accuracy(after_onnx, evaluation, source.nms, req.threads)
        drop = round(before_metrics[metric] - after_metrics[metric], 4)
        attempts.append(
            Attempt(
                ratio=ratio,
                metric=metric,
                before=before_metrics[metric],
                after=after_metrics[metric],
                drop_points=drop,
                passed=drop <= req.max_drop,
                macs=macs_after,
                params=params_after,
            )
        )
        if attempts[-1].passed:
            break
        dest.unlink()
    if not attempts[-1].passed:
        tried = ", ".join(f"{a.ratio:.0%}: {a.metric} -{a.drop_points:.2f}" for a in attempts)
        error = AccuracyGateError(
            f"no pruning ratio holds --max-drop {req.max_drop} after {req.epochs} epochs of fine-tuning ({tried})",
            hint="fine-tune longer (--epochs), prune less (--prune), or raise --max-drop",
        )
        error.pruning_attempts = attempts  # type: ignore[attr-defined]
        raise error
    chosen = attempts[-1]

    reporter.stage("timing both FP32 ONNX models in ONNX Runtime")
    p50_before, p50_after = measure.interleaved_p50(
        [before_onnx, after_onnx], evaluation.inputs[0], runs=req.bench_runs, threads=req.threads
    )
    before = ModelStats(
        params=params_before,
        macs=macs_before,
        model_bytes=Path(source.location).stat().st_size if Path(source.location).is_file() else 0,
        onnx_bytes=before_onnx.stat().st_size,
        latency_ms_p50=p50_before,
        metrics=before_metrics,
    )
    after = ModelStats(
        params=params_after,
        macs=macs_after,
        model_bytes=dest.stat().st_size,
        onnx_bytes=after_onnx.stat().st_size,
        latency_ms_p50=p50_after,
        metrics=after_metrics,
    )
    record = PruningRecord(
        model_sha256=file_sha256(dest),
        source_kind=source.kind,
        source_filename=source.filename,
        source_sha256=source.sha256,
        ratio=chosen.ratio,
        round_to=req.round_to,
        method=method_text(req.sparse_epochs, req.sparse_reg, model.task),
        sparse_epochs=req.sparse_epochs,
        sparse_reg=req.sparse_reg if req.sparse_epochs else None,
        torch_pruning=version_of("torch-pruning"),
        params_before=params_before,
        params_after=params_after,
        macs_before=macs_before,
        macs_after=macs_after,
        finetune_epochs=req.epochs,
        finetune_data=str(req.train),
        finetune_data_sha256=data_sha256,
        distilled=distilled,
        metric=metric,
        metric_before=chosen.before,
        metric_after=chosen.after,
        attempts=attempts,
    )
    sidecar = sidecar_path(dest)
    sidecar.write_text(json.dumps(record.model_dump(mode="json", by_alias=True), indent=2) + "\n")
    notes = []
    if source.kind == "torch-entrypoint":
        notes.append(
            f"written as TorchScript: the pruned layers no longer fit {source.location}'s class; "
            "build it as it is"
        )
    report = OptimizeReport(
        model=req.out / dest.name,  # where the files are once published
        sidecar=req.out / sidecar.name,
        source_kind=source.kind,
        task=model.task,
        ratio=chosen.ratio,
        epochs=req.epochs,
        sparse_epochs=req.sparse_epochs,
        distilled=distilled,
        before=before,
        after=after,
        speedup=round(p50_before / p50_after, 3) if p50_after > 0 else 0.0,
        layers=prune.layer_table(channels_before, channels_after),
        attempts=attempts,
        notes=notes,
    )
    (staging / f"{model.stem}-pruned.report.json").write_text(report.model_dump_json(indent=2) + "\n")
    return report
