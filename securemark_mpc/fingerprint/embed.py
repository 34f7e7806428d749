"""Embedding: fine-tune a copy's plaintext head so that its carrier spells a codeword.

Only the owner's cached cut-layer features are needed, never raw images, and the
private partition of every copy stays identical. The carrier W (a Linear weight of the
plaintext partition) is read one hidden unit (row) at a time (:mod:`.extract`).

Where the mark goes decides who can remove it. A thief who has read this code keeps a
layer's response on its own data and rewrites whatever that data never excites
(``attacks.adaptive``). The old embedding steered the mark into exactly those dormant
input directions, so that attack removed it for free. Here W moves only within the
fewest input directions that hold ``excited_energy`` (99%) of its inputs' energy on
the owner's features: where the data's own signal lives, so that the attacker's
surgery keeps the mark, and removing it means rewriting what the model uses. The
loss is KL(unmarked answers ‖ copy's answers) + λ·BCE(σ(s·z), b), s = 2/τ; the rest of
the head (W's bias and every later layer) follows the KL term only, which keeps the
copy answering like the unmarked model (not re-optimising a cross-entropy that
label-smoothed training never minimised). Full-batch, no randomness: the same
codeword gives the same copy.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from securemark_mpc.fingerprint.extract import project
from securemark_mpc.fingerprint.key import FingerprintKey, projection_matrix
from securemark_mpc.models import ModelSpec, public_part
from securemark_mpc.subspace import excited_subspace

WEIGHTS_PER_BIT = 8  # binds for long codes only: 1,024 bits on 256 units take all 32 cut directions


class EmbeddingError(RuntimeError):
    """The codeword could not be embedded with the required margin within max_steps."""


def margins(*, z: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Signed margin of each bit: z where the bit is 1, -z where it is 0."""
    return z * (2 * bits - 1)


def split_at_carrier(
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


def mark_subspace(
    *, model: nn.Sequential, spec: ModelSpec, key: FingerprintKey, features: torch.Tensor
) -> torch.Tensor:
    """Projector onto the carrier's input directions the mark may move (its rows stay in it).

    The fewest directions holding key.embed.excited_energy of the carrier's inputs'
    energy on the owner's cut-layer ``features``, and at least WEIGHTS_PER_BIT free
    weights per bit. Verification uses it too (:mod:`.guide`): outside it, a copy's
    carrier rows are the unmarked model's.
    """
    front, layer, _ = split_at_carrier(public_part(model, spec), key)
    with torch.no_grad():
        inputs = front.eval()(features.float())
    room = math.ceil(WEIGHTS_PER_BIT * key.length / layer.weight.shape[0])
    return excited_subspace(inputs, key.embed.excited_energy, min_directions=room)


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
    front, layer, back = split_at_carrier(public_part(marked, spec), key)
    with torch.no_grad():
        inputs = front.eval()(features.float())  # fixed: nothing in front of W moves
    excited = mark_subspace(model=marked, spec=spec, key=key, features=features)
    carrier = layer.weight
    matrix = projection_matrix(key)
    bits = torch.from_numpy(bits_np.astype(np.float32))
    with torch.no_grad():
        target = torch.softmax(back(layer(inputs)), dim=1)  # the unmarked model's answers
    others = [layer.bias, *back.parameters()]
    optimizer = torch.optim.SGD(
        [carrier, *others], lr=config.learning_rate, momentum=config.momentum
    )
    back.eval()
    for step in range(config.max_steps + 1):
        z = project(carrier=carrier, matrix=matrix)
        short = int((margins(z=z.detach(), bits=bits) < config.margin).sum())
        if short == 0 or step == config.max_steps:
            break
        logits = back(layer(inputs))
        task = nn.functional.kl_div(torch.log_softmax(logits, dim=1), target, reduction="batchmean")
        mark = nn.functional.binary_cross_entropy_with_logits(z * (2.0 / config.margin), bits)
        optimizer.zero_grad()
        (task + config.mark_weight * mark).backward()
        carrier.grad = carrier.grad @ excited
        optimizer.step()
    marked.zero_grad(set_to_none=True)  # a copy carries no gradients
    if short:
        raise EmbeddingError(
            f"{short} of {key.length} bits still below margin {config.margin} after "
            f"{config.max_steps} steps; raise max_steps or learning_rate, or use fewer bits"
        )
    return marked.eval()
