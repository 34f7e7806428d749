"""Secret-sharing a tensor that only one party holds."""

from __future__ import annotations

from typing import Any

import torch


def share_from(
    crypten: Any, *, rank: int, src: int, value: torch.Tensor | None, shape: tuple[int, ...]
) -> Any:
    """Secret-share `value`, which only party `src` holds; the others pass its shape."""
    plain = value if rank == src else torch.zeros(shape)
    return crypten.cryptensor(plain, src=src)
