"""The robustness report: would the leaker still be caught after each attack?

The owner's key and a population of fingerprinted copies are needed. Copies for the
sweep are made in memory for simulated customers whose codeword indices follow the
registry's (so they never collide with a real customer, and nothing is written to the
registry). Every copy of the population is registered for tracing, so an accusation of
anyone but the leaker (or a colluder) counts as framing an innocent.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from securemark_mpc.attacks.base import ATTACKS, AttackContext
from securemark_mpc.data import LabeledImages
from securemark_mpc.fingerprint.embed import embed
from securemark_mpc.fingerprint.extract import extract
from securemark_mpc.fingerprint.key import FingerprintKey, codeword_for
from securemark_mpc.fingerprint.verify import verify_model
from securemark_mpc.models import ModelSpec
from securemark_mpc.plaintext import accuracy

COLLUSION_SIZES = (2, 3, 5)


@dataclass(frozen=True)
class RobustnessConfig:
    attacks: tuple[str, ...] = tuple(sorted(ATTACKS))
    trials: int = 3  # leakers (or colluder sets) per point; collusion points use `collusion_trials`
    collusion_trials: int = 20
    population: int = 8  # simulated customers (needs >= the largest collusion + 1 innocent)
    seed: int = 0
    strengths: dict[str, tuple[float, ...]] = field(
        default_factory=dict
    )  # override an attack's sweep


@dataclass
class Population:
    names: list[str]
    codewords: np.ndarray  # (n, m) uint8
    copies: list[nn.Sequential]


def make_population(
    *,
    model: nn.Sequential,
    spec: ModelSpec,
    key: FingerprintKey,
    features: torch.Tensor,
    labels: torch.Tensor,
    size: int,
    first_index: int,
) -> Population:
    """`size` fingerprinted copies for simulated customers, in memory only."""
    names, codewords, copies = [], [], []
    for offset in tqdm(range(size), desc="embedding simulated customers", unit="copy"):
        codeword = codeword_for(key=key, index=first_index + offset)
        copies.append(
            embed(
                model=model, spec=spec, key=key, codeword=codeword, features=features, labels=labels
            )
        )
        names.append(f"simulated-{first_index + offset}")
        codewords.append(codeword)
    return Population(names=names, codewords=np.stack(codewords), copies=copies)


def _point(
    attacked: nn.Module,
    leakers: list[int],
    population: Population,
    key: FingerprintKey,
    test: LabeledImages,
) -> dict[str, Any]:
    report = verify_model(
        model=attacked, key=key, names=population.names, codewords=population.codewords
    )
    bits, _ = extract(model=attacked, key=key)
    accused = {a.customer for a in report.accused}
    guilty = {population.names[i] for i in leakers}
    return {
        "test_accuracy": accuracy(attacked, test),
        "ber": float(min((bits != population.codewords[i]).mean() for i in leakers)),
        "ours": report.ours,
        "traced": bool(accused & guilty),
        "framed": bool(accused - guilty),
    }


def _summarise(points: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "test_accuracy": statistics.mean(p["test_accuracy"] for p in points),
        "ber": statistics.mean(p["ber"] for p in points),
        "ours_rate": statistics.mean(p["ours"] for p in points),
        "traced_rate": statistics.mean(p["traced"] for p in points),
        "framed_rate": statistics.mean(p["framed"] for p in points),
        "trials": len(points),
    }


def sweep(
    *,
    population: Population,
    key: FingerprintKey,
    context: AttackContext,
    test: LabeledImages,
    unmarked_accuracy: float,
    config: RobustnessConfig,
) -> dict[str, Any]:
    """Every attack at every strength; collusion attacks for 2, 3 and 5 colluders."""
    rng = np.random.default_rng(config.seed)
    results: dict[str, Any] = {"unmarked_test_accuracy": unmarked_accuracy, "attacks": {}}
    results["copies_test_accuracy"] = statistics.mean(
        accuracy(copy, test) for copy in population.copies
    )
    jobs = []
    for name in config.attacks:
        cls = ATTACKS[name]
        for strength in config.strengths.get(name, cls.sweep):
            sizes = (
                [c for c in COLLUSION_SIZES if c < len(population.copies)] if cls.colluders else [1]
            )
            jobs += [(name, strength, size) for size in sizes]
    for name, strength, size in tqdm(jobs, desc="robustness sweep", unit="point"):
        cls = ATTACKS[name]
        trials = config.collusion_trials if cls.colluders else config.trials
        points = []
        for trial in range(trials):
            leakers = sorted(rng.choice(len(population.copies), size=size, replace=False).tolist())
            attack = cls(strength)
            trial_context = AttackContext(
                spec=context.spec, aux=context.aux, seed=config.seed * 1000 + trial
            )
            attacked = attack([population.copies[i] for i in leakers], trial_context)
            points.append(_point(attacked, leakers, population, key, test))
        # collusion attacks have no strength: their x axis is the number of colluders
        x_name, x = ("colluders", size) if cls.colluders else (cls.strength_name, strength)
        results["attacks"].setdefault(name, {"strength_name": x_name, "points": []})
        results["attacks"][name]["points"].append(
            {"strength": x, "colluders": size, **_summarise(points)}
        )
    results["innocent_ever_accused"] = any(
        point["framed_rate"] > 0
        for entry in results["attacks"].values()
        for point in entry["points"]
    )
    return results
