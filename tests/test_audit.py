"""Privacy audit: metrics, attacks, the noise twin, run reports, a small sweep and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from securemark_mpc.audit.attacks import ATTACKS, Revealed
from securemark_mpc.audit.metrics import PSNR_CAP_DB, score, ssim_window
from securemark_mpc.audit.report import AuditConfig, attack_reveal, audit_run
from securemark_mpc.audit.sweep import Setting, SweepConfig, run_sweep
from securemark_mpc.audit.twin import train_twin
from securemark_mpc.cli import main
from securemark_mpc.config import TrainConfig
from securemark_mpc.data import DataConfig, load_splits
from securemark_mpc.plaintext import train_plaintext, write_plaintext_run
from securemark_mpc.run_folder import RunFolder

SMALL = TrainConfig(data=DataConfig(max_images=400), epochs=2, eval_each_epoch=False)
QUICK_AUDIT = AuditConfig(images=24)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_splits():
    return load_splits(SMALL.data)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> RunFolder:
    run = RunFolder(tmp_path_factory.mktemp("audit") / "run")
    write_plaintext_run(run, SMALL)
    return run


def test_metrics_score_an_exact_copy_as_perfect_and_noise_as_worse():
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    exact = score(original=images, reconstructed=images.clone())
    assert exact.ssim == pytest.approx(1.0)
    assert exact.psnr == PSNR_CAP_DB
    assert exact.mse == 0.0
    noisy = images + 0.2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    worse = score(original=images, reconstructed=noisy)
    assert worse.ssim < 0.9 and worse.psnr < 20 and worse.mse > 0.01


def test_ssim_window_is_a_quarter_of_the_image_side_between_3_and_7():
    assert ssim_window(height=8, width=8) == 3
    assert ssim_window(height=28, width=28) == 7
    assert ssim_window(height=20, width=32) == 5
    assert ssim_window(height=64, width=64) == 7


def test_revealing_raw_inputs_gives_ssim_close_to_1(small_splits):
    """The reference row, and every attack when the 'private partition' is the identity."""
    train = small_splits.train.subset(torch.arange(24))
    result = attack_reveal(
        private=nn.Identity(),
        features=train.images,
        train=train,
        aux=small_splits.aux,
        noise_sigma=0.0,
        config=AuditConfig(images=24),
    )
    assert result.scores["raw"].ssim == pytest.approx(1.0)
    assert result.scores["white-box"].ssim > 0.95
    assert result.scores["inverse-network"].ssim > 0.8
    assert result.scores["labels-only"].ssim < result.scores["inverse-network"].ssim


def test_attacks_are_registered_by_name_and_keep_only_hyperparameters():
    assert {"raw", "labels-only", "inverse-network", "white-box"} <= set(ATTACKS)
    for name, attack in ATTACKS.items():
        assert attack.name == name
        assert all(isinstance(value, (int, float, tuple)) for value in vars(attack()).values())


def test_white_box_reconstruction_stays_in_the_unit_interval(small_splits):
    private = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AvgPool2d(2), nn.ReLU())
    images = small_splits.train.images[:8]
    with torch.no_grad():
        features = private(images)
    revealed = Revealed(features=features, labels=small_splits.train.labels[:8], noise_sigma=0.0)
    attack = replace(ATTACKS["white-box"](), steps=20, tv_weights=(0.1,))
    guess = attack.reconstruct(private=private, revealed=revealed, aux=small_splits.aux, seed=0)
    assert guess.shape == images.shape
    assert float(guess.min()) >= 0.0 and float(guess.max()) <= 1.0
    assert all(parameter.requires_grad for parameter in private.parameters())


def test_twin_without_noise_trains_exactly_like_plaintext(small_splits):
    plain = train_plaintext(SMALL, splits=small_splits)
    twin = train_twin(config=SMALL, splits=small_splits)
    twin_model = nn.Sequential(*twin.private, *twin.public)
    for (name, expected), actual in zip(
        plain.model.state_dict().items(), twin_model.state_dict().values(), strict=True
    ):
        assert torch.equal(expected, actual), name
    assert twin.test_accuracy == plain.test_accuracy


def test_twin_reveals_features_with_the_configured_noise(small_splits):
    config = replace(SMALL, reveal_noise_sigma=0.5)
    twin = train_twin(config=config, splits=small_splits)
    with torch.no_grad():
        clean = twin.private(twin.train.images)
    assert float((twin.features - clean).std()) == pytest.approx(0.5, rel=0.05)
    baseline = train_twin(config=config, splits=small_splits, cut=0)
    assert len(baseline.private) == 0
    assert float((baseline.features - baseline.train.images).std()) == pytest.approx(0.5, rel=0.05)


def test_audit_run_writes_the_privacy_report(small_run):
    report = audit_run(run=small_run, config=QUICK_AUDIT, progress=False)
    written = json.loads((small_run.root / "reports" / "privacy.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert (small_run.root / "reports" / "reconstructions.png").stat().st_size > 0
    assert any("raw" in key for key in written["attacks"])
    for scores in written["attacks"].values():
        assert set(scores) == {"ssim", "psnr", "mse"}
    assert written["attacks"]["raw"]["ssim"] == pytest.approx(1.0)
    assert written["split"] == 3 and written["private_nonlinear_elements"] == 128
    assert written["images"] == QUICK_AUDIT.images
    assert 0 < written["test_accuracy"] <= 1


def test_small_sweep_on_digits_writes_the_curve_and_the_grid(tmp_path):
    settings = (
        Setting("default"),
        Setting("split 8 σ=0.2", split=8, noise_sigma=0.2),
        Setting("noise-only σ=0.5", split=0, noise_sigma=0.5),
    )
    config = SweepConfig(train=SMALL, settings=settings, audit=QUICK_AUDIT)
    report = run_sweep(config=config, out=tmp_path, progress=False)
    reports = tmp_path / "reports"
    assert json.loads((reports / "privacy.json").read_text())["settings"] == json.loads(
        json.dumps(report["settings"])
    )
    for picture in ("privacy_utility.png", "reconstructions.png"):
        assert (reports / picture).stat().st_size > 0
    rows = {row["name"]: row for row in report["settings"]}
    for row in rows.values():
        expected = {"name", "split", "private_channels", "private_pool", "noise_sigma"}
        assert expected | {"test_accuracy", "attacks"} <= set(row)
        assert row["attacks"]["raw"]["ssim"] == pytest.approx(1.0)
    assert rows["noise-only σ=0.5"]["split"] == 0 and rows["noise-only σ=0.5"]["noise_only"]
    assert rows["split 8 σ=0.2"]["private_nonlinear_elements"] == 128 + 512 + 64
    default = rows["default"]["attacks"]
    # The default partition's activations leak well beyond what the labels alone give;
    # a deeper, noisier cut leaks less.
    assert default["white-box"]["ssim"] > default["labels-only"]["ssim"] + 0.1
    assert rows["split 8 σ=0.2"]["attacker_ssim"] < rows["default"]["attacker_ssim"]


def test_cli_audits_a_run_and_rejects_bad_input(small_run, tmp_path, capsys):
    assert main(["audit", "--run", str(small_run.root), "--images", "8"]) == 0
    assert "white-box" in capsys.readouterr().out
    assert main(["audit", "--run", str(tmp_path / "missing")]) == 2
    assert main(["audit", "--run", str(small_run.root), "--attacks", "telepathy"]) == 2


MNIST_T10K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-t10k"


@pytest.mark.slow
def test_on_mnist_the_deep_noisy_cut_leaks_less_than_the_default_at_equal_accuracy(tmp_path):
    if not MNIST_T10K.is_dir():
        pytest.skip(f"MNIST-t10k not found at {MNIST_T10K}")
    settings = (Setting("default"), Setting("split 8 σ=0.2", split=8, noise_sigma=0.2))
    base = TrainConfig(data=DataConfig(dataset="idx", data_root=str(MNIST_T10K)))
    report = run_sweep(
        config=SweepConfig(train=base, settings=settings, audit=AuditConfig(images=64)),
        out=tmp_path,
        progress=False,
    )
    default, deep = report["settings"]
    assert default["attacker_ssim"] > 0.8  # He et al.: conv + ReLU leaks nearly everything
    assert deep["attacker_ssim"] < default["attacker_ssim"] - 0.1
    assert deep["test_accuracy"] >= 0.97
