"""The plaintext twin of MPC training, with the reveal noise simulated.

``securemark_mpc.plaintext`` trains the same split model as MPC with the same
batches, initialisation and optimiser (tested equal to MPC within 1e-3), but it has
no reveal noise. Under MPC the data owners add N(0, sigma^2) to h before each reveal:
the model owner trains the public partition on h + n and the gradient dL/dh flows back
through the noise unchanged. This twin adds exactly that, so that a privacy sweep does
not need hours of MPC training.

It also records what the owner sees: the revealed h + n of every training image in
the last epoch (what the owner caches for fingerprinting; no extra reveal under the
final weights), and of the `watch` images in every epoch (for the multi-epoch
attacker). The test images are the owner's own, so they carry no noise.

Options beyond MPC training as it is: cut 0 reveals the raw images with noise (the
noise-only baseline, no private partition at all), and a ``Defence`` adds its
gradient on the private side of the cut (``securemark_mpc.audit.defences``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from securemark_mpc.audit.defences import Defence, with_defence
from securemark_mpc.config import TrainConfig
from securemark_mpc.data import DatasetSplits, LabeledImages
from securemark_mpc.models import ModelSpec, build_model
from securemark_mpc.mpc.protocol import batch_order
from securemark_mpc.plaintext import accuracy, fit, training_order


@dataclass(frozen=True)
class RevealHistory:
    """What every epoch revealed of some training images (rows of the training order)."""

    rows: torch.Tensor  # (M,) indices into the training order
    views: torch.Tensor  # (epochs, M, *cut_shape): h + n under that epoch's weights


class RevealRecorder:
    """Sorts each revealed training batch back into training order, epoch by epoch.

    The batch order is public (``batch_order`` from the shared seed), so the owner
    knows which image each revealed row belongs to, as this recorder does.
    """

    def __init__(self, *, config: TrainConfig, size: int, watch: torch.Tensor) -> None:
        self.config, self.size, self.watch = config, size, watch
        self.epoch, self.cursor = 0, 0
        self.order = batch_order(seed=config.seed, epoch=0, size=size)
        self.last: torch.Tensor | None = None
        self.views: list[torch.Tensor] = []
        self.position = torch.full((size,), -1, dtype=torch.long)
        self.position[watch] = torch.arange(len(watch))

    def record(self, revealed: torch.Tensor) -> None:
        rows = self.order[self.cursor : self.cursor + len(revealed)]
        if self.cursor == 0:
            self.views.append(torch.zeros(len(self.watch), *revealed.shape[1:]))
            if self.epoch == self.config.epochs - 1:
                self.last = torch.zeros(self.size, *revealed.shape[1:])
        if self.last is not None:
            self.last[rows] = revealed
        kept = self.position[rows] >= 0
        self.views[-1][self.position[rows[kept]]] = revealed[kept]
        self.cursor += len(revealed)
        if self.cursor == self.size:
            self.epoch, self.cursor = self.epoch + 1, 0
            self.order = batch_order(seed=self.config.seed, epoch=self.epoch, size=self.size)


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


class SplitTwin(nn.Module):
    """private → (defence gradient) → reveal noise → (owner records) → public."""

    def __init__(
        self,
        *,
        private: nn.Sequential,
        noise: RevealNoise,
        public: nn.Sequential,
        defence: Defence | None,
        recorder: RevealRecorder,
    ) -> None:
        super().__init__()
        self.private, self.noise, self.public = private, noise, public
        self.defence, self.recorder = defence, recorder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hidden = self.private(images)
        if self.training:
            if self.defence is not None:
                hidden = with_defence(self.defence, images=images, hidden=hidden)
            hidden = self.noise(hidden)
            self.recorder.record(hidden.detach())
        return self.public(hidden)


@dataclass
class TwinRun:
    """A trained twin and what its model owner would see of the training images."""

    private: nn.Sequential  # the first `cut` layers (empty for cut 0: the identity)
    public: nn.Sequential
    spec: ModelSpec
    cut: int
    test_accuracy: float
    train: LabeledImages  # the private training images, in the order of `features`
    features: torch.Tensor  # revealed cut-layer activations of `train` in the last epoch
    history: RevealHistory  # every epoch's reveal of the watched images
    epoch_seconds: list[float]


def train_twin(
    *,
    config: TrainConfig,
    splits: DatasetSplits,
    cut: int | None = None,
    noise_seed: int = 1,
    defence: Defence | None = None,
    watch: torch.Tensor | None = None,
    spec: ModelSpec | None = None,
) -> TwinRun:
    """Train like ``train_plaintext`` with reveal noise config.reveal_noise_sigma at `cut`.

    `cut` defaults to the spec's split; 0 reveals the raw images. `spec` defaults to
    the config's. With sigma 0, no defence and the default cut, the weights equal
    ``train_plaintext``'s. `noise_seed` stands in for the data owners' secret
    randomness, which the model owner never learns. `watch` picks the training rows
    whose reveal is kept in every epoch (default: none).
    """
    spec = spec or config.model_spec(splits)
    cut = spec.split if cut is None else cut
    if not 0 <= cut < len(spec.layers):
        raise ValueError(f"cut must be in [0, {len(spec.layers)}), got {cut}")
    layers = build_model(spec, seed=config.seed)
    private, public = layers[:cut], layers[cut:]
    sigma = config.reveal_noise_sigma
    generator = torch.Generator().manual_seed(noise_seed)
    train = training_order(config, splits)
    watch = torch.zeros(0, dtype=torch.long) if watch is None else watch
    recorder = RevealRecorder(config=config, size=len(train), watch=watch)
    model = SplitTwin(
        private=private,
        noise=RevealNoise(sigma=sigma, generator=generator),
        public=public,
        defence=defence,
        recorder=recorder,
    )
    epoch_seconds = fit(model, train, config)
    features = recorder.last
    if features is None:  # no training epoch: nothing was revealed during training
        with torch.no_grad():
            clean = private(train.images)
        features = clean + sigma * torch.randn(clean.shape, generator=generator)
    views = torch.stack(recorder.views) if recorder.views else features[watch][None]
    return TwinRun(
        private=private,
        public=public,
        spec=spec,
        cut=cut,
        test_accuracy=accuracy(model, splits.test),
        train=train,
        features=features,
        history=RevealHistory(rows=watch, views=views),
        epoch_seconds=epoch_seconds,
    )
