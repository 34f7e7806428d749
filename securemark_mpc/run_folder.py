"""The run folder: where a training run and everything derived from it live.

RUN/config.json     resolved TrainConfig and the command line (minGPT habit)
RUN/run.secret      the secret every party proves it knows before joining (mode 0600)
RUN/model.pt        the decrypted model (plain PyTorch)
RUN/metrics.json    test accuracy, time, communication, per-epoch history
RUN/features.pt     the training set's cut-layer features, cached by the owner
RUN/fingerprint_key.json  the owner's secret fingerprint key (mode 0600)
RUN/registry.sqlite the customers and their codewords (mode 0600)
RUN/copies/NAME.pt  the fingerprinted copy issued to customer NAME
RUN/checkpoints/    one file per party: its own shares, never another's
RUN/logs/           each party's output when launched locally
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from securemark_mpc.config import ConfigError, TrainConfig


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive lock on RUN/.NAME.lock, so that two commands on one run take turns."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @property
    def model_path(self) -> Path:
        return self.root / "model.pt"

    @property
    def features_path(self) -> Path:
        return self.root / "features.pt"

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def secret_path(self) -> Path:
        return self.root / "run.secret"

    @property
    def key_path(self) -> Path:
        return self.root / "fingerprint_key.json"

    @property
    def registry_path(self) -> Path:
        return self.root / "registry.sqlite"

    def copy_path(self, customer: str) -> Path:
        return self.root / "copies" / f"{customer}.pt"

    def checkpoint(self, rank: int) -> Path:
        return self.root / "checkpoints" / f"rank{rank}.pt"

    def log(self, rank: int) -> Path:
        return self.root / "logs" / f"rank{rank}.log"

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        """Write atomically, so a crash never leaves half a file behind."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / name
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, path)
        return path

    def read_json(self, name: str) -> dict[str, Any]:
        path = self.root / name
        if not path.is_file():
            raise ConfigError(f"{path} not found: is {self.root} a training run folder?")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from None

    def load_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached cut-layer features and labels of the training set."""
        path = self.features_path
        if not path.is_file():
            raise ConfigError(f"{path} not found: is {self.root} a finished training run?")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or not {"features", "labels"} <= set(payload):
            raise ConfigError(f"{path} does not hold cached features and labels")
        return payload["features"], payload["labels"]

    def save_config(self, config: TrainConfig, *, argv: list[str]) -> None:
        self.write_json("config.json", {"config": config.to_json(), "argv": argv})

    def load_config(self, name: str = "config.json") -> TrainConfig:
        return TrainConfig.from_json(self.read_json(name)["config"])
