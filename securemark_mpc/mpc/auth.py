"""Who may join a run: every party proves that it knows the run secret before any share flows.

The rendezvous store (a TCPStore hosted by the model owner) lets anyone who reaches
its port read and write any key. So nothing read from it is trusted; only a message
authentication code (HMAC-SHA256 under the run secret) is. Through the store, before
gloo connects:

1. **claim**: each rank writes a fresh random nonce under ``nonce/R`` with
   compare-and-set. If the key already holds another value, the rank is taken and this
   process is refused.
2. **prove**: once every rank's nonce is there, rank R publishes
   ``HMAC(secret, "proof" | R | n_0 | ... | n_last)``, with its own nonce as it made
   it (not as read back). Every verifier's own fresh nonce is inside, so a proof from
   an earlier run or an earlier moment is useless (replay); R is inside, so a proof is
   useless for another rank.
3. **verify**: each rank checks every other rank's proof (``hmac.compare_digest``). A
   failure is published as a refusal, and this rank stops naming the culprits.
4. **accept**: each rank publishes ``HMAC(secret, "accept" | R | transcript)`` and waits
   for everybody's, so that either every party goes on or all stop, named.

Once gloo has connected, :meth:`RunAuthenticator.channel_tag` is exchanged over the real
connections and checked with :meth:`RunAuthenticator.check_channel_tags`: whoever
answers there must know the secret too, even if a stranger rewrote gloo's addresses in
the store. What a stranger can still do is deny service (write keys so that the run
stops); it cannot join or make an honest party accept it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SECRET_BYTES = 32
NONCE_BYTES = 32
PROOF_SECONDS = 15.0  # a party that has joined answers in well under a second
POLL_SECONDS = 0.05
_KEY = "securemark/auth"
_DOMAIN = b"securemark-auth/1"
_LATE = {
    "proof": "did not prove that it knows the run secret",
    "accept": "did not accept the others",
}


class AuthenticationFailure(Exception):
    """A party could not be authenticated; the message names its rank."""


class PartyMissing(Exception):
    """A rank never joined the run (not an authentication failure: nobody answered)."""


class SecretFileError(ValueError):
    """The run secret file is missing, unreadable, malformed or readable by others."""


def write_secret(path: Path) -> Path:
    """Create a fresh run secret, readable by its owner only (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(SECRET_BYTES) + "\n")
    return path


def ensure_secret(path: Path) -> Path:
    """The run secret at `path`, created if the run has none yet (local runs)."""
    return path if path.exists() else write_secret(path)


def read_secret(path: Path) -> bytes:
    """Read a run secret, refusing a file that other users could read."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as error:
        raise SecretFileError(
            f"cannot read the run secret {str(path)!r} ({error.strerror}): copy RUN/run.secret "
            "from whoever ran parties/make_config.py, or pass --secret-file"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(
            f"the run secret {str(path)!r} is accessible to other users (mode "
            f"{stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < SECRET_BYTES:
        raise SecretFileError(
            f"{str(path)!r} is not a run secret ({SECRET_BYTES} random bytes in hex, as "
            "parties/make_config.py writes it)"
        )
    return secret


class RunAuthenticator:
    """One rank's side of the challenge-response over the rendezvous store."""

    def __init__(
        self,
        *,
        store: Any,
        rank: int,
        parties: int,
        secret: bytes,
        describe: Callable[[int], str],
        join_seconds: float,
        proof_seconds: float = PROOF_SECONDS,
    ) -> None:
        self.store = store
        self.rank = rank
        self.parties = parties
        self.secret = secret
        self.describe = describe
        self.join_seconds = join_seconds
        self.proof_seconds = proof_seconds
        self.nonce = os.urandom(NONCE_BYTES)
        self.transcript: bytes | None = None

    def _mac(self, label: bytes, rank: int) -> str:
        assert self.transcript is not None
        message = b"|".join([_DOMAIN, label, str(rank).encode(), self.transcript])
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def _others(self) -> list[int]:
        return [rank for rank in range(self.parties) if rank != self.rank]

    def _names(self, ranks: list[int]) -> str:
        return " and ".join(self.describe(rank) for rank in ranks)

    def _wait(self, kind: str, seconds: float) -> dict[int, bytes]:
        """Every other rank's `kind` value; in the last phase, stop on a proven refusal."""
        found: dict[int, bytes] = {}
        deadline = time.monotonic() + seconds
        while True:
            for rank in self._others():
                if kind == "accept":  # every rank is verified now: its refusal can be checked
                    self._raise_if_refused_by(rank)
                key = f"{_KEY}/{kind}/{rank}"
                if rank not in found and self.store.check([key]):
                    found[rank] = self.store.get(key)
            missing = [rank for rank in self._others() if rank not in found]
            if not missing:
                return found
            if time.monotonic() > deadline:
                names = self._names(missing)
                if kind == "nonce":
                    raise PartyMissing(
                        f"{names} never joined within {seconds:.0f} s (is it running, with "
                        "this rendezvous?)"
                    )
                raise AuthenticationFailure(
                    f"{names} {_LATE[kind]} within {seconds:.0f} s: {names} failed authentication"
                )
            time.sleep(POLL_SECONDS)

    def _raise_if_refused_by(self, rank: int) -> None:
        """A refusal counts only with its MAC: a stranger's fake refusal is ignored."""
        key = f"{_KEY}/refused/{rank}"
        if not self.store.check([key]):
            return
        named, _, tag = self.store.get(key).decode(errors="replace").partition("|")
        if not hmac.compare_digest(
            tag.encode(), self._mac(b"refuse:" + named.encode(), rank).encode()
        ):
            return
        culprits = [int(word) for word in named.split(",") if word.isdigit()]
        raise AuthenticationFailure(
            f"{self.describe(rank)} refused to go on: {self._names(culprits)} failed authentication"
        )

    def _refuse(self, failed: list[int], reason: str) -> None:
        if self.transcript is not None:  # tell the others, provably from this rank
            named = ",".join(map(str, failed))
            tag = self._mac(b"refuse:" + named.encode(), self.rank)
            self.store.set(f"{_KEY}/refused/{self.rank}", f"{named}|{tag}")
        if set(failed) == set(self._others()) and self.parties > 2:
            reason += " (every other party failed: is this party's secret file the run's?)"
        raise AuthenticationFailure(f"{self._names(failed)} failed authentication: {reason}")

    def authenticate(self) -> None:
        """Claim this rank, prove the secret, check everybody's proof; raise naming who failed."""
        claim_key = f"{_KEY}/nonce/{self.rank}"
        held = self.store.compare_set(claim_key, "", self.nonce.hex())
        if held != self.nonce.hex().encode():
            raise AuthenticationFailure(
                f"rank {self.rank} is already taken by another process: "
                f"{self.describe(self.rank)} refuses to start twice"
            )
        nonces = self._wait("nonce", self.join_seconds)
        malformed = [rank for rank, value in nonces.items() if not _is_hex(value, NONCE_BYTES)]
        if malformed:
            self._refuse(malformed, "a malformed nonce in the rendezvous store")
        nonces[self.rank] = self.nonce.hex().encode()
        self.transcript = b"".join(
            bytes.fromhex(nonces[rank].decode()) for rank in range(self.parties)
        )
        self.store.set(f"{_KEY}/proof/{self.rank}", self._mac(b"proof", self.rank))
        proofs = self._wait("proof", self.proof_seconds)
        forged = [rank for rank in self._others() if not self._valid(proofs[rank], b"proof", rank)]
        if forged:
            self._refuse(forged, "a proof that does not match the run secret (or was replayed)")
        self.store.set(f"{_KEY}/accept/{self.rank}", self._mac(b"accept", self.rank))
        accepted = self._wait("accept", self.proof_seconds)
        forged = [
            rank for rank in self._others() if not self._valid(accepted[rank], b"accept", rank)
        ]
        if forged:
            self._refuse(forged, "an acceptance that does not match the run secret")

    def _valid(self, value: bytes, label: bytes, rank: int) -> bool:
        return hmac.compare_digest(value, self._mac(label, rank).encode())

    def channel_tag(self) -> bytes:
        """This rank's proof for the real connections, once they exist."""
        return bytes.fromhex(self._mac(b"channel", self.rank))

    def check_channel_tags(self, tags: list[bytes]) -> None:
        """Every rank's tag as received over gloo; raise naming those that do not match."""
        forged = [
            rank
            for rank, tag in enumerate(tags)
            if rank != self.rank
            and not hmac.compare_digest(tag, bytes.fromhex(self._mac(b"channel", rank)))
        ]
        if forged:
            raise AuthenticationFailure(
                f"{self._names(forged)} failed authentication on the data connection: whoever "
                "answers there does not know the run secret (were the rendezvous addresses rewritten?)"
            )


def _is_hex(value: bytes, size: int) -> bool:
    try:
        return len(bytes.fromhex(value.decode())) == size
    except ValueError:
        return False
