"""Per-data-owner shards: each owner gets a disjoint set of indices, IID or skewed by label."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .sources import DataError

Partitioner = Callable[..., list[torch.Tensor]]


def iid_shards(
    *, labels: torch.Tensor, num_owners: int, seed: int, alpha: float
) -> list[torch.Tensor]:
    """Near-equal random shards: every owner sees the same label mix (``alpha`` is unused)."""
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(len(labels), generator=generator)
    return [shard.sort().values for shard in torch.tensor_split(permutation, num_owners)]


def label_skew_shards(
    *, labels: torch.Tensor, num_owners: int, seed: int, alpha: float
) -> list[torch.Tensor]:
    """Per class, Dirichlet(alpha) proportions over owners: small alpha, strong skew.

    Models the realistic case where each hospital or shop holds mostly a few classes.
    """
    if not alpha > 0:
        raise DataError(f"alpha must be positive, got {alpha}")
    rng = np.random.default_rng(seed)
    values = labels.cpu().numpy()
    owner = np.empty(len(values), dtype=np.int64)
    for label in np.unique(values):
        members = rng.permutation(np.flatnonzero(values == label))
        cuts = (np.cumsum(rng.dirichlet(np.full(num_owners, alpha)))[:-1] * len(members)).astype(
            int
        )
        for index, part in enumerate(np.split(members, cuts)):
            owner[part] = index
    sizes = np.bincount(owner, minlength=num_owners)
    for empty in np.flatnonzero(sizes == 0):
        # Some owner has no image yet, so the largest has at least two: move one over.
        donor = int(sizes.argmax())
        owner[rng.choice(np.flatnonzero(owner == donor))] = empty
        sizes[donor] -= 1
        sizes[empty] += 1
    return [torch.from_numpy(np.flatnonzero(owner == index)) for index in range(num_owners)]


PARTITIONERS: dict[str, Partitioner] = {"iid": iid_shards, "label-skew": label_skew_shards}


def partition_shards(
    *, labels: torch.Tensor, num_owners: int, scheme: str = "iid", seed: int = 0, alpha: float = 0.5
) -> list[torch.Tensor]:
    """Split ``labels``' indices into ``num_owners`` disjoint, covering, sorted int64 shards."""
    if scheme not in PARTITIONERS:
        raise DataError(
            f"unknown partition scheme {scheme!r}; known: {', '.join(sorted(PARTITIONERS))}"
        )
    if labels.ndim != 1:
        raise DataError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if not 1 <= num_owners <= len(labels):
        raise DataError(
            f"num_owners must be between 1 and {len(labels)} (the number of images), got {num_owners}"
        )
    return PARTITIONERS[scheme](labels=labels, num_owners=num_owners, seed=seed, alpha=alpha)
