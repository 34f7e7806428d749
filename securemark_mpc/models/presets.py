"""Split-model presets: which layers run under MPC (private) and which in plaintext.

Under MPC a nonlinearity costs about 100 multiplications (a ReLU is a secure
comparison), so each private partition pools *before* its activation: the pool is
linear and cheap, and it divides the number of ReLUs by the pool area.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from securemark_mpc.models.layers import NONLINEAR_KINDS, LayerSpec, build_layer


@dataclass(frozen=True)
class ModelSpec:
    """A complete, JSON-able architecture: layers plus where the private partition ends."""

    preset: str
    input_shape: tuple[int, int, int]
    num_classes: int
    layers: tuple[LayerSpec, ...]
    split: int  # the first `split` layers form the private partition

    def __post_init__(self) -> None:
        if not 1 <= self.split < len(self.layers):
            raise ValueError(
                f"split must keep at least one layer on each side: 1 <= split < {len(self.layers)}, "
                f"got {self.split}"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "layers": [dict(layer) for layer in self.layers],
            "split": self.split,
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> ModelSpec:
        return cls(
            preset=str(payload["preset"]),
            input_shape=tuple(int(d) for d in payload["input_shape"]),  # type: ignore[arg-type]
            num_classes=int(payload["num_classes"]),
            layers=tuple(dict(layer) for layer in payload["layers"]),
            split=int(payload["split"]),
        )

    def layer_shapes(self) -> list[tuple[int, ...]]:
        """Output shape of every layer (per sample)."""
        shape: tuple[int, ...] = self.input_shape
        shapes = []
        for spec in self.layers:
            _, shape = build_layer(spec, shape)
            shapes.append(shape)
        return shapes

    @property
    def cut_shape(self) -> tuple[int, ...]:
        """Shape of the cut-layer activations revealed to the model owner."""
        return self.layer_shapes()[self.split - 1]

    def private_nonlinear_elements(self) -> int:
        """Nonlinear elements per sample evaluated under MPC: the dominant MPC cost."""
        total = 0
        for spec, shape in zip(self.layers[: self.split], self.layer_shapes(), strict=False):
            if spec["kind"] in NONLINEAR_KINDS:
                count = 1
                for dim in shape:
                    count *= dim
                total += count
        return total


def build_model(spec: ModelSpec, *, seed: int) -> nn.Sequential:
    """Build the full plaintext model, initialised from an explicit seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        shape: tuple[int, ...] = spec.input_shape
        modules = []
        for layer_spec in spec.layers:
            module, shape = build_layer(layer_spec, shape)
            modules.append(module)
    return nn.Sequential(*modules)


def private_part(model: nn.Sequential, spec: ModelSpec) -> nn.Sequential:
    """The layers computed under MPC (shares modules with `model`)."""
    return model[: spec.split]


def public_part(model: nn.Sequential, spec: ModelSpec) -> nn.Sequential:
    """The layers the model owner computes in plaintext (shares modules with `model`)."""
    return model[spec.split :]


def _digits_layers(num_classes: int) -> list[LayerSpec]:
    return [
        {"kind": "conv", "out": 8, "kernel": 3, "padding": 1},
        {"kind": "avgpool", "size": 2},
        {"kind": "relu"},
        {"kind": "conv", "out": 32, "kernel": 3, "padding": 1},
        {"kind": "relu"},
        {"kind": "flatten"},
        {"kind": "linear", "out": 64},
        {"kind": "relu"},
        {"kind": "linear", "out": num_classes},
    ]


def _mnist_layers(num_classes: int) -> list[LayerSpec]:
    return [
        {"kind": "conv", "out": 8, "kernel": 5, "padding": 2},
        {"kind": "avgpool", "size": 4},
        {"kind": "relu"},
        {"kind": "conv", "out": 32, "kernel": 3, "padding": 1},
        {"kind": "relu"},
        {"kind": "flatten"},
        {"kind": "linear", "out": 128},
        {"kind": "relu"},
        {"kind": "linear", "out": num_classes},
    ]


def _cifar_layers(num_classes: int) -> list[LayerSpec]:
    return [
        {"kind": "conv", "out": 16, "kernel": 3, "padding": 1},
        {"kind": "avgpool", "size": 2},
        {"kind": "relu"},
        {"kind": "conv", "out": 32, "kernel": 3, "padding": 1},
        {"kind": "relu"},
        {"kind": "avgpool", "size": 2},
        {"kind": "conv", "out": 64, "kernel": 3, "padding": 1},
        {"kind": "relu"},
        {"kind": "avgpool", "size": 2},
        {"kind": "flatten"},
        {"kind": "linear", "out": 128},
        {"kind": "relu"},
        {"kind": "linear", "out": num_classes},
    ]


@dataclass(frozen=True)
class Preset:
    input_shape: tuple[int, int, int]
    layers: Callable[[int], list[LayerSpec]]
    default_split: int


PRESETS: dict[str, Preset] = {
    "digits-cnn": Preset((1, 8, 8), _digits_layers, default_split=3),
    "mnist-cnn": Preset((1, 28, 28), _mnist_layers, default_split=3),
    "cifar-cnn": Preset((3, 32, 32), _cifar_layers, default_split=3),
}


def preset_for_shape(input_shape: tuple[int, int, int]) -> str:
    """The preset designed for this image shape."""
    for name, preset in PRESETS.items():
        if preset.input_shape == tuple(input_shape):
            return name
    raise ValueError(
        f"no model preset for images of shape {tuple(input_shape)}; known: {sorted(PRESETS)}"
    )


def make_spec(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    preset: str | None = None,
    split: int | None = None,
    private_channels: int | None = None,
    private_pool: int | None = None,
) -> ModelSpec:
    """Resolve a preset (by name or by image shape) and a split point into a ModelSpec.

    `private_channels` and `private_pool` override the width of the first private
    convolution and the size of the first private pooling: privacy knobs (fewer
    channels and coarser pooling reveal less) that also cut the MPC cost.
    """
    name = preset or preset_for_shape(input_shape)
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    chosen = PRESETS[name]
    if chosen.input_shape != tuple(input_shape):
        raise ValueError(
            f"preset {name!r} expects images of shape {chosen.input_shape}, got {tuple(input_shape)}"
        )
    split = chosen.default_split if split is None else split
    layers = chosen.layers(num_classes)
    overrides = {"conv": ("out", private_channels), "avgpool": ("size", private_pool)}
    for kind, (option, value) in overrides.items():
        first = next((layer for layer in layers[:split] if layer["kind"] == kind), None)
        if value is not None and first is not None:
            if value < 1:
                raise ValueError(f"the private {kind} {option} must be at least 1, got {value}")
            first[option] = value
    return ModelSpec(
        preset=name,
        input_shape=chosen.input_shape,
        num_classes=num_classes,
        layers=tuple(layers),
        split=split,
    )
