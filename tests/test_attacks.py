"""Removal attacks: new model, same architecture, inputs untouched, and each attack's own law."""

from __future__ import annotations

import pytest
import torch

from securemark_mpc.attacks import ATTACKS, AttackContext, AttackError, parse_attack
from securemark_mpc.attacks.base import weight_tensors
from securemark_mpc.config import TrainConfig
from securemark_mpc.data import load_splits
from securemark_mpc.plaintext import train_plaintext

# Cheap strengths so that every attack runs in about a second on digits.
QUICK = {
    "finetune-last": 1,
    "finetune-all": 1,
    "retrain-last": 1,
    "prune-finetune": 0.5,
    "distill": 1,
    "overwrite": 64,
}


@pytest.fixture(scope="module")
def trained():
    config = TrainConfig(epochs=3)
    result = train_plaintext(config)
    splits = load_splits(config.data)
    return result.model, AttackContext(spec=result.spec, aux=splits.aux, seed=0)


def _state(model):
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_returns_a_new_model_and_leaves_its_inputs_alone(trained, name):
    model, context = trained
    attack = ATTACKS[name](QUICK.get(name))
    inputs = (
        [model]
        if not attack.colluders
        else [model, train_plaintext(TrainConfig(epochs=1, seed=5)).model]
    )
    before = [_state(m) for m in inputs]
    attacked = attack(inputs, context)
    assert all(attacked is not m for m in inputs)
    for m, saved in zip(inputs, before, strict=True):
        for key, tensor in m.state_dict().items():
            assert torch.equal(tensor, saved[key]), f"{name} changed its input's {key}"
    assert {k: v.shape for k, v in attacked.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    assert any(
        not torch.equal(attacked.state_dict()[k], model.state_dict()[k]) for k in model.state_dict()
    )


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.65, 0.95])
def test_pruning_reaches_the_requested_sparsity(trained, sparsity):
    model, context = trained
    pruned = parse_attack(f"prune:{sparsity}")([model], context)
    weights = torch.cat([w.detach().flatten() for w in weight_tensors(pruned)])
    assert float((weights == 0).float().mean()) == pytest.approx(sparsity, abs=1e-3)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_quantisation_leaves_at_most_2_to_the_bits_values_per_tensor(trained, bits):
    model, context = trained
    quantised = parse_attack(f"quantize:{bits}")([model], context)
    for name, tensor in quantised.state_dict().items():
        assert tensor.unique().numel() <= 2**bits, name


@pytest.mark.parametrize("name", [n for n, cls in ATTACKS.items() if cls.colluders])
def test_colluding_with_identical_copies_changes_nothing(trained, name):
    model, context = trained
    merged = ATTACKS[name]()([model, model, model], context)
    for key, tensor in model.state_dict().items():
        assert torch.allclose(merged.state_dict()[key], tensor, atol=1e-7), key


def test_noise_scales_with_each_tensors_spread(trained):
    model, context = trained
    noisy = parse_attack("noise:0.5")([model], context)
    for key, tensor in model.state_dict().items():
        change = (noisy.state_dict()[key] - tensor).std()
        assert change == pytest.approx(0.5 * float(tensor.std()), rel=0.5), key


@pytest.mark.parametrize("text", ["no-such-attack", "prune:lots", "prune:0.99", "quantize:0"])
def test_bad_attack_specs_are_refused(text):
    with pytest.raises(AttackError):
        parse_attack(text)


def test_single_model_attacks_refuse_several_models(trained):
    model, context = trained
    with pytest.raises(AttackError):
        parse_attack("prune:0.5")([model, model], context)
