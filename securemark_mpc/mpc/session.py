"""One party's connection to the others: roles, authenticated CrypTen start-up,
handshake, liveness.

This is the transport seam: protocol code talks to CrypTen's communicator; only this
module touches ``torch.distributed`` directly (its rendezvous store, for authentication
and heartbeats, and the plain gloo group of the hand-over in ``handoff.py``).

Ranks: 0 is the model owner, 1..k are the data owners, and rank k+1 is CrypTen's TTP
dealer (absent with the insecure TFP provider). With ``--topology two`` only ranks 0
and 1 compute: CrypTen's world is then {0, 1} and the dealer is its rank 2
(:func:`computing_address`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch.distributed import PrefixStore

from securemark_mpc.mpc.auth import (
    AuthenticationFailure,
    PartyMissing,
    RunAuthenticator,
    SecretFileError,
    read_secret,
)
from securemark_mpc.mpc.crypten_shim import load_crypten

HEARTBEAT_SECONDS = 0.5
DIAGNOSIS_WAIT_SECONDS = 3.0
LINGER_SECONDS = 2.0
_PREFIX = "securemark"
VERDICT_KEY = f"{_PREFIX}/verdict"
SECRET_FILE_VARIABLE = "SECUREMARK_SECRET_FILE"


class PartyFailure(RuntimeError):
    """Training cannot go on; the message names the party at fault where known."""


class ConfigMismatch(PartyFailure):
    """The parties were launched with different settings."""


class PeerLost(PartyFailure):
    """Communication with another party broke; the liveness diagnosis names whom."""


class AuthenticationRefused(PartyFailure):
    """A party did not prove that it knows the run secret, or claimed a taken rank."""


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


def computing_address(address: PartyAddress, topology: str) -> PartyAddress | None:
    """This party's address in CrypTen's world, or None for a data owner that only hands over.

    With every data owner computing it is the launch address. With two computing parties
    the world is the model owner and data owner 1, and the dealer becomes rank 2.
    """
    if topology == "all":
        return address
    if address.is_dealer:
        return replace(address, rank=2, world_size=2)
    return replace(address, world_size=2) if address.rank <= 1 else None


# Each phase of a run has its own keys in the one rendezvous store: the hand-over of
# ``--topology two`` first, then CrypTen's computation.
HANDOFF_STORE_PREFIX = "securemark-handoff/"
COMPUTE_STORE_PREFIX = "securemark-compute/"


def warn_if_not_loopback(rendezvous: str) -> None:
    """gloo's TCP is unencrypted: across hosts it must run inside a VPN or SSH tunnel."""
    host = urlparse(rendezvous).hostname
    if rendezvous.startswith("tcp://") and host not in {"127.0.0.1", "localhost", "::1"}:
        warnings.warn(
            f"rendezvous {host} is not loopback: gloo traffic (shares, revealed activations) is "
            "NOT encrypted; run the parties inside a VPN or an SSH tunnel",
            stacklevel=2,
        )


def open_store(address: PartyAddress, *, parties: int, timeout_seconds: float) -> Any:
    """The rendezvous store: hosted by the model owner (tcp://) or a shared file (file://)."""
    from torch.distributed import FileStore, TCPStore

    url = urlparse(address.rendezvous)
    if url.scheme == "tcp" and url.hostname and url.port:
        return TCPStore(
            url.hostname,
            url.port,
            is_master=address.rank == 0,
            timeout=datetime.timedelta(seconds=timeout_seconds),
            wait_for_workers=False,
        )
    if url.scheme == "file" and url.path:
        return FileStore(url.path, parties)
    raise PartyFailure(
        f"{address.role}: rendezvous {address.rendezvous!r} must be tcp://HOST:PORT or file:///PATH"
    )


def secret_from_environment() -> bytes:
    """The run secret named by $SECUREMARK_SECRET_FILE (the local launcher sets it)."""
    path = os.environ.get(SECRET_FILE_VARIABLE)
    if not path:
        raise PartyFailure(
            f"no run secret: pass --secret-file, or set {SECRET_FILE_VARIABLE}; "
            "parties/make_config.py writes RUN/run.secret"
        )
    try:
        return read_secret(Path(path))
    except SecretFileError as error:
        raise PartyFailure(str(error)) from None


@contextlib.contextmanager
def _process_group_on(store: Any, *, then: Callable[[], None]) -> Iterator[None]:
    """Make CrypTen's process group use `store` (already authenticated), then run `then`
    on the new connections before CrypTen sends anything over them (its PRNG seeds)."""
    import torch.distributed as dist

    original = dist.init_process_group

    def init(*, backend: str, world_size: int, rank: int, **options: Any) -> None:
        options.pop("init_method", None)
        original(backend=backend, store=store, world_size=world_size, rank=rank, **options)
        then()

    dist.init_process_group = init
    try:
        yield
    finally:
        dist.init_process_group = original


def _confirm_channels(gate: RunAuthenticator) -> None:
    import torch.distributed as dist

    mine = torch.tensor(list(gate.channel_tag()), dtype=torch.uint8)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    gate.check_channel_tags([bytes(tag.tolist()) for tag in gathered])


def _authenticated_group(
    store: Any,
    *,
    rank: int,
    parties: int,
    secret: bytes,
    describe: Callable[[int], str],
    timeout_seconds: float,
    init_group: Callable[[], None],
) -> None:
    """Authenticate `parties` ranks on `store`, then connect them over gloo (`init_group`
    runs ``init_process_group``) and confirm that every connection knows the secret."""
    gate = RunAuthenticator(
        store=store,
        rank=rank,
        parties=parties,
        secret=secret,
        describe=describe,
        join_seconds=timeout_seconds,
    )
    gate.authenticate()
    with _process_group_on(store, then=lambda: _confirm_channels(gate)):
        init_group()


@contextlib.contextmanager
def _start_failures(address: PartyAddress) -> Iterator[None]:
    """Turn start-up errors into PartyFailure subclasses that name the party."""
    try:
        yield
    except AuthenticationFailure as error:
        if address.rank == 0:
            time.sleep(LINGER_SECONDS)  # keep the store up while the others read the refusal
        raise AuthenticationRefused(f"refuses to go on: {error}") from None
    except PartyMissing as error:
        if address.rank == 0:
            time.sleep(LINGER_SECONDS)  # keep the store up until the others time out too
        raise PartyFailure(f"{address.role} cannot start: {error}") from None
    except PartyFailure:
        raise
    except (RuntimeError, ValueError) as error:
        raise PartyFailure(
            f"{address.role} could not reach the others at {address.rendezvous}: {error}"
        ) from None


def open_handoff_group(
    address: PartyAddress, *, store: Any, secret: bytes, timeout_seconds: float
) -> None:
    """The plain gloo group of the model owner and every data owner (no dealer), authenticated,
    for the hand-over of ``--topology two``; close it with ``close_group``."""
    import torch.distributed as dist

    def init_group() -> None:
        dist.init_process_group(
            backend="gloo",
            world_size=address.world_size,
            rank=address.rank,
            timeout=datetime.timedelta(seconds=timeout_seconds),
        )

    with _start_failures(address):
        _authenticated_group(
            PrefixStore(HANDOFF_STORE_PREFIX, store),
            rank=address.rank,
            parties=address.world_size,
            secret=secret,
            describe=lambda rank: role_name(rank, address.world_size),
            timeout_seconds=timeout_seconds,
            init_group=init_group,
        )


def close_group() -> None:
    """Leave the current plain gloo group once everybody has got what it was sent."""
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def start_crypten(
    address: PartyAddress,
    *,
    provider: str,
    timeout_seconds: float,
    secret: bytes | None = None,
    store: Any = None,
) -> Any:
    """Authenticate every party, then set CrypTen's provider and initialise its communicator.

    No share flows before each rank has proven that it knows the run `secret` (default:
    the file named by $SECUREMARK_SECRET_FILE), see :mod:`securemark_mpc.mpc.auth`.
    `store` is the rendezvous store when this process has already opened it (a hand-over
    came first); CrypTen's keys then get a prefix of their own.
    """
    os.environ.update(
        RANK=str(address.rank),
        WORLD_SIZE=str(address.world_size),
        RENDEZVOUS=address.rendezvous,
        DISTRIBUTED_BACKEND="gloo",
    )
    # One intra-op thread per party: several parties share the cores of one machine.
    torch.set_num_threads(int(os.environ.get("SECUREMARK_THREADS", "1")))
    secret = secret if secret is not None else secret_from_environment()
    crypten = load_crypten(timeout_seconds=timeout_seconds)
    crypten.cfg.mpc.provider = provider.upper()
    crypten.cfg.communicator.verbose = True  # count rounds and bytes
    parties = address.world_size + (1 if address.use_dealer else 0)
    with _start_failures(address):
        if store is None:
            store = open_store(address, parties=parties, timeout_seconds=timeout_seconds)
        else:
            store = PrefixStore(COMPUTE_STORE_PREFIX, store)
        _authenticated_group(
            store,
            rank=address.rank,
            parties=parties,
            secret=secret,
            describe=lambda rank: role_name(rank, address.world_size),
            timeout_seconds=timeout_seconds,
            init_group=crypten.init,
        )
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


def _words(text: str) -> list[int]:
    """A SHA-256 digest of `text` as four 56-bit integers (they fit a long tensor)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [int.from_bytes(digest[i : i + 7], "big") for i in range(0, 28, 7)]


def exchange_handshake(
    all_gather: Callable[[torch.Tensor], list[torch.Tensor]],
    address: PartyAddress,
    *,
    digest: str,
    data_settings: dict[str, str],
    values: list[int],
) -> list[list[int]]:
    """All parties of a group swap their config digest, data settings and a few integers.

    `all_gather` is the group's: CrypTen's communicator, or the hand-over's gloo group.

    Returns every party's integers (e.g. shard sizes, resume epoch). A config digest or
    a data setting (image shape, class names, normalisation) that differs from the model
    owner's stops all parties with ConfigMismatch, naming who differs and in what.
    """
    names = sorted(data_settings)
    checked = {"settings": digest, **{name: data_settings[name] for name in names}}
    mine = torch.tensor(
        [word for text in checked.values() for word in _words(text)] + list(values),
        dtype=torch.long,
    )
    gathered = all_gather(mine)
    width = 4 * len(checked)
    differences = [
        (rank, what)
        for index, what in enumerate(checked)
        for rank, row in enumerate(gathered)
        if not torch.equal(row[4 * index : 4 * index + 4], gathered[0][4 * index : 4 * index + 4])
    ]
    if differences:
        if any(what == "settings" for _, what in differences):
            hint = "compare their config.json"
        else:
            hint = "this party has " + "; ".join(f"{k} {v}" for k, v in data_settings.items())
        named = ", ".join(
            f"{role_name(rank, address.world_size)} differs in {what}" for rank, what in differences
        )
        raise ConfigMismatch(
            f"configuration mismatch with the model owner: {named} ({hint}); every party stops"
        )
    return [row[width:].tolist() for row in gathered]


def die(message: str, *, code: int = 1) -> None:
    """Print and leave at once: gloo's destructors can block on a dead peer."""
    print(message, file=sys.stderr, flush=True)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)
