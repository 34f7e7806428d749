"""The `securemark train` command end to end, resuming, and the insecure TFP escape hatch."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import pytest

from securemark_mpc.cli import main
from securemark_mpc.data import DataConfig, simulated_party_data
from securemark_mpc.run_folder import RunFolder
from tests.conftest import (
    SMALL,
    assert_matches_plaintext,
    assert_ok,
    audited,
    launch,
    opened_under,
    write_image_folder,
)


@pytest.mark.mpc
def test_two_data_owners_train_digits_to_90_percent(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(
        [
            "train",
            "--dataset",
            "digits",
            "--data-owners",
            "2",
            "--epochs",
            "4",
            "--seed",
            "0",
            "--no-eval",
            "--out",
            str(out),
        ]
    )
    assert status == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.90
    assert main(["evaluate", "--run", str(out), str(out / "model.pt"), "--json"]) == 0
    reported = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert reported["test_accuracy"] == pytest.approx(metrics["test_accuracy"])


@pytest.mark.mpc
def test_resume_after_a_crash_finishes_like_an_uninterrupted_run(tmp_path):
    config = replace(SMALL, epochs=2)
    run = RunFolder(tmp_path / "run")

    def crash_after_first_checkpoint(processes):
        def watch():
            limit = time.monotonic() + 120
            while time.monotonic() < limit and not all(
                run.checkpoint(r).exists() for r in range(3)
            ):
                time.sleep(0.02)
            for process in processes:
                process.kill()

        threading.Thread(target=watch, daemon=True).start()

    crashed = launch(run, config, on_started=crash_after_first_checkpoint)
    assert not crashed.ok and not run.model_path.exists()
    assert_ok(launch(run, config, resume=True))

    history = json.loads((run.root / "metrics.json").read_text())["history"]
    assert [record["epoch"] for record in history] == [1, 2]
    assert_matches_plaintext(run.model_path, config)  # lost momentum or shares would show here


@pytest.mark.mpc
def test_tfp_runs_only_with_insecure_and_warns(tmp_path):
    run = RunFolder(tmp_path / "run")
    config = replace(SMALL, provider="tfp", insecure=True)
    result = launch(run, config, use_dealer=False)
    assert_ok(result)
    assert len(result.outcomes) == 3, "TFP has no dealer process"
    assert "INSECURE" in result.outcomes[0].log.read_text()


def test_config_only_prepares_a_multi_host_run_without_training(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--config-only", "--data-owners", "3", "--out", str(out)]) == 0
    assert RunFolder(out).load_config().data_owners == 3
    assert not (out / "model.pt").exists() and not (out / "logs").exists()


def write_party_folders(root, config, *, owners: int) -> list:
    """One image folder per party, from the simulated split of `config`: rank 0's is the test set."""
    classes = [str(label) for label in range(10)]
    folders = []
    for rank in range(owners + 1):
        part = simulated_party_data(
            config.data, rank=rank, num_owners=owners, scheme=config.partition, seed=config.seed
        )
        folders.append(write_image_folder(root / f"party{rank}", part.images, classes=classes))
    return folders


def own_data_arguments(folders) -> dict[int, list[str]]:
    return {
        rank: ["--test-data" if rank == 0 else "--data", str(folder)]
        for rank, folder in enumerate(folders)
    }


@pytest.mark.mpc
@pytest.mark.parametrize("topology", ["all", "two"])
def test_each_party_trains_on_its_own_folder_and_opens_no_other(tmp_path, topology):
    """Also when data owner 2 only hands its folder's images over (--topology two)."""
    folders = write_party_folders(tmp_path / "data", SMALL, owners=2)
    config = replace(  # nothing to open centrally
        SMALL, data=DataConfig(dataset="imagefolder"), topology=topology
    )
    run = RunFolder(tmp_path / "run")
    opens = tmp_path / "opens"
    result = launch(
        run, config, party_args=own_data_arguments(folders), wrap_command=audited(opens)
    )
    assert_ok(result)
    metrics = json.loads((run.root / "metrics.json").read_text())
    sizes = [sum(1 for _ in folder.rglob("*.png")) for folder in folders]
    assert (metrics["test_size"], metrics["train_size"]) == (sizes[0], sizes[1] + sizes[2])
    for rank, folder in enumerate(folders):
        touched = opened_under(opens / f"rank{rank}.txt", tmp_path / "data")
        assert touched, f"rank {rank} read nothing of its own"
        assert all(path.is_relative_to(folder) for path in touched), (
            f"rank {rank} opened another party's data: {sorted(touched)[:3]}"
        )
    assert not opened_under(opens / "rank3.txt", tmp_path / "data"), "the dealer opened data"
    owner_log = result.outcomes[0].log.read_text()  # clean logs: one record line per epoch
    assert "\r" not in owner_log and owner_log.count('{"epoch": ') == config.epochs
