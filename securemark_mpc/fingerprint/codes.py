"""Binary Tardos fingerprinting codes (Tardos, "Optimal probabilistic fingerprint codes", STOC 2003).

Every position i has a secret bias p_i drawn from the arcsine density
f(p) ∝ 1/sqrt(p(1-p)) on [t, 1-t]; customer j's bit i is Bernoulli(p_i). The biases are
part of the owner's key. Randomness always comes from a caller-seeded ``np.random.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CodeConfig:
    """Parameters of a binary Tardos code.

    ``cutoff`` is t: biases are kept away from 0 and 1 so that no position's score can
    dominate. ``None`` uses Tardos' choice t = 1/(300c) for a code designed against c
    colluders. The accusation threshold in :mod:`.trace` is computed from the code's own
    statistics, so t trades tracing power only; the false-accusation bound holds for any t.
    """

    length: int = 304
    collusion_size: int = 2
    epsilon: float = 1e-3
    cutoff: float | None = None

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"code length must be positive, got {self.length}")
        if self.collusion_size < 1:
            raise ValueError(f"collusion size must be positive, got {self.collusion_size}")
        if not 0.0 < self.epsilon < 1.0:
            raise ValueError(f"epsilon must lie in (0, 1), got {self.epsilon}")
        if self.cutoff is not None and not 0.0 < self.cutoff < 0.5:
            raise ValueError(f"cutoff must lie in (0, 0.5), got {self.cutoff}")

    @property
    def resolved_cutoff(self) -> float:
        """The cutoff t actually used."""
        return self.cutoff if self.cutoff is not None else 1.0 / (300 * self.collusion_size)


def sample_biases(*, config: CodeConfig, rng: np.random.Generator) -> np.ndarray:
    """Draw ``config.length`` biases from the arcsine density on [t, 1-t].

    Uses Tardos' parametrisation p = sin²(r) with r uniform on [arcsin√t, π/2 - arcsin√t],
    which has exactly that density.
    """
    r0 = np.arcsin(np.sqrt(config.resolved_cutoff))
    r = rng.uniform(r0, np.pi / 2 - r0, size=config.length)
    return np.sin(r) ** 2


def sample_codeword(*, biases: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one customer's codeword: bit i is Bernoulli(biases[i]), as uint8."""
    return (rng.random(np.shape(biases)) < biases).astype(np.uint8)
