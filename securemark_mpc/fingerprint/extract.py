"""Extraction: read a model's codeword bits and their real-valued projections."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from securemark_mpc.fingerprint.key import FingerprintKey, projection_matrix


def project(*, carrier: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """z = X·w / ‖w‖ (differentiable).

    Dividing by ‖w‖ makes z scale-free: rescaling a layer (which a ReLU network can undo in
    the next layer) changes nothing, and for weights independent of X every z_i has mean 0
    and variance 1, so an independent model's bits are fair coins. An all-zero carrier
    gives z = 0.
    """
    flat = carrier.reshape(-1)
    return matrix @ (flat / flat.norm().clamp_min(torch.finfo(flat.dtype).tiny))


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
