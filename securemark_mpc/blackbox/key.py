"""The owner's black-box key: which labels each keyed query can carry, and the behavioural code.

Separate from the weight-mark key (``fingerprint_key.json``) and from its code: the
behavioural code has its own secret biases and codeword seed and one position per
query, so its length is set by the query budget (a few hundred answers), not by the
carrier tensor, and a verdict from answers is evidence independent of the weight mark.
Customer j's behavioural codeword is drawn from (codeword seed, j), so the registry's
customer index is all that is needed to recompute it. The file is mode 0600: with it
a thief would know which two labels every query hesitates between and each
customer's answers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from securemark_mpc.config import ConfigError
from securemark_mpc.fingerprint.codes import CodeConfig, sample_biases, sample_codeword
from securemark_mpc.fingerprint.key import write_owner_only_json

KEY_FORMAT = "securemark-blackbox-key/1"
_SEED_WORDS = 4  # 128-bit seeds
_DOMAIN = 0xB1AC_B0C5  # separates these seeds from the weight key's


@dataclass(frozen=True)
class BehaviourEmbedConfig:
    """How a copy learns its answers (see :func:`securemark_mpc.blackbox.embed.embed_behaviour`).

    Embedding stops once ``target_fraction`` of the queries answer their codeword's
    label, or after ``max_steps``: the Tardos score tolerates a few wrong answers, and
    every further step costs test accuracy. ``retention_weight`` weighs keeping the
    copy's logits on the cached training features where the unmarked model had them.
    """

    target_fraction: float = 0.95
    retention_weight: float = 10.0
    learning_rate: float = 0.3
    momentum: float = 0.9
    max_steps: int = 200

    def __post_init__(self) -> None:
        if not 0.5 < self.target_fraction <= 1.0:
            raise ValueError(f"target_fraction must lie in (0.5, 1], got {self.target_fraction}")
        if not (self.retention_weight >= 0 and self.learning_rate > 0):
            raise ValueError("retention_weight must be >= 0 and learning_rate positive")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")


@dataclass(frozen=True)
class BehaviourConfig:
    """What :func:`securemark_mpc.blackbox.store.ensure_blackbox` needs to make a key.

    ``queries`` is both the query budget and the code length (one position per query).
    The code is designed against ``collusion_size`` colluders (biases in [t, 1 - t],
    t = 1/(300c)); ``epsilon`` bounds the chance of accusing any innocent customer.
    """

    queries: int = 300
    collusion_size: int = 3
    epsilon: float = 1e-3
    embed: BehaviourEmbedConfig = field(default_factory=BehaviourEmbedConfig)

    @property
    def code(self) -> CodeConfig:
        return CodeConfig(
            length=self.queries, collusion_size=self.collusion_size, epsilon=self.epsilon
        )


@dataclass(frozen=True)
class BlackboxKey:
    query_seed: int  # picks the owner's images that each query mixes
    codeword_seed: int
    biases: tuple[float, ...]
    code: CodeConfig
    embed: BehaviourEmbedConfig
    first: tuple[int, ...]  # per query: the label that spells bit 0
    second: tuple[int, ...]  # per query: the label that spells bit 1

    @property
    def length(self) -> int:
        return self.code.length

    def bias_array(self) -> np.ndarray:
        return np.asarray(self.biases, dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload.update(
            format=KEY_FORMAT,
            biases=list(self.biases),
            first=list(self.first),
            second=list(self.second),
        )
        return payload

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> BlackboxKey:
        if payload.get("format") != KEY_FORMAT:
            raise ValueError(f"not a {KEY_FORMAT} file")
        key = cls(
            query_seed=int(payload["query_seed"]),
            codeword_seed=int(payload["codeword_seed"]),
            biases=tuple(float(p) for p in payload["biases"]),
            code=CodeConfig(**payload["code"]),
            embed=BehaviourEmbedConfig(**payload["embed"]),
            first=tuple(int(c) for c in payload["first"]),
            second=tuple(int(c) for c in payload["second"]),
        )
        if not len(key.biases) == len(key.first) == len(key.second) == key.length:
            raise ValueError("biases, label pairs and code length disagree")
        return key


def split_seed(seed: int) -> tuple[int, int, int]:
    """Three independent 128-bit seeds (queries, codewords, biases) from one master seed.

    Mixed with a constant of its own, so that the weight key made from the same seed
    (``issue --key-seed``) shares none of these.
    """
    children = np.random.SeedSequence([seed, _DOMAIN]).spawn(3)
    return tuple(  # type: ignore[return-value]
        int.from_bytes(child.generate_state(_SEED_WORDS).tobytes(), "little") for child in children
    )


def sample_code_biases(*, config: BehaviourConfig, seed: int) -> np.ndarray:
    """The behavioural code's secret biases."""
    return sample_biases(config=config.code, rng=np.random.default_rng(seed))


def codeword_for(*, key: BlackboxKey, index: int) -> np.ndarray:
    """Customer ``index``'s behavioural codeword (one bit per query), reproducible."""
    if index < 0:
        raise ValueError(f"customer index must be non-negative, got {index}")
    return sample_codeword(
        biases=key.bias_array(), rng=np.random.default_rng([key.codeword_seed, index])
    )


def target_labels(*, key: BlackboxKey, codeword: np.ndarray) -> np.ndarray:
    """The label each query must get from the copy that carries ``codeword``."""
    return np.where(np.asarray(codeword) == 1, key.second, key.first).astype(np.int64)


def save_key(path: Path, key: BlackboxKey) -> None:
    """Write the key, readable by the owner only."""
    write_owner_only_json(path, key.to_json())


def load_key(path: Path) -> BlackboxKey:
    """Read a key; a missing or damaged key is a ConfigError (exit 2 in the CLI)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no black-box key (issue a copy or run `securemark queries`)")
    try:
        return BlackboxKey.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path}: not a valid black-box key ({error})") from None
