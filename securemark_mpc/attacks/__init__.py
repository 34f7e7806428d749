"""Removal attacks on fingerprinted copies, looked up by name (`prune:0.8`), and chains.

Attacks are key-blind: nothing here imports the owner's key, registry or copies. The
harness that scores them with the key is :mod:`securemark_mpc.robustness`.
"""

from securemark_mpc.attacks import adaptive, collusion, obfuscate, removal  # noqa: F401 - fills the registry
from securemark_mpc.attacks.base import (
    ATTACKS,
    Attack,
    AttackContext,
    AttackError,
    Chain,
    parse_attack,
    parse_chain,
    spec_of,
)

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackContext",
    "AttackError",
    "Chain",
    "parse_attack",
    "parse_chain",
    "spec_of",
]
