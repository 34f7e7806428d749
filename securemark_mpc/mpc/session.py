"""One party's connection to the others: roles, CrypTen start-up, handshake, liveness.

This is the transport seam: protocol code talks to CrypTen's communicator; only this
module touches ``torch.distributed`` directly (its rendezvous store, for heartbeats).

Ranks: 0 is the model owner, 1..k are the data owners, and rank k+1 is CrypTen's TTP
dealer (absent with the insecure TFP provider).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import torch

from securemark_mpc.mpc.crypten_shim import load_crypten

HEARTBEAT_SECONDS = 0.5
DIAGNOSIS_WAIT_SECONDS = 3.0
LINGER_SECONDS = 2.0
_PREFIX = "securemark"
VERDICT_KEY = f"{_PREFIX}/verdict"


class PartyFailure(RuntimeError):
    """Training cannot go on; the message names the party at fault where known."""


class ConfigMismatch(PartyFailure):
    """The parties were launched with different settings."""


class PeerLost(PartyFailure):
    """Communication with another party broke; the liveness diagnosis names whom."""


@dataclass(frozen=True)
class PartyAddress:
    """Where one party sits: its rank, the number of computing parties, the rendezvous."""

    rank: int
    world_size: int  # computing parties: the model owner plus the data owners
    rendezvous: str  # e.g. tcp://10.0.0.1:29500 or file:///tmp/rdv
    use_dealer: bool = True

    @property
    def is_dealer(self) -> bool:
        return self.use_dealer and self.rank == self.world_size

    @property
    def role(self) -> str:
        return role_name(self.rank, self.world_size)


def role_name(rank: int, world_size: int) -> str:
    """Human name of a rank, used in every error message."""
    if rank == 0:
        return "party 0 (model owner)"
    if rank == world_size:
        return f"party {rank} (TTP dealer)"
    return f"party {rank} (data owner {rank})"


def warn_if_not_loopback(rendezvous: str) -> None:
    """gloo's TCP is unencrypted: across hosts it must run inside a VPN or SSH tunnel."""
    host = urlparse(rendezvous).hostname
    if rendezvous.startswith("tcp://") and host not in {"127.0.0.1", "localhost", "::1"}:
        warnings.warn(
            f"rendezvous {host} is not loopback: gloo traffic (shares, revealed activations) is "
            "NOT encrypted; run the parties inside a VPN or an SSH tunnel",
            stacklevel=2,
        )


def start_crypten(address: PartyAddress, *, provider: str, timeout_seconds: float) -> Any:
    """Set CrypTen's environment and provider, then initialise its communicator."""
    os.environ.update(
        RANK=str(address.rank),
        WORLD_SIZE=str(address.world_size),
        RENDEZVOUS=address.rendezvous,
        DISTRIBUTED_BACKEND="gloo",
    )
    # One intra-op thread per party: several parties share the cores of one machine.
    torch.set_num_threads(int(os.environ.get("SECUREMARK_THREADS", "1")))
    crypten = load_crypten(timeout_seconds=timeout_seconds)
    crypten.cfg.mpc.provider = provider.upper()
    crypten.cfg.communicator.verbose = True  # count rounds and bytes
    try:
        crypten.init()
    except (RuntimeError, ValueError) as error:
        raise PartyFailure(
            f"{address.role} could not reach the others at {address.rendezvous}: {error}"
        ) from None
    return crypten


def _store() -> Any:
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


class Liveness:
    """Heartbeats and a shared verdict in the rendezvous store, to name a failed party.

    Each party bumps a counter every HEARTBEAT_SECONDS. When communication breaks, the
    first survivor to notice names the culprit (a party that reported its own error,
    else one whose counter stopped) and publishes that verdict; every party's heartbeat
    thread watches for a verdict and stops its process even while it is blocked in a
    receive. The store lives in the model owner's process, so the owner lingers
    briefly before exiting to let the others read the verdict.
    """

    def __init__(self, address: PartyAddress) -> None:
        self.address = address
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="heartbeat")

    def start(self) -> Liveness:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * HEARTBEAT_SECONDS)

    def _beat(self) -> None:
        key = f"{_PREFIX}/beat/{self.address.rank}"
        while not self._stop.is_set():
            try:
                store = _store()
                store.add(key, 1)
                verdict = store.get(VERDICT_KEY).decode() if store.check([VERDICT_KEY]) else None
            except Exception:  # the store host is gone; the main thread's diagnosis reports it
                return
            if verdict is not None and not self._stop.is_set():
                die(f"[{self.address.role}] stopping: {verdict}", code=1)
            self._stop.wait(HEARTBEAT_SECONDS)

    def report_own_failure(self, message: str) -> None:
        """Tell the others why this party stops, so their errors can name it."""
        self._publish(f"{self.address.role} failed: {message}")

    def diagnose(self) -> str:
        """Name the party that most likely failed, and publish that verdict."""
        self._stop.set()  # this thread decides now; the heartbeat must not race it
        world = self.address.world_size
        ranks = [
            r
            for r in range(world + (1 if self.address.use_dealer else 0))
            if r != self.address.rank
        ]
        try:
            store = _store()
            if store.check([VERDICT_KEY]):
                return store.get(VERDICT_KEY).decode()
            before = {r: store.add(f"{_PREFIX}/beat/{r}", 0) for r in ranks}
            time.sleep(DIAGNOSIS_WAIT_SECONDS)
            if store.check([VERDICT_KEY]):
                return store.get(VERDICT_KEY).decode()
            stalled = [r for r in ranks if store.add(f"{_PREFIX}/beat/{r}", 0) == before[r]]
        except Exception:
            return f"{role_name(0, world)} is unreachable (it hosts the rendezvous store); it probably died"
        if stalled:
            verdict = (
                " and ".join(role_name(r, world) for r in stalled)
                + " stopped responding (no heartbeat)"
            )
        else:
            verdict = "a peer closed the connection (could not tell which)"
        self._publish(verdict)
        return verdict

    def _publish(self, verdict: str) -> None:
        try:
            store = _store()
            if not store.check([VERDICT_KEY]):
                store.set(VERDICT_KEY, verdict)
        except Exception:
            return
        if self.address.rank == 0:
            time.sleep(LINGER_SECONDS)  # keep the store up while the others read it


def exchange_handshake(
    crypten: Any, address: PartyAddress, *, digest: str, values: list[int]
) -> list[list[int]]:
    """All computing parties swap their config digest and a few integers.

    Returns every party's integers (e.g. shard sizes, resume epoch). A digest that
    differs from the model owner's stops all parties with ConfigMismatch.
    """
    digest_words = [
        int.from_bytes(bytes.fromhex(digest)[i : i + 7], "big") for i in range(0, 28, 7)
    ]
    mine = torch.tensor(digest_words + list(values), dtype=torch.long)
    gathered = crypten.communicator.get().all_gather(mine)
    reference = gathered[0][: len(digest_words)]
    mismatched = [
        r for r, row in enumerate(gathered) if not torch.equal(row[: len(digest_words)], reference)
    ]
    if mismatched:
        names = ", ".join(role_name(r, address.world_size) for r in mismatched)
        raise ConfigMismatch(
            f"configuration mismatch: {names} started with settings different from the model owner's "
            "(compare their config.json); every party stops"
        )
    return [row[len(digest_words) :].tolist() for row in gathered]


def die(message: str, *, code: int = 1) -> None:
    """Print and leave at once: gloo's destructors can block on a dead peer."""
    print(message, file=sys.stderr, flush=True)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)
