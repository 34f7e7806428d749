"""The training run's typed config: one frozen dataclass, saved with every run.

Every party derives the same config from the same arguments; its hash is compared
between parties at start (see :mod:`securemark_mpc.mpc.session`), so a party launched
with different settings stops everyone instead of silently training something else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from securemark_mpc.data import DataConfig, DatasetSplits
from securemark_mpc.models import (
    PRESETS,
    ModelSpec,
    make_spec,
    preset_for_shape,
    recommended_optimisation,
)

PROVIDERS = ("ttp", "tfp")
ENGINES = ("split", "full")
# Who computes under MPC (README: "Who computes"). The model owner always does; the
# value is how many data owners compute beside it, given all of them.
TOPOLOGIES: dict[str, Callable[[int], int]] = {
    "all": lambda data_owners: data_owners,  # every data owner: no single one must be trusted
    "two": lambda data_owners: 1,  # data owner 1 only; the others hand over their data as shares
}

WARMUP_EPOCHS = 3


def _cosine(epoch: int, epochs: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))


# Learning-rate multipliers by epoch: name -> f(epoch, epochs). The warm-up keeps the
# polynomial (quad) activations of the private partition from blowing up early on.
SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": lambda epoch, epochs: 1.0,
    "cosine": _cosine,
    "warmup-cosine": lambda epoch, epochs: (
        min(1.0, (epoch + 1) / WARMUP_EPOCHS) * _cosine(epoch, epochs)
    ),
}


class ConfigError(ValueError):
    """A user-facing problem with the requested settings (exit status 2)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run. Defaults are the recommended ones."""

    data: DataConfig = field(default_factory=DataConfig)
    data_owners: int = 2
    topology: str = "all"  # TOPOLOGIES; "two": faster, but owner and data owner 1 must not collude
    partition: str = "iid"
    model: str | None = None  # preset name; None picks the preset for the data set's shape
    split: int | None = None  # layers kept under MPC; None keeps the preset's default
    private_channels: int | None = None  # width of the first private conv (privacy knob)
    private_pool: int | None = None  # size of the first private pooling (privacy knob)
    reveal_noise_sigma: float = 0.5  # noise added under MPC to the normalised cut (README: Privacy)
    seeded_private_init: bool = False  # tests only: the owner draws the private init from `seed`
    epochs: int = 20  # with batch 64: digits seeds 0-4 all >= 0.977 in plaintext (15: one 0.969)
    # `securemark train` takes the model preset's batch and learning rate (MNIST: 256,
    # 0.4); batch 64 at 0.1 trains every preset.
    batch_size: int = 64
    learning_rate: float = 0.1
    lr_schedule: str = "warmup-cosine"  # the quad activations need the warm-up (see SCHEDULES)
    momentum: float = 0.9
    # L2 on every weight: keeps the private values, and with them the odds of a wrapped
    # truncation (|x|/2^64 per element), small. MNIST-t10k under MPC trained to the end
    # only with it (without: two runs wrecked by out-of-range values, in epochs 6 and
    # 10); its twin's cut input per image: mean square 609 vs 3,330 at the end.
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1  # the owner's plaintext loss; +0.9 pp mean test accuracy on digits
    seed: int = 0
    provider: str = "ttp"
    insecure: bool = False
    eval_each_epoch: bool = True
    engine: str = "split"  # "split" (the protocol) or "full" (whole model and loss under MPC: a benchmark baseline)
    max_batches_per_epoch: int | None = None  # benchmarks: time part of an epoch
    comm_timeout_seconds: float = 45.0

    def validate(self) -> TrainConfig:
        """Raise ConfigError with a clear message for settings that cannot work."""
        checks = [
            (self.data_owners >= 1, f"--data-owners must be at least 1, got {self.data_owners}"),
            (self.epochs >= 0, f"--epochs must be 0 or more, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.learning_rate > 0, f"--lr must be positive, got {self.learning_rate}"),
            (
                0 <= self.label_smoothing < 1,
                f"--label-smoothing must be in [0, 1), got {self.label_smoothing}",
            ),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"--weight-decay must be 0 or more, got {self.weight_decay}"),
            (self.lr_schedule in SCHEDULES, f"--lr-schedule must be one of {sorted(SCHEDULES)}"),
            (
                self.provider in PROVIDERS,
                f"--provider must be one of {PROVIDERS}, got {self.provider!r}",
            ),
            (
                self.reveal_noise_sigma >= 0,
                f"--noise-sigma must be 0 or more, got {self.reveal_noise_sigma}",
            ),
            (self.comm_timeout_seconds > 0, "the communication timeout must be positive"),
            (self.topology in TOPOLOGIES, f"--topology must be one of {sorted(TOPOLOGIES)}"),
            (
                self.topology == "all" or self.engine == "split",
                "--topology two is built for the split engine only",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.provider == "tfp" and not self.insecure:
            raise ConfigError(
                "--provider tfp lets the model owner (rank 0) generate the Beaver triples and so "
                "unmask every data owner's images; it is refused unless --insecure is also given"
            )
        return self

    @property
    def computing_data_owners(self) -> int:
        """Data owners that compute under MPC (ranks 1..this); the others hand over shares."""
        return TOPOLOGIES[self.topology](self.data_owners)

    def model_spec(self, splits: DatasetSplits) -> ModelSpec:
        """The architecture this run trains, for the data set's image shape."""
        try:
            return make_spec(
                input_shape=splits.image_shape,
                num_classes=splits.num_classes,
                preset=self.model,
                split=self.split,
                private_channels=self.private_channels,
                private_pool=self.private_pool,
            )
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def known_preset(self, image_shape: tuple[int, int, int] | None) -> str | None:
        """The model preset: ``model``'s, or the one for ``image_shape``; None if unknown."""
        if self.model is not None:
            return self.model if self.model in PRESETS else None
        try:
            return None if image_shape is None else preset_for_shape(image_shape)
        except ValueError:
            return None

    def with_preset_optimisation(
        self,
        image_shape: tuple[int, int, int] | None,
        *,
        batch_size: int | None = None,
        learning_rate: float | None = None,
    ) -> TrainConfig:
        """This config at the model preset's batch size and learning rate, unless given.

        The preset is ``model``'s, or the one for ``image_shape``; a given batch size
        scales the preset's learning rate linearly. With neither known (a multi-host
        config written without data) TrainConfig's own batch 64, lr 0.1 stay, which
        every preset trains with; an unknown preset or shape is left for model_spec
        to name.
        """
        preset = self.known_preset(image_shape)
        if preset is not None:
            batch, lr = recommended_optimisation(preset, batch_size)
        else:
            batch = self.batch_size if batch_size is None else batch_size
            lr = self.learning_rate * batch / self.batch_size
        return dataclasses.replace(
            self, batch_size=batch, learning_rate=lr if learning_rate is None else learning_rate
        )

    def learning_rate_at(self, epoch: int) -> float:
        """The learning rate of `epoch` (0-based), the same for MPC and plaintext."""
        return self.learning_rate * SCHEDULES[self.lr_schedule](epoch, self.epochs)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> TrainConfig:
        fields = dict(payload)
        fields["data"] = DataConfig(**fields.get("data", {}))
        fields.setdefault("weight_decay", 0.0)  # runs saved before the setting trained without
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - known
        if unknown:
            raise ConfigError(f"unknown config keys: {sorted(unknown)}")
        return cls(**fields)

    def digest(self) -> str:
        """A stable hash of every setting, compared between parties at start.

        The data root is left out: it is a host-local path that may differ between hosts.
        """
        payload = self.to_json()
        payload["data"].pop("data_root")
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
