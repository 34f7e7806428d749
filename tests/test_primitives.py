"""The engine's speed pieces against plaintext: the one-truncation SGD step, dealer
material prefetched in bulk, and the owner's cache of what it already saw (no final
reveal of the training set)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from securemark_mpc.data import load_splits
from securemark_mpc.mpc.protocol import batch_order
from securemark_mpc.run_folder import RunFolder
from tests.conftest import SMALL, assert_matches_plaintext, assert_ok, launch

pytestmark = pytest.mark.mpc

# Two computing parties (owner + one data owner): CrypTen truncates locally there, with
# more parties through the dealer (covered by test_mpc_training); two epochs, so the
# momentum buffer carries over and every batch after the first is prefetched. A
# constant learning rate: the default warm-up barely moves some weights in two epochs,
# and the comparison with plaintext is relative to how far each weight moved.
TWO_PARTIES = replace(
    SMALL,
    data_owners=1,
    epochs=2,
    lr_schedule="constant",
    data=replace(SMALL.data, max_images=200),
)


@pytest.fixture(scope="module")
def two_party_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("two-party")
    run, log = RunFolder(root / "run"), root / "reveals"
    assert_ok(launch(run, TWO_PARTIES, extra_env={"SECUREMARK_REVEAL_LOG": str(log)}))
    events = [json.loads(line) for line in (log / "reveals.jsonl").read_text().splitlines()]
    return run, log, events


def test_prefetched_training_with_one_truncation_per_step_matches_plaintext(two_party_run):
    run, _, _ = two_party_run
    assert_matches_plaintext(run.model_path, TWO_PARTIES)
    metrics = json.loads((run.root / "metrics.json").read_text())
    profile = metrics["profile_owner"]
    batches = TWO_PARTIES.epochs * -(-metrics["train_size"] // TWO_PARTIES.batch_size)
    # two parties truncate locally: the one-truncation update needs no communication
    assert profile["private update (MPC)"]["rounds"] == 0
    # per batch, at most one bulk exchange with the dealer (send, sizes, tensor)
    assert 0 < profile["dealer material (bulk)"]["rounds"] <= 3 * batches


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
