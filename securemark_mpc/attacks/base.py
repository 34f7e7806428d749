"""What every removal attack shares: a registry, the attacker's context, training loops.

An attack takes one model (several for collusion) and returns a NEW model of the same
architecture; it never changes its inputs. It stores only its hyperparameters, and
the attacker trains only on the auxiliary split, which is disjoint from the owners'
training data.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from securemark_mpc.data import LabeledImages
from securemark_mpc.models import ModelSpec

ATTACKS: dict[str, type[Attack]] = {}


class AttackError(ValueError):
    """A bad attack name, strength or model count (exit 2 on the command line)."""


@dataclass(frozen=True)
class AttackContext:
    spec: ModelSpec
    aux: LabeledImages  # the attacker's own data: the auxiliary split
    seed: int = 0


class Attack(ABC):
    """One removal attack. Subclasses set the class attributes and implement `_apply`."""

    name: ClassVar[str]
    strength_name: ClassVar[str]  # what STRENGTH in NAME:STRENGTH means
    default_strength: ClassVar[float]
    sweep: ClassVar[tuple[float, ...]]  # strengths the robustness report tries
    colluders: ClassVar[bool] = False  # takes several models
    strength_range: ClassVar[tuple[float, float]] = (0.0, float("inf"))

    def __init__(self, strength: float | None = None) -> None:
        self.strength = self.default_strength if strength is None else float(strength)
        low, high = self.strength_range
        if not low <= self.strength <= high:
            raise AttackError(
                f"{self.name}: {self.strength_name} must be in [{low}, {high}], got {self.strength}"
            )

    def __call__(self, models: list[nn.Sequential], context: AttackContext) -> nn.Sequential:
        if not models:
            raise AttackError(f"{self.name} needs at least one model")
        if len(models) > 1 and not self.colluders:
            raise AttackError(
                f"{self.name} takes one model, got {len(models)}; collusion attacks take several"
            )
        copies = [copy.deepcopy(model) for model in models]  # inputs stay untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)
            return self._apply(copies, context)

    @abstractmethod
    def _apply(self, models: list[nn.Sequential], context: AttackContext) -> nn.Sequential: ...


def register(cls: type[Attack]) -> type[Attack]:
    ATTACKS[cls.name] = cls
    return cls


def parse_attack(text: str) -> Attack:
    """`NAME` or `NAME:STRENGTH`, e.g. `prune:0.8`; never eval'd, looked up by name."""
    name, _, strength = text.partition(":")
    if name not in ATTACKS:
        raise AttackError(f"unknown attack {name!r}; known: {sorted(ATTACKS)}")
    try:
        value = float(strength) if strength else None
    except ValueError:
        raise AttackError(f"{name}: strength {strength!r} is not a number") from None
    return ATTACKS[name](value)


def train_on_aux(
    model: nn.Module,
    parameters: list[nn.Parameter],
    context: AttackContext,
    *,
    epochs: int,
    learning_rate: float,
    targets: nn.Module | None = None,
    temperature: float = 1.0,
    batch_size: int = 32,
    after_step=None,  # type: ignore[no-untyped-def]
) -> None:
    """SGD (momentum 0.9) on the attacker's data: on its labels, or on `targets`' soft labels."""
    optimizer = torch.optim.SGD(parameters, lr=learning_rate, momentum=0.9)
    images, labels = context.aux.images, context.aux.labels
    generator = torch.Generator().manual_seed(context.seed)
    if targets is not None:
        targets.eval()
    for _ in range(epochs):
        model.train()
        for indices in torch.randperm(len(labels), generator=generator).split(batch_size):
            logits = model(images[indices])
            if targets is None:
                loss = nn.functional.cross_entropy(logits, labels[indices])
            else:
                with torch.no_grad():
                    soft = torch.softmax(targets(images[indices]) / temperature, dim=1)
                loss = (
                    nn.functional.kl_div(
                        torch.log_softmax(logits / temperature, dim=1), soft, reduction="batchmean"
                    )
                    * temperature**2
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
    model.eval()


def weight_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The weight matrices and kernels (not biases): what pruning and noise act on."""
    return [param for name, param in model.named_parameters() if name.endswith("weight")]


def last_linear(model: nn.Sequential) -> nn.Linear:
    return [module for module in model if isinstance(module, nn.Linear)][-1]
