"""What every removal attack shares: a registry, the attacker's context, training loops.

An attack takes one model (several for collusion) and returns a NEW model of the same
architecture; it never changes its inputs. It stores only its hyperparameters, and
the attacker trains only on the auxiliary split, which is disjoint from the owners'
training data.
"""

from __future__ import annotations

import copy
import dataclasses
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
    trains: ClassVar[bool] = False  # trains on the attacker's (auxiliary) split
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


class Chain:
    """Attacks run in order, each on the previous one's output: `prune:0.5,finetune-all:5`.

    Only the first may be a collusion attack (it is the one that receives the models).
    """

    def __init__(self, attacks: list[Attack]) -> None:
        if not attacks:
            raise AttackError("an attack chain needs at least one attack")
        if any(attack.colluders for attack in attacks[1:]):
            raise AttackError("only the first attack of a chain can take several models")
        self.attacks = attacks
        self.colluders = attacks[0].colluders

    @property
    def name(self) -> str:
        return ",".join(f"{attack.name}:{attack.strength:g}" for attack in self.attacks)

    def __call__(self, models: list[nn.Sequential], context: AttackContext) -> nn.Sequential:
        model = self.attacks[0](models, context)
        for attack in self.attacks[1:]:
            model = attack([model], dataclasses.replace(context, spec=spec_of(model, context.spec)))
        return model


def parse_chain(text: str) -> Chain:
    """`A[:S],B[:S],...`, each part as for :func:`parse_attack`."""
    parts = text.split(",")
    if any(not part.strip() for part in parts):
        raise AttackError(f"empty attack in chain {text!r}")
    return Chain([parse_attack(part.strip()) for part in parts])


def spec_of(model: nn.Sequential, spec: ModelSpec) -> ModelSpec:
    """``spec`` with each layer's width read from ``model`` (dummy units widen layers)."""
    layers = []
    for layer, module in zip(spec.layers, model, strict=True):
        width = getattr(module, "out_channels", getattr(module, "out_features", None))
        layers.append({**layer, "out": width} if "out" in layer and width else dict(layer))
    return dataclasses.replace(spec, layers=tuple(layers))


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
