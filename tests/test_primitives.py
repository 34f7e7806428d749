"""The engine's speed pieces: the float64-limb ring kernels bit for bit against
PyTorch's int64 kernels, and against plaintext the one-truncation SGD step, dealer
material prefetched in bulk, and the owner's cache of what it already saw (no final
reveal of the training set)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from securemark_mpc.data import load_splits
from securemark_mpc.mpc import ring_kernels
from securemark_mpc.mpc.protocol import batch_order
from securemark_mpc.plaintext import train_plaintext
from securemark_mpc.run_folder import RunFolder
from tests.conftest import (
    ABSOLUTE_TOLERANCE,
    SMALL,
    assert_matches_plaintext,
    assert_ok,
    launch,
)

EXTREMES = torch.tensor([-(2**63), 2**63 - 1, -1, 0, 1, -(2**62), 2**62 - 1, 2**21, -(2**21)])


def ring(*shape: int, seed: int) -> torch.Tensor:
    """Uniform int64 ring elements (as Beaver shares and openings are), extremes first."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randint(-(2**63), 2**63 - 1, shape, dtype=torch.long, generator=generator)
    flat = values.view(-1)
    count = min(len(EXTREMES), flat.numel())
    flat[:count] = EXTREMES[:count]
    return values


def conv2d_weight_int64(x, grad_output, *, kernel_size, stride=1, padding=0):
    """The kernel gradient in int64, tap by tap (the reference for conv2d_weight)."""
    padded = F.pad(x, (padding,) * 4)
    rows, cols = grad_output.shape[2:]
    flat_grad = grad_output.transpose(0, 1).reshape(grad_output.size(1), -1)
    taps = torch.zeros(grad_output.size(1), x.size(1), *kernel_size, dtype=torch.long)
    for i in range(kernel_size[0]):
        for j in range(kernel_size[1]):
            patch = padded[
                :,
                :,
                i : i + stride * (rows - 1) + 1 : stride,
                j : j + stride * (cols - 1) + 1 : stride,
            ]
            taps[:, :, i, j] = flat_grad @ patch.permute(0, 2, 3, 1).reshape(-1, x.size(1))
    return taps


# (op, x shape, y shape, kwargs): every plan, the matmul pieces and both ways of a
# convolution are exercised (fan-ins 8, 72, 1,500 (two pieces of the wide plan), 2,048
# (the narrow plan)).
RING_CASES = [
    ("matmul", (5, 8), (8, 3), {}),
    ("matmul", (4, 1500), (1500, 6), {}),
    ("matmul", (2, 4, 72), (72, 5), {}),
    ("conv2d", (2, 8, 6, 6), (4, 8, 3, 3), {"padding": 1}),
    ("conv2d", (2, 1, 12, 12), (3, 1, 8, 8), {"stride": 4, "padding": 2}),
    ("conv2d", (1, 32, 5, 5), (2, 32, 8, 8), {"padding": 3}),
    ("conv_transpose2d", (2, 6, 5, 5), (6, 3, 3, 3), {"padding": 1}),
    ("conv_transpose2d", (2, 6, 4, 5), (6, 3, 3, 2), {"stride": 2, "output_padding": 1}),
    ("conv2d", (2, 3, 9, 7), (4, 3, 3, 2), {"stride": (2, 1), "dilation": 2}),
    # kernels of PATCHES_MIN_WEIGHTS or more run as one product over the input patches
    ("conv2d", (2, 8, 6, 5), (32, 8, 3, 3), {"padding": 1}),
    ("conv2d", (2, 8, 9, 9), (32, 8, 3, 3), {"stride": 2, "padding": (0, 1)}),
    ("conv_transpose2d", (2, 32, 5, 6), (32, 8, 3, 3), {"padding": 1}),
    ("conv_transpose2d", (2, 32, 4, 4), (32, 8, 3, 3), {"stride": 2, "padding": 1}),
    ("mul", (3, 7), (1, 7), {}),
]


@pytest.fixture(params=["limbs everywhere", "limbs where they pay off"])
def limb_rule(request, monkeypatch):
    """Force the float64-limb path for every size, or keep the cost rule."""
    if request.param == "limbs everywhere":
        monkeypatch.setattr(ring_kernels, "MACS_PER_ELEMENT", 0)


@pytest.mark.parametrize(("op", "x_shape", "y_shape", "kwargs"), RING_CASES)
def test_ring_kernels_equal_int64_kernels_bit_for_bit(limb_rule, op, x_shape, y_shape, kwargs):
    x, y = ring(*x_shape, seed=1), ring(*y_shape, seed=2)
    expected = getattr(torch, op)(x, y, **kwargs)
    assert torch.equal(ring_kernels.ring_op(op, x, y, **kwargs), expected)
    assert ring_kernels.output_size(op, x.size(), y.size(), **kwargs) == expected.size()


@pytest.mark.parametrize(
    ("x_shape", "grad_shape", "kwargs"),
    [
        ((3, 4, 7, 7), (3, 5, 7, 7), {"kernel_size": (3, 3), "padding": 1}),
        ((40, 1, 28, 28), (40, 2, 7, 7), {"kernel_size": (8, 8), "stride": 4, "padding": 2}),
    ],
)
def test_ring_conv2d_weight_equals_the_int64_kernel_gradient(
    limb_rule, x_shape, grad_shape, kwargs
):
    x, grad_output = ring(*x_shape, seed=3), ring(*grad_shape, seed=4)
    expected = conv2d_weight_int64(x, grad_output, **kwargs)
    got = ring_kernels.ring_op("conv2d_weight", x, grad_output, **kwargs)
    assert torch.equal(got, expected)
    assert ring_kernels.output_size("conv2d_weight", x.size(), grad_output.size(), **kwargs) == (
        expected.size()
    )


def test_limb_plans_are_exact_at_their_largest_fan_in():
    for plan in ring_kernels.PLANS:
        # every lower limb at -2^(bits-1) (the products of lower limbs bind the
        # fan-in), the top limb at 2^(top bits - 1)
        low, top_bits = -(2 ** (plan.bits - 1)), 64 - plan.bits * (plan.count - 1)
        limbs = [low] * (plan.count - 1) + [2 ** (top_bits - 1)]
        value = sum(limb << (plan.bits * i) for i, limb in enumerate(limbs)) % 2**64
        worst = torch.tensor(value - 2**64 if value >= 2**63 else value, dtype=torch.long)
        assert [int(limb) for limb in ring_kernels.limbs(worst, plan)] == limbs
        x = worst.repeat(1, plan.max_fan_in)
        product = ring_kernels.limb_product(torch.matmul, x, x.t(), plan)
        assert torch.equal(product, x @ x.t())


# Two computing parties (owner + one data owner): CrypTen truncates locally there, with
# more parties through the dealer (covered by test_mpc_training); two epochs, so the
# momentum buffer carries over and every batch after the first is prefetched. A
# constant learning rate: the default warm-up barely moves some weights in two epochs,
# and the comparison with plaintext is relative to how far each weight moved. A strong
# weight decay, so that the private step's decay term is checked too.
TWO_PARTIES = replace(
    SMALL,
    data_owners=1,
    epochs=2,
    lr_schedule="constant",
    weight_decay=0.05,
    data=replace(SMALL.data, max_images=200),
)


@pytest.fixture(scope="module")
def two_party_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("two-party")
    run, log = RunFolder(root / "run"), root / "reveals"
    assert_ok(launch(run, TWO_PARTIES, extra_env={"SECUREMARK_REVEAL_LOG": str(log)}))
    events = [json.loads(line) for line in (log / "reveals.jsonl").read_text().splitlines()]
    return run, log, events


@pytest.mark.mpc
def test_prefetched_training_with_one_truncation_per_step_matches_plaintext(two_party_run):
    run, _, _ = two_party_run
    assert_matches_plaintext(run.model_path, TWO_PARTIES)
    # the decay moved the weights by more than the comparison's tolerance
    decayed = train_plaintext(TWO_PARTIES).model.state_dict()
    undecayed = train_plaintext(replace(TWO_PARTIES, weight_decay=0.0)).model.state_dict()
    moved = max(float((decayed[name] - undecayed[name]).abs().max()) for name in decayed)
    assert moved > ABSOLUTE_TOLERANCE
    metrics = json.loads((run.root / "metrics.json").read_text())
    profile = metrics["profile_owner"]
    batches = TWO_PARTIES.epochs * -(-metrics["train_size"] // TWO_PARTIES.batch_size)
    # two parties truncate locally: the one-truncation update needs no communication
    assert profile["private update (MPC)"]["rounds"] == 0
    # per batch, at most one bulk exchange with the dealer (send, sizes, tensor)
    assert 0 < profile["dealer material (bulk)"]["rounds"] <= 3 * batches


@pytest.mark.mpc
def test_training_set_is_revealed_once_per_epoch_and_cached_from_the_last(two_party_run):
    run, log, events = two_party_run
    train_size = len(load_splits(TWO_PARTIES.data).train)
    activations = [event for event in events if event["kind"] == "activations"]
    revealed_rows = sum(event["shape"][0] for event in activations)
    assert revealed_rows == TWO_PARTIES.epochs * train_size  # no extra reveal at the end

    cached = torch.load(run.features_path, weights_only=True)
    last_epoch = activations[-(len(activations) // TWO_PARTIES.epochs) :]
    order = batch_order(seed=TWO_PARTIES.seed, epoch=TWO_PARTIES.epochs - 1, size=train_size)
    expected = torch.zeros_like(cached["features"])
    expected[order] = torch.cat(
        [torch.load(log / event["file"], weights_only=True) for event in last_epoch]
    )
    assert torch.equal(cached["features"], expected)
    views = cached["history"]["views"]
    assert views.shape[:2] == (TWO_PARTIES.epochs, train_size)
    assert torch.equal(views[-1], cached["features"])
