"""With two computing parties, the other data owners hand their data over as shares.

Under ``--topology two`` only the model owner (rank 0) and data owner 1 compute: with
two parties CrypTen truncates locally (no round, no dealer material), and each product
has one party fewer to wait for. Every other data owner k encodes its images and
labels in CrypTen's fixed-point ring, draws a uniform mask r from the OS and sends r to
the model owner and x − r to data owner 1, each over its own gloo connection (not
through the rendezvous store, which the model owner hosts). Either share alone is
uniformly random and says nothing; the two together are the data. So the model owner
and data owner 1 must not collude, and neither may collude with the dealer (as for
every product). Data owner k then leaves: it takes no part in the computation. The
labels reach the model owner only through ``reveal.py`` later, as every data owner's do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from securemark_mpc.config import TrainConfig
from securemark_mpc.data import PartyData
from securemark_mpc.mpc.session import (
    PartyAddress,
    PartyFailure,
    close_group,
    exchange_handshake,
    open_handoff_group,
    role_name,
)

MASK_HOLDER, REMAINDER_HOLDER = 0, 1  # the model owner gets r, data owner 1 gets x - r


@dataclass
class HandedShards:
    """At a computing party: its ring shares of every handing data owner's shard, in rank order."""

    images: list[torch.Tensor] = field(default_factory=list)  # int64, (rows, *image shape)
    labels: list[torch.Tensor] = field(default_factory=list)  # int64, (rows,)

    @property
    def rows(self) -> int:
        """Training rows handed over, all data owners together."""
        return sum(len(shard) for shard in self.images)


def uniform_ring_mask(shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform int64 values from the OS (never a seeded generator: the mask hides the data)."""
    count = int(np.prod(shape, dtype=np.int64))
    return torch.from_numpy(np.frombuffer(os.urandom(8 * count), dtype=np.int64).copy()).reshape(
        shape
    )


def split_into_shares(encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, x − r) in the ring of int64 (wrapping arithmetic): they add up to x."""
    mask = uniform_ring_mask(tuple(encoded.shape))
    return mask, encoded - mask


def _all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    import torch.distributed as dist

    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor)
    return gathered


def hand_over(
    address: PartyAddress,
    config: TrainConfig,
    data: PartyData,
    *,
    store: Any,
    secret: bytes,
    encode: Any,
) -> HandedShards | None:
    """The hand-over phase, run by the model owner and every data owner (not the dealer).

    Returns this party's shares at the two computing parties, None at a data owner that
    handed its shard over. `encode` is CrypTen's fixed-point encoder (float -> int64).
    """
    open_handoff_group(
        address, store=store, secret=secret, timeout_seconds=config.comm_timeout_seconds
    )
    handed = HandedShards()
    first_handing = config.computing_data_owners + 1
    stage = "the settings check"
    try:
        rows = exchange_handshake(
            _all_gather,
            address,
            digest=config.digest(),
            data_settings=data.info.settings(),
            values=[0 if address.rank == 0 else len(data.images)],
        )
        for owner in range(first_handing, address.world_size):
            stage = f"the shard of {role_name(owner, address.world_size)}"
            _transfer(address, owner, size=rows[owner][0], data=data, encode=encode, into=handed)
        stage = "the closing barrier"
        close_group()
    except PartyFailure:  # a settings mismatch, already named
        raise
    except RuntimeError as error:  # gloo: a peer died, or a wait timed out
        raise PartyFailure(f"the hand-over failed at {stage}: {error}") from None
    return handed if address.rank < first_handing else None


def _transfer(
    address: PartyAddress,
    owner: int,
    *,
    size: int,
    data: PartyData,
    encode: Any,
    into: HandedShards,
) -> None:
    """Data owner `owner` sends its shares; the two computing parties receive theirs."""
    import torch.distributed as dist

    if address.rank == owner:
        shard = data.images
        for tensor in (shard.images, shard.labels.float()):
            mask, remainder = split_into_shares(encode(tensor))
            dist.send(mask, dst=MASK_HOLDER)
            dist.send(remainder, dst=REMAINDER_HOLDER)
    elif address.rank in (MASK_HOLDER, REMAINDER_HOLDER):
        images = torch.empty((size, *data.info.image_shape), dtype=torch.long)
        labels = torch.empty((size,), dtype=torch.long)
        dist.recv(images, src=owner)
        dist.recv(labels, src=owner)
        into.images.append(images)
        into.labels.append(labels)
