"""Neural structural obfuscation: change the layout of a model, never what it computes.

Yan et al., USENIX Security 2023 ("Rethinking white-box watermarks on deep learning
models under neural structural obfuscation") remove white-box marks at zero cost by
permuting hidden units, rescaling them across a positively homogeneous activation and
adding dummy units whose contributions cancel. Every hidden layer of the whole model is
attacked (the thief holds the decrypted private partition too): conv channels, the cut
units and the head's hidden units. The output layer keeps its classes in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from securemark_mpc.attacks.base import Attack, register
from securemark_mpc.models.layers import CutNorm, Square

WEIGHTED = (nn.Conv2d, nn.Linear)
# How a unit's scale a passes through a layer: a -> a ** degree. Layers not listed
# (e.g. a polynomial with a linear term) are not homogeneous, so units behind them
# cannot be rescaled without changing the function.
HOMOGENEITY: dict[type[nn.Module], int] = {nn.ReLU: 1, nn.AvgPool2d: 1, nn.Flatten: 1, Square: 2}
# Layers that normalise each sample over all its units: a unit added behind them changes
# every unit's output unless it is silent and the others are scaled to keep the mean square.
PER_SAMPLE: tuple[type[nn.Module], ...] = (CutNorm,)


@dataclass(frozen=True)
class _Link:
    """A hidden weighted layer and the next weighted layer, which consumes its units."""

    producer: int
    consumer: int
    degree: int | None  # a unit scaled by a reaches the consumer scaled by a ** degree
    per_sample: bool  # a per-sample normalisation lies in between

    def columns(self, model: nn.Sequential) -> torch.Tensor:
        """The consumer's weight as (outputs, producer units, columns per unit), a view."""
        weight = model[self.consumer].weight.data
        return weight.view(weight.shape[0], model[self.producer].weight.shape[0], -1)


def hidden_links(model: nn.Sequential) -> list[_Link]:
    """Every weighted layer but the last, with its consumer and the path's homogeneity."""
    weighted = [i for i, module in enumerate(model) if isinstance(module, WEIGHTED)]
    links = []
    for producer, consumer in zip(weighted, weighted[1:], strict=False):
        degree: int | None = 1
        between = list(model[producer + 1 : consumer])
        for module in between:
            step = HOMOGENEITY.get(type(module))
            degree = None if step is None or degree is None else degree * step
        per_sample = any(isinstance(module, PER_SAMPLE) for module in between)
        links.append(_Link(producer, consumer, degree, per_sample))
    return links


def _resized(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """A layer like ``module`` holding these (possibly wider) parameters."""
    if isinstance(module, nn.Conv2d):
        fresh: nn.Module = nn.Conv2d(
            weight.shape[1],
            weight.shape[0],
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
        )
    else:
        fresh = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        fresh.weight.copy_(weight)
        fresh.bias.copy_(bias)
    return fresh


@register
class Permute(Attack):
    """Permute the units of every hidden layer (and the next layer's inputs to match).
    Strength: the fraction of each layer's units moved (1 = a uniformly random permutation)."""

    name, strength_name, default_strength = "permute", "fraction", 1.0
    sweep = (1.0,)
    strength_range = (0.0, 1.0)

    def _apply(self, models, context):
        model = models[0]
        with torch.no_grad():
            for link in hidden_links(model):
                producer = model[link.producer]
                units = producer.weight.shape[0]
                order = torch.arange(units)
                moved = torch.randperm(units)[: int(round(self.strength * units))]
                order[moved] = moved[torch.randperm(len(moved))]
                columns = link.columns(model)
                columns.copy_(columns[:, order].clone())
                producer.weight.copy_(producer.weight[order].clone())
                producer.bias.copy_(producer.bias[order].clone())
        return model


@register
class Rescale(Attack):
    """Scale every hidden unit by a log-uniform a in [e^-s, e^s] and its outgoing weights
    by 1 / a^degree, wherever the activation in between is homogeneous (ReLU: a, x²: a²).
    Strength s; Yan et al. use arbitrary positive factors."""

    name, strength_name, default_strength = "rescale", "log-range", 2.0
    sweep = (1.0, 3.0)
    strength_range = (0.0, 10.0)

    def _apply(self, models, context):
        model = models[0]
        with torch.no_grad():
            for link in hidden_links(model):
                if link.degree is None:
                    continue
                producer = model[link.producer]
                units = producer.weight.shape[0]
                scale = torch.exp((2 * torch.rand(units) - 1) * self.strength)
                producer.weight.mul_(scale.view(-1, *[1] * (producer.weight.ndim - 1)))
                producer.bias.mul_(scale)
                link.columns(model).div_(scale.view(1, -1, 1) ** link.degree)
        return model


@register
class Dummy(Attack):
    """Add dummy units to every hidden layer, a fraction `ratio` of its width (1 = twice
    as wide). As in Yan et al.: half the extra units split a real unit in two (a copy
    with the same incoming weights, the outgoing weights shared at a random ratio), the
    other half come in pairs with the same random incoming weights and opposite outgoing
    weights, so that they cancel. Behind a per-sample normalisation (``CutNorm``) the
    extra units are silent instead, the real ones scaled to keep the mean square. The
    function is unchanged."""

    name, strength_name, default_strength = "dummy", "ratio", 1.0
    sweep = (0.5, 1.0)
    strength_range = (0.0, 1.0)

    def _apply(self, models, context):
        model = models[0]
        with torch.no_grad():
            for link in reversed(hidden_links(model)):  # consumers keep their own width
                self._widen(model, link)
        return model

    def _widen(self, model: nn.Sequential, link: _Link) -> None:
        producer, consumer = model[link.producer], model[link.consumer]
        weight, bias = producer.weight.data, producer.bias.data
        columns = link.columns(model).clone()
        extra = int(round(self.strength * weight.shape[0]))
        build = _silent_units if link.per_sample else _split_and_cancelling_units
        new_weight, new_bias, new_columns = build(weight, bias, columns, extra)
        model[link.producer] = _resized(producer, new_weight, new_bias)
        model[link.consumer] = _resized(
            consumer,
            new_columns.reshape(columns.shape[0], -1, *consumer.weight.shape[2:]),
            consumer.bias.data,
        )


Widened = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # weight, bias, consumer columns


def _split_and_cancelling_units(
    weight: torch.Tensor, bias: torch.Tensor, columns: torch.Tensor, extra: int
) -> Widened:
    """Yan et al.'s dummies: split real units, and pairs of random units that cancel."""
    units = weight.shape[0]
    pairs, splits = extra // 4, extra - 2 * (extra // 4)
    originals = torch.randperm(units)[:splits]  # each split once, so the shares add up
    share = torch.rand(splits).view(1, -1, 1)
    split_columns = columns[:, originals] * share
    columns[:, originals] *= 1 - share
    pair_rows = torch.randn(pairs, *weight.shape[1:]) * weight.std()
    pair_bias = torch.randn(pairs) * bias.std()
    pair_columns = torch.randn(columns.shape[0], pairs, columns.shape[2]) * columns.std()
    return (
        torch.cat([weight, weight[originals], pair_rows, pair_rows]),
        torch.cat([bias, bias[originals], pair_bias, pair_bias]),
        torch.cat([columns, split_columns, pair_columns, -pair_columns], dim=1),
    )


def _silent_units(
    weight: torch.Tensor, bias: torch.Tensor, columns: torch.Tensor, extra: int
) -> Widened:
    """Behind a per-sample normalisation (mean square over the units) any live extra unit
    changes every output: silent units (zero weights and bias) with random outgoing
    weights, and every real unit scaled by sqrt(new width / width), which keeps the mean
    square and so the function."""
    scale = ((weight.shape[0] + extra) / weight.shape[0]) ** 0.5
    noise = torch.randn(columns.shape[0], extra, columns.shape[2]) * columns.std()
    return (
        torch.cat([weight * scale, torch.zeros(extra, *weight.shape[1:])]),
        torch.cat([bias * scale, torch.zeros(extra)]),
        torch.cat([columns / scale, noise], dim=1),
    )
