"""Collusion attacks: several customers combine their copies to hide who they are."""

from __future__ import annotations

import torch

from securemark_mpc.attacks.base import Attack, register


def _merge_tensors(models, combine):  # type: ignore[no-untyped-def]
    """The first model, each tensor replaced by combine(the colluders' tensors stacked)."""
    result = models[0]
    with torch.no_grad():
        for name, param in result.state_dict().items():
            param.copy_(combine(torch.stack([model.state_dict()[name] for model in models])))
    return result


@register
class ColludeAverage(Attack):
    """Average the colluders' weights (the classic averaging attack on fingerprints,
    e.g. Xu et al. 2019 "A novel method for identifying the deep neural network model
    with the serial number"). Strength is unused (colluders = number of models)."""

    name, strength_name, default_strength = "collude-average", "unused", 0
    sweep = (0,)
    colluders = True

    def _apply(self, models, context):
        return _merge_tensors(models, lambda stacked: stacked.mean(0))


@register
class ColludeMix(Attack):
    """Take every parameter (each scalar) from a random colluder: the marking
    assumption's interleaving attack at weight level."""

    name, strength_name, default_strength = "collude-mix", "unused", 0
    sweep = (0,)
    colluders = True

    def _apply(self, models, context):
        def pick_per_scalar(stacked):
            choice = torch.randint(len(models), stacked.shape[1:])
            return stacked.gather(0, choice.unsqueeze(0)).squeeze(0)

        return _merge_tensors(models, pick_per_scalar)


@register
class ColludeLayers(Attack):
    """Take each layer (all its tensors) from a random colluder."""

    name, strength_name, default_strength = "collude-layers", "unused", 0
    sweep = (0,)
    colluders = True

    def _apply(self, models, context):
        result = models[0]
        with torch.no_grad():
            for index, layer in enumerate(result):
                source = models[int(torch.randint(len(models), ()))][index]
                for name, param in layer.named_parameters():
                    param.copy_(dict(source.named_parameters())[name])
        return result
