"""The one place where secret-shared values become plaintext.

Every reveal names its receiver and what it is. Only the kinds in ALLOWED_REVEALS
exist, and all go to the model owner: cut-layer activations, labels, and the final
private-partition weights (DESIGN.md, "What leaks by design"), and once an epoch the
count of private values that a wrapped truncation ruined (`wrap_guard`; 0 normally).

Set ``SECUREMARK_REVEAL_LOG`` to a folder to record every revealed tensor (the
privacy-boundary test reads it back).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

MODEL_OWNER = 0
ALLOWED_REVEALS = frozenset({"activations", "labels", "final_weights", "weight_range"})
_counter = {"n": 0}


def reveal(shared: Any, *, kind: str, rank: int, to: int = MODEL_OWNER) -> torch.Tensor | None:
    """Open `shared` to party `to` only; return the plaintext there and None elsewhere."""
    if kind not in ALLOWED_REVEALS:
        raise ValueError(
            f"revealing {kind!r} is not part of the protocol; allowed: {sorted(ALLOWED_REVEALS)}"
        )
    if to != MODEL_OWNER:
        raise ValueError("values are revealed to the model owner (rank 0) only")
    value = shared.get_plain_text(dst=to)
    if rank != to:
        return None
    _record(value, kind=kind, rank=rank)
    return value


def _record(value: torch.Tensor, *, kind: str, rank: int) -> None:
    folder = os.environ.get("SECUREMARK_REVEAL_LOG")
    if not folder:
        return
    _counter["n"] += 1
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    name = f"rank{rank}-{_counter['n']:06d}-{kind}.pt"
    torch.save(value.detach().clone(), path / name)
    with open(path / "reveals.jsonl", "a") as log:
        log.write(
            json.dumps({"rank": rank, "kind": kind, "shape": list(value.shape), "file": name})
            + "\n"
        )
