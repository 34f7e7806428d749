"""Train/test/aux splits: stratified by label, seeded, the same for every source."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sources import DataError, DataInfo, LabeledImages, get_loader


@dataclass(frozen=True)
class DataConfig:
    """What to load and how to split it; validated by ``load_splits``."""

    dataset: str = "digits"
    data_root: str | None = None
    test_fraction: float = 0.2
    aux_fraction: float = 0.1  # attacker/auxiliary split, disjoint from train and test
    seed: int = 0
    max_images: int | None = None  # cap on the pool before splitting, for quick runs
    file_order: bool = (
        False  # keep the file's order: train first, then aux, test last (reference splits)
    )


@dataclass(frozen=True)
class DatasetSplits:
    """The three disjoint splits of one data set, plus what a model needs to know about it."""

    name: str
    train: LabeledImages
    test: LabeledImages
    aux: LabeledImages
    info: DataInfo

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:  # (C, H, W)
        return self.info.image_shape


def _validate(config: DataConfig) -> None:
    test, aux = config.test_fraction, config.aux_fraction
    if not 0 < test < 1:
        raise DataError(f"test_fraction must be in (0, 1), got {test}")
    if not 0 <= aux < 1:
        raise DataError(f"aux_fraction must be in [0, 1), got {aux}")
    if not test + aux < 1:
        raise DataError(f"test_fraction + aux_fraction must be below 1, got {test + aux}")
    if config.max_images is not None and config.max_images < 1:
        raise DataError(f"max_images must be at least 1, got {config.max_images}")


def stratified_order(labels: torch.Tensor, *, seed: int) -> torch.Tensor:
    """A seeded permutation in which every class is spread evenly from start to end.

    Each image's key is its (random) rank within its class divided by the class size,
    so any contiguous slice of the result holds the classes in their global proportions.
    """
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(len(labels), generator=generator)
    grouped = shuffled[torch.argsort(labels[shuffled], stable=True)]
    grouped_labels = labels[grouped]
    counts = torch.bincount(grouped_labels)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(labels)) - starts[grouped_labels]
    key = (rank + 0.5) / counts[grouped_labels]
    return grouped[torch.argsort(key, stable=True)]


def _count(total: int, fraction: float) -> int:
    return max(1, round(total * fraction)) if fraction > 0 else 0


def load_splits(config: DataConfig) -> DatasetSplits:
    """Load ``config.dataset`` and split it into disjoint, stratified train/test/aux sets."""
    loader = get_loader(config.dataset)
    _validate(config)
    pool, info = loader(data_root=config.data_root)
    if config.file_order:  # e.g. MNIST-t10k's reference split: first 8,000 train, last 2,000 test
        order = torch.arange(len(pool.labels)).flip(0)[: config.max_images]
    else:
        order = stratified_order(pool.labels, seed=config.seed)[: config.max_images]
    n_test = _count(len(order), config.test_fraction)
    n_aux = _count(len(order), config.aux_fraction)
    if len(order) - n_test - n_aux < 1:
        raise DataError(f"{len(order)} images are too few to split into train, test and aux")
    test, aux, train = torch.split(order, [n_test, n_aux, len(order) - n_test - n_aux])
    return DatasetSplits(
        name=config.dataset,
        train=pool.subset(train.sort().values),
        test=pool.subset(test.sort().values),
        aux=pool.subset(aux.sort().values),
        info=info,
    )


def attacker_half(test: LabeledImages, *, seed: int) -> tuple[LabeledImages, LabeledImages]:
    """A stratified half of ``test`` for a simulated thief, and the other half to measure on.

    For runs trained with no attacker split (``--aux-fraction 0``, e.g. MNIST-t10k's
    reference 8,000 / 2,000 split): both halves stay disjoint from the training images.
    """
    order = stratified_order(test.labels, seed=seed)
    half = len(order) // 2
    if half == 0:
        raise DataError(f"a test split of {len(order)} image(s) cannot be halved")
    return test.subset(order[:half].sort().values), test.subset(order[half:].sort().values)
