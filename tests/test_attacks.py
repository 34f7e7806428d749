"""Removal attacks: new model, same architecture, inputs untouched, and each attack's own law."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from securemark_mpc.attacks import (
    ATTACKS,
    AttackContext,
    AttackError,
    parse_attack,
    parse_chain,
    spec_of,
)
from securemark_mpc.attacks.base import weight_tensors
from securemark_mpc.config import TrainConfig
from securemark_mpc.data import load_splits
from securemark_mpc.models import build_model
from securemark_mpc.plaintext import train_plaintext

# Cheap strengths so that every attack runs in about a second on digits.
QUICK = {
    "finetune-last": 1,
    "finetune-all": 1,
    "retrain-last": 1,
    "prune-finetune": 0.5,
    "distill": 1,
    "overwrite": 64,
    "fine-prune": 0.5,
    "dormant-project": 0.99,
    "dormant-reinit": 0.99,
}
WIDENING = {"dummy"}  # adds units: the one attack that changes the layer widths


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
    if name not in WIDENING:
        assert {k: v.shape for k, v in attacked.state_dict().items()} == {
            k: v.shape for k, v in model.state_dict().items()
        }
    assert any(
        attacked.state_dict()[k].shape != tensor.shape
        or not torch.equal(attacked.state_dict()[k], tensor)
        for k, tensor in model.state_dict().items()
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


@pytest.mark.parametrize("text", ["permute:1", "permute:0.3", "rescale:3", "dummy:0.5", "dummy:1"])
def test_obfuscation_changes_the_layout_but_not_the_function(trained, text):
    model, context = trained
    obfuscated = parse_attack(text)([model], context)
    images = context.aux.images
    with torch.no_grad():
        assert torch.allclose(obfuscated(images), model(images), rtol=1e-4, atol=1e-4)
    widened = spec_of(obfuscated, context.spec)
    assert build_model(widened, seed=0).load_state_dict(obfuscated.state_dict())
    if text.startswith("dummy"):
        ratio = float(text.partition(":")[2])
        assert widened.cut_shape[0] == round((1 + ratio) * context.spec.cut_shape[0])


def test_a_chain_runs_its_attacks_in_order(trained):
    model, context = trained
    chain = parse_chain("prune:0.5, quantize:2")
    assert [attack.name for attack in chain.attacks] == ["prune", "quantize"]
    assert chain.name == "prune:0.5,quantize:2"
    by_hand = parse_attack("quantize:2")([parse_attack("prune:0.5")([model], context)], context)
    chained = chain([model], context)
    for key, tensor in by_hand.state_dict().items():
        assert torch.equal(chained.state_dict()[key], tensor), key


@pytest.mark.parametrize("text", ["", "prune:0.5,", "prune:0.5,,noise", "prune,collude-mix"])
def test_bad_chains_are_refused(text):
    with pytest.raises(AttackError):
        parse_chain(text)


def test_attacks_never_import_the_key_registry_or_harness():
    """Attacks are key-blind: importing and listing them loads no key-holding module."""
    probe = (
        "import sys, securemark_mpc.attacks as a; print(sorted(a.ATTACKS)); "
        "print([m for m in ('securemark_mpc.fingerprint.key', 'securemark_mpc.fingerprint.copies', "
        "'securemark_mpc.registry', 'securemark_mpc.robustness') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[-1] == "[]"
    package = Path(__import__("securemark_mpc.attacks").attacks.__file__).parent
    for source in package.glob("*.py"):
        text = source.read_text()
        for forbidden in ("load_key", "key_path", "securemark_mpc.registry", "fingerprint.copies"):
            assert forbidden not in text, f"{source.name} mentions {forbidden}"


def test_the_scoring_harness_lives_beside_attacks_not_inside():
    package = Path(__import__("securemark_mpc.attacks").attacks.__file__).parent
    assert not (package / "robustness.py").exists()
    from securemark_mpc.robustness import sweep

    assert callable(sweep)
