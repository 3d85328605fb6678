"""Keras models as a source for the TFLite targets: a `.keras` file or a TensorFlow SavedModel directory.

Detection (`is_keras_source`, `keras_kind`) is cheap and never runs code: a `.keras` file is recognised by
the names inside its zip (config.json and metadata.json), a SavedModel directory by its saved_model.pb
(or .pbtxt).

Loading a `.keras` file uses Keras' safe mode: a model holding Python code (a Lambda layer whose function
is a lambda) is refused instead of run, and only Keras' own modules are imported for the classes named in
its config. A SavedModel is a TensorFlow graph: loading it runs no Python code from the file.

`to_saved_model` writes the one thing the TFLite converter reads: a SavedModel whose serving_default
signature takes exactly one input of a static shape (batch 1 for an edge artifact), with the model's own
dtype and input name. Its outputs are named as TensorFlow names them in a signature: `output_0`,
`output_1`, ... in the model's output order for a `.keras` model (its dict keys when the model returns a
dict), the signature's own names for a SavedModel. Everything that lists outputs here (`KerasInfo`,
`predict`) sorts them by name, as SavedModelRunner and the TFLite converter do.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from edgebase.deps import require
from toolchain.errors import ExportError, UserInputError

KerasKind = Literal["keras", "saved_model"]
SIGNATURE = "serving_default"
_KERAS_ZIP_NAMES = {"config.json", "metadata.json"}
_UNSAFE_HINT = (
    "re-save the model without Lambda layers (built-in layers or keras.ops in a registered layer), "
    'or export it as a SavedModel with model.export("DIR") and pass DIR'
)
_CUSTOM_HINT = (
    'the model uses a custom layer or function; export it as a SavedModel with model.export("DIR") '
    "where its code is importable, and pass DIR"
)


@dataclass(frozen=True)
class KerasInfo:
    """What a Keras model or SavedModel declares about its one input and its outputs."""

    kind: KerasKind
    input_name: str
    input_shape: list[int | None]  # as declared; None for a dynamic dim (usually the batch)
    input_dtype: str  # numpy dtype name: "int32", "float32", ...
    output_names: list[str]  # signature names, sorted: the order of predict() and SavedModelRunner
    output_shapes: list[list[int | None]]


# ---------------------------------------------------------------------------
# detection: names only, nothing loaded
# ---------------------------------------------------------------------------


def _is_saved_model_dir(path: Path) -> bool:
    return (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()


def _is_keras_zip(path: Path) -> bool:
    if path.suffix.lower() != ".keras" or not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return set(zf.namelist()) >= _KERAS_ZIP_NAMES
    except (zipfile.BadZipFile, OSError):
        return False


def keras_kind(path: Path) -> KerasKind | None:
    """The kind of Keras source at `path`: a .keras file, a SavedModel directory, or None."""
    path = Path(path)
    if path.is_dir():
        return "saved_model" if _is_saved_model_dir(path) else None
    return "keras" if _is_keras_zip(path) else None


def is_keras_source(path: Path) -> bool:
    """Whether `path` looks like a Keras model or a SavedModel; reads zip names only, runs nothing."""
    return keras_kind(path) is not None


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def _import_keras():
    require("tensorflow", extra="tflite", purpose="reading a Keras model")
    from edgebase.deps import import_tensorflow

    tf = import_tensorflow()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    if keras.backend.backend() != "tensorflow":
        raise UserInputError(
            f"Keras runs on the {keras.backend.backend()} backend, edgectl needs TensorFlow's",
            hint="unset KERAS_BACKEND or set it to tensorflow",
        )
    return tf, keras


def _load_keras(path: Path):
    _, keras = _import_keras()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:
        text = str(exc)
        if "safe_mode" in text or "unsafe_deserialization" in text:
            raise UserInputError(
                f"{path.name} holds Python code (a Lambda layer or lambda), which edgectl does not run",
                hint=_UNSAFE_HINT,
            ) from exc
        if "Could not locate" in text or "register_keras_serializable" in text:
            raise UserInputError(
                f"cannot load Keras model {path.name}: {_first_line(exc)}", hint=_CUSTOM_HINT
            ) from exc
        raise UserInputError(
            f"cannot load Keras model {path.name}: {_first_line(exc)}",
            hint="check that the file is a complete .keras model saved by Keras 3 (model.save)",
        ) from exc


def _load_saved_model(path: Path):
    tf, _ = _import_keras()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise UserInputError(
            f"cannot load SavedModel {path.name}: {_first_line(exc)}",
            hint="check that the directory is a complete SavedModel (tf.saved_model.save or model.export)",
        ) from exc
    signatures = dict(loaded.signatures)
    if SIGNATURE not in signatures:
        found = ", ".join(sorted(signatures)) or "none"
        raise UserInputError(
            f"SavedModel {path.name} has no {SIGNATURE} signature (signatures: {found})",
            hint="save it with signatures={'serving_default': fn} or export it with keras model.export",
        )
    return loaded, signatures[SIGNATURE]


def _dims(shape) -> list[int | None]:
    return [None if d is None else int(d) for d in shape]


def _dtype_name(dtype) -> str:
    """numpy's name for a Keras or TF dtype ("int32"); the dtype's own name where numpy has none."""
    try:
        return np.dtype(getattr(dtype, "as_numpy_dtype", dtype)).name
    except TypeError:
        return str(getattr(dtype, "name", dtype))


def _one_input(name: str, inputs: list, where: str) -> None:
    if len(inputs) != 1:
        raise UserInputError(
            f"{name} has {len(inputs)} inputs; edgectl builds models with exactly one input",
            hint=f"{where} with a single input tensor (concatenate or stack the inputs inside the model)",
        )


def _keras_input_name(name: str) -> str:
    """A Keras input name as a TensorFlow op name (what the exported signature calls the input)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.\-/]", "_", name)
    return cleaned if re.match(r"[A-Za-z0-9.]", cleaned) else f"input{cleaned}"


def _describe_keras(path: Path, model) -> KerasInfo:
    inputs = list(model.inputs or [])
    if not inputs:
        raise UserInputError(
            f"Keras model {path.name} has no defined input",
            hint="build the model on a keras.Input(shape=...) before saving it",
        )
    _one_input(f"Keras model {path.name}", inputs, "re-save it")
    (tensor,) = inputs
    output = model.output  # the structure the exported signature returns
    if isinstance(output, dict):
        named = sorted(output.items())
    else:
        flat = output if isinstance(output, (list, tuple)) else [output]
        named = sorted((f"output_{i}", t) for i, t in enumerate(flat))
    return KerasInfo(
        kind="keras",
        input_name=_keras_input_name(tensor.name),
        input_shape=_dims(tensor.shape),
        input_dtype=_dtype_name(tensor.dtype),
        output_names=[n for n, _ in named],
        output_shapes=[_dims(t.shape) for _, t in named],
    )


def _describe_saved_model(path: Path, signature) -> KerasInfo:
    _, kwargs = signature.structured_input_signature
    _one_input(f"SavedModel {path.name}", list(kwargs), "export it")
    ((name, spec),) = kwargs.items()
    if spec.shape.rank is None:
        raise UserInputError(
            f"SavedModel {path.name}: input {name} has an unknown rank",
            hint="export it with a serving signature of fixed rank, e.g. tf.TensorSpec([None, 32], tf.int32)",
        )
    outputs = signature.structured_outputs
    if not isinstance(outputs, dict):  # a TF2 signature always returns a dict; be safe with others
        outputs = {
            f"output_{i}": t
            for i, t in enumerate(outputs if isinstance(outputs, (list, tuple)) else [outputs])
        }
    names = sorted(outputs)
    return KerasInfo(
        kind="saved_model",
        input_name=name,
        input_shape=_dims(spec.shape.as_list()),
        input_dtype=_dtype_name(spec.dtype),
        output_names=names,
        output_shapes=[
            _dims(outputs[n].shape.as_list()) if outputs[n].shape.rank is not None else [] for n in names
        ],
    )


def _kind_or_raise(path: Path) -> KerasKind:
    kind = keras_kind(path)
    if kind is not None:
        return kind
    if not path.exists():
        raise UserInputError(f"model {path} does not exist", hint="check the path")
    if path.suffix.lower() == ".keras":
        raise UserInputError(
            f"{path.name} is not a valid .keras file (not a zip holding config.json and metadata.json)",
            hint="re-save the model with Keras 3: model.save('model.keras')",
        )
    raise UserInputError(
        f"{path} is neither a .keras model nor a SavedModel directory",
        hint="pass a .keras file saved by Keras 3, or a directory holding saved_model.pb",
    )


def describe(path: Path) -> KerasInfo:
    """Load the model and say what its one input and its outputs are; UserInputError if edgectl cannot use it."""
    path = Path(path)
    if _kind_or_raise(path) == "keras":
        return _describe_keras(path, _load_keras(path))
    _, signature = _load_saved_model(path)
    return _describe_saved_model(path, signature)


def default_shape(info: KerasInfo) -> list[int] | None:
    """The declared input shape with a dynamic batch set to 1; None if any other dim is unknown."""
    if not info.input_shape:
        return []
    batch, *rest = info.input_shape
    if any(d is None for d in rest):
        return None
    return [1 if batch is None else batch, *(int(d) for d in rest)]


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------


def _check_shape(path: Path, info: KerasInfo, shape: list[int]) -> list[int]:
    declared = "(" + ", ".join("None" if d is None else str(d) for d in info.input_shape) + ")"
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in shape):
        raise UserInputError(
            f"input shape {list(shape)} for {path.name} must be positive integers",
            hint=f"the model declares {declared}; give every dimension, e.g. --input-shape 1,...",
        )
    shape = [int(d) for d in shape]
    fits = len(shape) == len(info.input_shape) and all(
        d is None or d == s for d, s in zip(info.input_shape, shape, strict=True)
    )
    if not fits:
        raise UserInputError(
            f"input shape {shape} does not fit {path.name}, whose input {info.input_name} is {declared}",
            hint="use the declared dimensions; only the None ones may be chosen",
        )
    return shape


def _export_keras(model, info: KerasInfo, shape: list[int], dest: Path, tf) -> None:
    spec = tf.TensorSpec(shape, tf.as_dtype(info.input_dtype), name=info.input_name)
    model.export(str(dest), format="tf_saved_model", input_signature=[spec], verbose=False)


def _export_saved_model(loaded, signature, info: KerasInfo, shape: list[int], dest: Path, tf) -> None:
    name = info.input_name
    spec = tf.TensorSpec(shape, tf.as_dtype(info.input_dtype), name=name)

    @tf.function(input_signature=[spec])
    def serve(x):
        return signature(**{name: x})

    module = tf.Module()
    module.source = loaded  # tracks the variables the signature reads
    module.serve = serve
    tf.saved_model.save(module, str(dest), signatures={SIGNATURE: serve.get_concrete_function()})


def to_saved_model(path: Path, shape: list[int], dest: Path) -> Path:
    """Write a SavedModel at `dest` whose serving_default takes one input of the static `shape`.

    The input keeps the model's dtype and name. `shape` must agree with every static dim the model
    declares. `dest` must not exist, or be an empty directory; it is written in a sibling temporary
    directory and moved into place, so a failed export leaves nothing behind.
    """
    path, dest = Path(path), Path(dest)
    kind = _kind_or_raise(path)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not an empty directory")
    tf, _ = _import_keras()
    if kind == "keras":
        model = _load_keras(path)
        info = _describe_keras(path, model)
    else:
        loaded, signature = _load_saved_model(path)
        info = _describe_saved_model(path, signature)
    shape = _check_shape(path, info, shape)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".edgectl-keras-", dir=dest.parent) as tmp:
        work = Path(tmp) / "saved_model"
        try:
            if kind == "keras":
                _export_keras(model, info, shape, work, tf)
            else:
                _export_saved_model(loaded, signature, info, shape, work, tf)
        except Exception as exc:
            raise ExportError(
                f"cannot export {path.name} as a SavedModel of shape {shape}: {_first_line(exc)}",
                hint="check that the model runs on a batch of that shape (model.predict)",
            ) from exc
        if dest.exists():
            dest.rmdir()
        shutil.move(str(work), str(dest))
    return dest


# ---------------------------------------------------------------------------
# reference run
# ---------------------------------------------------------------------------


def predict(saved_model_dir: Path, batch: np.ndarray) -> list[np.ndarray]:
    """Run serving_default of a SavedModel on `batch`; outputs sorted by name, each stacked over the batch.

    When the signature's batch dim is static (1 for what `to_saved_model` writes), the batch is run in
    chunks of that size. Inputs are cast to the signature's dtype when numpy calls that a same-kind cast
    (int64 token ids to int32, float64 to float32); anything else is a TypeError.
    """
    saved_model_dir = Path(saved_model_dir)
    _, signature = _load_saved_model(saved_model_dir)
    info = _describe_saved_model(saved_model_dir, signature)
    dtype = np.dtype(info.input_dtype)
    batch = np.asarray(batch)
    if not np.can_cast(batch.dtype, dtype, casting="same_kind"):
        raise TypeError(f"cannot feed {batch.dtype} to input {info.input_name} of dtype {dtype}")
    batch = batch.astype(dtype, copy=False)
    if len(batch) == 0:
        raise ValueError("predict needs at least one sample")
    step = info.input_shape[0] if info.input_shape and info.input_shape[0] else len(batch)
    if len(batch) % max(step, 1):
        raise ValueError(f"a batch of {len(batch)} does not split into the signature's batch of {step}")
    chunks: list[list[np.ndarray]] = [[] for _ in info.output_names]
    for start in range(0, len(batch), max(step, 1)):
        result = signature(**{info.input_name: batch[start : start + step]})
        for slot, name in zip(chunks, info.output_names, strict=True):
            slot.append(result[name].numpy())
    return [np.concatenate(slot) for slot in chunks]
