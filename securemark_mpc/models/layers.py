"""Layer specs: a JSON-able description of each layer and a registry that builds it.

A model is a list of specs such as ``{"kind": "conv", "out": 8, "kernel": 3}``. Keeping
the architecture as data lets the run folder record it, lets a model file load back
into plain PyTorch without CrypTen, and lets the MPC engine build the same layers
under CrypTen (``securemark_mpc.mpc.private_partition``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

Shape = tuple[int, ...]
LayerSpec = dict[str, Any]


def _conv(
    shape: Shape, *, out: int, kernel: int, stride: int = 1, padding: int = 0
) -> tuple[nn.Module, Shape]:
    channels, height, width = shape
    layer = nn.Conv2d(channels, out, kernel, stride=stride, padding=padding)
    size = lambda n: (n + 2 * padding - kernel) // stride + 1  # noqa: E731
    return layer, (out, size(height), size(width))


def _avgpool(shape: Shape, *, size: int) -> tuple[nn.Module, Shape]:
    channels, height, width = shape
    return nn.AvgPool2d(size), (channels, height // size, width // size)


def _flatten(shape: Shape) -> tuple[nn.Module, Shape]:
    total = 1
    for dim in shape:
        total *= dim
    return nn.Flatten(), (total,)


def _linear(shape: Shape, *, out: int) -> tuple[nn.Module, Shape]:
    return nn.Linear(shape[0], out), (out,)


class Square(nn.Module):
    """x², the cheapest nonlinearity under MPC: one Beaver multiplication."""

    def forward(self, x):  # type: ignore[no-untyped-def]
        return x * x


def _relu(shape: Shape) -> tuple[nn.Module, Shape]:
    return nn.ReLU(), shape


def _square(shape: Shape) -> tuple[nn.Module, Shape]:
    return Square(), shape


LAYERS: dict[str, Callable[..., tuple[nn.Module, Shape]]] = {
    "conv": _conv,
    "avgpool": _avgpool,
    "flatten": _flatten,
    "linear": _linear,
    "relu": _relu,
    "square": _square,
}

NONLINEAR_KINDS = frozenset({"relu", "square"})


def build_layer(spec: LayerSpec, shape: Shape) -> tuple[nn.Module, Shape]:
    """Build one layer from its spec, given the input shape; return it and its output shape."""
    options = {key: value for key, value in spec.items() if key != "kind"}
    try:
        builder = LAYERS[spec["kind"]]
    except KeyError:
        raise ValueError(
            f"unknown layer kind {spec.get('kind')!r}; known: {sorted(LAYERS)}"
        ) from None
    return builder(shape, **options)
