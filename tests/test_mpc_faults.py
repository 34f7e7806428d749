"""Failures: a dead party, mismatched settings, TFP without --insecure, bad arguments."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from securemark_mpc.cli import main
from securemark_mpc.data import DataInfo
from securemark_mpc.mpc.session import ConfigMismatch, PartyAddress, exchange_handshake
from securemark_mpc.run_folder import RunFolder
from tests.conftest import SMALL, launch

DEADLINE_SECONDS = 60


@pytest.mark.mpc
def test_killing_a_data_owner_stops_every_party_naming_it(tmp_path):
    run = RunFolder(tmp_path / "run")
    killed_at: dict[str, float] = {}

    def kill_data_owner_mid_training(processes):
        def watch():
            limit = time.monotonic() + 120
            while not run.checkpoint(0).exists() and time.monotonic() < limit:
                time.sleep(0.05)  # the first epoch is done: training is under way
            killed_at["t"] = time.monotonic()
            processes[1].kill()

        threading.Thread(target=watch, daemon=True).start()

    result = launch(
        run, replace(SMALL, epochs=30), on_started=kill_data_owner_mid_training, grace_seconds=90
    )
    assert "t" in killed_at and not result.ok
    assert result.first_failure is not None and result.first_failure.rank == 1, result.report()
    for outcome in result.outcomes:
        if outcome.rank == 1:
            continue
        assert outcome.returncode not in (0, None), (
            f"{outcome.describe()}: it should exit non-zero by itself"
        )
        waited = result.started_at + outcome.exited_at - killed_at["t"]
        assert waited <= DEADLINE_SECONDS, f"{outcome.role} took {waited:.0f} s to stop"
        assert "party 1 (data owner 1)" in outcome.log.read_text(), (
            f"{outcome.role} did not name the failed party"
        )


@pytest.mark.mpc
def test_parties_with_different_settings_all_stop(tmp_path):
    run = RunFolder(tmp_path / "run")
    other = RunFolder(tmp_path / "other")
    other.save_config(replace(SMALL, learning_rate=0.5), argv=["pytest"])
    result = launch(run, SMALL, party_args={2: ["--config", str(other.config_path)]})
    assert not result.ok
    for outcome in result.outcomes:
        assert outcome.returncode not in (0, None), outcome.describe()
    owner_log = result.outcomes[0].log.read_text()
    assert "configuration mismatch" in owner_log and "party 2 (data owner 2)" in owner_log


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--provider", "tfp"], "--insecure"),
        (["--dataset", "no-such-set"], "no-such-set"),
        (["--dataset", "idx", "--data-root", "/no/such/folder"], "/no/such/folder"),
        (["--dataset", "idx"], "--data-root"),
        (["--data-owners", "0"], "--data-owners"),
        (["--epochs", "-1"], "--epochs"),
        (["--partition", "by-colour"], "by-colour"),
        (["--split", "0"], "split"),
    ],
)
def test_bad_training_arguments_exit_2_saying_why(tmp_path, capsys, arguments, message):
    status = main(["train", "--out", str(tmp_path / "run"), *arguments])
    error = capsys.readouterr().err
    assert status == 2
    assert message.lower() in error.lower() and "Traceback" not in error
    assert not (tmp_path / "run").exists(), "nothing may be written for a refused run"


class _Gathered:
    """Stands in for a group: all_gather returns the rows given, with this party's own."""

    def __init__(self, rows: list | None = None) -> None:
        self.rows = rows

    def all_gather(self, mine):
        self.mine = mine
        return [mine if row is None else row for row in self.rows or [None]]


def _row(info: DataInfo):
    fake = _Gathered()
    exchange_handshake(
        fake.all_gather,
        PartyAddress(0, 3, "tcp://x:1"),
        digest="d",
        data_settings=info.settings(),
        values=[7],
    )
    return fake.mine


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"image_shape": (3, 8, 8)}, "image shape"),
        ({"class_names": ("cat", "dog")}, "class names"),
        ({"normalisation": "pixels / 65535"}, "normalisation"),
    ],
)
def test_data_that_differs_stops_every_party_naming_who_and_what(change, setting):
    owner = DataInfo(image_shape=(1, 8, 8), class_names=("0", "1"), normalisation="pixels / 255")
    other = replace(owner, **change)
    rows = [_row(owner), _row(owner), None]  # data owner 2 (this party) has other data
    with pytest.raises(ConfigMismatch) as raised:
        exchange_handshake(
            _Gathered(rows).all_gather,
            PartyAddress(2, 3, "tcp://x:1"),
            digest="d",
            data_settings=other.settings(),
            values=[7],
        )
    message = str(raised.value)
    assert f"party 2 (data owner 2) differs in {setting}" in message
    assert "party 1" not in message and other.settings()[setting] in message
    agreed = exchange_handshake(
        _Gathered([_row(owner), None]).all_gather,
        PartyAddress(1, 2, "tcp://x:1"),
        digest="d",
        data_settings=owner.settings(),
        values=[7],
    )
    assert agreed == [[7], [7]]


def test_a_config_saved_before_weight_decay_existed_keeps_training_without():
    """Resuming an older run must not switch on a setting it was not trained with."""
    from securemark_mpc.config import TrainConfig

    saved = TrainConfig().to_json()
    del saved["weight_decay"]
    assert TrainConfig.from_json(saved).weight_decay == 0.0
    assert TrainConfig.from_json(TrainConfig().to_json()) == TrainConfig()
