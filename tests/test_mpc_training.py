"""MPC split training against its plaintext twin, and the privacy boundary."""

from __future__ import annotations

import json

import pytest
import torch

from securemark_mpc.data import load_splits
from securemark_mpc.models import build_model, load_model
from securemark_mpc.mpc.wrap_guard import INJECT_VARIABLE, RANGE_BOUND, SKETCH_GROUP, group_sums
from securemark_mpc.plaintext import training_order
from securemark_mpc.run_folder import RunFolder
from tests.conftest import SMALL, assert_matches_plaintext, assert_ok, launch

pytestmark = pytest.mark.mpc


def test_mpc_weights_match_plaintext(mpc_small_run, small_config):
    run, _ = mpc_small_run
    assert_matches_plaintext(run.model_path, small_config)


def test_run_folder_holds_model_config_metrics_and_features(mpc_small_run, small_config):
    run, _ = mpc_small_run
    metrics = json.loads((run.root / "metrics.json").read_text())
    for key in ("test_accuracy", "seconds", "comm_bytes", "epochs", "history"):
        assert key in metrics
    assert metrics["comm_bytes"] > 0 and metrics["epochs"] == 1 and len(metrics["history"]) == 1
    saved = json.loads(run.config_path.read_text())
    assert saved["config"]["data"]["max_images"] == 300 and saved["argv"]
    cached = torch.load(run.features_path, weights_only=True)
    splits = load_splits(small_config.data)
    assert cached["features"].shape[0] == len(splits.train)
    assert torch.equal(cached["labels"], training_order(small_config, splits).labels)


def test_only_the_model_owner_receives_plaintext(mpc_small_run, small_config):
    run, reveal_log = mpc_small_run
    events = [json.loads(line) for line in (reveal_log / "reveals.jsonl").read_text().splitlines()]
    assert events, "the reveal log is empty: the instrumentation did not run"
    assert {event["rank"] for event in events} == {0}
    kinds = {event["kind"] for event in events}
    assert kinds == {"activations", "labels", "final_weights", "weight_range"}
    for event in events:  # the epoch-end range check opens one count: 0, nothing wrapped
        if event["kind"] == "weight_range":
            count = torch.load(reveal_log / event["file"], weights_only=True)
            assert count.numel() == 1 and float(count) == 0
    assert not any(
        path.name.startswith(("rank1", "rank2", "rank3")) for path in reveal_log.iterdir()
    )

    images = load_splits(small_config.data).train.images.flatten(1)  # every owner's raw images
    for event in events:
        revealed = torch.load(reveal_log / event["file"], weights_only=True).flatten()
        if revealed.numel() % images.shape[1]:
            continue  # cannot hold whole images
        rows = revealed.reshape(-1, images.shape[1])
        nearest = torch.cdist(rows, images).min()
        assert nearest > 1e-2, f"{event['file']} ({event['kind']}) contains a raw training image"


def test_activations_have_the_cut_layer_shape(mpc_small_run):
    run, reveal_log = mpc_small_run
    _, spec = load_model(run.model_path)
    events = [json.loads(line) for line in (reveal_log / "reveals.jsonl").read_text().splitlines()]
    for event in events:
        if event["kind"] == "activations":
            assert tuple(event["shape"][1:]) == spec.cut_shape


def test_the_owner_leaves_wrapped_reveals_out_of_its_step():
    """A truncation that wrapped reveals a value near 2^32; the owner's head must not
    learn from it, nor send a gradient for it, and the other rows step as before."""
    from types import SimpleNamespace

    from securemark_mpc.config import TrainConfig
    from securemark_mpc.models import build_model, make_spec
    from securemark_mpc.mpc.protocol import OwnerState, SplitTrainer, wrapped_free

    spec = make_spec(input_shape=(1, 8, 8), num_classes=10)

    def owner() -> OwnerState:
        model = build_model(spec, seed=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        return OwnerState(model=model, optimizer=optimizer, labels=torch.zeros(0))

    trainer = SimpleNamespace(spec=spec, config=TrainConfig())
    revealed = torch.randn(6, *spec.cut_shape, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(6)
    wrapped = revealed.clone()
    wrapped[2, 5] = 2.0**32
    wrapped[4, 0] = float("nan")
    intact = wrapped_free(wrapped)
    assert intact.tolist() == [True, True, False, True, False, True]

    clean, guarded = owner(), owner()
    keep = intact.nonzero().squeeze(1)
    expected, *_ = SplitTrainer._owner_step(
        trainer, clean, revealed[keep], labels[keep], intact=torch.ones(4, dtype=torch.bool)
    )
    gradient, loss, hits = SplitTrainer._owner_step(
        trainer, guarded, wrapped, labels, intact=intact
    )
    assert torch.isfinite(gradient).all() and loss == loss
    assert (gradient[~intact] == 0).all()
    # per row, the gradient of the batch-mean loss over all 6 rows
    assert torch.allclose(gradient[intact], expected * 4 / 6)
    for a, b in zip(clean.model.parameters(), guarded.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_wrapped_private_weight_is_rolled_back(tmp_path, mpc_small_run):
    """Data owner 1 wraps one element of its weight share (what a failed truncation
    does) after the first update and after the last: the garbled next batch undoes the
    first, the epoch-end range check the last, and the run ends with sane weights."""
    run = RunFolder(tmp_path / "run")
    batches = -(-len(load_splits(SMALL.data).train) // SMALL.batch_size)
    assert batches >= 3, "the scenario needs a clean batch between the two wraps"
    assert_ok(launch(run, SMALL, extra_env={INJECT_VARIABLE: f"0,{batches - 1}"}))

    rollbacks = json.loads((run.root / "metrics.json").read_text())["rollbacks"]
    assert rollbacks["garbled_batches"] == 1 and rollbacks["range_failures"] == 1, rollbacks
    assert rollbacks["restored"] == [
        "step 1: undid the previous update",
        "end of epoch 1: range check failed, undid the last update",
    ]
    guarded, spec = load_model(run.model_path)
    clean, _ = load_model(mpc_small_run[0].model_path)
    initial = build_model(spec, seed=SMALL.seed).state_dict()
    for name, weight in guarded.state_dict().items():
        reference = clean.state_dict()[name]
        assert weight.abs().max() <= 2 * reference.abs().max() + 1e-3, f"{name} is not sane"
    moved = [not torch.equal(w, initial[n]) for n, w in guarded.state_dict().items()]
    assert any(moved), "the clean batch in between did not train"


def test_failing_updates_go_back_further_then_stop():
    """A garbled batch undoes the update before it; when the updates keep failing, even
    with clean batches in between, the parties go back to the last checked state, and a
    run that keeps failing from there stops with a clear error."""
    from types import SimpleNamespace

    from securemark_mpc.mpc.session import PartyFailure
    from securemark_mpc.mpc.wrap_guard import MAX_FAILED_IN_A_ROW, WrapGuard

    param = SimpleNamespace(share=torch.zeros(3, dtype=torch.long))
    private = SimpleNamespace(named_parameters=lambda: [("w", param)])
    guard = WrapGuard(
        SimpleNamespace(), rank=0, private=private, optimizer=SimpleNamespace(state={})
    )

    def update(step: int, value: int) -> None:
        guard.batch_clean()
        guard.before_update()
        param.share = torch.full((3,), value)
        guard.after_update(step)

    update(0, 1)
    update(1, 2)
    guard.undo("step 2")
    assert param.share.tolist() == [1, 1, 1]  # the update before the garbled batch undone
    update(3, 3)  # a clean batch right after an undo proves nothing about updates
    guard.undo("step 4")
    assert param.share.tolist() == [0, 0, 0]  # the last checked state
    update(5, 4)
    update(6, 5)  # the clean batch after update 5: updates work again
    guard.undo("step 7")
    assert param.share.tolist() == [4, 4, 4]
    for step in range(8, 8 + MAX_FAILED_IN_A_ROW - 2):
        update(step, 9)
        guard.undo(f"step {step + 1}")
    assert param.share.tolist() == [0, 0, 0]
    update(20, 9)
    with pytest.raises(PartyFailure, match="out of fixed-point range"):
        guard.undo("step 21")


def test_range_check_group_sums_pass_healthy_values_and_catch_every_wrap():
    """The range check compares weighted group sums: linear in the shares, never over the
    bound while every value lies below 64, always over it with one wrapped value (2^24
    or 2^32 in value units, either sign) or a garbage ring element in the group."""
    scale = 2**16
    bound = RANGE_BOUND * scale
    generator = torch.Generator().manual_seed(0)
    healthy = torch.randint(
        -64 * scale + 1, 64 * scale, (SKETCH_GROUP * 50 + 7,), generator=generator
    )

    def sums(values: torch.Tensor, check: int = 0) -> torch.Tensor:
        return group_sums(values, torch.Generator().manual_seed(check))

    assert (sums(healthy).abs() < bound).all()
    share = torch.randint(-(2**63), 2**63 - 1, healthy.shape, generator=generator)
    assert torch.equal(sums(share) + sums(healthy - share), sums(healthy))  # per-party sums add up
    for check, (position, shift) in enumerate(
        [(0, 2**40), (SKETCH_GROUP * 50 + 6, -(2**40)), (777, 2**48), (1234, -(2**48))]
    ):
        wrapped = healthy.clone()
        wrapped[position] += shift
        outside = sums(wrapped, check).abs() >= bound
        assert outside.sum() == 1 and outside[position // SKETCH_GROUP], (position, shift)
    garbage = healthy.clone()
    garbage[::SKETCH_GROUP] = torch.randint(
        -(2**63), 2**63 - 1, (len(garbage[::SKETCH_GROUP]),), generator=generator
    )
    assert (sums(garbage).abs() >= bound).all()
