"""Model sources: what a MODEL argument can be, and what it says about itself.

One table (`SOURCE_KINDS`) maps a kind to its detector and exporter (the exporters and the loaders
of the framework models are `toolchain.source_export`). Keras
sources (`.keras` files, SavedModel folders) have no ONNX exporter: they go
straight to TensorFlow's converter, so only TFLite targets take them. Detection
never unpickles: a checkpoint is recognised by the names inside its zip
container, so an unreadable or foreign file is refused before any code in it
could run. Loading a PyTorch pickle does execute code; only build models you
trust, as with torch.load itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgebase.deps import require
from edgebundle.manifest import NMSParams, Preprocessing, Task
from toolchain.errors import UserInputError
from toolchain.source_export import export_onnx_source, export_torch, export_ultralytics, load_ultralytics

ENTRYPOINT_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass
class SourceModel:
    """A model the user pointed at, with what it says about itself."""

    location: str
    kind: str
    sha256: str
    input_shape: list[int] | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    task: Task = "other"
    labels: list[str] = field(default_factory=list)
    nms: NMSParams | None = None
    weights: Path | None = None
    # the task the file itself declares (Ultralytics metadata or checkpoint: detect, classify, segment, ...);
    # --task may not contradict it
    declared_task: str | None = None

    @property
    def filename(self) -> str:
        return Path(self.location).name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _zip_pickle_mentions(path: Path, needle: bytes) -> bool:
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if name.endswith("data.pkl"):
                return needle in zf.read(name)
    return False


# ---------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------


def _is_onnx(path: Path) -> bool:
    return path.suffix.lower() == ".onnx"


def _is_torch_export(path: Path) -> bool:
    return path.suffix.lower() == ".pt2"


def _is_torchscript(path: Path) -> bool:
    names = _zip_names(path)
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _is_ultralytics(path: Path) -> bool:
    if path.suffix.lower() in (".yaml", ".yml"):
        return True
    return bool(_zip_names(path)) and _zip_pickle_mentions(path, b"ultralytics.nn")


def _is_keras(path: Path) -> bool:
    from toolchain.keras_source import is_keras_source

    return path.suffix.lower() == ".keras" and is_keras_source(path)


def _tree_sha256(root: Path) -> str:
    """One digest over a folder: every file's relative path and content, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + _sha256(path).encode())
    return digest.hexdigest()


def _packaged_ultralytics_cfg(name: str) -> bool:
    """A model yaml that ships inside the ultralytics package (yolo11n.yaml): no download needed."""
    if not name.endswith((".yaml", ".yml")) or "/" in name:
        return False
    with contextlib.suppress(ImportError):
        import ultralytics

        cfg_root = Path(ultralytics.__file__).parent / "cfg" / "models"
        stem = re.sub(r"(\d+)[nslmx]", r"\1", Path(name).stem)  # yolo11n -> yolo11 (scale letter)
        return any(cfg_root.rglob(f"{stem}.yaml"))
    return False


def resolve_source(model: str, weights: Path | None = None) -> SourceModel:
    """Identify the kind of MODEL and hash it; no heavy import unless the kind needs one."""
    if ENTRYPOINT_RE.match(model) and not Path(model).exists():
        if weights is None:
            raise UserInputError(
                f"entry point {model} needs a state-dict file",
                hint="pass --weights PATH (a file saved with torch.save(model.state_dict(), PATH))",
            )
        if not weights.is_file():
            raise UserInputError(f"weights file {weights} does not exist", hint="check the --weights path")
        digest = hashlib.sha256(model.encode() + b"\0" + _sha256(weights).encode()).hexdigest()
        return SourceModel(model, "torch-entrypoint", digest, weights=weights)
    path = Path(model)
    if not path.exists():
        if _packaged_ultralytics_cfg(model):
            return _ultralytics_source(model, hashlib.sha256(model.encode()).hexdigest())
        raise UserInputError(
            f"model {model} does not exist",
            hint="pass an .onnx, TorchScript, .pt2, Ultralytics .pt/.yaml, .keras file, SavedModel folder "
            "or package.module:factory",
        )
    # Absolute from here on: exporters and trainers (Ultralytics, onnx2tf) run in working folders of
    # their own, where a path relative to the user's folder names nothing. (Not resolved: a symlinked
    # model keeps its own name in the manifest.)
    path = path.absolute()
    if path.is_dir():
        from toolchain.keras_source import is_keras_source

        if is_keras_source(path):
            return SourceModel(str(path), "saved-model", _tree_sha256(path))
        raise UserInputError(
            f"model {model} is a folder but not a TensorFlow SavedModel (no saved_model.pb in it)",
            hint="pass a model file, or a folder written by tf.saved_model.save / model.export",
        )
    if not path.is_file() or not os.access(path, os.R_OK):
        raise UserInputError(
            f"model {model} is not a readable file", hint="check the path and its permissions"
        )
    digest = _sha256(path)
    for kind, spec in SOURCE_KINDS.items():
        if spec.detect(path):
            if kind == "ultralytics":
                return _ultralytics_source(str(path), digest)
            if kind == "onnx":
                return _onnx_source(path, digest)
            if kind == "torch-export":
                return SourceModel(str(path), kind, digest, input_shape=_exported_input_shape(path))
            return SourceModel(str(path), kind, digest)
    raise UserInputError(
        f"{model} is not a model edgectl can read",
        hint="supported: .onnx, TorchScript (torch.jit.save), torch.export (.pt2), Ultralytics .pt/.yaml, "
        "Keras .keras or a SavedModel folder, or package.module:factory with --weights",
    )


def _exported_input_shape(path: Path) -> list[int] | None:
    """A torch.export program records its input: the shape of its one user input, when static."""
    require("torch", extra="build", purpose="reading a torch.export program")
    import torch

    program = torch.export.load(str(path))
    user_inputs = set(program.graph_signature.user_inputs)
    shapes = [
        node.meta["val"].shape
        for node in program.graph.nodes
        if node.op == "placeholder" and node.name in user_inputs and "val" in node.meta
    ]
    if len(shapes) != 1 or not all(isinstance(d, int) for d in shapes[0]):
        return None
    return [int(d) for d in shapes[0]]


def _label_list(names) -> list[str]:
    """Ultralytics' `names`: a {index: name} dict or a list, as an ordered list of labels."""
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    return [str(n) for n in names]


def _ultralytics_task(task: str | None) -> Task:
    return "detect" if task == "detect" else "classify" if task == "classify" else "other"


def _ultralytics_conventions(task: Task) -> tuple[Preprocessing, NMSParams | None]:
    """What every Ultralytics model expects: RGB NCHW in 0..1, letterboxed for detectors; NMS defaults."""
    pre = Preprocessing(
        layout="NCHW",
        color="RGB",
        resize_mode="letterbox" if task == "detect" else "stretch",
        scale=1 / 255,
        mean=[0.0, 0.0, 0.0],
        std=[1.0, 1.0, 1.0],
    )
    return pre, NMSParams() if task == "detect" else None


def _ultralytics_source(location: str, digest: str) -> SourceModel:
    require("ultralytics", extra="build", purpose="reading an Ultralytics model")
    model = load_ultralytics(location)
    imgsz = (getattr(model.model, "args", None) or {}).get("imgsz", 640)
    if isinstance(imgsz, int):
        imgsz = [imgsz, imgsz]
    task = _ultralytics_task(model.task)
    pre, nms = _ultralytics_conventions(task)
    return SourceModel(
        location,
        "ultralytics",
        digest,
        input_shape=[1, 3, int(imgsz[0]), int(imgsz[1])],
        preprocessing=pre,
        task=task,
        labels=_label_list(model.names),
        nms=nms,
        declared_task=str(model.task),
    )


def _literal(text: str):
    """A metadata value Ultralytics wrote with str(): a Python literal, read without evaluating code."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def onnx_metadata(path: Path) -> dict[str, str]:
    """The metadata_props of an ONNX file (key -> value), read without its external data."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # the exporter's checker refuses an unreadable file with a hint later
        return {}
    return {prop.key: prop.value for prop in model.metadata_props}


def _onnx_source(path: Path, digest: str) -> SourceModel:
    """An ONNX file; one exported by Ultralytics says its task, labels and input size in its metadata."""
    meta = onnx_metadata(path)
    task_value = meta.get("task")
    if task_value is None or "names" not in meta:
        return SourceModel(str(path), "onnx", digest)
    names = _literal(meta["names"])
    if not isinstance(names, (dict, list, tuple)):
        raise UserInputError(
            f"{path.name} carries Ultralytics metadata whose 'names' is not a list of class names",
            hint="re-export the model with Ultralytics (YOLO(...).export(format='onnx')), or pass --labels",
        )
    task = _ultralytics_task(task_value)
    pre, nms = _ultralytics_conventions(task)
    imgsz = _literal(meta.get("imgsz", ""))
    if isinstance(imgsz, int):
        imgsz = [imgsz, imgsz]
    shape = None
    if (
        isinstance(imgsz, (list, tuple))
        and len(imgsz) == 2
        and all(isinstance(d, int) and d > 0 for d in imgsz)
    ):
        channels = _literal(meta.get("channels", "3"))
        shape = [1, channels if isinstance(channels, int) and channels > 0 else 3, *imgsz]
    if task == "detect" and _literal(meta.get("end2end", "False")) is True:
        raise UserInputError(
            f"{path.name} is an Ultralytics detector exported with NMS inside (end2end): its output is "
            "final boxes, not the raw (4 + classes, anchors) head edgectl decodes and validates",
            hint="re-export it without NMS: YOLO(MODEL).export(format='onnx', nms=False)",
        )
    return SourceModel(
        str(path),
        "onnx",
        digest,
        input_shape=shape,
        preprocessing=pre,
        task=task,
        labels=_label_list(names),
        nms=nms,
        declared_task=str(task_value),
    )


def apply_task(source: SourceModel, task: Task | None) -> SourceModel:
    """The task the user asked for with --task, checked against what the model itself says."""
    if task is None:
        return source
    declared = source.declared_task
    if declared is not None and task != _ultralytics_task(declared):
        expected = _ultralytics_task(declared)
        raise UserInputError(
            f"--task {task} contradicts {source.filename}, whose Ultralytics metadata says its task is {declared}",
            hint=f"leave --task out (edgectl reads the task from the model), or pass --task {expected}",
        )
    if task == source.task:
        return source
    update: dict = {"task": task, "nms": None}
    if task == "detect":  # the one detector output edgectl decodes is Ultralytics', with its conventions
        update["nms"] = source.nms or NMSParams()
        update["preprocessing"] = source.preprocessing.model_copy(update={"resize_mode": "letterbox"})
    return dataclasses.replace(source, **update)


def check_task_outputs(source: SourceModel, task: Task, output_shapes: list[list[int]]) -> None:
    """A detector must have the one output layout edgectl decodes: (1, 4 + classes, anchors)."""
    if task != "detect":
        return
    shape = output_shapes[0] if output_shapes else []
    classes = len(source.labels)
    fits = len(output_shapes) >= 1 and len(shape) == 3 and shape[1] > 4 and shape[2] > 0
    if fits and classes and shape[1] != 4 + classes:
        fits = False
    if not fits:
        wanted = f"(1, {4 + classes}, anchors)" if classes else "(1, 4 + classes, anchors)"
        raise UserInputError(
            f"{source.filename} is built as a detector, but its output {shape} is not the "
            f"Ultralytics head layout {wanted} edgectl decodes",
            hint="export the detector's raw head (Ultralytics: YOLO(...).export(format='onnx')), or pass "
            "--task other to build it without detection metrics",
        )


@dataclass(frozen=True)
class SourceKind:
    detect: Callable[[Path], bool]
    export: Callable[[SourceModel, list[int], Path, int], None] | None  # to ONNX; None: TensorFlow only
    needs: str  # module that must be importable


# Order matters: the first kind whose detector accepts the file wins.
SOURCE_KINDS: dict[str, SourceKind] = {
    "onnx": SourceKind(_is_onnx, export_onnx_source, "onnx"),
    "torch-export": SourceKind(_is_torch_export, export_torch, "torch"),
    "torchscript": SourceKind(_is_torchscript, export_torch, "torch"),
    "ultralytics": SourceKind(_is_ultralytics, export_ultralytics, "ultralytics"),
    "torch-entrypoint": SourceKind(lambda _p: False, export_torch, "torch"),
    "keras": SourceKind(_is_keras, None, "tensorflow"),
    "saved-model": SourceKind(lambda _p: False, None, "tensorflow"),  # a folder, found by resolve_source
}


def is_tensorflow_source(source: SourceModel) -> bool:
    """A source with no ONNX export: only converters that start from a SavedModel take it."""
    return SOURCE_KINDS[source.kind].export is None
