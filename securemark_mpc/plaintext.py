"""The same split training in plain PyTorch: the baseline every MPC number is compared to.

It uses the same shards in the same order, the same seeded batch order, the same
initialisation and the same optimiser as the MPC protocol, so that MPC weights can be
checked against these within fixed-point tolerance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from securemark_mpc.config import TrainConfig
from securemark_mpc.data import DatasetSplits, LabeledImages, load_splits, partition_shards
from securemark_mpc.models import ModelSpec, build_model, private_part, save_model
from securemark_mpc.mpc.protocol import batch_order
from securemark_mpc.run_folder import RunFolder


@dataclass
class PlaintextResult:
    model: nn.Sequential
    spec: ModelSpec
    test_accuracy: float
    epoch_seconds: list[float] = field(default_factory=list)


def training_order(config: TrainConfig, splits: DatasetSplits) -> LabeledImages:
    """The training images concatenated shard by shard, as the MPC parties share them."""
    shards = partition_shards(
        labels=splits.train.labels,
        num_owners=config.data_owners,
        scheme=config.partition,
        seed=config.seed,
    )
    return splits.train.subset(torch.cat(shards))


def accuracy(model: nn.Module, data: LabeledImages) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(data.images).argmax(dim=1) == data.labels).float().mean())


def fit(model: nn.Module, train: LabeledImages, config: TrainConfig) -> list[float]:
    """The training loop MPC runs, in plaintext: the same batch order, learning-rate
    schedule, loss and optimiser. Returns each epoch's wall time."""
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    epoch_seconds = []
    for epoch in range(config.epochs):
        began = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate_at(epoch)
        model.train()
        for indices in batch_order(seed=config.seed, epoch=epoch, size=len(train)).split(
            config.batch_size
        ):
            loss = nn.functional.cross_entropy(
                model(train.images[indices]),
                train.labels[indices],
                label_smoothing=config.label_smoothing,
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch_seconds.append(time.perf_counter() - began)
    return epoch_seconds


def train_plaintext(config: TrainConfig, *, splits: DatasetSplits | None = None) -> PlaintextResult:
    """Train the split model in plaintext, exactly as the MPC protocol would."""
    splits = splits or load_splits(config.data)
    spec = config.model_spec(splits)
    model = build_model(spec, seed=config.seed)
    epoch_seconds = fit(model, training_order(config, splits), config)
    return PlaintextResult(
        model=model,
        spec=spec,
        test_accuracy=accuracy(model, splits.test),
        epoch_seconds=epoch_seconds,
    )


def write_plaintext_run(run: RunFolder, config: TrainConfig) -> PlaintextResult:
    """Fill a run folder as MPC training would, but trained in plaintext.

    Same layout (config.json, model.pt, features.pt, metrics.json); used by tests and
    benchmarks of the later stages (fingerprints, attacks) that do not need MPC.
    """
    splits = load_splits(config.data)
    result = train_plaintext(config, splits=splits)
    train = training_order(config, splits)
    with torch.no_grad():
        features = private_part(result.model, result.spec)(train.images)
    run.save_config(config, argv=["plaintext"])
    save_model(run.model_path, model=result.model, spec=result.spec)
    torch.save({"features": features, "labels": train.labels}, run.features_path)
    run.write_json(
        "metrics.json",
        {
            "test_accuracy": result.test_accuracy,
            "seconds": sum(result.epoch_seconds),
            "comm_bytes": 0,
            "epochs": config.epochs,
            "history": [],
            "trained": "plaintext",
        },
    )
    return result
