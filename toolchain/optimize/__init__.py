"""`edgectl optimize`: structured pruning with Torch-Pruning, then fine-tuning, so a model is faster before
it is quantized.

Whole channels are removed (Torch-Pruning's dependency graph keeps residual additions, concatenations
and group convolutions consistent), the model is fine-tuned on the user's data (distilled from the
unpruned model by default), and written back in its source's own format with a sidecar record of how it
was pruned, so `edgectl build` takes it as it is. The modules:

- `request`: the typed request, report and sidecar record (the boundary models);
- `torch_source`: a build source as a trainable PyTorch module, and the pruned module written back;
- `unfreeze`: a TorchScript Sequential of standard layers rebuilt as an eager module;
- `yolo_layers`: Ultralytics detectors made prunable (no channel split) and the layers they must keep;
- `prune`: Torch-Pruning at one ratio, parameters, MACs and per-layer channels;
- `finetune`: the classifier loop (distillation) and Ultralytics' own trainer for detectors;
- `measure`: FP32 ONNX before/after in ONNX Runtime in one process, accuracy on --val;
- `run`: the attempts under --max-drop, staged output published only when complete.
"""

from toolchain.optimize.request import OptimizeReport, OptimizeRequest, PruningRecord, read_pruning_record

__all__ = ["OptimizeReport", "OptimizeRequest", "PruningRecord", "optimize", "read_pruning_record"]


def optimize(request: OptimizeRequest, reporter=None) -> OptimizeReport:
    """Prune, fine-tune and measure; see `toolchain.optimize.run.optimize`."""
    from toolchain.optimize.run import optimize as run_optimize

    return run_optimize(request, reporter)
