"""Single-model removal attacks: fine-tuning, retraining, pruning, quantisation, noise,
overwriting and distillation. Defaults follow the papers that introduced them."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from securemark_mpc.attacks.base import (
    Attack,
    last_linear,
    register,
    train_on_aux,
    weight_tensors,
)
from securemark_mpc.models import build_model, private_part, public_part

# Adi et al. 2018 ("Turning your weakness into a strength", USENIX Security) fine-tune
# with SGD at lr 1e-3 for FTLL/FTAL/RTLL/RTAL; Uchida et al. 2017 use lr 1e-3 too.
FINETUNE_LR = 1e-3


@register
class FinetuneLast(Attack):
    """Fine-tune the last layer only (FTLL, Adi et al. 2018)."""

    trains = True
    name, strength_name, default_strength = "finetune-last", "epochs", 10
    sweep = (1, 5, 10, 20)

    def _apply(self, models, context):
        model = models[0]
        train_on_aux(
            model,
            list(last_linear(model).parameters()),
            context,
            epochs=int(self.strength),
            learning_rate=FINETUNE_LR,
        )
        return model


@register
class FinetuneAll(Attack):
    """Fine-tune every layer (FTAL, Adi et al. 2018)."""

    trains = True
    name, strength_name, default_strength = "finetune-all", "epochs", 10
    sweep = (1, 5, 10, 20)

    def _apply(self, models, context):
        model = models[0]
        train_on_aux(
            model,
            list(model.parameters()),
            context,
            epochs=int(self.strength),
            learning_rate=FINETUNE_LR,
        )
        return model


@register
class RetrainLast(Attack):
    """Re-initialise the last layer, then train it (RTLL, Adi et al. 2018); lr 1e-2 as
    a fresh layer needs larger steps than fine-tuning."""

    trains = True
    name, strength_name, default_strength = "retrain-last", "epochs", 10
    sweep = (1, 5, 10, 20)

    def _apply(self, models, context):
        model = models[0]
        layer = last_linear(model)
        layer.reset_parameters()
        train_on_aux(
            model,
            list(layer.parameters()),
            context,
            epochs=int(self.strength),
            learning_rate=10 * FINETUNE_LR,
        )
        return model


def _global_magnitude_masks(model: nn.Module, sparsity: float) -> list[torch.Tensor]:
    """Zero the smallest |w| over all weight tensors together (Han et al. 2015)."""
    weights = weight_tensors(model)
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
    count = int(round(sparsity * magnitudes.numel()))
    if count == 0:
        return [torch.ones_like(w, dtype=torch.bool) for w in weights]
    threshold = magnitudes.kthvalue(count).values
    masks, budget = [], count
    for w in weights:  # ties at the threshold are cut only until `count` are zero
        below = w.detach().abs() < threshold
        at = (w.detach().abs() == threshold) & ~below
        budget_here = max(0, budget - int(below.sum()))
        if budget_here and at.any():
            positions = at.flatten().nonzero().flatten()[:budget_here]
            extra = torch.zeros(w.numel(), dtype=torch.bool)
            extra[positions] = True
            below = below | extra.view_as(w)
        budget -= int(below.sum())
        masks.append(~below)
    return masks


def _apply_masks(model: nn.Module, masks: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for weight, mask in zip(weight_tensors(model), masks, strict=True):
            weight.mul_(mask)


@register
class Prune(Attack):
    """Global magnitude pruning of the weights to a sparsity in [0, 0.95] (Han et al. 2015;
    the attack Uchida et al. 2017 evaluate)."""

    name, strength_name, default_strength = "prune", "sparsity", 0.5
    sweep = (0.2, 0.4, 0.5, 0.65, 0.8, 0.9, 0.95)
    strength_range = (0.0, 0.95)

    def _apply(self, models, context):
        model = models[0]
        _apply_masks(model, _global_magnitude_masks(model, self.strength))
        return model


@register
class PruneFinetune(Attack):
    """Prune, then fine-tune all layers for 5 epochs keeping pruned weights at zero
    (Han et al. 2015's prune-retrain; Liu et al. 2018 "Fine-Pruning")."""

    trains = True
    name, strength_name, default_strength = "prune-finetune", "sparsity", 0.5
    sweep = (0.2, 0.5, 0.65, 0.8, 0.9)
    strength_range = (0.0, 0.95)
    epochs = 5

    def _apply(self, models, context):
        model = models[0]
        masks = _global_magnitude_masks(model, self.strength)
        _apply_masks(model, masks)
        train_on_aux(
            model,
            list(model.parameters()),
            context,
            epochs=self.epochs,
            learning_rate=FINETUNE_LR,
            after_step=lambda: _apply_masks(model, masks),
        )
        return model


@register
class Quantize(Attack):
    """Uniform per-tensor quantisation to 2^bits levels between min and max (the
    post-training quantisation of Jacob et al. 2018, without zero-point tricks)."""

    name, strength_name, default_strength = "quantize", "bits", 4
    sweep = (8, 6, 4, 3, 2)
    strength_range = (1, 16)

    def _apply(self, models, context):
        model = models[0]
        levels = 2 ** int(self.strength) - 1
        with torch.no_grad():
            for param in model.parameters():
                low, high = param.min(), param.max()
                if high > low:
                    step = (high - low) / levels
                    param.copy_(low + torch.round((param - low) / step) * step)
        return model


@register
class Noise(Attack):
    """Gaussian noise on every parameter, σ relative to each tensor's std (Uchida et al.
    2017 and Chen et al. 2019 "REFIT" use this relative scale)."""

    name, strength_name, default_strength = "noise", "sigma", 0.1
    sweep = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)

    def _apply(self, models, context):
        model = models[0]
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * self.strength * param.std())
        return model


@register
class Overwrite(Attack):
    """Embed the attacker's own random codeword with the attacker's own random key and
    carrier (Wang & Kerschbaum 2019 "Attacks on digital watermarks for DNNs"). The
    attacker's features are its own aux images through the copy's private partition.
    Strength: the attacker's code length in bits. The attacker picks a random Linear
    weight with at least 16 weights per bit (else the largest), so that its mark fits."""

    trains = True
    name, strength_name, default_strength = "overwrite", "bits", 304
    sweep = (304, 1024)
    strength_range = (1, 4096)

    def _apply(self, models, context):
        from securemark_mpc.fingerprint.codes import CodeConfig
        from securemark_mpc.fingerprint.embed import embed
        from securemark_mpc.fingerprint.key import (
            EmbedConfig,
            FingerprintConfig,
            codeword_for,
            keygen,
        )

        model = models[0]
        rng = np.random.default_rng(context.seed)
        public = public_part(model, context.spec)
        bits = int(self.strength)
        linear = {
            f"{name}.weight": layer.weight.numel()
            for name, layer in public.named_children()
            if isinstance(layer, nn.Linear)
        }
        # a random Linear weight with room for the attacker's bits (16 weights a bit), else the largest
        roomy = sorted(name for name, size in linear.items() if size >= 16 * bits) or [
            max(linear, key=linear.get)
        ]
        carrier = roomy[int(rng.integers(len(roomy)))]
        # the attacker writes anywhere in its carrier, not only where the data lives
        config = FingerprintConfig(
            code=CodeConfig(length=bits), carrier=carrier, embed=EmbedConfig(excited_energy=1.0)
        )
        key = keygen(spec=context.spec, config=config, seed=int(rng.integers(2**62)))
        with torch.no_grad():
            features = private_part(model, context.spec)(context.aux.images)
        return embed(
            model=model,
            spec=context.spec,
            key=key,
            codeword=codeword_for(key=key, index=0),
            features=features,
            labels=context.aux.labels,
        )


@register
class Distill(Attack):
    """Train a fresh model of the same architecture on the copy's soft labels over the
    attacker's data (Hinton et al. 2015, temperature 4; lr 0.05 for a model from scratch)."""

    trains = True
    name, strength_name, default_strength = "distill", "epochs", 30
    sweep = (10, 30)
    temperature = 4.0

    def _apply(self, models, context):
        teacher = models[0]
        student = build_model(context.spec, seed=context.seed + 1)
        train_on_aux(
            student,
            list(student.parameters()),
            context,
            epochs=int(self.strength),
            learning_rate=0.05,
            targets=teacher,
            temperature=self.temperature,
        )
        return student
