"""Two computing parties (--topology two): the other data owners hand over their data as shares."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest
import torch

from securemark_mpc.config import ConfigError
from securemark_mpc.data import load_splits
from securemark_mpc.mpc.auth import write_secret
from securemark_mpc.mpc.handoff import split_into_shares, uniform_ring_mask
from securemark_mpc.mpc.session import PartyAddress, computing_address
from securemark_mpc.run_folder import RunFolder
from tests.conftest import SMALL, assert_matches_plaintext, assert_ok, launch

# Three data owners: data owner 1 computes with the model owner, 2 and 3 hand over.
HANDING = replace(SMALL, data_owners=3, topology="two")
FAILING = replace(HANDING, comm_timeout_seconds=10.0)  # failure tests: the others give up soon


def test_two_computing_parties_are_the_model_owner_and_data_owner_1():
    launched = [PartyAddress(rank, 4, "tcp://x:1") for rank in range(5)]  # 3 data owners + dealer
    mapped = [computing_address(address, "two") for address in launched]
    assert [(a.rank, a.world_size) if a else None for a in mapped] == [
        (0, 2),
        (1, 2),
        None,
        None,
        (2, 2),
    ]
    assert mapped[4].is_dealer and not mapped[1].is_dealer
    assert all(computing_address(a, "all") is a for a in launched)


def test_the_topology_is_checked():
    with pytest.raises(ConfigError, match="--topology must be one of"):
        replace(SMALL, topology="three").validate()
    with pytest.raises(ConfigError, match="split engine only"):
        replace(HANDING, engine="full").validate()
    assert HANDING.computing_data_owners == 1 and SMALL.computing_data_owners == 2


def test_handed_shares_add_up_to_the_data_and_each_alone_looks_random():
    encoded = torch.arange(-5000, 5000, dtype=torch.long) * 65536  # fixed-point pixels
    mask, remainder = split_into_shares(encoded)
    assert torch.equal(mask + remainder, encoded)  # int64 arithmetic wraps: the ring
    for share in (mask, remainder):
        # a share spreads over the whole ring, unlike the data (|x| < 2^29 here)
        assert float((share.abs() > 2**61).float().mean()) > 0.5
        centred = share.double() - share.double().mean()
        data = encoded.double() - encoded.double().mean()
        correlation = float((centred * data).sum() / (centred.norm() * data.norm()))
        assert abs(correlation) < 0.1
    assert not torch.equal(uniform_ring_mask((8,)), uniform_ring_mask((8,)))


@pytest.fixture(scope="module")
def handed_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("topology-two")
    run, reveal_log = RunFolder(root / "run"), root / "reveals"
    result = launch(run, HANDING, extra_env={"SECUREMARK_REVEAL_LOG": str(reveal_log)})
    assert_ok(result)
    return run, reveal_log, result


@pytest.mark.mpc
def test_handed_over_data_trains_as_if_every_data_owner_computed(handed_run):
    run, _, result = handed_run
    assert_matches_plaintext(run.model_path, HANDING)  # rows in data owner order
    for outcome in result.outcomes:
        if outcome.rank in (2, 3):
            assert "handed its" in outcome.log.read_text(), outcome.log_tail()
    metrics = json.loads((run.root / "metrics.json").read_text())
    assert metrics["train_size"] == len(load_splits(HANDING.data).train)
    assert len(metrics["peak_rss_bytes_per_party"]) == 2  # two computing parties


@pytest.mark.mpc
def test_with_two_computing_parties_only_reveals_reach_the_model_owner(handed_run):
    _, reveal_log, _ = handed_run
    events = [json.loads(line) for line in (reveal_log / "reveals.jsonl").read_text().splitlines()]
    assert {event["rank"] for event in events} == {0}
    labels = [event for event in events if event["kind"] == "labels"]
    assert len(labels) == HANDING.data_owners  # data owner 1's and both handed shards
    images = load_splits(HANDING.data).train.images.flatten(1)
    for event in events:
        revealed = torch.load(reveal_log / event["file"], weights_only=True).flatten()
        if revealed.numel() % images.shape[1] == 0:
            rows = revealed.reshape(-1, images.shape[1])
            assert torch.cdist(rows, images).min() > 1e-2, f"{event['file']} holds an image"


@pytest.mark.mpc
def test_a_data_owner_that_never_hands_over_is_named(tmp_path):
    run = RunFolder(tmp_path / "run")

    def absent(rank: int, command: list[str]) -> list[str]:
        return [sys.executable, "-c", "raise SystemExit(4)"] if rank == 2 else command

    result = launch(run, FAILING, wrap_command=absent, time_limit=120)
    assert not result.ok and not result.timed_out, result.report()
    assert result.first_failure is not None and result.first_failure.rank == 2
    for outcome in result.outcomes:
        assert outcome.returncode not in (0, None), f"{outcome.describe()}: should stop by itself"
        if outcome.rank in (0, 1):
            assert "party 2 (data owner 2)" in outcome.log.read_text(), outcome.log_tail()


@pytest.mark.mpc
def test_a_handing_data_owner_with_other_settings_stops_every_party(tmp_path):
    run = RunFolder(tmp_path / "run")
    other = RunFolder(tmp_path / "other")
    other.save_config(replace(FAILING, learning_rate=0.5), argv=["pytest"])
    result = launch(run, FAILING, party_args={3: ["--config", str(other.config_path)]})
    assert not result.ok and not result.timed_out, result.report()
    for outcome in result.outcomes:
        assert outcome.returncode not in (0, None), f"{outcome.describe()}: should stop by itself"
        if outcome.rank in (0, 1, 2, 3):
            assert outcome.returncode == 3, outcome.log_tail()
            assert "party 3 (data owner 3) differs in settings" in outcome.log.read_text()


@pytest.mark.mpc
def test_a_handing_data_owner_without_the_run_secret_is_refused_before_any_share(tmp_path):
    run = RunFolder(tmp_path / "run")
    impostor_secret = write_secret(tmp_path / "impostor.secret")
    result = launch(run, FAILING, party_args={3: ["--secret-file", str(impostor_secret)]})
    assert not result.ok and not result.timed_out, result.report()
    for outcome in result.outcomes:
        assert outcome.returncode not in (0, None), f"{outcome.describe()}: should stop by itself"
        if outcome.rank in (0, 1, 2):
            assert outcome.returncode == 5, outcome.log_tail()
            assert "party 3 (data owner 3) failed authentication" in outcome.log.read_text()
    assert not run.model_path.exists() and not run.checkpoint(0).exists()
