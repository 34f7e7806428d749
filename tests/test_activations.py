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
    CUTNORM_EPSILON,
    CUTNORM_RANGE,
    LAYERS,
    NONLINEAR_KINDS,
    CutNorm,
    Quadratic,
    build_layer,
)
from securemark_mpc.models.presets import PRESETS, build_model
from securemark_mpc.mpc.fused_cutnorm import HALF_EXTRA_BITS

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


DATA_OWNERS = 2
PARTIES = DATA_OWNERS + 1
UNIT = 2.0**-16  # one unit of CrypTen's fixed-point encoding


def _cutnorm_tolerance(x: torch.Tensor) -> torch.Tensor:
    """Per row, the root r = 1/√(mean square + ε)'s error bound, relative: v/2 is kept up
    to 2·PARTIES units of 2^-16 high (r then P/units(v/2) low), and r up to 2·PARTIES
    units low (the last truncation, the margin, the earlier steps); plus 2e-4 for the
    products around it (y = x·r, the backward's three products)."""
    mean_square = x.detach().pow(2).mean(dim=1, keepdim=True) + CUTNORM_EPSILON
    half_units = mean_square / (2 * CUTNORM_RANGE) * 2**HALF_EXTRA_BITS / UNIT
    return 2e-4 + PARTIES / half_units + 2 * PARTIES * UNIT * mean_square.sqrt()


# The private layers with their own MPC code, checked against plaintext in one MPC run:
# (layer, input rescaling, relative tolerance as a function of the input). CutNorm's rows are
# rescaled so that their mean squares span 0.09 to 900. Larger ones are built for too
# (to 210,000), but each x² truncates with odds x²/2^32 of a wrap (the term CrypTen's
# dealer truncation drops): 1/2,500 per run here, 1/900 up to 3,000 (measured: one x²
# of 236 wrapped in 600 runs of 16,384 values), which would make this test fail by chance.
MPC_LAYERS = {
    "quad": (lambda: Quadratic(0.2), lambda x: x, lambda x: FIXED_POINT_TOLERANCE),
    "cutnorm": (
        CutNorm,
        lambda x: x * torch.logspace(-1, 1, ROWS).unsqueeze(1),
        _cutnorm_tolerance,
    ),
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


@pytest.fixture(scope="module")
def revealed_layers(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every MPC_LAYERS entry forward and backward in real party processes, as rank 0
    revealed them (one run for the tests below)."""
    from securemark_mpc.mpc.launcher import launch_local, script_parties
    from securemark_mpc.run_folder import RunFolder

    tmp_path = tmp_path_factory.mktemp("layers")
    result = launch_local(
        run=RunFolder(tmp_path),
        data_owners=DATA_OWNERS,
        echo_owner=False,
        time_limit=240,
        wrap_command=script_parties(Path(__file__).resolve()),
    )
    assert result.ok, result.report()
    return json.loads((tmp_path / "layers.json").read_text())


@pytest.mark.mpc
def test_private_layers_under_mpc_match_plaintext(revealed_layers):
    for layer_name, (make_layer, shape_input, tolerance) in MPC_LAYERS.items():
        x, gradient = _inputs()
        x = shape_input(x).requires_grad_(True)
        expected = make_layer()(x)
        expected.backward(gradient)
        for name, plain in (("forward", expected.detach()), ("backward", x.grad)):
            error = (torch.tensor(revealed_layers[layer_name][name]) - plain).abs()
            relative = error / (1 + plain.abs())
            excess = relative / tolerance(x)
            assert float(excess.max()) <= 1, (
                f"{layer_name} {name}: error {float(error.max()):.2e}, relative "
                f"{float(relative.max()):.2e}, {float(excess.max()):.2f}× the tolerance"
            )


@pytest.mark.mpc
def test_cutnorm_under_mpc_never_over_normalises(revealed_layers):
    """The reveal noise's privacy rests on cutnorm's output having mean square below 1
    per image: under MPC its root errs low, never high (rows of mean square 0.09 to 900)."""
    x, _ = _inputs()
    x = MPC_LAYERS["cutnorm"][1](x)
    encoded = torch.round(x / UNIT) * UNIT  # what the parties compute on
    plain = CutNorm()(encoded)
    output = torch.tensor(revealed_layers["cutnorm"]["forward"])
    # y = x·r truncates each value by up to PARTIES − 1 units: bounded below by this slack
    slack = 2 * (PARTIES - 1) * UNIT * plain.abs().mean(dim=1) + (PARTIES * UNIT) ** 2
    over = output.pow(2).mean(dim=1) - plain.pow(2).mean(dim=1) - slack
    assert float(over.max()) <= 0, f"over-normalised by {float(over.max()):.2e}"
    assert float(output.pow(2).mean(dim=1).max()) < 1


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
