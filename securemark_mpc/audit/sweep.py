"""The privacy-utility sweep: train short runs across the privacy knobs and attack each.

Each setting trains the plaintext twin (``securemark_mpc.audit.twin``), which is
numerically MPC training with the reveal noise simulated, so that a sweep takes
minutes instead of hours. Split 0 is the noise-only baseline: the raw images are
revealed with Gaussian noise and no private partition protects them. A setting may
add a defence on the private side of the cut (``securemark_mpc.audit.defences``).

Cost is counted, not timed: the twin's epoch time is plaintext time, so the frontier
plots the private nonlinear elements per sample (the dominant MPC cost, defences
included) and, where known, an MPC epoch time measured elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from securemark_mpc.audit.defences import DEFENCES, Defence
from securemark_mpc.audit.plots import FrontierPoint, plot_privacy_utility, plot_reconstructions
from securemark_mpc.audit.report import (
    REFERENCES,
    REPORTS,
    AuditConfig,
    AuditResult,
    attack_reveal,
    describe_partition,
    labels_from_features,
    reconstruction_rows,
    watched_rows,
)
from securemark_mpc.audit.twin import train_twin
from securemark_mpc.config import ConfigError, TrainConfig
from securemark_mpc.data import DatasetSplits, load_splits
from securemark_mpc.run_folder import RunFolder


@dataclass(frozen=True)
class Setting:
    """One point of the sweep: where the cut is, how narrow and coarse, how noisy."""

    name: str
    split: int | None = None  # None: the preset's default; 0: raw images revealed
    private_channels: int | None = None
    private_pool: int | None = None
    noise_sigma: float | None = None  # None: the config's default
    defence: str | None = None  # a name in DEFENCES
    defence_weight: float | None = None  # None: the defence's default
    model: str | None = None  # a preset name; None: the data set's default preset

    @property
    def noise_only(self) -> bool:
        """The baseline: no private partition, only noise on the revealed raw images."""
        return self.split == 0

    def train_config(self, base: TrainConfig) -> TrainConfig:
        if self.noise_only and (self.private_channels or self.private_pool):
            raise ConfigError(f"setting {self.name!r}: split 0 has no private layers to narrow")
        if self.defence is not None and self.defence not in DEFENCES:
            raise ConfigError(f"unknown defence {self.defence!r}; known: {sorted(DEFENCES)}")
        return replace(
            base,
            model=self.model or base.model,
            split=None if self.noise_only else self.split,
            private_channels=self.private_channels,
            private_pool=self.private_pool,
            reveal_noise_sigma=base.reveal_noise_sigma
            if self.noise_sigma is None
            else self.noise_sigma,
        ).validate()

    def build_defence(self, *, seed: int, noise_sigma: float) -> Defence | None:
        """A fresh defence (its simulated attacker, if any, seeded by the run's seed)."""
        if self.defence is None:
            return None
        options: dict[str, Any] = {}
        if self.defence_weight is not None:
            options["weight"] = self.defence_weight
        if self.defence == "attacker-aware":
            options |= {"noise_sigma": noise_sigma, "seed": seed}
        return DEFENCES[self.defence](**options)


# The same layer indices mean the same depth in every preset that keeps the original
# layout: split 1 reveals conv1's output (He et al.'s worst case), 8 keeps everything but
# the narrow cut private, 9 reveals the cut before its per-sample normalisation.
# "default" is the preset's default partition with the default noise, whatever they
# are today. Defences run at the default, alone and with noise.
SETTINGS: tuple[Setting, ...] = (
    Setting("split 1 (conv)", split=1, noise_sigma=0.0),
    Setting("default"),
    Setting("default σ=0", noise_sigma=0.0),
    Setting("default σ=1", noise_sigma=1.0),
    Setting("split 9 (cut, no norm) σ=0.5", split=9, noise_sigma=0.5),
    Setting("split 8 (before the cut)", split=8, noise_sigma=0.0),
    Setting("default nopeek", defence="nopeek", noise_sigma=0.0),
    Setting("default nopeek σ=0.5", defence="nopeek", noise_sigma=0.5),
    Setting("default attacker-aware", defence="attacker-aware", noise_sigma=0.0),
    Setting("default attacker-aware σ=0.5", defence="attacker-aware", noise_sigma=0.5),
    Setting("noise-only σ=0.1", split=0, noise_sigma=0.1),
    Setting("noise-only σ=0.25", split=0, noise_sigma=0.25),
    Setting("noise-only σ=0.5", split=0, noise_sigma=0.5),
    Setting("noise-only σ=1", split=0, noise_sigma=1.0),
)
DEFAULT = "default"  # the setting marked as the default on the frontier (and full MPC's model)


@dataclass(frozen=True)
class SweepConfig:
    """The base training run (data set, schedule, seed), the settings and the audit."""

    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    settings: tuple[Setting, ...] = SETTINGS
    audit: AuditConfig = dataclasses.field(default_factory=AuditConfig)


def run_setting(
    *, setting: Setting, base: TrainConfig, splits: DatasetSplits, audit: AuditConfig
) -> tuple[dict[str, Any], AuditResult]:
    """Train one setting's twin, attack what its owner saw, and describe it."""
    train_config = setting.train_config(base)
    spec = train_config.model_spec(splits)
    cut = 0 if setting.noise_only else spec.split
    cut_shape = spec.layer_shapes()[cut - 1] if cut else spec.input_shape
    size = len(splits.train)
    watch = watched_rows(
        size=size, config=audit, epochs=train_config.epochs, width=math.prod(cut_shape)
    )
    defence = setting.build_defence(
        seed=train_config.seed, noise_sigma=train_config.reveal_noise_sigma
    )
    began = time.perf_counter()
    twin = train_twin(
        config=train_config,
        splits=splits,
        cut=cut,
        spec=spec,
        defence=defence,
        watch=watch,
    )
    train_seconds = time.perf_counter() - began
    result = attack_reveal(
        private=twin.private.eval(),
        features=twin.features,
        train=twin.train,
        aux=splits.aux,
        noise_sigma=train_config.reveal_noise_sigma,
        config=audit,
        history=twin.history,
    )
    partition = describe_partition(twin.spec, cut=twin.cut)
    defence_cost = (
        defence.mpc_cost(
            batch_size=train_config.batch_size,
            cut_width=math.prod(cut_shape),
            image_size=math.prod(spec.input_shape),
        )
        if defence is not None
        else {"private_nonlinear_elements_per_sample": 0, "multiplies_per_sample": 0}
    )
    row = {
        "name": setting.name,
        "noise_only": setting.noise_only,
        "noise_sigma": train_config.reveal_noise_sigma,
        "defence": setting.defence,
        "defence_weight": getattr(defence, "weight", None),
        "defence_mpc_cost": defence_cost,
        "test_accuracy": twin.test_accuracy,
        "train_seconds": train_seconds,
        "twin_epoch_seconds": twin.epoch_seconds,
        **partition,
        "cost_nonlinear_elements": partition["private_nonlinear_elements"]
        + defence_cost["private_nonlinear_elements_per_sample"],
        "model_nonlinear_elements": replace(
            spec, split=len(spec.layers) - 1
        ).private_nonlinear_elements(),
        **result.to_json(),
        "labels_from_features_accuracy": labels_from_features(
            public=twin.public, features=twin.features, labels=twin.train.labels, config=audit
        ),
    }
    return row, result


def frontier(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The marked points of the privacy-utility-cost frontier.

    Full MPC reveals nothing per image during training: its owner ends with the final
    model and, when the loss runs under MPC too, no labels, so the dataset-mean image
    (``label_private_floor``) is its attacker's SSIM; it trains the same model as the
    default partition without noise, so it has the default's accuracy, at the cost of
    every nonlinear element of the model.
    """
    by_name = {row["name"]: row for row in results}
    default = by_name.get(DEFAULT)
    first = results[0]
    marked: dict[str, Any] = {
        "labels_only_floor": first["labels_only_floor"],
        "label_private_floor": first["label_private_floor"],
        "default": DEFAULT if default else None,
        "noise_only": [row["name"] for row in results if row["noise_only"]],
    }
    if default and first["label_private_floor"] is not None:
        marked["full_mpc"] = {
            "attacker_ssim": first["label_private_floor"],
            "test_accuracy": default["test_accuracy"],
            "cost_nonlinear_elements": default["model_nonlinear_elements"],
        }
    return marked


def run_sweep(*, config: SweepConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Train and attack every setting; write privacy.json and both pictures under out/reports."""
    config.audit.validate()
    splits = load_splits(config.train.data)
    rows: list[tuple[str, torch.Tensor]] = []
    results = []
    for setting in tqdm(config.settings, desc="privacy sweep", disable=not progress):
        row, result = run_setting(
            setting=setting, base=config.train, splits=splits, audit=config.audit
        )
        results.append(row)
        # Every setting attacks the same private images: originals and references once.
        references = [name for name in result.reconstructions if name in REFERENCES]
        attacks = [name for name in result.reconstructions if name not in REFERENCES]
        if not rows:
            rows = [
                ("original", result.originals),
                *reconstruction_rows(result, attacks=references),
            ]
        rows += reconstruction_rows(result, prefix=f"{setting.name}: ", attacks=attacks)
    marked = frontier(results)
    report = {
        "dataset": config.train.data.dataset,
        "epochs": config.train.epochs,
        "trained": "plaintext twin with simulated reveal noise",
        "cost": "private nonlinear elements per sample (defences included), not timed",
        "settings": results,
        "frontier": marked,
        "config": dataclasses.asdict(config),
    }
    run = RunFolder(out)
    (out / REPORTS).mkdir(parents=True, exist_ok=True)
    run.write_json(f"{REPORTS}/privacy.json", report)
    plot_reconstructions(path=out / REPORTS / "reconstructions.png", rows=rows)
    plot_privacy_utility(
        path=out / REPORTS / "privacy_utility.png",
        points=frontier_points(results, marked),
        floors={
            "labels-only floor": marked["labels_only_floor"],
            "label-private floor (dataset mean)": marked["label_private_floor"],
        },
        dataset=config.train.data.dataset,
    )
    return report


def frontier_points(results: list[dict[str, Any]], marked: dict[str, Any]) -> list[FrontierPoint]:
    """One point per attacked setting, plus full MPC, each with its role on the plot."""
    points = [
        FrontierPoint(
            label=row["name"],
            ssim=row["attacker_ssim_max"],
            accuracy=row["test_accuracy"],
            cost=row["cost_nonlinear_elements"],
            role="noise-only"
            if row["noise_only"]
            else "default"
            if row["name"] == marked["default"]
            else "setting",
        )
        for row in results
        if row["attacker_ssim_max"] is not None
    ]
    if "full_mpc" in marked:
        full = marked["full_mpc"]
        points.append(
            FrontierPoint(
                label="full MPC (nothing revealed)",
                ssim=full["attacker_ssim"],
                accuracy=full["test_accuracy"],
                cost=full["cost_nonlinear_elements"],
                role="full-mpc",
            )
        )
    return points
