"""The keyed tilt: each code position is a direction of the output layer's weight, read by every query.

Customer j's copy adds Δ = Σ_k s_jk·A_k to the weight of the model's last Linear layer,
s_jk = ±1 from its codeword. Query q (a boundary mixup, where the unmarked model's
logits for its labels a_q and b_q are equal) reads the gap logit_a − logit_b, which
the tilt moves by (C s)_q with C[q, k] = ⟨A_k, (e_a − e_b)·h_qᵀ⟩, h_q the layer's input
at the query. A suspect's answers y_q = +1 (a_q), −1 (b_q), else erased, are read back
by least squares, ŝ = argmin ‖C ŝ − y‖ over the answered queries.

Why a tilt and not one query per bit: a dense tilt of the output layer moves the
logits on real data too (a little, below the data's margins), so a student distilled on
the copy's soft labels learns it along with the task, and every bit is spread over
all the queries, so no single answer (a refused, filtered or colluder-mixed one)
matters much. The directions are the top ``positions`` right singular vectors of the
query-gap operator G (rows (e_a − e_b)·h_qᵀ), scaled so that the columns of C are
orthogonal with norm ``gap``·sqrt(N / K) (a per-query gap of about ``gap`` logits),
then mixed by a keyed random rotation so that every bit uses every direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Tilt:
    directions: np.ndarray  # (K, classes, width) float32: A_k
    design: np.ndarray  # (N, K) float64: C, the gap each direction puts on each query


def output_layer(model: nn.Sequential) -> int:
    """Index of the model's last Linear layer, the one the tilt moves."""
    indices = [i for i, module in enumerate(model) if isinstance(module, nn.Linear)]
    if not indices:
        raise ValueError("the model has no Linear layer to tilt")
    return indices[-1]


def layer_inputs(model: nn.Sequential, images: torch.Tensor) -> torch.Tensor:
    """The inputs of the output layer on ``images`` (N, width), as float64."""
    with torch.no_grad():
        return model.eval()[: output_layer(model)](images).double()


def gap_operator(inputs: torch.Tensor, first: torch.Tensor, second: torch.Tensor, classes: int):
    """G (N × classes·width): row q maps a weight change to its change of the gap at query q."""
    eye = torch.eye(classes, dtype=inputs.dtype)
    return ((eye[first] - eye[second])[:, :, None] * inputs[:, None, :]).flatten(1)


def make_tilt(
    *,
    inputs: torch.Tensor,
    first: torch.Tensor,
    second: torch.Tensor,
    classes: int,
    positions: int,
    gap: float,
    seed: int,
) -> Tilt:
    """K = ``positions`` keyed directions for queries whose output-layer inputs are ``inputs``."""
    gaps = gap_operator(inputs.double(), first, second, classes)
    _, singular, right = torch.linalg.svd(gaps, full_matrices=False)
    usable = int((singular > singular[0] * 1e-6).sum())
    if positions > usable:
        raise ValueError(
            f"the queries excite only {usable} independent weight directions; "
            f"{positions} code positions need more (or more varied) queries"
        )
    rotation = np.linalg.qr(np.random.default_rng(seed).standard_normal((positions, positions)))[0]
    scale = gap * math.sqrt(len(inputs) / positions)
    basis = right[:positions] / singular[:positions, None]  # G·basisᵀ has orthonormal columns
    directions = torch.from_numpy(rotation) @ basis * scale
    directions = directions.reshape(positions, classes, -1)
    return Tilt(
        directions=directions.float().numpy(),
        design=(gaps @ directions.double().flatten(1).T).numpy(),
    )


def signs(codeword: np.ndarray) -> np.ndarray:
    """s = 2x − 1: the sign each position's direction enters the copy with."""
    return 2.0 * np.asarray(codeword, dtype=np.float64) - 1.0


def weight_change(tilt: Tilt, codeword: np.ndarray) -> torch.Tensor:
    """Δ = Σ_k s_k A_k, the copy's change of the output layer's weight."""
    return torch.from_numpy(np.tensordot(signs(codeword), tilt.directions, axes=1)).float()


def answer_values(labels: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """+1 where the answer is the query's first label, −1 for its second, 0 otherwise (erased)."""
    return np.where(labels == first, 1.0, np.where(labels == second, -1.0, 0.0))


def read_positions(tilt: Tilt, values: np.ndarray) -> np.ndarray:
    """Least-squares estimate ŝ (K,) from the answered queries' values; erased ones are dropped."""
    kept = values != 0
    if not kept.any():
        return np.zeros(tilt.design.shape[1])
    return np.linalg.lstsq(tilt.design[kept], values[kept], rcond=None)[0]
