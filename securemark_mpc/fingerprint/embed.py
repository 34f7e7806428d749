"""Embedding: fine-tune a copy's carrier so that it spells a codeword.

Only the owner's cached cut-layer features are needed, never raw images. Only the
carrier W (a Linear weight of the plaintext partition) moves, so every copy differs from
the decrypted model in that one tensor and its private partition stays identical. The
loss is CE(Q(h), y) + λ·BCE(σ(s·z), b) with z = X·w/‖w‖ and s = 2/τ, so the mark term
still pulls at the margin (σ(2) ≈ 0.88) and stops pulling well beyond it.

W steps along its gradient times P = ε(C + εI)⁻¹, where C is the second moment of W's
inputs a on the cached features and ε is C's mean eigenvalue: steepest descent in the
metric ‖ΔW·a‖² + ε‖ΔW‖². The mark goes mostly into input directions that the training
data hardly excites (digits: 114 of the 512 inputs of layer 6 are never active, and 50
directions hold 98% of the energy), so the layer's outputs, and test accuracy, barely
move. Measured on digits (359 test images, 24 codewords each on three models): without
P up to 2 images lost per copy; letting the other plaintext layers train too cost 3-6
images on models trained with label smoothing, whose CE optimum differs from where they
stand; as here, at most 1. Full-batch, no randomness: the same codeword gives the same copy.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from securemark_mpc.fingerprint.extract import project
from securemark_mpc.fingerprint.key import FingerprintKey, projection_matrix
from securemark_mpc.models import ModelSpec, public_part


class EmbeddingError(RuntimeError):
    """The codeword could not be embedded with the required margin within max_steps."""


def margins(*, z: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Signed margin of each bit: z where the bit is 1, -z where it is 0."""
    return z * (2 * bits - 1)


def _split_at_carrier(
    public: nn.Sequential, key: FingerprintKey
) -> tuple[nn.Sequential, nn.Linear, nn.Sequential]:
    """The layers in front of the carrier, the carrier's Linear layer, the layers after it."""
    module_name, _, parameter = key.carrier.rpartition(".")
    children = list(public.named_children())
    for position, (name, module) in enumerate(children):
        if (
            name == module_name
            and isinstance(module, nn.Linear)
            and parameter == "weight"
            and tuple(module.weight.shape) == key.carrier_shape
        ):
            front = nn.Sequential(*(m for _, m in children[:position]))
            back = nn.Sequential(*(m for _, m in children[position + 1 :]))
            return front, module, back
    raise ValueError(
        f"the plaintext partition has no Linear weight {key.carrier!r} of shape {key.carrier_shape}"
    )


def input_preconditioner(inputs: torch.Tensor) -> torch.Tensor:
    """P = ε(C + εI)⁻¹ for inputs (N, d), C = aᵀa/N, ε = tr(C)/d; eigenvalues in (0, 1]."""
    second_moment = inputs.T @ inputs / len(inputs)
    ridge = (second_moment.trace() / second_moment.shape[0]).clamp_min(1e-12)
    eye = torch.eye(second_moment.shape[0], dtype=inputs.dtype)
    return ridge * torch.linalg.inv(second_moment + ridge * eye)


def embed(
    *,
    model: nn.Sequential,
    spec: ModelSpec,
    key: FingerprintKey,
    codeword: np.ndarray,
    features: torch.Tensor,
    labels: torch.Tensor,
) -> nn.Sequential:
    """A new model whose carrier extracts to ``codeword`` with margin key.embed.margin.

    ``model`` is left untouched. The hyperparameters come from the key, so that all
    copies of a run are marked alike. Raises EmbeddingError if the margin is not
    reached within key.embed.max_steps steps.
    """
    bits_np = np.asarray(codeword)
    if bits_np.shape != (key.length,) or not np.isin(bits_np, (0, 1)).all():
        raise ValueError(f"codeword must be {key.length} bits of 0/1, got shape {bits_np.shape}")
    if tuple(features.shape[1:]) != spec.cut_shape or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"features must be (N, *{spec.cut_shape}) with N labels, got "
            f"{tuple(features.shape)} and {tuple(labels.shape)}"
        )
    config = key.embed
    marked = copy.deepcopy(model)
    front, layer, back = _split_at_carrier(public_part(marked, spec), key)
    with torch.no_grad():
        inputs = front.eval()(features.float())  # fixed: nothing in front of W moves
    preconditioner = input_preconditioner(inputs)
    carrier = layer.weight
    matrix = projection_matrix(key)
    bits = torch.from_numpy(bits_np.astype(np.float32))
    labels = labels.long()
    optimizer = torch.optim.SGD([carrier], lr=config.learning_rate, momentum=config.momentum)
    back.eval()
    for step in range(config.max_steps + 1):
        z = project(carrier=carrier, matrix=matrix)
        short = int((margins(z=z.detach(), bits=bits) < config.margin).sum())
        if short == 0 or step == config.max_steps:
            break
        task = nn.functional.cross_entropy(back(layer(inputs)), labels)
        mark = nn.functional.binary_cross_entropy_with_logits(z * (2.0 / config.margin), bits)
        optimizer.zero_grad()
        (task + config.mark_weight * mark).backward()
        carrier.grad = carrier.grad @ preconditioner
        optimizer.step()
    marked.zero_grad(set_to_none=True)  # a copy carries no gradients
    if short:
        raise EmbeddingError(
            f"{short} of {key.length} bits still below margin {config.margin} after "
            f"{config.max_steps} steps; raise max_steps or learning_rate, or use fewer bits"
        )
    return marked.eval()
