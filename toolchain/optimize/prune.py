"""Torch-Pruning at one ratio: whole channels out of every prunable layer, the dependency graph keeping
residual additions, concatenations and group convolutions consistent.

Channels are ranked by the L2 magnitude of their whole dependency group (every weight a channel touches)
and removed layer by layer at the same ratio, rounded to a multiple of `round_to` channels so that
kernels stay on the vector widths CPUs and NPUs use. The layers the caller keeps (a classifier's output
layer, a detector's box and class outputs) keep their channels, so the model's outputs do not change shape.
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


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def prune(module, example, ratio: float, kept: list, round_to: int):
    """Prune `module` in place at `ratio` of each layer's channels; its output shape must not change."""
    import torch
    import torch_pruning as tp

    module.eval()
    with torch.no_grad():
        shape_before = tuple(_first(module(example)).shape)
    for parameter in module.parameters():
        parameter.requires_grad_(True)  # a loaded checkpoint may have frozen some; the graph traces gradients
    pruner = tp.pruner.BasePruner(
        module,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=kept,
        round_to=round_to,
    )
    pruner.step()
    module.eval()
    with torch.no_grad():
        shape_after = tuple(_first(module(example)).shape)
    if shape_after != shape_before:
        raise UserInputError(
            f"pruning changed the model's output shape from {list(shape_before)} to {list(shape_after)}",
            hint="the model's output layer could not be identified; pass a model whose last layer is its output",
        )
    return module
