"""Adaptive attacks: they know the algorithm (Kerckhoffs), not the key.

A white-box mark must change weights somewhere; a thief who has read this repository
looks for weights that its own data shows to be unused, and changes exactly those:
- fine-pruning (Liu et al. 2018) removes the hidden units the data hardly activates;
- the dormant-direction attacks keep each Linear layer's response on the attacker's
  data and rewrite what that data never excites (the input directions its activations
  leave empty), then fine-tune to repair what the change cost.
All train only on the attacker's own (auxiliary) split.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

from securemark_mpc.attacks.base import Attack, AttackContext, register, train_on_aux
from securemark_mpc.subspace import excited_subspace

# Fine-tuning after the surgery: as FTAL (Adi et al. 2018), lr 1e-3; Liu et al. 2018
# fine-tune for a few epochs only, to keep the pruned model's accuracy.
REPAIR_EPOCHS = 5
REPAIR_LR = 1e-3


def _inputs_of(model: nn.Sequential, context: AttackContext) -> dict[int, torch.Tensor]:
    """What each Linear layer receives on the attacker's images."""
    seen: dict[int, torch.Tensor] = {}
    x = context.aux.images
    with torch.no_grad():
        for index, module in enumerate(model):
            if isinstance(module, nn.Linear):
                seen[index] = x.reshape(len(x), -1)
            x = module(x)
    return seen


def _repair(model: nn.Sequential, context: AttackContext, after_step=None) -> None:  # type: ignore[no-untyped-def]
    train_on_aux(
        model,
        list(model.parameters()),
        context,
        epochs=REPAIR_EPOCHS,
        learning_rate=REPAIR_LR,
        after_step=after_step,
    )


@register
class FinePrune(Attack):
    """Fine-pruning (Liu, Dolan-Gavitt, Garg, RAID 2018): prune the hidden units of the
    last hidden layer that are least active (mean activation) on the attacker's data,
    then fine-tune with them held at zero. Strength: the fraction of units pruned; Liu
    et al. prune until accuracy starts to fall, which the sweep brackets."""

    trains = True
    name, strength_name, default_strength = "fine-prune", "fraction", 0.5
    sweep = (0.2, 0.5, 0.8)
    strength_range = (0.0, 0.95)

    def _apply(self, models, context):
        model = models[0]
        linears = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
        producer = next(i for i in reversed(range(linears[-1])) if isinstance(model[i], nn.Linear))
        with torch.no_grad():
            activity = model[: linears[-1]](context.aux.images).reshape(len(context.aux), -1)
        pruned = activity.mean(0).argsort()[: int(round(self.strength * activity.shape[1]))]

        def hold_at_zero() -> None:
            with torch.no_grad():
                model[producer].weight[pruned] = 0
                model[producer].bias[pruned] = 0
                model[linears[-1]].weight[:, pruned] = 0

        hold_at_zero()
        _repair(model, context, after_step=hold_at_zero)
        return model


class _Dormant(Attack):
    """Shared surgery: each Linear weight W keeps W·P (P: the directions the attacker's
    data excites) and has W·(I − P) replaced by `_fill`; then fine-tuning repairs."""

    trains = True
    strength_name = "energy kept"
    default_strength = 0.999
    sweep = (0.99, 0.999, 0.9999)
    strength_range = (0.5, 1.0)

    @abstractmethod
    def _fill(self, weight: torch.Tensor) -> torch.Tensor:
        """What replaces the dormant part of ``weight``."""

    def _apply(self, models, context):
        model = models[0]
        with torch.no_grad():
            for index, inputs in _inputs_of(model, context).items():
                weight = model[index].weight
                keep = excited_subspace(inputs, self.strength).float()
                dormant = torch.eye(keep.shape[0]) - keep
                weight.copy_(weight @ keep + self._fill(weight) @ dormant)
        _repair(model, context)
        return model


@register
class DormantProject(_Dormant):
    """Project every Linear weight onto the span of the attacker's activations (zero what
    the data never excites), then fine-tune: the subspace attack this repository's old
    embedding invited. Strength: the share of the activations' energy whose directions
    are kept."""

    name = "dormant-project"

    def _fill(self, weight):
        return torch.zeros_like(weight)


@register
class DormantReinit(_Dormant):
    """Like dormant-project, but re-initialise the dormant part of every Linear weight
    (PyTorch's default uniform init at the weight's own scale) instead of zeroing it,
    so that a reader finds fresh random weights there, then fine-tune."""

    name = "dormant-reinit"

    def _fill(self, weight):
        bound = float(weight.std()) * 3**0.5
        return torch.empty_like(weight).uniform_(-bound, bound)
