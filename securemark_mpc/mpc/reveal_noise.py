"""Noise added under MPC to the cut-layer activations before they are revealed.

The model owner sees h + n, never h. n is the sum of one secret share per data
owner, each N(0, sigma²/k) for k data owners, so the owner, who knows none of them,
cannot subtract it. The default partition ends in ``cutnorm`` (per-sample mean square
below 1), so sigma is a signal-to-noise ratio the private weights cannot outgrow.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from securemark_mpc.mpc.sharing import share_from


class SharedRevealNoise:
    """One party's part in the reveal noise of a training run."""

    def __init__(self, crypten: Any, *, rank: int, data_owners: int, sigma: float) -> None:
        self.crypten, self.rank = crypten, rank
        self.data_owners, self.sigma = data_owners, sigma
        # Secret from the model owner: seeded from the OS, never from the config.
        self.generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)

    def add(self, hidden: Any) -> Any:
        """h + n; n is constant for the backward pass (no gradient flows into it)."""
        if self.sigma == 0:
            return hidden
        shape = tuple(hidden.size())
        share_sigma = self.sigma / math.sqrt(self.data_owners)
        for owner in range(1, self.data_owners + 1):
            mine = None
            if self.rank == owner:
                mine = torch.randn(shape, generator=self.generator) * share_sigma
            hidden = hidden + share_from(
                self.crypten, rank=self.rank, src=owner, value=mine, shape=shape
            )
        return hidden
