"""The model owner's fingerprint key: which weights carry the mark, how they are read, the code.

The key holds the seed of the projection matrix X, the name of the carrier weight tensor
(in the plaintext partition), the Tardos biases, the secret seed from which every
customer's codeword is drawn, and the embedding hyperparameters (so that every copy of a
run is marked the same way). It never goes into a copy: with it a thief could aim at
exactly the weights and directions that hold the mark. It is saved with mode 0600.

X is m × |w| with entries ±1, read from PCG64's raw 64-bit output, whose stream NumPy
guarantees across versions (Generator.standard_normal's is not guaranteed), so a key
keeps reading the same bits from the same copy after an upgrade.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from securemark_mpc.config import ConfigError
from securemark_mpc.fingerprint.codes import CodeConfig, sample_biases, sample_codeword
from securemark_mpc.models import ModelSpec, build_model, public_part

KEY_FORMAT = "securemark-fingerprint-key/1"
_SEED_WORDS = 4  # 128-bit seeds


@dataclass(frozen=True)
class EmbedConfig:
    """How a codeword is written into a copy (see :func:`securemark_mpc.fingerprint.embed.embed`).

    ``margin`` τ: embedding stops once every projection has the codeword's sign and
    |z| >= τ. Projections of an independent model are N(0, 1)-like; tracing weighs each
    bit by tanh(|z| / τ) and a single leaker is traced at bit error rates far above 10%,
    so τ = 1 suffices, and a smaller mark keeps each hidden unit recognisable for
    alignment. ``mark_weight`` is λ in KL + λ·BCE; the optimiser is full-batch SGD with
    momentum. A small λ lets the KL term keep up while the bits reach their margin
    (digits, 304 bits, 60 copies: λ = 2 cost 0.56 pp median, 1.11 at worst; λ = 0.25
    costs 0.14, 0.56 at worst) at 5× the steps, hence the larger learning rate.
    ``excited_energy``: the carrier moves only within the fewest input directions that
    hold this share of its inputs' energy on the owner's features (behind ``cutnorm``:
    15 of 32 cut directions on the digits twin, 20 on MNIST's; 31 on the MPC models
    trained with weight decay, see the README), where the data's own signal lives.
    """

    margin: float = 1.0
    mark_weight: float = 0.25
    learning_rate: float = 0.2
    momentum: float = 0.9
    max_steps: int = 2000
    excited_energy: float = 0.99

    def __post_init__(self) -> None:
        if not (self.margin > 0 and self.mark_weight > 0 and self.learning_rate > 0):
            raise ValueError("margin, mark_weight and learning_rate must be positive")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        if not 0 < self.excited_energy <= 1:
            raise ValueError(f"excited_energy must lie in (0, 1], got {self.excited_energy}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")


@dataclass(frozen=True)
class FingerprintConfig:
    """What :func:`keygen` needs besides the architecture; ``carrier=None`` picks the default."""

    code: CodeConfig = field(default_factory=CodeConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    carrier: str | None = None


@dataclass(frozen=True)
class FingerprintKey:
    projection_seed: int
    codeword_seed: int
    carrier: str  # state-dict name, e.g. "6.weight"
    carrier_shape: tuple[int, ...]
    biases: tuple[float, ...]
    code: CodeConfig
    embed: EmbedConfig

    @property
    def length(self) -> int:
        return self.code.length

    def bias_array(self) -> np.ndarray:
        return np.asarray(self.biases, dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["format"] = KEY_FORMAT
        payload["carrier_shape"] = list(self.carrier_shape)
        payload["biases"] = list(self.biases)
        return payload

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> FingerprintKey:
        if payload.get("format") != KEY_FORMAT:
            raise ValueError(f"not a {KEY_FORMAT} file")
        return cls(
            projection_seed=int(payload["projection_seed"]),
            codeword_seed=int(payload["codeword_seed"]),
            carrier=str(payload["carrier"]),
            carrier_shape=tuple(int(d) for d in payload["carrier_shape"]),
            biases=tuple(float(p) for p in payload["biases"]),
            code=CodeConfig(**payload["code"]),
            embed=EmbedConfig(**payload["embed"]),
        )


def _linear_weights(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Name and shape of every Linear weight in the plaintext partition."""
    public = public_part(build_model(spec, seed=0), spec)
    return {
        f"{name}.weight": tuple(module.weight.shape)
        for name, module in public.named_children()
        if isinstance(module, nn.Linear)
    }


def default_carrier(spec: ModelSpec) -> str:
    """The largest Linear weight of the plaintext partition other than the output layer.

    The more weights carry m bits, the smaller the change per weight (the relative
    change needed scales like sqrt(m / |w|)), so accuracy suffers least and noise or
    pruning must be larger to flip a bit. The output layer is the last resort only:
    retraining the last layer would wipe it. With a narrow cut and a plaintext head
    cut → 256 → classes this is the head's first weight (256 × cut); for the older
    digits-cnn split it is "6.weight" (512 → 64). Its rows are hidden units, which
    extraction reads one unit at a time (see :mod:`.extract`), and carriers are Linear so
    that embedding can steer the mark by what the layer's inputs excite (see :mod:`.embed`).
    """
    candidates = _linear_weights(spec)
    if not candidates:
        raise ConfigError("the plaintext partition has no Linear layer to carry a fingerprint")
    hidden = list(candidates)[:-1] or list(candidates)
    return max(hidden, key=lambda name: math.prod(candidates[name]))


def _seed(sequence: np.random.SeedSequence) -> int:
    return int.from_bytes(sequence.generate_state(_SEED_WORDS).tobytes(), "little")


def keygen(*, spec: ModelSpec, config: FingerprintConfig, seed: int) -> FingerprintKey:
    """Make a key for models of this architecture; everything random comes from ``seed``.

    Use :func:`fresh_seed` for a real key: whoever knows the seed knows the key.
    """
    carrier = config.carrier or default_carrier(spec)
    shapes = _linear_weights(spec)
    if carrier not in shapes:
        raise ConfigError(
            f"carrier {carrier!r} is not a Linear weight of the plaintext partition (the "
            f"private partition must stay identical in every copy); choose from {sorted(shapes)}"
        )
    projection, codewords, biases = np.random.SeedSequence(seed).spawn(3)
    return FingerprintKey(
        projection_seed=_seed(projection),
        codeword_seed=_seed(codewords),
        carrier=carrier,
        carrier_shape=shapes[carrier],
        biases=tuple(sample_biases(config=config.code, rng=np.random.default_rng(biases)).tolist()),
        code=config.code,
        embed=config.embed,
    )


def fresh_seed() -> int:
    """128 bits from the operating system, for keys nobody can recompute."""
    return secrets.randbits(128)


def projection_matrix(key: FingerprintKey) -> torch.Tensor:
    """X: m × |w| float32 entries ±1, from the key's projection seed."""
    m, n = key.length, math.prod(key.carrier_shape)
    raw = np.random.PCG64(key.projection_seed).random_raw(-(-m * n // 64))
    bits = np.unpackbits(raw.astype("<u8").view(np.uint8), count=m * n).reshape(m, n)
    return torch.from_numpy(bits).to(torch.float32).mul_(2).sub_(1)


def codeword_for(*, key: FingerprintKey, index: int) -> np.ndarray:
    """Customer ``index``'s codeword: Bernoulli(biases), seeded by (codeword seed, index).

    Reissuing a copy to the same customer therefore reproduces the same codeword.
    """
    if index < 0:
        raise ValueError(f"customer index must be non-negative, got {index}")
    rng = np.random.default_rng([key.codeword_seed, index])
    return sample_codeword(biases=key.bias_array(), rng=rng)


def write_owner_only_json(path: Path, payload: dict[str, Any]) -> None:
    """Write key material as JSON, readable by the owner only (0600), atomically."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        json.dump(payload, handle, indent=2)
        handle.write("\n")
    os.replace(temporary, path)


def save_key(path: Path, key: FingerprintKey) -> None:
    """Write the key, readable by the owner only."""
    write_owner_only_json(path, key.to_json())


def load_key(path: Path) -> FingerprintKey:
    """Read a key; a missing or damaged key is a ConfigError (exit 2 in the CLI)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no fingerprint key (issue a copy first)")
    try:
        return FingerprintKey.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path}: not a valid fingerprint key ({error})") from None
