"""The private partition under CrypTen: built from the same torch layers, kept shared.

Each torch layer type maps to a small converter in a registry. Weights are encrypted
from the model owner's values (it initialised the model), stay secret-shared for
the whole run, and are revealed to the owner only at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from securemark_mpc.models.layers import Square


def _conv(crypten: Any, layer: nn.Conv2d) -> Any:
    converted = crypten.nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
    )
    converted.set_parameter("weight", layer.weight.detach().clone())
    converted.set_parameter("bias", layer.bias.detach().clone())
    return converted


def _linear(crypten: Any, layer: nn.Linear) -> Any:
    converted = crypten.nn.Linear(layer.in_features, layer.out_features)
    converted.set_parameter("weight", layer.weight.detach().clone())
    converted.set_parameter("bias", layer.bias.detach().clone())
    return converted


def _square(crypten: Any, layer: Square) -> Any:
    class SquareModule(crypten.nn.Module):
        def forward(self, x: Any) -> Any:
            return x.square()

    return SquareModule()


CONVERTERS: dict[type[nn.Module], Callable[[Any, Any], Any]] = {
    nn.Conv2d: _conv,
    nn.Linear: _linear,
    nn.AvgPool2d: lambda crypten, layer: crypten.nn.AvgPool2d(layer.kernel_size),
    nn.ReLU: lambda crypten, layer: crypten.nn.ReLU(),
    nn.Flatten: lambda crypten, layer: crypten.nn.Flatten(),
    Square: _square,
}


def encrypt_private_part(crypten: Any, private: nn.Sequential, *, src: int = 0) -> Any:
    """A CrypTen Sequential with the same layers, its weights shared from party `src`."""
    layers = []
    for layer in private:
        try:
            converter = CONVERTERS[type(layer)]
        except KeyError:
            raise ValueError(
                f"{type(layer).__name__} cannot run under MPC; known: {[t.__name__ for t in CONVERTERS]}"
            ) from None
        layers.append(converter(crypten, layer))
    model = crypten.nn.Sequential(*layers)
    model.encrypt(src=src)
    model.train()
    return model


def share_names(model: Any) -> list[str]:
    return [name for name, _ in model.named_parameters()]


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
