"""The owner's robustness harness: attack our own fingerprinted copies and score them.

It holds the key (to embed simulated customers and trace the attacked models), so it
lives beside :mod:`securemark_mpc.attacks`, which stays key-blind.
"""

from securemark_mpc.robustness.sweep import (
    RobustnessConfig,
    make_population,
    summarise_targets,
    sweep,
)

__all__ = ["RobustnessConfig", "make_population", "summarise_targets", "sweep"]
