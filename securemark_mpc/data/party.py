"""What one party holds: a data owner's training images, or the model owner's test set.

In a real deployment each party brings its own folder (``--data`` / ``--test-data``)
and never opens anyone else's: an image folder (one sub-folder per class), IDX files,
or a torchvision root. For local runs, ``securemark train`` simulates the owners by
sharding one data set; every process then loads the pool but keeps only its part.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .partition import partition_shards
from .sources import DATASETS, DataError, DataInfo, LabeledImages
from .splits import DataConfig, load_splits

TORCHVISION_SOURCES = frozenset({"mnist", "fashionmnist", "cifar10"})


@dataclass(frozen=True)
class PartyData:
    """One party's own images and what they must agree on with the other parties."""

    images: LabeledImages  # the data owner's training images, or the model owner's test set
    info: DataInfo


def folder_format(folder: Path, *, dataset: str) -> str:
    """Which source reads `folder`: the run's torchvision source, IDX files, else image folders."""
    if not folder.is_dir():
        raise DataError(f"data folder {str(folder)!r} is not an existing folder")
    if dataset in TORCHVISION_SOURCES:
        return dataset
    if any("idx3" in path.name for path in folder.iterdir() if path.is_file()):
        return "idx"
    return "imagefolder"


def load_own_folder(folder: Path, *, dataset: str) -> PartyData:
    """All images in this party's own folder: nothing else is opened."""
    images, info = DATASETS[folder_format(folder, dataset=dataset)](data_root=str(folder))
    return PartyData(images=images, info=info)


def simulated_party_data(
    data: DataConfig, *, rank: int, num_owners: int, scheme: str, seed: int
) -> PartyData:
    """Local simulation: rank 0 keeps the test split, data owner i keeps shard i of train."""
    splits = load_splits(data)
    if rank == 0:  # the model owner
        return PartyData(images=splits.test, info=splits.info)
    shards = partition_shards(
        labels=splits.train.labels, num_owners=num_owners, scheme=scheme, seed=seed
    )
    return PartyData(images=splits.train.subset(shards[rank - 1]), info=splits.info)
