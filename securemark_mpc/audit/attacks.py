"""Reconstruction attacks by the model owner: plug-ins in a registry keyed by name.

The model owner sees, for each private training image, the revealed cut-layer
activations h = P(x) + n (n ~ N(0, sigma^2) when reveal noise is on) and the label.
It knows the decrypted private partition P, the run's config (so sigma too) and holds
auxiliary images from the same distribution. Each attack stores only its
hyperparameters and turns what the owner sees into guessed images in [0, 1].

The owner also sees every earlier epoch's reveal of each image, under weights it never
learns; the multi-epoch attackers turn those views into a less noisy last view first.
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
    # (epochs, N, *cut_shape): every epoch's reveal of these images, oldest first; the
    # last epoch's is `features`. None when only one view was kept.
    views: torch.Tensor | None = None
    # (epochs, M, *cut_shape): the same for other training images (the owner holds all),
    # to fit the multi-epoch denoiser on; needs no ground truth.
    pool_views: torch.Tensor | None = None


class Attack(ABC):
    """One way to reconstruct private images from what the protocol reveals."""

    name: ClassVar[str]
    # True for the reference that sees the raw input (split 0): the audit then passes
    # the private images themselves as the features and the identity as `private`.
    reveals_input: ClassVar[bool] = False
    # True for attacks that use the reveals of earlier epochs (Revealed.views).
    needs_history: ClassVar[bool] = False

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
class DatasetMean(Attack):
    """Reference point: the auxiliary mean image, the same guess for every private image.

    It is the floor of a protocol that keeps the labels secret (and of full MPC, which
    reveals nothing per image): without any per-image view, no guess can depend on
    the image.
    """

    name: ClassVar[str] = "dataset-mean"

    def reconstruct(
        self, *, private: nn.Module, revealed: Revealed, aux: LabeledImages, seed: int
    ) -> torch.Tensor:
        mean = aux.images.mean(dim=0)
        return mean.expand(len(revealed.labels), *mean.shape).clone()


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


def _with_bias(inputs: torch.Tensor) -> torch.Tensor:
    """(M, k, d) inputs with a row of ones appended: (M, k + 1, d)."""
    return torch.cat([inputs, torch.ones_like(inputs[:, :1])], dim=1)


def _ridge_per_value(inputs: torch.Tensor, targets: torch.Tensor, penalty: float) -> torch.Tensor:
    """Per revealed value j, least-squares weights (k + 1,) from inputs[:, :, j] to
    targets[:, j]: (d, k + 1)."""
    design = _with_bias(inputs)
    gram = torch.einsum("mkd,mld->dkl", design, design)
    gram += penalty * len(inputs) * torch.eye(gram.shape[-1], dtype=gram.dtype)
    return torch.linalg.solve(gram, torch.einsum("mkd,md->dk", design, targets))


def _predict(inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return torch.einsum("mkd,dk->md", _with_bias(inputs), weights)


def combine_views(revealed: Revealed, *, penalties: tuple[float, ...], seed: int) -> Revealed:
    """A less noisy last view from all epochs' views, fitted without ground truth.

    Fresh reveal noise every epoch averages out, but the weights move between epochs,
    so a plain average blurs. Instead, over the training images it holds, the owner
    regresses each value of the last epoch's view on the same value in the earlier
    views (ridge, the penalty picked on held-out rows): the prediction estimates the
    noise-free value, since the last view's noise is independent of the earlier ones.
    Its held-out error minus sigma^2 is the prediction's own error variance v, and the
    prediction and the last view are averaged per value with weights 1/v and 1/sigma^2.
    The result carries the combined noise level, which the inner attack then trains
    or tunes against. (A regression across values overfits: 10 x 64 inputs from ~1,000
    images did worse than a plain average of the views.)
    """
    views, pool, sigma = revealed.views, revealed.pool_views, revealed.noise_sigma
    if views is None or pool is None or len(views) < 2 or sigma == 0:
        return revealed

    def split_views(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = stack.flatten(2).double()  # (epochs, M, d)
        return flat[:-1].permute(1, 0, 2), flat[-1]

    pool_inputs, pool_last = split_views(pool)
    inputs, last = split_views(views)
    centre, scale = pool_inputs.mean(0), pool_inputs.std(0).clamp_min(1e-6)
    standardise = lambda rows: (rows - centre) / scale  # noqa: E731
    order = torch.randperm(len(pool_inputs), generator=torch.Generator().manual_seed(seed))
    cut = max(1, len(order) // 5)
    held, fit_rows = order[:cut], order[cut:]
    best: tuple[torch.Tensor, torch.Tensor] | None = None
    for penalty in penalties:
        weights = _ridge_per_value(standardise(pool_inputs[fit_rows]), pool_last[fit_rows], penalty)
        error = (_predict(standardise(pool_inputs[held]), weights) - pool_last[held]).pow(2)
        if best is None or float(error.mean()) < float(best[0].mean()):
            best = (error.mean(0), weights)
    assert best is not None
    held_error, weights = best
    variance = (held_error - sigma**2).clamp_min(1e-3 * sigma**2)
    precision = 1 / variance + 1 / sigma**2
    predicted = _predict(standardise(inputs), weights)
    combined = (predicted / variance + last / sigma**2) / precision
    return Revealed(
        features=combined.float().reshape(revealed.features.shape),
        labels=revealed.labels,
        noise_sigma=float((1 / precision).mean().sqrt()),
    )


@dataclass(frozen=True)
class CombinesViews:
    """Mixin: attack ``combine_views``' estimate of the last view instead of the view."""

    needs_history: ClassVar[bool] = True
    single_view: ClassVar[str]  # the attack it runs on the combined view
    penalties: tuple[float, ...] = (1e-4, 1e-2, 1.0)

    def reconstruct(
        self, *, private: nn.Module, revealed: Revealed, aux: LabeledImages, seed: int
    ) -> torch.Tensor:
        combined = combine_views(revealed, penalties=self.penalties, seed=seed)
        return super().reconstruct(  # type: ignore[misc]
            private=private, revealed=combined, aux=aux, seed=seed
        )


@dataclass(frozen=True)
class MultiEpochInverse(CombinesViews, InverseNetwork):
    """The inverse network on the estimate combined from every epoch's view."""

    name: ClassVar[str] = "multi-epoch-inverse"
    single_view: ClassVar[str] = InverseNetwork.name


@dataclass(frozen=True)
class MultiEpochWhiteBox(CombinesViews, WhiteBox):
    """White-box optimisation against the estimate combined from every epoch's view."""

    name: ClassVar[str] = "multi-epoch-white-box"
    single_view: ClassVar[str] = WhiteBox.name


ATTACKS: dict[str, type[Attack]] = {
    attack.name: attack
    for attack in (
        RawReveal,
        LabelsOnly,
        DatasetMean,
        InverseNetwork,
        WhiteBox,
        MultiEpochInverse,
        MultiEpochWhiteBox,
    )
}
