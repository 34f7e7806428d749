"""Data: image sources, train/test/aux splits and per-owner shards."""

from .partition import PARTITIONERS, partition_shards
from .sources import DATASETS, DataError, LabeledImages
from .splits import DataConfig, DatasetSplits, load_splits

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "DataConfig",
    "DataError",
    "DatasetSplits",
    "LabeledImages",
    "load_splits",
    "partition_shards",
]
