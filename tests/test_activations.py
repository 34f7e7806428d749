"""The cheap private activation (quad: x + a·x²) and the deep default partition.

The MPC test runs the activation's CrypTen converter in real party processes started
through the launcher harness (this file doubles as the party entry point) and checks
its forward and backward pass against plain PyTorch within fixed-point tolerance.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from securemark_mpc.config import SCHEDULES, TrainConfig
from securemark_mpc.models import make_spec, private_part, public_part
from securemark_mpc.models.layers import (
    LAYERS,
    NONLINEAR_KINDS,
    CutNorm,
    Quadratic,
    build_layer,
)
from securemark_mpc.models.presets import PRESETS, build_model

ROWS, WIDTH = 64, 256
INPUT_SCALE = 3.0  # pre-activations of a trained net lie within a few units
# 16 fractional bits: x is encoded to 2^-16, so x² is off by about 2|x|·2^-16, and the
# square and the public scale each truncate once. Measured: 5.5e-4 at most on outputs
# up to ~50 (2 data owners); the bound is relative to the value's size.
FIXED_POINT_TOLERANCE = 1e-4


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = INPUT_SCALE * torch.randn(ROWS, WIDTH, generator=generator)
    gradient = torch.randn(ROWS, WIDTH, generator=generator)
    return x, gradient


# The private layers with their own MPC code, checked against plaintext in one MPC run:
# (layer, input rescaling, relative tolerance). CutNorm's rows are rescaled so that their
# mean squares span 0.09 to 900; at 900 its root is 0.1, which 16 fractional bits resolve
# to ~1e-3 (errors that under-normalise, measured up to 7e-4).
MPC_LAYERS = {
    "quad": (lambda: Quadratic(0.2), lambda x: x, FIXED_POINT_TOLERANCE),
    "cutnorm": (CutNorm, lambda x: x * torch.logspace(-1, 1, ROWS).unsqueeze(1), 2e-3),
}


def test_quad_is_x_plus_a_x_squared_and_counts_as_nonlinear():
    layer, shape = build_layer({"kind": "quad", "a": 0.25}, (8, 4, 4))
    x = torch.linspace(-3, 3, 7)
    assert shape == (8, 4, 4) and "quad" in LAYERS and "quad" in NONLINEAR_KINDS
    assert torch.allclose(layer(x), x + 0.25 * x * x)
    with pytest.raises(ValueError, match="coefficient"):
        build_layer({"kind": "quad", "a": -1.0}, (4,))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_default_partition_is_deep_cheap_and_narrow(name):
    preset = PRESETS[name]
    spec = make_spec(input_shape=preset.input_shape, num_classes=10, preset=name)
    model = build_model(spec, seed=0)
    private_kinds = {layer["kind"] for layer in spec.layers[: spec.split]}
    assert "relu" not in private_kinds and "quad" in private_kinds  # no secure comparison
    assert spec.cut_shape == (32,)
    # the plaintext head widens again: its first Linear is the largest (the carrier)
    linears = [m for m in public_part(model, spec) if isinstance(m, nn.Linear)]
    assert linears[0].weight.numel() == max(m.weight.numel() for m in linears) >= 8 * 304
    assert linears[0].in_features == 32 < linears[0].out_features
    private = private_part(model, spec)
    assert isinstance(private[-1], CutNorm) and isinstance(private[-2], nn.Linear)


def test_mnist_default_keeps_2000_nonlinear_elements_private_and_split_3_stays_reachable():
    deep = make_spec(input_shape=(1, 28, 28), num_classes=10)
    assert deep.private_nonlinear_elements() >= 2000
    fast = make_spec(input_shape=(1, 28, 28), num_classes=10, split=3)
    assert [layer["kind"] for layer in fast.layers[:3]] == ["conv", "avgpool", "quad"]
    assert fast.private_nonlinear_elements() == 8 * 7 * 7
    narrow = make_spec(input_shape=(1, 28, 28), num_classes=10, private_channels=4)
    assert narrow.layers[0]["out"] == 4


def test_default_schedule_warms_up_then_decays():
    config = TrainConfig()
    rates = [config.learning_rate_at(epoch) for epoch in range(config.epochs)]
    assert config.lr_schedule in SCHEDULES
    peak = rates.index(max(rates))
    assert all(a <= b for a, b in zip(rates[:peak], rates[1 : peak + 1], strict=True))
    assert all(a >= b for a, b in zip(rates[peak:], rates[peak + 1 :], strict=False))
    assert rates[0] < rates[peak]


@pytest.mark.mpc
def test_private_layers_under_mpc_match_plaintext(tmp_path):
    from securemark_mpc.mpc.launcher import launch_local, script_parties
    from securemark_mpc.run_folder import RunFolder

    result = launch_local(
        run=RunFolder(tmp_path),
        data_owners=2,
        echo_owner=False,
        time_limit=240,
        wrap_command=script_parties(Path(__file__).resolve()),
    )
    assert result.ok, result.report()
    measured = json.loads((tmp_path / "layers.json").read_text())
    for layer_name, (make_layer, shape_input, tolerance) in MPC_LAYERS.items():
        x, gradient = _inputs()
        x = shape_input(x).requires_grad_(True)
        expected = make_layer()(x)
        expected.backward(gradient)
        for name, plain in (("forward", expected.detach()), ("backward", x.grad)):
            error = (torch.tensor(measured[layer_name][name]) - plain).abs()
            relative = float((error / (1 + plain.abs())).max())
            assert relative <= tolerance, (
                f"{layer_name} {name}: error {float(error.max()):.2e}, relative {relative:.2e}"
            )


def _party(argv: list[str]) -> None:
    """One party of the MPC test: share x, run each layer forward and backward, reveal to rank 0."""
    from securemark_mpc.mpc.launcher import start_script_party
    from securemark_mpc.mpc.private_partition import encrypt_layers

    started = start_script_party(argv)
    if started is None:
        return  # the dealer
    crypten, address, run_root = started
    payload = {}
    for layer_name, (make_layer, shape_input, _) in MPC_LAYERS.items():
        x, gradient = _inputs()
        module = encrypt_layers(crypten, nn.Sequential(make_layer()), src=0)
        shared = crypten.cryptensor(shape_input(x), src=0, requires_grad=True)
        out = module(shared)
        out.backward(crypten.cryptensor(gradient, src=0))
        forward = out.get_plain_text(dst=0)
        backward = shared.grad.get_plain_text(dst=0)
        if address.rank == 0:
            payload[layer_name] = {"forward": forward.tolist(), "backward": backward.tolist()}
    crypten.uninit()
    if address.rank == 0:
        (run_root / "layers.json").write_text(json.dumps(payload))


if __name__ == "__main__":
    _party(sys.argv[1:])
