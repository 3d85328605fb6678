"""TorchScript back to an eager module, where that can be done exactly.

Pruning needs the Python module: Torch-Pruning traces `nn.Conv2d`, `nn.BatchNorm2d`, ... and edits
their weights and attributes. A TorchScript file keeps the weights and each submodule's original class
name, but compiles the Python away, and a traced module keeps its hyper-parameters (stride, padding,
eps) only as constants in its graph. So a TorchScript model is unfrozen when it is an `nn.Sequential`
(nested or not) of standard layers whose hyper-parameters can be read from their graphs; the rebuilt
module must then give the TorchScript's outputs on a random input, or the model is refused. Anything
else (a custom forward, unknown layers) cannot be pruned from TorchScript: the user passes the
PyTorch class instead (`package.module:factory --weights`).
"""

from __future__ import annotations

from collections.abc import Callable

from toolchain.errors import UserInputError

NOT_UNFREEZABLE_HINT = (
    "pass the PyTorch model instead: package.module:factory with --weights (a state dict saved with "
    "torch.save(model.state_dict(), PATH))"
)


class _Unsupported(Exception):
    pass


def _constant(value):
    """A graph value's constant: a prim::Constant, or a prim::ListConstruct of constants."""
    node = value.node()
    if node.kind() == "prim::Constant":
        return value.toIValue()
    if node.kind() == "prim::ListConstruct":
        return [_constant(v) for v in node.inputs()]
    raise _Unsupported(f"a non-constant argument ({node.kind()})")


def _call(module, kind: str) -> list:
    """The constant arguments of the one `kind` call in a traced submodule's forward graph."""
    nodes = [n for n in module.graph.nodes() if n.kind() == kind]
    if len(nodes) != 1:
        raise _Unsupported(f"a {module.original_name} whose forward is not one {kind} call")
    arguments = list(nodes[0].inputs())[1:]  # the first input is the tensor
    return [None if a.type().kind() == "TensorType" else _constant(a) for a in arguments]


def _hyper(module, attrs: tuple[str, ...], kind: str, positions: tuple[int, ...]) -> list:
    """Hyper-parameters: attributes of a scripted module, else constants of a traced module's graph."""
    try:
        return [getattr(module, name) for name in attrs]
    except (AttributeError, RuntimeError):
        args = _call(module, kind)
        return [args[p] for p in positions]


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _conv2d(module):
    import torch

    # aten::_convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups, ...)
    stride, padding, dilation, groups = _hyper(
        module, ("stride", "padding", "dilation", "groups"), "aten::_convolution", (2, 3, 4, 7)
    )
    if isinstance(padding, str) or getattr(module, "padding_mode", "zeros") != "zeros":
        raise _Unsupported("a convolution with string padding or a non-zero padding mode")
    out_channels, in_per_group, kh, kw = module.weight.shape
    return torch.nn.Conv2d(
        in_per_group * groups,
        out_channels,
        (kh, kw),
        stride=_pair(stride),
        padding=_pair(padding),
        dilation=_pair(dilation),
        groups=groups,
        bias=getattr(module, "bias", None) is not None,
    )


def _batchnorm2d(module):
    import torch

    # aten::batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
    momentum, eps = _hyper(module, ("momentum", "eps"), "aten::batch_norm", (5, 6))
    return torch.nn.BatchNorm2d(module.weight.shape[0], eps=eps, momentum=momentum)


def _linear(module):
    import torch

    out_features, in_features = module.weight.shape
    return torch.nn.Linear(in_features, out_features, bias=getattr(module, "bias", None) is not None)


def _max_pool2d(module):
    import torch

    kernel, stride, padding, dilation, ceil = _hyper(
        module,
        ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
        "aten::max_pool2d",
        (0, 1, 2, 3, 4),
    )
    return torch.nn.MaxPool2d(_pair(kernel), _pair(stride), _pair(padding), _pair(dilation), ceil_mode=ceil)


def _avg_pool2d(module):
    import torch

    kernel, stride, padding, ceil, count_pad, divisor = _hyper(
        module,
        ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
        "aten::avg_pool2d",
        (0, 1, 2, 3, 4, 5),
    )
    return torch.nn.AvgPool2d(_pair(kernel), _pair(stride), _pair(padding), ceil, count_pad, divisor)


def _adaptive_avg_pool2d(module):
    import torch

    (size,) = _hyper(module, ("output_size",), "aten::adaptive_avg_pool2d", (0,))
    return torch.nn.AdaptiveAvgPool2d(_pair(size))


def _flatten(module):
    import torch

    start, end = _hyper(module, ("start_dim", "end_dim"), "aten::flatten", (0, 1))
    return torch.nn.Flatten(start, end)


def _stateless(name: str) -> Callable:
    def build(_module):
        import torch

        return getattr(torch.nn, name)()

    return build


# original class name -> how to rebuild it from its TorchScript submodule
REBUILDERS: dict[str, Callable] = {
    "Conv2d": _conv2d,
    "BatchNorm2d": _batchnorm2d,
    "Linear": _linear,
    "MaxPool2d": _max_pool2d,
    "AvgPool2d": _avg_pool2d,
    "AdaptiveAvgPool2d": _adaptive_avg_pool2d,
    "Flatten": _flatten,
    **{
        name: _stateless(name)
        for name in ("ReLU", "ReLU6", "SiLU", "GELU", "Sigmoid", "Hardswish", "Identity")
    },
}


def _rebuild(module):
    import torch

    name = module.original_name
    if name == "Sequential":
        return torch.nn.Sequential(*(_rebuild(child) for _, child in module.named_children()))
    if name not in REBUILDERS:
        raise _Unsupported(f"a {name} layer")
    return REBUILDERS[name](module)


def unfreeze(scripted, input_shape: list[int], filename: str):
    """The eager twin of a TorchScript model, checked to compute the same outputs; or a clear refusal."""
    import torch

    try:
        module = _rebuild(scripted)
        module.load_state_dict(scripted.state_dict())
    except (_Unsupported, RuntimeError, StopIteration) as exc:
        reason = str(exc).splitlines()[0][:160]
        raise UserInputError(
            f"{filename} is TorchScript that cannot be unfrozen for pruning (it has {reason}); only an "
            "nn.Sequential of standard torch.nn layers can be rebuilt",
            hint=NOT_UNFREEZABLE_HINT,
        ) from exc
    module.eval()
    example = torch.rand(*input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = scripted(example), module(example)
    if (
        not isinstance(expected, torch.Tensor)
        or expected.shape != got.shape
        or not torch.allclose(expected, got, rtol=1e-4, atol=1e-5)
    ):
        raise UserInputError(
            f"{filename} is TorchScript whose rebuilt eager module does not compute the same outputs, "
            "so it cannot be unfrozen for pruning",
            hint=NOT_UNFREEZABLE_HINT,
        )
    return module
