"""The owner's black-box key: which labels each keyed query can carry, and the behavioural code.

Separate from the weight-mark key (``fingerprint_key.json``) and from its code: the
behavioural code has its own secret biases and codeword seed, and its positions are
the keyed tilt directions of :mod:`securemark_mpc.blackbox.tilt` (``positions`` of
them, each read by all the queries), so its length is set by what the query answers
can carry, not by the carrier tensor, and a verdict from answers is evidence
independent of the weight mark. Customer j's behavioural codeword is drawn from
(codeword seed, j), so the registry's customer index is all that is needed to
recompute it. The file is mode 0600: with it a thief would know which two labels
every query hesitates between and each customer's answers.
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

KEY_FORMAT = "securemark-blackbox-key/2"
_SEED_WORDS = 4  # 128-bit seeds
_DOMAIN = 0xB1AC_B0C5  # separates these seeds from the weight key's


@dataclass(frozen=True)
class BehaviourEmbedConfig:
    """How a copy learns its tilt (see :func:`securemark_mpc.blackbox.embed.embed_tilt`).

    ``gap``: the typical logit gap (RMS over the queries) the tilt puts on each query;
    a larger tilt survives more (distillation most of all) and costs more accuracy.
    ``temperature`` and ``ridge`` shape the norm the tilt's directions are smallest in
    (:func:`securemark_mpc.blackbox.tilt.boundary_metric`): the retained data's gaps to
    rivals within a few ``temperature`` logits, plus ``ridge`` times the plain norm.
    ``steps`` full-batch Adam steps (``learning_rate``) then pull every query's gap to
    its target while keeping the owner's images (and cached training features) at least
    ``margin`` logits inside their class, weighed by ``retention_weight``.
    """

    gap: float = 0.7
    temperature: float = 1.0
    ridge: float = 0.03
    margin: float = 2.0
    retention_weight: float = 10.0
    learning_rate: float = 1e-3
    steps: int = 200

    def __post_init__(self) -> None:
        if not (self.gap > 0 and self.temperature > 0 and self.ridge > 0):
            raise ValueError("gap, temperature and ridge must be positive")
        if not (self.margin >= 0 and self.retention_weight >= 0):
            raise ValueError("margin and retention_weight must be non-negative")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.steps < 0:
            raise ValueError(f"steps must be non-negative, got {self.steps}")


@dataclass(frozen=True)
class BehaviourConfig:
    """What :func:`securemark_mpc.blackbox.store.ensure_blackbox` needs to make a key.

    ``queries`` is the query budget (answers asked of a suspect); ``positions`` the
    code length (tilt directions), at most what the queries can tell apart. Biases are
    arcsine on [t, 1 - t] with t = ``cutoff``: Tardos' t = 1/(300c) guards against large
    coalitions, but a bias near 0 or 1 makes a position that all of a few colluders
    share and that a noisy read-out barely decides; on digits t = 0.05 with 256
    positions traced 3 colluders voting by majority in 50 of 50 trials, t = 1/900 with
    128 in 33. ``epsilon`` bounds the chance of accusing any innocent customer, for any t.
    """

    queries: int = 1000
    positions: int = 256
    collusion_size: int = 3
    cutoff: float = 0.05
    epsilon: float = 1e-3
    embed: BehaviourEmbedConfig = field(default_factory=BehaviourEmbedConfig)

    def __post_init__(self) -> None:
        if not 1 <= self.positions <= self.queries:
            raise ValueError(
                f"positions must lie in 1..queries ({self.queries}), got {self.positions}"
            )

    @property
    def code(self) -> CodeConfig:
        return CodeConfig(
            length=self.positions,
            collusion_size=self.collusion_size,
            epsilon=self.epsilon,
            cutoff=self.cutoff,
        )


@dataclass(frozen=True)
class BlackboxKey:
    query_seed: int  # picks the owner's images that each query mixes
    codeword_seed: int
    rotation_seed: int  # mixes the tilt's directions
    biases: tuple[float, ...]
    code: CodeConfig
    embed: BehaviourEmbedConfig
    first: tuple[int, ...]  # per query: the label of a positive gap
    second: tuple[int, ...]  # per query: the label of a negative gap

    @property
    def length(self) -> int:
        """Code positions."""
        return self.code.length

    @property
    def queries(self) -> int:
        return len(self.first)

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
            rotation_seed=int(payload["rotation_seed"]),
            biases=tuple(float(p) for p in payload["biases"]),
            code=CodeConfig(**payload["code"]),
            embed=BehaviourEmbedConfig(**payload["embed"]),
            first=tuple(int(c) for c in payload["first"]),
            second=tuple(int(c) for c in payload["second"]),
        )
        if len(key.biases) != key.length or len(key.first) != len(key.second):
            raise ValueError("biases and code length, or the label pairs, disagree")
        return key


def split_seed(seed: int) -> tuple[int, int, int, int]:
    """Independent 128-bit seeds (queries, codewords, biases, rotation) from one master seed.

    Mixed with a constant of its own, so that the weight key made from the same seed
    (``issue --key-seed``) shares none of these.
    """
    children = np.random.SeedSequence([seed, _DOMAIN]).spawn(4)
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
