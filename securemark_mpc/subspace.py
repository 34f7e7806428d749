"""Which input directions a layer's data excite: shared by the embedding and the attacks on it.

Pure linear algebra on activations, no key: the attacks (which must stay key-blind) use
it to find what their data leave dormant, the embedding to stay where the data live.
"""

from __future__ import annotations

import torch


def excited_subspace(inputs: torch.Tensor, energy: float, min_directions: int = 1) -> torch.Tensor:
    """Projector onto the fewest input directions that hold ``energy`` of the inputs' energy
    (at least ``min_directions`` of them); ``inputs`` is (samples, features)."""
    _, values, vectors = torch.linalg.svd(inputs.double(), full_matrices=False)
    share = (values**2).cumsum(0) / (values**2).sum().clamp_min(1e-300)
    basis = vectors[: max(int((share < energy).sum()) + 1, min_directions)].T
    return (basis @ basis.T).to(inputs.dtype)
