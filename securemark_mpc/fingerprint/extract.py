"""Extraction: read a model's codeword bits and their real-valued projections."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from securemark_mpc.fingerprint.key import FingerprintKey, projection_matrix


def project(*, carrier: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """z = X·vec(Ŵ) / sqrt(rows), Ŵ the carrier with every row scaled to unit norm (differentiable).

    A row holds one output unit's incoming weights, so reading unit rows makes z blind to
    any positive rescaling of a unit, which a ReLU network undoes in the next layer at no
    cost (and to rescaling the whole layer). For weights independent of X every z_i has
    mean 0 and variance at most 1, so an independent model's bits are fair coins. An
    all-zero row (a pruned unit) contributes nothing.
    """
    rows = carrier.reshape(carrier.shape[0], -1)
    unit_rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)
    return matrix @ unit_rows.reshape(-1) / math.sqrt(rows.shape[0])


def extract(*, model: nn.Module, key: FingerprintKey) -> tuple[np.ndarray, np.ndarray]:
    """Hard bits (z > 0, uint8) and the projections z (float64) of the model's carrier.

    The projections let tracing weigh confident bits more (``trace.soft_decisions``).
    """
    state = model.state_dict()
    carrier = state.get(key.carrier)
    if carrier is None or tuple(carrier.shape) != key.carrier_shape:
        got = None if carrier is None else tuple(carrier.shape)
        raise ValueError(
            f"model has no carrier {key.carrier!r} of shape {key.carrier_shape} (got {got})"
        )
    with torch.no_grad():
        z = project(carrier=carrier.float(), matrix=projection_matrix(key))
    projections = z.double().numpy()
    return (projections > 0).astype(np.uint8), projections
