"""Attack what one run revealed and score it: the privacy report of a run folder.

The attacks run on a fixed, seeded subset of the private training images. Their
revealed activations come from the run's features.pt (the owner's cache, noise
included); the originals, needed only to score, come from ``training_order``, which
yields the training images in the order of features.pt.

Keys of the report: ``attacks.<name>.{ssim,psnr,mse}`` for every attacker and
reference row; ``attacker_ssim_max`` (alias ``attacker_ssim``), the strongest real
attacker's SSIM, and ``strongest_attacker``; ``labels_only_floor``, the class-mean
image of the revealed label, which no label-revealing split can go below;
``label_private_floor``, the dataset-mean image, the floor when the labels stay secret
(and of full MPC); ``ssim_above_floor``, the strongest attacker minus the labels-only
floor; ``labels_from_features_accuracy``, how well the final model recovers the labels
from the revealed h (so how much a label-private protocol would lower the floor).
features.pt may hold ``history`` (``rows``, ``views``: every epoch's reveal of some
training images); without it the multi-epoch attackers are skipped, and say so.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from securemark_mpc.audit.attacks import ATTACKS, Revealed
from securemark_mpc.audit.metrics import Scores, score, ssim_window
from securemark_mpc.audit.plots import plot_reconstructions
from securemark_mpc.audit.twin import RevealHistory
from securemark_mpc.config import ConfigError
from securemark_mpc.data import DataError, LabeledImages, load_splits
from securemark_mpc.models import ModelSpec, load_model, private_part, public_part
from securemark_mpc.plaintext import training_order
from securemark_mpc.run_folder import RunFolder

REFERENCES = ("raw", "labels-only", "dataset-mean")  # reference rows, not attacks on h
LABELS_ONLY, LABEL_PRIVATE = "labels-only", "dataset-mean"
REPORTS = "reports"


@dataclass(frozen=True)
class AuditConfig:
    """Which attacks to run, on how many private images, from which seed."""

    images: int = 128  # a fixed subset keeps the white-box attack within seconds
    attacks: tuple[str, ...] = (
        "raw",
        "labels-only",
        "dataset-mean",
        "inverse-network",
        "white-box",
        "multi-epoch-inverse",
        "multi-epoch-white-box",
    )
    seed: int = 0

    def validate(self) -> AuditConfig:
        unknown = sorted(set(self.attacks) - set(ATTACKS))
        if unknown:
            raise ConfigError(f"unknown attacks {unknown}; known: {sorted(ATTACKS)}")
        if self.images < 1:
            raise ConfigError(f"--images must be at least 1, got {self.images}")
        return self


@dataclass
class AuditResult:
    """Each attack's scores and reconstructions of the same private images."""

    originals: torch.Tensor
    scores: dict[str, Scores] = field(default_factory=dict)
    reconstructions: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    views: int = 1  # epochs of reveals the attackers saw

    @property
    def strongest_attacker(self) -> str | None:
        """The real attack (references excluded) with the highest SSIM."""
        real = {name: s.ssim for name, s in self.scores.items() if name not in REFERENCES}
        return max(real, key=real.__getitem__) if real else None

    @property
    def attacker_ssim(self) -> float | None:
        """The strongest real attack's SSIM: the privacy number."""
        strongest = self.strongest_attacker
        return self.scores[strongest].ssim if strongest else None

    def floor(self, name: str) -> float | None:
        return self.scores[name].ssim if name in self.scores else None

    def to_json(self) -> dict[str, Any]:
        height, width = self.originals.shape[-2:]
        strongest, floor = self.strongest_attacker, self.floor(LABELS_ONLY)
        maximum = self.attacker_ssim
        return {
            "attacks": {name: scores.to_json() for name, scores in self.scores.items()},
            "attacker_ssim": maximum,
            "attacker_ssim_max": maximum,
            "attacker_psnr_max": max(
                (s.psnr for n, s in self.scores.items() if n not in REFERENCES), default=None
            ),
            "strongest_attacker": strongest,
            "labels_only_floor": floor,
            "label_private_floor": self.floor(LABEL_PRIVATE),
            "ssim_above_floor": (
                maximum - floor if maximum is not None and floor is not None else None
            ),
            "views": self.views,
            "skipped_attacks": dict(self.skipped),
            "attack_seconds": dict(self.seconds),
            "images": len(self.originals),
            "ssim_window": ssim_window(height=int(height), width=int(width)),
        }


def evaluation_subset(*, size: int, count: int, seed: int) -> torch.Tensor:
    """The indices of the private images attacked: fixed by the seed, sorted."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(size, generator=generator)[:count].sort().values


def attack_reveal(
    *,
    private: nn.Module,
    features: torch.Tensor,
    train: LabeledImages,
    aux: LabeledImages,
    noise_sigma: float,
    config: AuditConfig,
    progress: bool = False,
    history: RevealHistory | None = None,
) -> AuditResult:
    """Run every configured attack on what the owner saw of `train` (features in order).

    `history` holds earlier epochs' reveals; it must cover the attacked images
    (``watched_rows``). Without it, the attacks that need it are skipped.
    """
    if len(features) != len(train):
        raise DataError(f"{len(features)} revealed feature rows for {len(train)} training images")
    chosen = evaluation_subset(size=len(train), count=config.images, seed=config.seed)
    originals, labels = train.images[chosen], train.labels[chosen]
    views = pool = None
    if history is not None and len(history.views) > 1:
        position = {int(row): index for index, row in enumerate(history.rows)}
        if not all(int(row) in position for row in chosen):
            raise ValueError("the reveal history does not cover the attacked images")
        pool = history.views
        views = pool[:, [position[int(row)] for row in chosen]]
    seen = Revealed(
        features=features[chosen],
        labels=labels,
        noise_sigma=noise_sigma,
        views=views,
        pool_views=pool,
    )
    raw = Revealed(features=originals, labels=labels, noise_sigma=0.0)
    result = AuditResult(originals=originals, views=1 if views is None else len(views))
    for name in tqdm(config.attacks, desc="attacks", leave=False, disable=not progress):
        attack = ATTACKS[name]()
        if attack.needs_history and views is None:
            result.skipped[name] = "only the last epoch's reveal is available"
            continue
        same = getattr(attack, "single_view", None)
        if noise_sigma == 0 and same in result.scores:
            # Without noise there is nothing to combine: the same attack on the same view.
            result.scores[name] = result.scores[same]
            result.reconstructions[name] = result.reconstructions[same]
            result.seconds[name] = 0.0
            continue
        began = time.perf_counter()
        guess = attack.reconstruct(
            private=nn.Identity() if attack.reveals_input else private,
            revealed=raw if attack.reveals_input else seen,
            aux=aux,
            seed=config.seed,
        )
        result.seconds[name] = time.perf_counter() - began
        result.scores[name] = score(original=originals, reconstructed=guess)
        result.reconstructions[name] = guess
    return result


def labels_from_features(
    *, public: nn.Module, features: torch.Tensor, labels: torch.Tensor, config: AuditConfig
) -> float:
    """How often the final model's public head, run on the attacked images' revealed h,
    gives their true label. Against an owner who holds the final model, keeping the
    labels secret lowers the floor only as far as this accuracy falls short of 1."""
    chosen = evaluation_subset(size=len(features), count=config.images, seed=config.seed)
    with torch.no_grad():
        predicted = public.eval()(features[chosen]).argmax(dim=1)
    return float((predicted == labels[chosen]).float().mean())


def watched_rows(*, size: int, config: AuditConfig, epochs: int, width: int) -> torch.Tensor:
    """The training rows whose reveal the twin keeps in every epoch: the attacked images
    plus a seeded sample for the multi-epoch denoiser to fit on, at most about 200 MB."""
    budget = max(config.images, min(size, 2000, 50_000_000 // max(1, epochs * width)))
    chosen = evaluation_subset(size=size, count=config.images, seed=config.seed)
    others = torch.randperm(size, generator=torch.Generator().manual_seed(config.seed + 1))
    others = others[~torch.isin(others, chosen)][: budget - len(chosen)]
    return torch.cat([chosen, others]).sort().values


def describe_partition(spec: ModelSpec, *, cut: int) -> dict[str, Any]:
    """What the private partition (the first `cut` layers) is made of, and its MPC cost."""
    private = spec.layers[:cut]
    first = lambda kind, option: next(  # noqa: E731
        (layer[option] for layer in private if layer["kind"] == kind), None
    )
    partition = replace(spec, split=cut) if cut > 0 else None
    return {
        "split": cut,
        "private_channels": first("conv", "out"),
        "private_pool": first("avgpool", "size"),
        "cut_shape": list(partition.cut_shape if partition else spec.input_shape),
        "private_nonlinear_elements": partition.private_nonlinear_elements() if partition else 0,
    }


def reconstruction_rows(
    result: AuditResult, *, prefix: str = "", attacks: Sequence[str] | None = None
) -> list[tuple[str, torch.Tensor]]:
    """Rows for the picture grid: `prefix` + attack name, then that attack's guesses."""
    names = attacks if attacks is not None else list(result.reconstructions)
    return [(f"{prefix}{name}", result.reconstructions[name]) for name in names]


def audit_run(*, run: RunFolder, config: AuditConfig, progress: bool = True) -> dict[str, Any]:
    """Attack a run's revealed features; write reports/privacy.json and reconstructions.png."""
    config.validate()
    train_config = run.load_config()
    metrics = run.read_json("metrics.json")
    splits = load_splits(train_config.data)
    model, spec = load_model(run.model_path)
    if not run.features_path.is_file():
        raise ConfigError(f"{run.features_path} not found: the run has not finished training")
    cached = torch.load(run.features_path, map_location="cpu", weights_only=True)
    train = training_order(train_config, splits)
    if not torch.equal(cached["labels"], train.labels):
        raise DataError(f"{run.features_path} does not match the run's training images")
    # The attacker is the model owner: without an auxiliary split (--aux-fraction 0) it
    # trains its attacks on its own test images, which it holds anyway.
    aux, aux_source = (splits.aux, "aux split") if len(splits.aux) else (splits.test, "test split")
    result = attack_reveal(
        private=private_part(model, spec).eval(),
        features=cached["features"],
        train=train,
        aux=aux,
        noise_sigma=train_config.reveal_noise_sigma,
        config=config,
        progress=progress,
        history=RevealHistory(**cached["history"]) if "history" in cached else None,
    )
    report = {
        "run": str(run.root),
        "dataset": train_config.data.dataset,
        "noise_sigma": train_config.reveal_noise_sigma,
        "test_accuracy": metrics.get("test_accuracy"),
        "attacker_images": {"source": aux_source, "count": len(aux)},
        **describe_partition(spec, cut=spec.split),
        **result.to_json(),
        "labels_from_features_accuracy": labels_from_features(
            public=public_part(model, spec),
            features=cached["features"],
            labels=train.labels,
            config=config,
        ),
    }
    (run.root / REPORTS).mkdir(parents=True, exist_ok=True)
    run.write_json(f"{REPORTS}/privacy.json", report)
    plot_reconstructions(
        path=run.root / REPORTS / "reconstructions.png",
        rows=[("original", result.originals), *reconstruction_rows(result)],
    )
    return report
