"""The private partition's initial weights, drawn by the data owners together.

If the model owner drew them (from the config's seed) it would know the private
weights at step 0, and the first batch's revealed activations under weights it knows
exactly are the easiest images to invert white-box. Instead each data owner draws a
whole initialisation from its own OS randomness, scaled by 1/√k for k data owners,
and secret-shares it; the sum has the preset's variance (``models.presets``:
variance-preserving, biases zero) and stays unknown unless every data owner colludes
with the owner.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from securemark_mpc.models import ModelSpec, build_model, private_part
from securemark_mpc.mpc.sharing import share_from


def _own_draw(spec: ModelSpec, *, data_owners: int) -> dict[str, torch.Tensor]:
    seed = int.from_bytes(os.urandom(8), "little") >> 1
    layers = private_part(build_model(spec, seed=seed), spec)
    return {name: value / math.sqrt(data_owners) for name, value in layers.state_dict().items()}


def draw_jointly(
    crypten: Any, private: Any, *, spec: ModelSpec, rank: int, data_owners: int
) -> None:
    """Replace the shares of `private`'s weights by the sum of every data owner's draw."""
    own = _own_draw(spec, data_owners=data_owners) if 1 <= rank <= data_owners else None
    for name, param in private.named_parameters():
        total = None
        for owner in range(1, data_owners + 1):
            value = own[name] if own is not None and rank == owner else None
            part = share_from(crypten, rank=rank, src=owner, value=value, shape=tuple(param.size()))
            total = part if total is None else total + part
        param.share = total.share
