"""Torch-Pruning at one ratio: whole channels out of every prunable layer, the dependency graph keeping
residual additions, concatenations and group convolutions consistent.

Channels are ranked by the L2 magnitude of their whole dependency group (every weight a channel touches)
and removed layer by layer at the same ratio, rounded to a multiple of `round_to` channels so that
kernels stay on the vector widths CPUs and NPUs use. The layers the caller keeps (a classifier's output
layer, a detector's box and class outputs) keep their channels, so the model's outputs do not change shape.

Optionally the model first trains with Torch-Pruning's group-lasso regularizer (`GroupNormPruner`, the
DepGraph paper's sparse training): every step pulls each dependency group's weights towards zero, the
weakest groups hardest (up to 16x), so that by the time channels are ranked the ones to go carry little
of what the model computes, and removing them costs less than removing channels of a dense model.
"""

from __future__ import annotations

from toolchain.errors import UserInputError
from toolchain.optimize.request import LayerChannels


def channel_counts(module) -> dict[str, tuple[str, int]]:
    """Output channels (features) of every convolution and linear layer, by name."""
    from torch import nn

    counts = {}
    for name, layer in module.named_modules():
        if isinstance(layer, nn.modules.conv._ConvNd):
            counts[name] = (type(layer).__name__, layer.out_channels)
        elif isinstance(layer, nn.Linear):
            counts[name] = (type(layer).__name__, layer.out_features)
    return counts


def layer_table(before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]]) -> list[LayerChannels]:
    return [
        LayerChannels(layer=name, kind=kind, before=count, after=after.get(name, (kind, count))[1])
        for name, (kind, count) in before.items()
    ]


def count(module, example) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass on `example`."""
    import torch
    import torch_pruning as tp

    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(module, example)
    return int(macs), int(params)


def last_layer(module, example) -> list:
    """The convolution or linear layer that runs last in a forward pass: a classifier's output layer."""
    import torch
    from torch import nn

    order: list = []
    hooks = [
        layer.register_forward_hook(lambda m, _i, _o: order.append(m))
        for layer in module.modules()
        if isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for hook in hooks:
            hook.remove()
    return order[-1:]


def _pruner(kind: str, module, example, kept: list, **options):
    """A Torch-Pruning pruner of `kind` over `module`, ranking by the L2 magnitude of each whole group."""
    import torch_pruning as tp

    for parameter in module.parameters():
        parameter.requires_grad_(True)  # a loaded checkpoint may have frozen some; the graph traces gradients
    pruner_class = getattr(tp.pruner, kind)
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    return pruner_class(module, example, importance=importance, ignored_layers=kept, **options)


def sparsity_regularizer(module, example, kept: list, reg: float):
    """A callable that adds Torch-Pruning's group-lasso gradient to `module`'s gradients in place: call it
    after every backward pass and before the optimizer's step."""
    was_training = module.training
    module.eval()  # tracing the graph runs a forward pass: no batch-norm statistics change
    pruner = _pruner("GroupNormPruner", module, example, kept, reg=reg)
    module.train(was_training)
    return lambda: pruner.regularize(module)


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def prune(module, example, ratio: float, kept: list, round_to: int):
    """Prune `module` in place at `ratio` of each layer's channels; its output shape must not change."""
    import torch

    module.eval()
    with torch.no_grad():
        shape_before = tuple(_first(module(example)).shape)
    _pruner("BasePruner", module, example, kept, pruning_ratio=ratio, round_to=round_to).step()
    module.eval()
    with torch.no_grad():
        shape_after = tuple(_first(module(example)).shape)
    if shape_after != shape_before:
        raise UserInputError(
            f"pruning changed the model's output shape from {list(shape_before)} to {list(shape_after)}",
            hint="the model's output layer could not be identified; pass a model whose last layer is its output",
        )
    return module
