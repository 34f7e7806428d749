"""A small robustness sweep on digits writes a valid report and plot."""

from __future__ import annotations

import json

from securemark_mpc.cli import main
from securemark_mpc.config import TrainConfig
from securemark_mpc.data import DataConfig
from securemark_mpc.plaintext import write_plaintext_run
from securemark_mpc.run_folder import RunFolder


def test_small_sweep_writes_report_and_plot(tmp_path, capsys):
    run = RunFolder(tmp_path / "run")
    write_plaintext_run(run, TrainConfig(epochs=4))
    status = main(
        [
            "robustness",
            "--run",
            str(run.root),
            "--attacks",
            "quantize",
            "collude-average",
            "permute",
            "--chains",
            "dummy:1,prune:0.2",
            "--trials",
            "1",
            "--collusion-trials",
            "2",
            "--population",
            "4",
        ]
    )
    assert status == 0, capsys.readouterr().err
    report = json.loads((run.root / "reports" / "robustness.json").read_text())
    assert set(report["attacks"]) == {
        "quantize",
        "collude-average",
        "permute",
        "chain dummy:1,prune:0.2",
    }
    quantize = report["attacks"]["quantize"]
    assert quantize["strength_name"] == "bits"
    for point in quantize["points"] + report["attacks"]["collude-average"]["points"]:
        assert {
            "strength",
            "test_accuracy",
            "ber",
            "ours_rate",
            "traced_rate",
            "framed_rate",
        } <= set(point)
        assert 0 <= point["ber"] <= 1 and 0 <= point["test_accuracy"] <= 1
    mild = quantize["points"][0]  # 8 bits
    assert mild["ber"] == 0 and mild["traced_rate"] == 1 and mild["framed_rate"] == 0
    assert [p["strength"] for p in report["attacks"]["collude-average"]["points"]] == [2, 3]
    # function-preserving transformations are undone before reading: nothing is lost
    assert report["attacks"]["permute"]["points"][0]["ber"] == 0
    assert report["attacks"]["chain dummy:1,prune:0.2"]["points"][0]["traced_rate"] == 1
    targets = report["targets"]
    assert targets["function_preserving_traced_rate"] == 1
    assert targets["innocents_accused"] is False
    assert (run.root / "reports" / "robustness.png").stat().st_size > 10_000
    assert not (run.root / "registry.sqlite").exists(), (
        "simulated customers must not enter the registry"
    )


def test_a_run_without_attacker_split_gives_the_thief_half_the_test_set(tmp_path, capsys):
    run = RunFolder(tmp_path / "run")
    config = TrainConfig(epochs=2, data=DataConfig(aux_fraction=0))
    write_plaintext_run(run, config)
    arguments = ["--attacks", "finetune-last", "--chains", "--trials", "1", "--population", "2"]
    assert main(["robustness", "--run", str(run.root), *arguments]) == 0
    assert "the thief trains on 179 of its 359 test images" in capsys.readouterr().out
    report = json.loads((run.root / "reports" / "robustness.json").read_text())
    assert (report["attacker_images"], report["test_images"]) == (179, 180)
    assert report["attacks"]["finetune-last"]["points"][0]["traced_rate"] == 1


def test_unknown_attack_exits_2(tmp_path, capsys):
    run = RunFolder(tmp_path / "run")
    write_plaintext_run(run, TrainConfig(epochs=1))
    assert main(["robustness", "--run", str(run.root), "--attacks", "melt"]) == 2
    assert "melt" in capsys.readouterr().err


def test_a_bad_chain_exits_2_before_any_work(tmp_path, capsys):
    missing = tmp_path / "no-such-run"  # the chain is refused before the run is read
    assert main(["robustness", "--run", str(missing), "--chains", "prune:0.5,,noise"]) == 2
    assert "empty attack" in capsys.readouterr().err
