"""Removal attacks on fingerprinted copies, looked up by name (`prune:0.8`)."""

from securemark_mpc.attacks import collusion, removal  # noqa: F401 - fills the registry
from securemark_mpc.attacks.base import ATTACKS, Attack, AttackContext, AttackError, parse_attack

__all__ = ["ATTACKS", "Attack", "AttackContext", "AttackError", "parse_attack"]
