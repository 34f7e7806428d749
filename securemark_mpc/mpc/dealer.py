"""The TTP dealer: hands out correlated randomness (Beaver triples), never data.

It answers one request at a time, or a whole batch's requests in one message
(`securemark_mpc.mpc.prefetch`).

CrypTen's own ``TTPServer`` swallows communication errors and returns normally, so a
dealer that lost its peers would exit with status 0. This loop is CrypTen's, except
that a broken connection is raised, and the caller exits non-zero naming the cause.
"""

from __future__ import annotations

import os
from typing import Any

from securemark_mpc.mpc.fast_truncation import count_wraps
from securemark_mpc.mpc.prefetch import BULK, serve_bulk
from securemark_mpc.mpc.ring_kernels import ring_op
from securemark_mpc.mpc.session import PartyFailure, PeerLost

TRIPLE_KINDS = frozenset({"additive", "square", "binary", "wraps", "B2A"})
# The dealer works out the next batch's material while the computing parties compute.
# On a host it shares with them (every local run), a lower CPU priority lets a party
# that is ready run first, and the dealer fills the gaps. Measured on MNIST-t10k with
# 2 cores, two before/after pairs each: two-party epoch (batch 256) 16.0-16.4 s ->
# 14.4-15.0 s, the default's 76.9-78.2 s -> 72.2-74.9 s. Milder than 10 (about the same
# gain), so that a busy host cannot starve the dealer for a whole timeout.
DEALER_NICENESS = 5


def _check_kinds(kinds: list[str]) -> None:
    unknown = sorted(set(kinds) - TRIPLE_KINDS)
    if unknown:
        raise PartyFailure(f"the model owner asked for unknown triple kinds {unknown}")


def serve_triples(crypten: Any) -> None:
    """Answer the model owner's triple requests until it says 'terminate'."""
    from crypten.common.rng import generate_random_ring_element
    from crypten.mpc.provider.ttp_provider import TTPServer

    os.nice(DEALER_NICENESS)

    class Dealer(TTPServer):
        def __init__(self) -> None:  # replaces TTPServer's loop; see module docstring
            comm = crypten.communicator.get()
            self.ttp_group = comm.ttp_group
            self.comm_group = comm.ttp_comm_group
            self.device = "cpu"
            self._setup_generators()

        def additive(self, size0: Any, size1: Any, op: str, *args: Any, **kwargs: Any) -> Any:
            """CrypTen's triple, c = op(a, b) through the exact float64 ring kernels."""
            a = self._get_additive_PRSS(size0)
            b = self._get_additive_PRSS(size1)
            c = ring_op(op, a, b, *args, **kwargs)
            return c - self._get_additive_PRSS(c.size(), remove_rank=True)

        def wraps(self, size: Any) -> Any:
            """CrypTen's wrap randomness: [θ_r] for the parties' r_i, counted in fewer passes."""
            r = [generate_random_ring_element(size, generator=g) for g in self.generators]
            return count_wraps(r) - self._get_additive_PRSS(size, remove_rank=True)

        def serve(self) -> None:
            comm = crypten.communicator.get()
            ttp_rank = comm.get_ttp_rank()
            while True:
                try:
                    message = comm.recv_obj(0, self.ttp_group)
                except RuntimeError as error:
                    raise PeerLost(
                        f"lost the model owner while waiting for a request: {error}"
                    ) from None
                if message == "terminate":
                    return
                if message["function"] == BULK:
                    requests = message["requests"]
                    _check_kinds([request[0] for request in requests])
                    sizes, result = serve_bulk(self, requests)
                    comm.send_obj(sizes, 0, self.ttp_group)
                else:
                    _check_kinds([message["function"]])
                    self.device = message["device"]
                    result = getattr(self, message["function"])(
                        *message["args"], **message["kwargs"]
                    )
                    comm.send_obj(result.size(), 0, self.ttp_group)
                comm.broadcast(result, ttp_rank, self.comm_group)

    Dealer().serve()
