"""The runner of Core ML packages: their tensors from the spec anywhere, predictions on macOS only.

On a host that is not macOS `toolchain.runners` lists Core ML as not runnable, so the pipeline never asks
this runner to predict there; `io_specs` reads the spec and predicts nothing.

On macOS, `run` takes a batch as the validation data holds it (preprocessed floats in the source's
layout), turns it back into the 8-bit image Core ML takes, and predicts. A classifier's probabilities come
back in label order. A detector pipeline is run without its NMS stage: its ML Program's outputs are put
back into the Ultralytics layout (batch, 4 + classes, anchors) in input pixels, so the pipeline's mAP code
scores it against the FP32 model like any other artifact; the NMS stage is checked by its configuration
and by the macOS test against Ultralytics' own predictions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from edgebase.deps import import_coremltools
from edgebundle.manifest import Preprocessing, TensorSpec
from toolchain.backends.coreml.detector import RAW_CONFIDENCE, RAW_COORDINATES
from toolchain.backends.coreml.model import META_PREPROCESSING
from toolchain.backends.coreml.package import read_package

MACOS_ONLY = "Core ML predicts only on macOS"
_TENSOR_DTYPES = {"float32": "float32", "float16": "float16", "int32": "int32"}


class CoreMLRunner:
    """A .mlpackage: `io_specs` from its spec; `prepare` and `run` as the Runner protocol says (macOS)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.info = read_package(self.path)
        first = self.info.inputs[0]
        self.input_name = first.name
        if first.kind == "image":
            channels, height, width = first.shape
            self.input_shape = [1, channels, height, width]
            self.input_dtype = np.dtype("uint8")
        else:
            self.input_shape = list(first.shape)
            self.input_dtype = np.dtype(_TENSOR_DTYPES.get(first.dtype or "", "float32"))
        raw = self.info.metadata.get(META_PREPROCESSING)
        self.preprocessing = Preprocessing.model_validate(json.loads(raw)) if raw else Preprocessing()
        self._model = None

    # ------------------------------------------------------------------ the spec

    def io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """The numeric features as tensors; strings and Double scalars (thresholds) have no tensor form.

        Every feature, those included, is in the manifest's `coreml` section exactly as the spec says.
        """
        inputs = []
        for feature in self.info.inputs:
            if feature.kind == "image":
                inputs.append(TensorSpec(name=feature.name, shape=[1, *feature.shape], dtype="uint8"))
            elif feature.kind == "multiarray" and feature.dtype in _TENSOR_DTYPES:
                inputs.append(TensorSpec(name=feature.name, shape=feature.shape, dtype=feature.dtype))
        outputs = []
        for feature in self.info.outputs:
            if feature.kind == "dictionary" and self.info.classifier:  # probabilities, in label order
                outputs.append(
                    TensorSpec(name=feature.name, shape=[1, len(self.info.labels)], dtype="float32")
                )
            elif feature.kind == "multiarray" and feature.dtype in _TENSOR_DTYPES:
                outputs.append(TensorSpec(name=feature.name, shape=feature.shape, dtype=feature.dtype))
        return inputs, outputs

    # ------------------------------------------------------------------ predictions (macOS)

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """Float batches in the source's layout become the 8-bit pixels Core ML takes; others pass through."""
        if self.input_dtype != np.uint8 or batch.dtype == np.uint8:
            return batch.astype(self.input_dtype, copy=False)
        pre = self.preprocessing
        x = np.asarray(batch, dtype=np.float64)
        if pre.layout == "NHWC":
            x = x.transpose(0, 3, 1, 2)
        channels = x.shape[1]
        mean = np.asarray(pre.mean if len(pre.mean) == channels else pre.mean[:1] * channels).reshape(
            1, -1, 1, 1
        )
        std = np.asarray(pre.std if len(pre.std) == channels else pre.std[:1] * channels).reshape(1, -1, 1, 1)
        pixels = (x * std + mean) / pre.scale
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)

    def _load(self):
        if sys.platform != "darwin":
            raise RuntimeError(f"{MACOS_ONLY}; {self.path.name} cannot run on {sys.platform}")
        if self._model is None:
            ct = import_coremltools()
            if self.info.model_type == "pipeline":  # the ML Program alone: raw outputs, no NMS
                spec = ct.models.MLModel(str(self.path), skip_model_load=True)
                program = spec.get_spec().pipeline.models[0]
                self._model = ct.models.MLModel(program, weights_dir=spec.weights_dir)
            else:
                self._model = ct.models.MLModel(str(self.path))
        return self._model

    def _image(self, pixels: np.ndarray):
        from PIL import Image

        chw = pixels[0]
        if chw.shape[0] == 1:
            return Image.fromarray(chw[0], mode="L")
        hwc = chw.transpose(1, 2, 0)
        if self.info.inputs[0].color == "BGR":  # Core ML reorders an RGB image into the model's BGR
            hwc = hwc[..., ::-1]
        return Image.fromarray(np.ascontiguousarray(hwc), mode="RGB")

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        model = self._load()
        prepared = self.prepare(batch)
        feed = self._image(prepared) if self.input_dtype == np.uint8 else prepared
        result = model.predict({self.input_name: feed})
        if self.info.model_type == "pipeline":
            return [self._ultralytics_layout(result)]
        if self.info.classifier:
            probabilities = next(v for v in result.values() if isinstance(v, dict))
            return [np.asarray([[probabilities[label] for label in self.info.labels]], dtype=np.float32)]
        return [np.asarray(result[f.name], dtype=np.float32) for f in self.info.outputs]

    def _ultralytics_layout(self, result: dict) -> np.ndarray:
        _, height, width = self.info.inputs[0].shape
        coordinates = np.asarray(result[RAW_COORDINATES], dtype=np.float32) * [width, height, width, height]
        confidence = np.asarray(result[RAW_CONFIDENCE], dtype=np.float32)[:, : self.info.nms.classes]
        return np.concatenate([coordinates, confidence], axis=1).T[None]


RUNNER = CoreMLRunner  # what `toolchain.runners` opens artifacts of this runtime with
