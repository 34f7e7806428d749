"""Data: image sources, train/test/aux splits, per-owner shards, each party's own data."""

from .partition import PARTITIONERS, partition_shards
from .party import PartyData, load_own_folder, simulated_party_data
from .sources import DATASETS, DataError, DataInfo, LabeledImages
from .splits import DataConfig, DatasetSplits, load_splits

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "DataConfig",
    "DataError",
    "DataInfo",
    "DatasetSplits",
    "LabeledImages",
    "PartyData",
    "load_own_folder",
    "load_splits",
    "partition_shards",
    "simulated_party_data",
]
