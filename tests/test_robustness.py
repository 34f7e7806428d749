"""A small robustness sweep on digits writes a valid report and plot."""

from __future__ import annotations

import json

from securemark_mpc.cli import main
from securemark_mpc.config import TrainConfig
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
            "prune",
            "collude-average",
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
    assert set(report["attacks"]) == {"prune", "collude-average"}
    prune = report["attacks"]["prune"]
    assert prune["strength_name"] == "sparsity"
    for point in prune["points"] + report["attacks"]["collude-average"]["points"]:
        assert {
            "strength",
            "test_accuracy",
            "ber",
            "ours_rate",
            "traced_rate",
            "framed_rate",
        } <= set(point)
        assert 0 <= point["ber"] <= 1 and 0 <= point["test_accuracy"] <= 1
    mild = prune["points"][0]
    assert mild["ber"] == 0 and mild["traced_rate"] == 1 and mild["framed_rate"] == 0
    assert [p["strength"] for p in report["attacks"]["collude-average"]["points"]] == [2, 3]
    assert (run.root / "reports" / "robustness.png").stat().st_size > 10_000
    assert not (run.root / "registry.sqlite").exists(), (
        "simulated customers must not enter the registry"
    )


def test_unknown_attack_exits_2(tmp_path, capsys):
    run = RunFolder(tmp_path / "run")
    write_plaintext_run(run, TrainConfig(epochs=1))
    assert main(["robustness", "--run", str(run.root), "--attacks", "melt"]) == 2
    assert "melt" in capsys.readouterr().err
