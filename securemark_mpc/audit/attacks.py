"""Reconstruction attacks by the model owner: plug-ins in a registry keyed by name.

The model owner sees, for each private training image, the revealed cut-layer
activations h = P(x) + n (n ~ N(0, sigma^2) when reveal noise is on) and the label.
It knows the decrypted private partition P, the run's config (so sigma too) and holds
auxiliary images from the same distribution. Each attack stores only its
hyperparameters and turns what the owner sees into guessed images in [0, 1].
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from securemark_mpc.audit.metrics import ssim_per_image
from securemark_mpc.data import LabeledImages


@dataclass(frozen=True)
class Revealed:
    """What the protocol shows the model owner about a batch of private images."""

    features: torch.Tensor  # (N, *cut_shape): P(x) plus the reveal noise
    labels: torch.Tensor  # (N,): revealed by design, for the owner's loss
    noise_sigma: float  # from the run's config, which every party holds


class Attack(ABC):
    """One way to reconstruct private images from what the protocol reveals."""

    name: ClassVar[str]
    # True for the reference that sees the raw input (split 0): the audit then passes
    # the private images themselves as the features and the identity as `private`.
    reveals_input: ClassVar[bool] = False

    @abstractmethod
    def reconstruct(
        self, *, private: nn.Module, revealed: Revealed, aux: LabeledImages, seed: int
    ) -> torch.Tensor:
        """Guess the images (N, C, H, W), in [0, 1], behind `revealed`."""


def class_means(aux: LabeledImages, *, labels: torch.Tensor) -> torch.Tensor:
    """The auxiliary mean image of each label (the overall mean for labels aux lacks)."""
    overall = aux.images.mean(dim=0)
    means = {
        int(label): aux.images[aux.labels == label].mean(dim=0) for label in aux.labels.unique()
    }
    return torch.stack([means.get(int(label), overall) for label in labels])


@dataclass(frozen=True)
class RawReveal(Attack):
    """Reference point: a protocol that reveals the input itself leaks it totally."""

    name: ClassVar[str] = "raw"
    reveals_input: ClassVar[bool] = True

    def reconstruct(
        self, *, private: nn.Module, revealed: Revealed, aux: LabeledImages, seed: int
    ) -> torch.Tensor:
        features = revealed.features
        return features.reshape(len(features), *aux.images.shape[1:]).clamp(0, 1)


@dataclass(frozen=True)
class LabelsOnly(Attack):
    """Reference point: the auxiliary class mean of each revealed label.

    Labels reach the model owner by design, and an accurate public partition recovers
    them from h anyway, so no split setting can push a label-aware attacker below
    this floor; the other attacks' distance above it is what the activations add.
    """

    name: ClassVar[str] = "labels-only"

    def reconstruct(
        self, *, private: nn.Module, revealed: Revealed, aux: LabeledImages, seed: int
    ) -> torch.Tensor:
        return class_means(aux, labels=revealed.labels)


@dataclass(frozen=True)
class InverseNetwork(Attack):
    """Black-box inverse network (He et al., "Model inversion attacks against
    collaborative inference", ACSAC 2019).

    A decoder learns (h, label) -> x from auxiliary pairs (x, P(x) + n) with an MSE
    loss, then decodes what was revealed. He et al. build the decoder from transposed
    convolutions; a three-layer MLP is used here because it trains in seconds on 8x8
    and 28x28 images. The label input lets it reach at least the labels-only floor;
    fresh reveal noise every epoch teaches it to denoise. The hyperparameters are ours,
    chosen for speed, not the paper's.
    """

    name: ClassVar[str] = "inverse-network"
    hidden: int = 512
    epochs: int = 200
    batch_size: int = 64
    learning_rate: float = 1e-3  # Adam's usual default
    weight_decay: float = 1e-5

    def reconstruct(
        self, *, private: nn.Module, revealed: Revealed, aux: LabeledImages, seed: int
    ) -> torch.Tensor:
        image_shape = tuple(aux.images.shape[1:])
        classes = int(torch.cat([aux.labels, revealed.labels]).max()) + 1
        aux_labels = nn.functional.one_hot(aux.labels, classes).float()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            decoder = nn.Sequential(
                nn.Linear(revealed.features[0].numel() + classes, self.hidden),
                nn.ReLU(),
                nn.Linear(self.hidden, self.hidden),
                nn.ReLU(),
                nn.Linear(self.hidden, aux.images[0].numel()),
                nn.Sigmoid(),
            )
        optimizer = torch.optim.Adam(
            decoder.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        generator = torch.Generator().manual_seed(seed)
        targets = aux.images.flatten(1)
        with torch.no_grad():
            clean = private(aux.images).flatten(1)
        for _ in range(self.epochs):
            noisy = clean + revealed.noise_sigma * torch.randn(clean.shape, generator=generator)
            inputs = torch.cat([noisy, aux_labels], dim=1)
            for indices in torch.randperm(len(targets), generator=generator).split(self.batch_size):
                loss = nn.functional.mse_loss(decoder(inputs[indices]), targets[indices])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        labels = nn.functional.one_hot(revealed.labels, classes).float()
        inputs = torch.cat([revealed.features.flatten(1), labels], dim=1)
        with torch.no_grad():
            return decoder(inputs).reshape(len(inputs), *image_shape)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per image: the sum of absolute neighbour differences."""
    down = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().flatten(1).sum(1)
    right = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().flatten(1).sum(1)
    return down + right


@dataclass(frozen=True)
class WhiteBox(Attack):
    """White-box regularised maximum likelihood estimation (rMLE; He et al., ACSAC 2019).

    Minimise ||P(x) - h||^2 + lambda * TV(x) over x = sigmoid(z) in [0, 1] with Adam,
    starting from the auxiliary mean image of the revealed label. Rather than fix
    lambda, this attacker picks it from `tv_weights` by attacking its own auxiliary
    images (whose truth it knows) under the run's reveal noise, and keeps the lambda
    with the best SSIM there. Steps and learning rate are ours, chosen for speed.
    """

    name: ClassVar[str] = "white-box"
    steps: int = 300
    learning_rate: float = 0.1  # Adam on the sigmoid logits
    tv_weights: tuple[float, ...] = (0.0, 0.01, 0.1, 1.0, 10.0)
    tuning_images: int = 64

    def reconstruct(
        self, *, private: nn.Module, revealed: Revealed, aux: LabeledImages, seed: int
    ) -> torch.Tensor:
        frozen = copy.deepcopy(private).requires_grad_(False)
        generator = torch.Generator().manual_seed(seed)
        tuning = aux.subset(torch.randperm(len(aux), generator=generator)[: self.tuning_images])
        with torch.no_grad():
            features = frozen(tuning.images)
        tuning_view = Revealed(
            features=features
            + revealed.noise_sigma * torch.randn(features.shape, generator=generator),
            labels=tuning.labels,
            noise_sigma=revealed.noise_sigma,
        )
        best_weight, best_ssim = self.tv_weights[0], -1.0
        for weight in self.tv_weights:
            guess = self.invert(private=frozen, revealed=tuning_view, aux=aux, tv_weight=weight)
            quality = float(ssim_per_image(original=tuning.images, reconstructed=guess).mean())
            if quality > best_ssim:
                best_weight, best_ssim = weight, quality
        return self.invert(private=frozen, revealed=revealed, aux=aux, tv_weight=best_weight)

    def invert(
        self, *, private: nn.Module, revealed: Revealed, aux: LabeledImages, tv_weight: float
    ) -> torch.Tensor:
        """Adam on the logits of x for a fixed TV weight; `private` must not need gradients."""
        start = class_means(aux, labels=revealed.labels)
        logits = torch.logit(start.clamp(0.02, 0.98)).requires_grad_(True)
        optimizer = torch.optim.Adam([logits], lr=self.learning_rate)
        for _ in range(self.steps):
            images = torch.sigmoid(logits)
            misfit = (private(images) - revealed.features).flatten(1).pow(2).sum(1)
            loss = (misfit + tv_weight * total_variation(images)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return torch.sigmoid(logits).detach()


ATTACKS: dict[str, type[Attack]] = {
    attack.name: attack for attack in (RawReveal, LabelsOnly, InverseNetwork, WhiteBox)
}
