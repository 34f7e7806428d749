"""The privacy-utility sweep: train short runs across the privacy knobs and attack each.

Each setting trains the plaintext twin (``securemark_mpc.audit.twin``), which is
numerically MPC training with the reveal noise simulated, so that a sweep takes
minutes instead of hours. Split 0 is the noise-only baseline: the raw images are
revealed with Gaussian noise and no private partition protects them.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from securemark_mpc.audit.plots import plot_privacy_utility, plot_reconstructions
from securemark_mpc.audit.report import (
    REFERENCES,
    REPORTS,
    AuditConfig,
    attack_reveal,
    describe_partition,
    reconstruction_rows,
)
from securemark_mpc.audit.twin import train_twin
from securemark_mpc.config import ConfigError, TrainConfig
from securemark_mpc.data import load_splits
from securemark_mpc.run_folder import RunFolder


@dataclass(frozen=True)
class Setting:
    """One point of the sweep: where the cut is, how narrow and coarse, how noisy."""

    name: str
    split: int | None = None  # None: the preset's default; 0: raw images revealed
    private_channels: int | None = None
    private_pool: int | None = None
    noise_sigma: float = 0.0

    @property
    def noise_only(self) -> bool:
        """The baseline: no private partition, only noise on the revealed raw images."""
        return self.split == 0

    def train_config(self, base: TrainConfig) -> TrainConfig:
        if self.noise_only and (self.private_channels or self.private_pool):
            raise ConfigError(f"setting {self.name!r}: split 0 has no private layers to narrow")
        return replace(
            base,
            split=None if self.noise_only else self.split,
            private_channels=self.private_channels,
            private_pool=self.private_pool,
            reveal_noise_sigma=self.noise_sigma,
        ).validate()


# The same layer indices mean the same depth in every preset: split 1 reveals conv1's
# output (He et al.'s worst case), 3 is the presets' default (conv, pool, ReLU), 5 adds
# the second conv and ReLU, 8 keeps everything but the last linear layer private.
SETTINGS: tuple[Setting, ...] = (
    Setting("split 1 (conv)", split=1),
    Setting("default"),
    Setting("default σ=0.5", noise_sigma=0.5),
    Setting("4 channels", private_channels=4),
    Setting("split 5 (ReLU 2)", split=5),
    Setting("split 8 (ReLU 3)", split=8),
    Setting("split 8 σ=0.2", split=8, noise_sigma=0.2),
    Setting("split 8 σ=0.5", split=8, noise_sigma=0.5),
    Setting("noise-only σ=0.1", split=0, noise_sigma=0.1),
    Setting("noise-only σ=0.25", split=0, noise_sigma=0.25),
    Setting("noise-only σ=0.5", split=0, noise_sigma=0.5),
    Setting("noise-only σ=1", split=0, noise_sigma=1.0),
)


@dataclass(frozen=True)
class SweepConfig:
    """The base training run (data set, schedule, seed), the settings and the audit."""

    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    settings: tuple[Setting, ...] = SETTINGS
    audit: AuditConfig = dataclasses.field(default_factory=AuditConfig)


def run_sweep(*, config: SweepConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Train and attack every setting; write privacy.json and both pictures under out/reports."""
    config.audit.validate()
    splits = load_splits(config.train.data)
    rows, results = [], []
    for setting in tqdm(config.settings, desc="privacy sweep", disable=not progress):
        train_config = setting.train_config(config.train)
        began = time.perf_counter()
        twin = train_twin(config=train_config, splits=splits, cut=0 if setting.noise_only else None)
        train_seconds = time.perf_counter() - began
        result = attack_reveal(
            private=twin.private.eval(),
            features=twin.features,
            train=twin.train,
            aux=splits.aux,
            noise_sigma=setting.noise_sigma,
            config=config.audit,
            progress=progress,
        )
        results.append(
            {
                "name": setting.name,
                "noise_only": setting.noise_only,
                "noise_sigma": setting.noise_sigma,
                "test_accuracy": twin.test_accuracy,
                "train_seconds": train_seconds,
                **describe_partition(twin.spec, cut=twin.cut),
                **result.to_json(),
            }
        )
        # Every setting attacks the same private images: originals and references once.
        references = [name for name in result.reconstructions if name in REFERENCES]
        attacks = [name for name in result.reconstructions if name not in REFERENCES]
        if not rows:
            rows = [
                ("original", result.originals),
                *reconstruction_rows(result, attacks=references),
            ]
        rows += reconstruction_rows(result, prefix=f"{setting.name}: ", attacks=attacks)
    report = {
        "dataset": config.train.data.dataset,
        "epochs": config.train.epochs,
        "trained": "plaintext twin with simulated reveal noise",
        "settings": results,
        "config": dataclasses.asdict(config),
    }
    run = RunFolder(out)
    (out / REPORTS).mkdir(parents=True, exist_ok=True)
    run.write_json(f"{REPORTS}/privacy.json", report)
    plot_reconstructions(path=out / REPORTS / "reconstructions.png", rows=rows)
    attacked = [s for s in results if s["attacker_ssim"] is not None]
    floors = [s["attacks"]["labels-only"]["ssim"] for s in results if "labels-only" in s["attacks"]]
    plot_privacy_utility(
        path=out / REPORTS / "privacy_utility.png",
        points=[_point(s) for s in attacked if not s["noise_only"]],
        baseline=[_point(s) for s in attacked if s["noise_only"]],
        floor=floors[0] if floors else None,
        dataset=config.train.data.dataset,
    )
    return report


def _point(setting: dict[str, Any]) -> tuple[str, float, float]:
    return setting["name"], setting["attacker_ssim"], setting["test_accuracy"]
