"""The private partition under CrypTen: built from the same torch layers, kept shared.

Each torch layer type maps to a small converter in a registry. Weights are encrypted
from one party's values (in training the data owners then replace them with their
joint draw, ``mpc.joint_init``), stay secret-shared for the whole run, and are
revealed to the owner only at the end.

A convolution followed by average pooling is run as ONE strided convolution whose
kernel is the conv kernel blurred by the pooling box (both are linear, so the result
is exactly the same). Beaver products then have the pooled size, not the full
resolution: 4x fewer elements for a 2x2 pool, 16x fewer for 4x4.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from securemark_mpc.models.layers import CutNorm, Quadratic, Square
from securemark_mpc.mpc.fused_cutnorm import NAME as FUSED_CUTNORM
from securemark_mpc.mpc.fused_quadratic import NAME as FUSED_QUADRATIC


def _copy_parameters(converted: Any, layer: nn.Module) -> Any:
    for name in ("weight", "bias"):
        converted.set_parameter(name, getattr(layer, name).detach().clone())
    return converted


def _conv(crypten: Any, layer: nn.Conv2d) -> Any:
    converted = crypten.nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
    )
    return _copy_parameters(converted, layer)


def _linear(crypten: Any, layer: nn.Linear) -> Any:
    return _copy_parameters(crypten.nn.Linear(layer.in_features, layer.out_features), layer)


def _tensor_method(crypten: Any, name: str, *args: Any) -> Any:
    """A parameter-free CrypTen module computing ``x.<name>(*args)`` (a registered op)."""

    class TensorMethod(crypten.nn.Module):
        def forward(self, x: Any) -> Any:
            return getattr(x, name)(*args)

    return TensorMethod()


def _quadratic(crypten: Any, layer: Quadratic) -> Any:
    """x + a·x²: one Beaver square and one truncation (securemark_mpc.mpc.fused_quadratic)."""
    return _tensor_method(crypten, FUSED_QUADRATIC, layer.a)


def _cutnorm(crypten: Any, layer: CutNorm) -> Any:
    """Per-sample normalisation: securemark_mpc.mpc.fused_cutnorm."""
    return _tensor_method(crypten, FUSED_CUTNORM, layer.epsilon)


def _square(crypten: Any, layer: Square) -> Any:
    return _tensor_method(crypten, "square")


CONVERTERS: dict[type[nn.Module], Callable[[Any, Any], Any]] = {
    nn.Conv2d: _conv,
    nn.Linear: _linear,
    nn.AvgPool2d: lambda crypten, layer: crypten.nn.AvgPool2d(layer.kernel_size),
    nn.ReLU: lambda crypten, layer: crypten.nn.ReLU(),
    nn.Flatten: lambda crypten, layer: crypten.nn.Flatten(),
    Square: _square,
    Quadratic: _quadratic,
    CutNorm: _cutnorm,
}


def _fusable(conv: nn.Module, pool: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(pool, nn.AvgPool2d)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and pool.padding == 0
        and pool.stride == pool.kernel_size
    )


def _conv_pool(crypten: Any, conv: nn.Conv2d, pool: nn.AvgPool2d) -> Any:
    """avgpool_p(conv_k(x)) computed as conv_{k+p-1, stride p}(x) with a blurred kernel."""

    class ConvPool(crypten.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_parameter("weight", conv.weight.detach().clone())
            self.register_parameter("bias", conv.bias.detach().clone())
            self.size = int(pool.kernel_size)
            self.padding = conv.padding
            self.box = torch.full((1, 1, self.size, self.size), 1.0 / self.size**2)

        def forward(self, x: Any) -> Any:
            out_channels, in_channels, k, _ = self.weight.size()
            # full convolution of every k×k kernel with the pooling box: local, public box
            blurred = self.weight.view(out_channels * in_channels, 1, k, k).conv2d(
                self.box, padding=self.size - 1
            )
            kernel = blurred.view(out_channels, in_channels, k + self.size - 1, k + self.size - 1)
            y = x.conv2d(kernel, stride=self.size, padding=self.padding)
            return y.add(self.bias.unsqueeze(-1).unsqueeze(-1))

    return ConvPool()


def encrypt_layers(crypten: Any, layers: nn.Sequential, *, src: int = 0) -> Any:
    """A CrypTen Sequential computing the same function, its weights shared from `src`.

    Parameter names keep the torch model's (e.g. "0.weight"), so decrypted weights load
    straight back into it.
    """
    layers, modules = list(layers), OrderedDict()
    index = 0
    while index < len(layers):
        layer = layers[index]
        if index + 1 < len(layers) and _fusable(layer, layers[index + 1]):
            modules[str(index)] = _conv_pool(crypten, layer, layers[index + 1])
            index += 2
            continue
        try:
            converter = CONVERTERS[type(layer)]
        except KeyError:
            known = [t.__name__ for t in CONVERTERS]
            raise ValueError(
                f"{type(layer).__name__} cannot run under MPC; known: {known}"
            ) from None
        modules[str(index)] = converter(crypten, layer)
        index += 1
    # Not Sequential(OrderedDict): CrypTen 0.4.1 then links each module to the characters
    # of the previous name, which breaks at layer "10" and beyond.
    model, previous = crypten.nn.Sequential(), ["input"]
    for name, module in modules.items():
        model.add_module(name, module, previous)
        previous = [name]
    model.output_names = previous
    model.encrypt(src=src)
    model.train()
    return model


def export_shares(model: Any) -> dict[str, torch.Tensor]:
    """This party's own shares of the private weights (for its checkpoint)."""
    return {name: param.share.clone() for name, param in model.named_parameters()}


def import_shares(model: Any, shares: dict[str, torch.Tensor]) -> None:
    """Restore this party's shares saved by export_shares."""
    params = dict(model.named_parameters())
    if set(params) != set(shares):
        raise ValueError(
            f"checkpoint holds shares for {sorted(shares)}, the model has {sorted(params)}"
        )
    for name, param in params.items():
        param.share = shares[name].clone()
