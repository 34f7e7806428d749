"""Per-party checkpoints: each party saves only its own shares.

The private weights stay secret-shared between epochs too, so no file holds them in
plaintext until training ends. Files are written atomically and read back with
``weights_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from securemark_mpc.mpc.private_partition import export_shares, import_shares
from securemark_mpc.mpc.session import PartyFailure


def momentum_shares(private: Any, optimizer: Any) -> dict[str, torch.Tensor]:
    """This party's own shares of the momentum buffers (none before the first step)."""
    shares = {}
    for name, param in private.named_parameters():
        buffer = optimizer.state.get(id(param), {}).get("momentum_buffer")
        if buffer is not None:
            shares[name] = buffer.share.clone()
    return shares


def restore_momentum(
    crypten: Any, private: Any, optimizer: Any, shares: dict[str, torch.Tensor]
) -> None:
    """Restore buffers saved by momentum_shares; one not saved starts at zero again."""
    for name, param in private.named_parameters():
        if name in shares:
            buffer = crypten.mpc.MPCTensor.from_shares(shares[name].clone())
            optimizer.state[id(param)] = {"momentum_buffer": buffer}
        else:
            optimizer.state.pop(id(param), None)


def save(
    path: Path, *, epoch: int, digest: str, private: Any, optimizer: Any, owner: Any | None
) -> None:
    state: dict[str, Any] = {
        "epoch": epoch,
        "digest": digest,
        "shares": export_shares(private),
        "momentum": momentum_shares(private, optimizer),
    }
    if owner is not None:
        state["owner"] = {
            "model": owner.model.state_dict(),
            "optimizer": owner.optimizer.state_dict(),
            "history": owner.history,
            "revealed": owner.revealed.epochs,
            "seen": owner.revealed.seen,
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load(path: Path, *, digest: str) -> dict[str, Any]:
    if not path.is_file():
        raise PartyFailure(f"no checkpoint at {path}: nothing to resume")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("digest") != digest:
        raise PartyFailure(
            f"{path} was written with other settings; resume with the run's own config"
        )
    return state


def restore(
    state: dict[str, Any], *, crypten: Any, private: Any, optimizer: Any, owner: Any | None
) -> int:
    """Load shares (and the owner's plaintext part) back; return the next epoch."""
    import_shares(private, state["shares"])
    restore_momentum(crypten, private, optimizer, state["momentum"])
    if owner is not None:
        owner.model.load_state_dict(state["owner"]["model"])
        owner.optimizer.load_state_dict(state["owner"]["optimizer"])
        owner.history[:] = state["owner"]["history"]
        owner.revealed.epochs[:] = state["owner"]["revealed"]
        owner.revealed.seen = state["owner"]["seen"]
    return int(state["epoch"])
