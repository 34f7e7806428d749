"""Dealer material in bulk, one training batch ahead (an offline phase per batch).

CrypTen's TTP client asks the dealer for every Beaver triple and every truncation's
wrap randomness separately: a pickled request, a reply and a broadcast, on the
critical path of each product. Every training batch of a given size asks for the
same sequence of material, so the model owner records that sequence once, and from
then on asks for a whole batch's material in one message, sent at the start of the
previous batch: the dealer computes it while the parties compute.

Only the model owner (rank 0) talks to the dealer, in CrypTen and here; the other
parties draw their shares from the generators they share with the dealer, in the same
order as before, so they need no change. Who learns what is unchanged: the dealer
gets the same requests (shapes only), and rank 0 the same shares, earlier.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from typing import Any

import torch

from securemark_mpc.mpc.session import PartyFailure

BULK = "bulk"

Request = tuple[str, Any, tuple[Any, ...], dict[str, Any]]  # function, device, args, kwargs


class PrefetchingDealer:
    """Rank 0's dealer client: per-request while recording, bulk and ahead afterwards."""

    def __init__(self, crypten: Any, *, rank: int, enabled: bool = True) -> None:
        self.active = enabled and rank == 0  # disabled: without a dealer (the insecure TFP)
        self.plans: dict[Any, list[Request]] = {}
        self.queue: deque[tuple[Request, torch.Tensor]] = deque()
        self.recording: list[Request] | None = None
        self.pending: Any = None  # the plan key whose material was requested, not yet received
        self.prefetched = False
        if not self.active:
            return
        from crypten.mpc.provider.ttp_provider import TTPClient

        self.comm = crypten.communicator.get()
        self.client = TTPClient.get()
        self.single = self.client.ttp_request
        self.client.ttp_request = self._request  # instance attribute: this party only

    def close(self) -> None:
        """Give the TTP client its own per-request method back."""
        if self.active:
            self.client.ttp_request = self.single

    @contextlib.contextmanager
    def batch(self, key: Any, next_key: Any = None) -> Iterator[None]:
        """Run one batch whose dealer requests are those of every batch with `key`;
        `next_key` (the next batch's key, None at the end of an epoch) is asked ahead."""
        if not self.active:
            yield
            return
        if self.pending is not None:
            self._receive(key)
        elif self.plans.get(key):
            self._send(key)
            self._receive(key)
        self.prefetched = bool(self.queue)
        self.recording = None if self.prefetched else []
        if self.prefetched and self.plans.get(next_key):
            self._send(next_key)
        try:
            yield
        finally:
            recorded, self.recording, self.prefetched = self.recording, None, False
        if recorded is not None:
            self.plans[key] = recorded
        if self.queue:
            raise PartyFailure(
                f"the batch used {len(self.queue)} fewer dealer requests than planned"
            )

    def _request(self, function: str, device: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        request: Request = (function, None if device is None else str(device), args, kwargs)
        if self.prefetched:
            if not self.queue:
                raise PartyFailure("the batch asked the dealer for more material than planned")
            planned, result = self.queue.popleft()
            if planned != request:
                raise PartyFailure(f"dealer material out of order: {request} vs {planned}")
            return result
        if self.recording is not None:
            self.recording.append(request)
        return self.single(function, device, *args, **kwargs)

    def _send(self, key: Any) -> None:
        message = {"function": BULK, "requests": self.plans[key]}
        self.comm.send_obj(message, self.comm.get_ttp_rank(), self.client.ttp_group)
        self.pending = key

    def _receive(self, key: Any) -> None:
        if self.pending != key:
            raise PartyFailure(f"material for batch {self.pending!r} arrived for batch {key!r}")
        ttp_rank = self.comm.get_ttp_rank()
        sizes = self.comm.recv_obj(ttp_rank, self.client.ttp_group)
        flat = torch.empty(sum(size.numel() for size in sizes), dtype=torch.long)
        self.comm.broadcast(flat, ttp_rank, self.client.comm_group)
        pieces = flat.split([size.numel() for size in sizes])
        for request, size, piece in zip(self.plans[key], sizes, pieces, strict=True):
            self.queue.append((request, piece.view(size)))
        self.pending = None


def serve_bulk(dealer: Any, requests: list[Request]) -> tuple[list[torch.Size], torch.Tensor]:
    """The dealer's side: compute every request in order (the order the parties draw
    their own shares in) and return their sizes and one flat tensor."""
    results = []
    for function, device, args, kwargs in requests:
        dealer.device = device
        results.append(getattr(dealer, function)(*args, **kwargs))
    flat = torch.cat([result.flatten() for result in results])
    return [result.size() for result in results], flat
