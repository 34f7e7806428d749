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

Measured in the plain weight norm, those directions move real images' logits about as
much as the queries' (on digits the bare tilt cost 12 pp, which the embedding's hinge
had to win back image by image, and unseen images still flipped). With a
:func:`boundary_metric` M built from data the owner holds, the SVD is taken of
G·M^(−1/2) instead: each direction is then the weight change of least M-norm that puts
its gaps on the queries, i.e. the one that least moves the data's gaps between a true
class and its close rivals, which is where an image can flip. The data's logits still
move away from their boundaries, but less, so a distilled student sees less of the
tilt (on digits the soft-label student's bit error went from 0.44 to 0.46, on MNIST
from 0.40 to 0.50; neither was traced before or after).
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


def boundary_metric(
    inputs: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    ridge: float,
) -> torch.Tensor:
    """M = Σ_i,c w_ic g_ic g_icᵀ / Σ w + ridge·(mean eigenvalue)·I over the weight change.

    g_ic = (e_y − e_c)·h_iᵀ maps a weight change to its change of image i's gap between
    its class y and class c ≠ y; w_ic = exp(−max(gap_ic, 0) / ``temperature``) weighs
    the close rivals, whose gaps an image could lose (a misread image no more than a
    tie). The ridge keeps the tilt's weight finite along directions the data never uses.
    """
    inputs, logits = inputs.double(), logits.double()
    classes = logits.shape[1]
    rows = torch.arange(len(labels))
    weights = torch.exp(-(logits[rows, labels][:, None] - logits).clamp(min=0) / temperature)
    weights[rows, labels] = 0.0
    size = classes * inputs.shape[1]
    metric = torch.zeros(size, size, dtype=torch.float64)
    for rival in range(classes):
        gaps = gap_operator(inputs, labels, torch.full_like(labels, rival), classes)
        gaps = gaps * weights[:, rival, None].sqrt()
        metric += gaps.T @ gaps
    metric /= weights.sum()
    return metric + ridge * metric.trace() / size * torch.eye(size, dtype=torch.float64)


def make_tilt(
    *,
    inputs: torch.Tensor,
    first: torch.Tensor,
    second: torch.Tensor,
    classes: int,
    positions: int,
    gap: float,
    seed: int,
    metric: torch.Tensor | None = None,
) -> Tilt:
    """K = ``positions`` keyed directions for queries whose output-layer inputs are ``inputs``.

    ``metric`` (see :func:`boundary_metric`) is the norm the directions are smallest in;
    by default the plain weight norm.
    """
    gaps = gap_operator(inputs.double(), first, second, classes)
    whiten = torch.eye(gaps.shape[1], dtype=torch.float64)
    if metric is not None:
        values, vectors = torch.linalg.eigh(metric.double())
        whiten = vectors @ torch.diag(values.rsqrt()) @ vectors.T
    _, singular, right = torch.linalg.svd(gaps @ whiten, full_matrices=False)
    usable = int((singular > singular[0] * 1e-6).sum())
    if positions > usable:
        raise ValueError(
            f"the queries excite only {usable} independent weight directions; "
            f"{positions} code positions need more (or more varied) queries"
        )
    rotation = np.linalg.qr(np.random.default_rng(seed).standard_normal((positions, positions)))[0]
    scale = gap * math.sqrt(len(inputs) / positions)
    basis = right[:positions] / singular[:positions, None]  # G·basisᵀ has orthonormal columns
    directions = torch.from_numpy(rotation) @ basis @ whiten * scale
    return Tilt(
        directions=directions.reshape(positions, classes, -1).float().numpy(),
        design=(gaps @ directions.T).numpy(),
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
