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

QUAD_COEFFICIENT = 0.25  # a in x + a·x²: chosen on MNIST-t10k and digits in plaintext
# CutNorm divides each sample by √(mean square + ε). Under MPC (mpc/fused_cutnorm.py) the
# inverse square root starts from CrypTen's approximation on (mean square + ε)/CUTNORM_RANGE,
# good on [0.1, 160], and Newton steps widen that: within 2.4% (never too high) for
# per-sample mean squares up to 210,000. The scale of the cut's input grows during
# training (cutnorm makes the layer in front scale-invariant, and SGD steps orthogonal to
# a weight lengthen it): the MNIST twin ends near 20,000 at its largest, digits near 330.
CUTNORM_EPSILON = 1.0
CUTNORM_RANGE = 1024.0  # a power of 4: its root is a power of 2


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


class Quadratic(nn.Module):
    """x + a·x², the presets' private activation: one Beaver multiplication under MPC.

    A private ReLU is a secure comparison (~64 rounds, ~10 µs per element); this costs
    one product. Plain x² diverges in a deep net because it squares whatever scale
    the previous layer produces. What trains it to ReLU accuracy (measured in
    plaintext on MNIST-t10k and digits): the identity path with a fixed a = 0.25
    (gradient 1 + 2a·x), unit-scale initialisation (``presets.build_model``) and a
    learning-rate warm-up (``config.SCHEDULES``). Without the warm-up most seeds go to
    NaN in the first epoch; a ≥ 0.5 or a trainable a diverges too.
    """

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, x):  # type: ignore[no-untyped-def]
        return x + self.a * (x * x)

    def extra_repr(self) -> str:
        return f"a={self.a}"


class CutNorm(nn.Module):
    """Each sample's h divided by √(mean(h²) + ε): its mean square stays below 1.

    Placed last in the private partition, it caps what the model owner can learn per
    image whatever the private weights become: the reveal noise N(0, σ²) then meets a
    signal of power at most 1 per value. Without it the partition learns to scale h
    up until the noise stops mattering, and the quad activations blow up under
    noise (both measured in the plaintext twin). Under MPC: one inverse square root
    per sample (``securemark_mpc.mpc.fused_cutnorm``).
    """

    def __init__(self, epsilon: float = CUTNORM_EPSILON) -> None:
        super().__init__()
        self.epsilon = epsilon

    def forward(self, x):  # type: ignore[no-untyped-def]
        mean_square = x.flatten(1).pow(2).mean(dim=1) + self.epsilon
        return x * mean_square.rsqrt().reshape(-1, *([1] * (x.ndim - 1)))

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}"


def _cutnorm(shape: Shape) -> tuple[nn.Module, Shape]:
    return CutNorm(), shape


def _relu(shape: Shape) -> tuple[nn.Module, Shape]:
    return nn.ReLU(), shape


def _square(shape: Shape) -> tuple[nn.Module, Shape]:
    return Square(), shape


def _quad(shape: Shape, *, a: float = QUAD_COEFFICIENT) -> tuple[nn.Module, Shape]:
    if not 0 <= a <= 1:
        raise ValueError(f"the quadratic coefficient must lie in [0, 1], got {a}")
    return Quadratic(float(a)), shape


LAYERS: dict[str, Callable[..., tuple[nn.Module, Shape]]] = {
    "conv": _conv,
    "avgpool": _avgpool,
    "flatten": _flatten,
    "linear": _linear,
    "relu": _relu,
    "square": _square,
    "quad": _quad,
    "cutnorm": _cutnorm,
}

NONLINEAR_KINDS = frozenset({"relu", "square", "quad"})


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
