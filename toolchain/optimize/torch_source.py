"""A build source as a trainable PyTorch module, and the pruned module written back as a build source.

| source                        | pruned, fine-tuned model written as                                   |
|-------------------------------|------------------------------------------------------------------------|
| Ultralytics detector `.pt`    | an Ultralytics checkpoint (Ultralytics' trainer writes it)             |
| TorchScript (when unfrozen)   | TorchScript                                                            |
| `package.module:factory`      | TorchScript: the pruned layers no longer fit the factory's class       |

ONNX, torch.export, Keras and SavedModel sources carry no trainable PyTorch module, and an Ultralytics
model yaml carries no weights: they are refused before any work, with what to pass instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from toolchain.errors import UserInputError
from toolchain.sources import SourceModel

NOT_PRUNABLE = {
    "onnx": "an ONNX graph",
    "torch-export": "a torch.export program (its layers are compiled into one graph)",
    "keras": "a Keras model",
    "saved-model": "a TensorFlow SavedModel",
}


@dataclass
class TorchModel:
    """The trainable module behind a source, with what pruning and fine-tuning need to know."""

    source: SourceModel
    module: object  # torch.nn.Module, eval mode
    task: str
    input_shape: list[int]
    num_classes: int
    train_args: dict = field(default_factory=dict)  # an Ultralytics checkpoint's own training arguments

    @property
    def stem(self) -> str:
        return Path(self.source.location.split(":")[-1]).stem


def check_prunable(source: SourceModel) -> None:
    """Refuse, before any work, a source that has no PyTorch weights to prune."""
    if source.kind in NOT_PRUNABLE:
        raise UserInputError(
            f"{source.filename} is {NOT_PRUNABLE[source.kind]}, which cannot be pruned: pruning needs the "
            "PyTorch model it came from",
            hint="pass the PyTorch source: an Ultralytics .pt, TorchScript, or package.module:factory with --weights",
        )
    if source.kind == "ultralytics" and Path(source.location).suffix.lower() in (".yaml", ".yml"):
        raise UserInputError(
            f"{source.filename} is a model definition without trained weights: there is nothing to prune",
            hint="train it first and pass the checkpoint (runs/detect/train/weights/best.pt)",
        )
    if source.kind == "ultralytics" and source.task != "detect":
        raise UserInputError(
            f"{source.filename} is an Ultralytics {source.task} model; optimize prunes Ultralytics detectors",
            hint="pass a detection checkpoint, or the classifier as package.module:factory with --weights",
        )


def load(source: SourceModel, input_shape: list[int]) -> TorchModel:
    """The source as an eager module in eval mode (a fresh copy on every call: each attempt prunes its own)."""
    import torch

    from toolchain.source_export import load_entrypoint

    if source.kind == "ultralytics":
        from toolchain.source_export import load_ultralytics

        yolo = load_ultralytics(source.location)
        module = yolo.model.float().eval()
        return TorchModel(
            source,
            module,
            "detect",
            input_shape,
            len(source.labels),
            dict((yolo.ckpt or {}).get("train_args") or {}),
        )
    if source.kind == "torchscript":
        from toolchain.optimize.unfreeze import unfreeze

        scripted = torch.jit.load(source.location, map_location="cpu").eval()
        module = unfreeze(scripted, input_shape, source.filename)
    else:
        module = load_entrypoint(source)
    module.eval()
    with torch.no_grad():
        output = module(torch.zeros(*input_shape))
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        raise UserInputError(
            f"{source.filename} outputs {type(output).__name__} "
            f"{list(output.shape) if isinstance(output, torch.Tensor) else ''}; optimize fine-tunes classifiers "
            "(one (batch, classes) output) and Ultralytics detectors",
            hint="pass a classifier, or an Ultralytics detection checkpoint",
        )
    return TorchModel(source, module, "classify", input_shape, int(output.shape[1]))


def kept_layers(model: TorchModel) -> list:
    """Layers whose output channels are the model's outputs and must not be pruned."""
    import torch

    if model.task == "detect":
        from toolchain.optimize.yolo_layers import kept_layers as yolo_kept

        return yolo_kept(model.module)
    from toolchain.optimize.prune import last_layer

    return last_layer(model.module, torch.zeros(*model.input_shape))


def make_prunable(model: TorchModel) -> None:
    if model.task == "detect":
        from toolchain.optimize.yolo_layers import make_prunable as yolo_prunable

        yolo_prunable(model.module)


def write_torchscript(module, input_shape: list[int], dest: Path) -> None:
    """A traced TorchScript file: what `edgectl build` and `edgectl demo` take as a PyTorch source."""
    import warnings

    import torch

    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace announces its own deprecation
        traced = torch.jit.trace(module, torch.zeros(*input_shape))
    torch.jit.save(traced, str(dest))
