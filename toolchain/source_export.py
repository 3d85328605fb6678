"""Loading a source's framework model, and exporting it to ONNX: one exporter per kind of source.

`toolchain.sources` says what a MODEL argument is (its kind, detected without unpickling) and which
exporter its kind uses (`SOURCE_KINDS`); the exporters and loaders are here. Loading a PyTorch pickle
executes code: only build models you trust, as with torch.load itself. Ultralytics is loaded offline
and quiet (`quiet_ultralytics`): a build never phones home nor writes settings into the user's home.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from toolchain.errors import ExportError, UserInputError

if TYPE_CHECKING:
    from toolchain.sources import SourceModel


@contextlib.contextmanager
def quiet_ultralytics():
    """Ultralytics must neither phone home nor write settings into the user's home during a build."""
    saved = {k: os.environ.get(k) for k in ("YOLO_OFFLINE", "YOLO_VERBOSE")}
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_VERBOSE"] = "False"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_ultralytics(location: str):
    with quiet_ultralytics():
        from ultralytics import YOLO

        try:
            return YOLO(location)
        except Exception as exc:
            raise UserInputError(
                f"cannot load Ultralytics model {location}: {exc}".splitlines()[0],
                hint="check that the file is an Ultralytics checkpoint or model yaml",
            ) from exc


UNSUPPORTED_OP_RE = re.compile(r"(aten::[\w.]+|prim::[\w.]+|torch\.ops\.[\w.]+)")


def _export_error(exc: Exception, source: SourceModel) -> ExportError:
    text = str(exc)
    match = UNSUPPORTED_OP_RE.search(text)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if match:
        return ExportError(
            f"cannot export {source.filename} to ONNX: operator {match.group(1)} is not supported ({first[:160]})",
            hint="replace that operation in the model, or export it to ONNX yourself with a custom symbolic",
        )
    return ExportError(
        f"cannot export {source.filename} to ONNX: {first[:200]}",
        hint="export the model to ONNX yourself and pass the .onnx file",
    )


def _torch_export(module, source: SourceModel, shape: list[int], dest: Path, opset: int) -> None:
    import torch

    example = torch.zeros(*shape)
    try:
        with torch.no_grad():
            torch.onnx.export(
                module,
                (example,),
                str(dest),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["output"],
                do_constant_folding=True,
            )
    except Exception as exc:
        raise _export_error(exc, source) from exc


def _exported_module(graph_module):
    """A torch.export program's module, callable where an nn.Module in eval mode is expected.

    Exported programs are already in inference form and refuse `train()`/`eval()`, which the
    TorchScript ONNX exporter and tracers call; this wrapper answers those calls itself.
    """
    import torch

    class ExportedModule(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(*args)

        def train(self, mode: bool = True):
            return self

    return ExportedModule(graph_module)


def load_torch_module(source: SourceModel):
    """The PyTorch module behind a torchscript, torch-export or entry-point source; None for other kinds."""
    import torch

    if source.kind == "torchscript":
        return torch.jit.load(source.location, map_location="cpu").eval()
    if source.kind == "torch-export":
        return _exported_module(torch.export.load(source.location).module())
    if source.kind == "torch-entrypoint":
        return load_entrypoint(source)
    return None


def export_torch(source: SourceModel, shape: list[int], dest: Path, opset: int) -> None:
    _torch_export(load_torch_module(source), source, shape, dest, opset)


def load_entrypoint(source: SourceModel):
    import importlib

    import torch

    module_name, factory_name = source.location.split(":")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as exc:
        raise UserInputError(
            f"cannot import {source.location}: {exc}", hint="is the package importable (PYTHONPATH)?"
        ) from exc
    model = factory()
    try:
        state = torch.load(source.weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:
        raise UserInputError(
            f"cannot load weights {source.weights} into {source.location}: {str(exc).splitlines()[0][:200]}",
            hint="save them with torch.save(model.state_dict(), PATH) from the same model class",
        ) from exc
    return model.eval()


def export_ultralytics(source: SourceModel, shape: list[int], dest: Path, opset: int) -> None:
    location = Path(source.location)
    with tempfile.TemporaryDirectory(prefix="edgectl-yolo-") as tmp, quiet_ultralytics():
        work = Path(tmp)
        # Ultralytics writes its export beside the source (or into the cwd for a yaml): never the user's folder.
        local = work / location.name
        if location.exists():
            shutil.copy2(location, local)
        cwd = Path.cwd()
        os.chdir(work)
        try:
            model = load_ultralytics(str(local) if location.exists() else source.location)
            out = model.export(
                format="onnx", imgsz=(shape[2], shape[3]), opset=opset, simplify=True, dynamic=False, batch=1
            )
        except Exception as exc:
            raise _export_error(exc, source) from exc
        finally:
            os.chdir(cwd)
        shutil.move(str(Path(work, out)), dest)


def export_onnx_source(source: SourceModel, shape: list[int], dest: Path, opset: int) -> None:
    import onnx

    try:
        model = onnx.load(source.location)
        onnx.checker.check_model(model)
    except Exception as exc:
        raise UserInputError(
            f"{source.filename} is not a valid ONNX model: {str(exc).splitlines()[0][:200]}",
            hint="re-export the model",
        ) from exc
    from toolchain.onnx_export import model_opset
    from toolchain.opset import downgrade_opset

    if model_opset(model) > opset:
        model = downgrade_opset(model, opset, source.filename, shape)
    onnx.save(model, dest)
