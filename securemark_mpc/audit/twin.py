"""The plaintext twin of MPC training, with the reveal noise simulated.

``securemark_mpc.plaintext`` trains the same split model as MPC with the same
batches, initialisation and optimiser (tested equal to MPC within 1e-3), but it has
no reveal noise. Under MPC the data owners add N(0, sigma^2) to h before each reveal:
the model owner trains the public partition on h + n, the gradient dL/dh flows back
through the noise unchanged, and the cached training features are h + n too. The
test images are the owner's own, so their activations carry no noise. This twin adds
exactly that, so that a privacy sweep does not need hours of MPC training.

It also allows cut 0: the raw images themselves are revealed, with noise (the
noise-only baseline, which needs no private partition at all).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from securemark_mpc.config import TrainConfig
from securemark_mpc.data import DatasetSplits, LabeledImages
from securemark_mpc.models import ModelSpec, build_model
from securemark_mpc.plaintext import accuracy, fit, training_order


class RevealNoise(nn.Module):
    """Adds N(0, sigma^2) from its own generator while training; the identity in eval."""

    def __init__(self, *, sigma: float, generator: torch.Generator) -> None:
        super().__init__()
        self.sigma = sigma
        self.generator = generator

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.training or self.sigma == 0:
            return hidden
        return hidden + self.sigma * torch.randn(hidden.shape, generator=self.generator)


@dataclass
class TwinRun:
    """A trained twin and what its model owner would see of the training images."""

    private: nn.Sequential  # the first `cut` layers (empty for cut 0: the identity)
    public: nn.Sequential
    spec: ModelSpec
    cut: int
    test_accuracy: float
    train: LabeledImages  # the private training images, in the order of `features`
    features: torch.Tensor  # revealed cut-layer activations of `train`, noise included


def train_twin(
    *, config: TrainConfig, splits: DatasetSplits, cut: int | None = None, noise_seed: int = 1
) -> TwinRun:
    """Train like ``train_plaintext`` with reveal noise config.reveal_noise_sigma at `cut`.

    `cut` defaults to the spec's split; 0 reveals the raw images. With sigma 0 and the
    default cut the weights equal ``train_plaintext``'s. `noise_seed` stands in for the
    data owners' secret randomness, which the model owner never learns.
    """
    spec = config.model_spec(splits)
    cut = spec.split if cut is None else cut
    if not 0 <= cut < len(spec.layers):
        raise ValueError(f"cut must be in [0, {len(spec.layers)}), got {cut}")
    layers = build_model(spec, seed=config.seed)
    private, public = layers[:cut], layers[cut:]
    sigma = config.reveal_noise_sigma
    generator = torch.Generator().manual_seed(noise_seed)
    model = nn.Sequential(private, RevealNoise(sigma=sigma, generator=generator), public)
    train = training_order(config, splits)
    fit(model, train, config)
    with torch.no_grad():
        clean = private(train.images)
    features = clean + sigma * torch.randn(clean.shape, generator=generator)
    return TwinRun(
        private=private,
        public=public,
        spec=spec,
        cut=cut,
        test_accuracy=accuracy(model, splits.test),
        train=train,
        features=features,
    )
