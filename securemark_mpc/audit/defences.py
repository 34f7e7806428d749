"""Training-time defences against reconstruction, computed on the private side of the cut.

Each defence adds the gradient of a regulariser R(x, h) to the gradient ∂L/∂h that the
model owner sends back, before the backward pass through the private partition. That
is where it would run under MPC: R needs the private images x, which only the shared
side holds, while the owner's loss and head stay as they are. The plaintext twin
(``securemark_mpc.audit.twin``) applies it with ``with_defence``.

- ``nopeek``: distance correlation between the images and h (Vepakomma et al.,
  "NoPeek: information leakage reduction to share activations in distributed deep
  learning", ICDMW 2020).
- ``attacker-aware``: a simulated inverse network learns to rebuild x from h + n while
  the private partition learns to defeat it (in the spirit of ResSFL, Li et al.,
  CVPR 2022; their decoder is convolutional, ours the audit's MLP, and no residual
  bottleneck).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn


def distance_correlation(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation of two batches (rows are samples), in [0, 1]."""

    def centred_distances(batch: torch.Tensor) -> torch.Tensor:
        flat = batch.flatten(1)
        squared = (flat[:, None, :] - flat[None, :, :]).pow(2).sum(-1)
        distances = (squared + 1e-9).sqrt()  # the offset keeps the diagonal's gradient finite
        return (
            distances
            - distances.mean(dim=0, keepdim=True)
            - distances.mean(dim=1, keepdim=True)
            + distances.mean()
        )

    a, b = centred_distances(x), centred_distances(h)
    covariance = (a * b).mean()
    variance = ((a * a).mean() * (b * b).mean()).sqrt()
    return (covariance.clamp_min(0) / variance.clamp_min(1e-12)).sqrt()


class Defence(ABC):
    """A regulariser of the revealed activations h given the private images x."""

    name: ClassVar[str]

    @abstractmethod
    def penalty(self, *, images: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The scalar added to the private partition's loss for this batch (differentiable in h)."""

    @abstractmethod
    def mpc_cost(self, *, batch_size: int, cut_width: int, image_size: int) -> dict[str, int]:
        """What this defence would add under MPC, per training sample: private nonlinear
        elements and multiplications."""


@dataclass
class NoPeek(Defence):
    """weight · dCor(x, h) (Vepakomma et al. 2020 train with weights around 0.1 to 1)."""

    name: ClassVar[str] = "nopeek"
    weight: float = 0.2

    def penalty(self, *, images: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self.weight * distance_correlation(images, hidden)

    def mpc_cost(self, *, batch_size: int, cut_width: int, image_size: int) -> dict[str, int]:
        # Per batch: the pairwise distances of x and of h (two Gram matrices,
        # B²·(pixels + width) products, then B² square roots each), the reciprocal
        # distances of h for the gradient (B² more), and three roots and a division
        # to normalise. Roots and reciprocals are Newton iterations under MPC, each
        # worth tens of products and rounds.
        roots = 3 * batch_size * batch_size + 4
        return {
            "private_nonlinear_elements_per_sample": roots // batch_size,
            "multiplies_per_sample": batch_size * (image_size + cut_width + 4),
        }


@dataclass
class AttackerAware(Defence):
    """-weight · MSE(D(h), x), where the decoder D is trained to minimise that MSE on h + n.

    The decoder takes one Adam step per batch on the detached activations, with the
    run's reveal noise, before its error is turned against the private partition.
    """

    name: ClassVar[str] = "attacker-aware"
    weight: float = 0.1  # 1.0 made the quadratic private partition diverge on digits
    hidden: int = 256
    learning_rate: float = 1e-3
    noise_sigma: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        self._decoder: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._generator = torch.Generator().manual_seed(self.seed)

    def _build(self, *, inputs: int, outputs: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self._decoder = nn.Sequential(
                nn.Linear(inputs, self.hidden),
                nn.ReLU(),
                nn.Linear(self.hidden, outputs),
                nn.Sigmoid(),
            )
        self._optimizer = torch.optim.Adam(self._decoder.parameters(), lr=self.learning_rate)

    def decoder_error(self, *, images: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The simulated attacker's MSE on this batch (differentiable in h)."""
        assert self._decoder is not None
        return nn.functional.mse_loss(self._decoder(hidden.flatten(1)), images.flatten(1))

    def penalty(self, *, images: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        if self._decoder is None:
            self._build(inputs=hidden[0].numel(), outputs=images[0].numel())
        assert self._optimizer is not None
        seen = hidden.detach()
        seen = seen + self.noise_sigma * torch.randn(seen.shape, generator=self._generator)
        loss = self.decoder_error(images=images, hidden=seen)
        self._optimizer.zero_grad()
        loss.backward()
        self._optimizer.step()
        return -self.weight * self.decoder_error(images=images, hidden=hidden)

    def mpc_cost(self, *, batch_size: int, cut_width: int, image_size: int) -> dict[str, int]:
        # The decoder runs forward and backward under MPC on every batch: its hidden
        # ReLUs (and their derivatives) and sigmoid outputs are private nonlinearities.
        return {
            "private_nonlinear_elements_per_sample": 2 * self.hidden + 2 * image_size,
            "multiplies_per_sample": 3 * self.hidden * (cut_width + image_size),
        }


DEFENCES: dict[str, type[Defence]] = {defence.name: defence for defence in (NoPeek, AttackerAware)}


def with_defence(defence: Defence, *, images: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """h itself, whose gradient on the way back into the private partition gains
    ∂(penalty)/∂h: what the private side would add under MPC to the owner's ∂L/∂h."""
    if not hidden.requires_grad:
        return hidden
    with torch.enable_grad():
        probe = hidden.detach().requires_grad_(True)
        (extra,) = torch.autograd.grad(defence.penalty(images=images, hidden=probe), probe)
    hidden.register_hook(lambda gradient: gradient + extra)
    return hidden
