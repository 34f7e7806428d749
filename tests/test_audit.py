"""Privacy audit: metrics, attacks, the noise twin, run reports, a small sweep and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from securemark_mpc.audit.attacks import ATTACKS, Revealed, combine_views
from securemark_mpc.audit.defences import AttackerAware, NoPeek, distance_correlation
from securemark_mpc.audit.metrics import PSNR_CAP_DB, score, ssim_window
from securemark_mpc.audit.report import REFERENCES, AuditConfig, attack_reveal, audit_run
from securemark_mpc.audit.sweep import Setting, SweepConfig, run_sweep
from securemark_mpc.audit.twin import train_twin
from securemark_mpc.cli import main
from securemark_mpc.config import TrainConfig
from securemark_mpc.data import DataConfig, load_splits
from securemark_mpc.plaintext import train_plaintext, write_plaintext_run
from securemark_mpc.run_folder import RunFolder

SMALL = TrainConfig(
    data=DataConfig(max_images=400), epochs=2, eval_each_epoch=False, reveal_noise_sigma=0.0
)
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
    assert {
        "raw",
        "labels-only",
        "dataset-mean",
        "inverse-network",
        "white-box",
        "multi-epoch-inverse",
        "multi-epoch-white-box",
    } <= set(ATTACKS)
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
    baseline = train_twin(config=config, splits=small_splits, cut=0, watch=torch.arange(10))
    assert len(baseline.private) == 0
    assert float((baseline.features - baseline.train.images).std()) == pytest.approx(0.5, rel=0.05)
    # Every epoch's view of the watched images, each with fresh noise; the last is the
    # last epoch's reveal that the owner caches (no extra reveal under the final weights).
    views = baseline.history.views
    assert views.shape == (config.epochs, 10, *baseline.train.images.shape[1:])
    assert torch.equal(views[-1], baseline.features[:10])
    assert float((views[0] - views[1]).std()) == pytest.approx(0.5 * 2**0.5, rel=0.1)


def test_multi_epoch_views_combine_into_a_less_noisy_estimate():
    """Views of the same values with fresh noise: the combination beats any one view."""
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(600, 16, generator=generator)
    drift = torch.linspace(0.5, 1.0, 8)[:, None, None]  # the weights move between epochs
    views = drift * clean + 0.5 * torch.randn(8, 600, 16, generator=generator)
    revealed = Revealed(
        features=views[-1, :50],
        labels=torch.zeros(50, dtype=torch.long),
        noise_sigma=0.5,
        views=views[:, :50],
        pool_views=views,
    )
    combined = combine_views(revealed, penalties=(1e-4, 1e-2), seed=0)
    single = float((views[-1, :50] - clean[:50]).pow(2).mean())
    assert float((combined.features - clean[:50]).pow(2).mean()) < single / 3
    assert combined.noise_sigma < 0.5 / 1.5


def test_audit_run_writes_the_privacy_report(small_run):
    report = audit_run(run=small_run, config=QUICK_AUDIT, progress=False)
    written = json.loads((small_run.root / "reports" / "privacy.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert (small_run.root / "reports" / "reconstructions.png").stat().st_size > 0
    assert any("raw" in key for key in written["attacks"])
    for scores in written["attacks"].values():
        assert set(scores) == {"ssim", "psnr", "mse"}
    assert written["attacks"]["raw"]["ssim"] == pytest.approx(1.0)
    spec = SMALL.model_spec(load_splits(SMALL.data))
    assert written["split"] == spec.split
    assert written["private_nonlinear_elements"] == spec.private_nonlinear_elements()
    assert written["images"] == QUICK_AUDIT.images
    assert 0 < written["test_accuracy"] <= 1
    assert_privacy_keys(written)
    # A run folder keeps only the last epoch's reveal: the multi-epoch attackers say so.
    assert set(written["skipped_attacks"]) == {"multi-epoch-inverse", "multi-epoch-white-box"}


def test_a_run_without_an_auxiliary_split_is_attacked_with_the_owners_test_images(tmp_path):
    """MNIST-t10k's reference split (--aux-fraction 0) leaves no auxiliary images: the
    model owner, who is the attacker here, trains its attacks on its own test set."""
    config = replace(SMALL, data=replace(SMALL.data, aux_fraction=0.0))
    run = RunFolder(tmp_path / "run")
    write_plaintext_run(run, config)
    report = audit_run(run=run, config=replace(QUICK_AUDIT, attacks=("inverse-network",)))
    test_size = len(load_splits(config.data).test)
    assert report["attacker_images"] == {"source": "test split", "count": test_size}
    assert 0 < report["attacks"]["inverse-network"]["ssim"] < 1


def assert_privacy_keys(report: dict) -> None:
    """The output contract: every attacker's SSIM, the max over the real ones, the floors."""
    attacks = report["attacks"]
    for name in ("raw", "labels-only", "dataset-mean"):
        assert set(attacks[name]) == {"ssim", "psnr", "mse"}
    real = {name: s["ssim"] for name, s in attacks.items() if name not in REFERENCES}
    assert real and report["attacker_ssim_max"] == max(real.values())
    assert report["strongest_attacker"] in real
    assert report["attacker_ssim_max"] < attacks["raw"]["ssim"]
    assert report["labels_only_floor"] == attacks["labels-only"]["ssim"]
    assert report["label_private_floor"] == attacks["dataset-mean"]["ssim"]
    assert report["label_private_floor"] < report["labels_only_floor"]
    assert 0 <= report["labels_from_features_accuracy"] <= 1


def test_small_sweep_on_digits_writes_the_frontier_and_the_grid(tmp_path):
    settings = (
        Setting("default", noise_sigma=0.0),
        Setting("split 3", split=3, noise_sigma=0.0),
        Setting("split 3 σ=0.5", split=3, noise_sigma=0.5),
        Setting("noise-only σ=0.5", split=0, noise_sigma=0.5),
    )
    # The white-box attacks are the slow ones; test_revealing_raw_inputs covers them.
    fast = tuple(name for name in QUICK_AUDIT.attacks if "white-box" not in name)
    config = SweepConfig(train=SMALL, settings=settings, audit=replace(QUICK_AUDIT, attacks=fast))
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
        assert expected | {"test_accuracy", "attacks", "cost_nonlinear_elements"} <= set(row)
        assert row["attacks"]["raw"]["ssim"] == pytest.approx(1.0)
        assert_privacy_keys(row)
        assert row["views"] == SMALL.epochs and not row["skipped_attacks"]
    assert rows["noise-only σ=0.5"]["split"] == 0 and rows["noise-only σ=0.5"]["noise_only"]
    assert rows["noise-only σ=0.5"]["cost_nonlinear_elements"] == 0
    # Noise on the same (leaky, early) cut hides more from the strongest attacker.
    assert rows["split 3 σ=0.5"]["attacker_ssim_max"] < rows["split 3"]["attacker_ssim_max"]
    marked = report["frontier"]
    assert marked["default"] == "default" and marked["noise_only"] == ["noise-only σ=0.5"]
    full = marked["full_mpc"]
    assert full["attacker_ssim"] == marked["label_private_floor"]
    assert full["cost_nonlinear_elements"] > rows["default"]["cost_nonlinear_elements"]


def test_nopeek_lowers_the_distance_correlation_it_penalises(small_splits):
    def trained_dcor(setting: Setting) -> float:
        config = setting.train_config(SMALL)
        defence = setting.build_defence(seed=0, noise_sigma=config.reveal_noise_sigma)
        twin = train_twin(config=config, splits=small_splits, defence=defence)
        with torch.no_grad():
            hidden = twin.private(twin.train.images[:128])
        return float(distance_correlation(twin.train.images[:128], hidden))

    plain = trained_dcor(Setting("default"))
    defended = trained_dcor(Setting("nopeek", defence="nopeek", defence_weight=2.0))
    assert defended < plain - 0.02


def test_distance_correlation_is_one_for_a_copy_and_lower_for_independent_data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=generator)
    assert float(distance_correlation(x, 3 * x + 1)) == pytest.approx(1.0, abs=1e-4)
    noisy_copy = x + 0.5 * torch.randn(64, 10, generator=generator)
    independent = torch.randn(64, 10, generator=generator)
    assert distance_correlation(x, independent) < distance_correlation(x, noisy_copy) - 0.2


def test_attacker_aware_defence_pushes_the_simulated_attacker_away():
    """Its gradient on h raises the simulated decoder's error; NoPeek's lowers dCor."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(32, 1, 8, 8, generator=generator)
    hidden = images.flatten(1)[:, :16] + 0.1 * torch.randn(32, 16, generator=generator)
    aware = AttackerAware(weight=1.0, seed=0)
    for _ in range(50):  # let the simulated attacker learn this batch first
        aware.penalty(images=images, hidden=hidden)
    probe = hidden.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(aware.penalty(images=images, hidden=probe), probe)
    stepped = hidden - 0.5 * gradient / gradient.norm()
    with torch.no_grad():
        before = float(aware.decoder_error(images=images, hidden=hidden))
        assert float(aware.decoder_error(images=images, hidden=stepped)) > before
    probe = hidden.clone().requires_grad_(True)
    nopeek = NoPeek(weight=1.0)
    (gradient,) = torch.autograd.grad(nopeek.penalty(images=images, hidden=probe), probe)
    stepped = hidden - 0.5 * gradient / gradient.norm()
    assert distance_correlation(images, stepped) < distance_correlation(images, hidden)


def test_cli_audits_a_run_and_rejects_bad_input(small_run, tmp_path, capsys):
    assert main(["audit", "--run", str(small_run.root), "--images", "8"]) == 0
    assert "white-box" in capsys.readouterr().out
    assert main(["audit", "--run", str(tmp_path / "missing")]) == 2
    assert main(["audit", "--run", str(small_run.root), "--attacks", "telepathy"]) == 2


MNIST_T10K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-t10k"


@pytest.mark.slow
def test_on_mnist_the_default_leaks_less_than_revealing_conv1(tmp_path):
    if not MNIST_T10K.is_dir():
        pytest.skip(f"MNIST-t10k not found at {MNIST_T10K}")
    # He et al.'s anchor reveals conv1 in the clear (as the sweep's own "split 1 (conv)")
    settings = (Setting("split 1 (conv)", split=1, noise_sigma=0.0), Setting("default"))
    base = TrainConfig(data=DataConfig(dataset="idx", data_root=str(MNIST_T10K)))
    audit = AuditConfig(images=64, attacks=("labels-only", "inverse-network", "white-box"))
    report = run_sweep(
        config=SweepConfig(train=base, settings=settings, audit=audit),
        out=tmp_path,
        progress=False,
    )
    conv1, default = report["settings"]
    assert conv1["attacker_ssim_max"] > 0.9  # He et al.: conv1 leaks nearly everything
    assert default["attacker_ssim_max"] < conv1["attacker_ssim_max"] - 0.1
    assert default["test_accuracy"] >= 0.97


def test_the_normalised_cut_bounds_what_each_image_reveals_whatever_the_weights(small_splits):
    config = replace(SMALL, reveal_noise_sigma=1.0)
    twin = train_twin(config=config, splits=small_splits)
    cut = [layer for layer in twin.private if isinstance(layer, nn.Linear)][-1]
    with torch.no_grad():
        cut.weight.mul_(100.0)  # as if an owner's gradients had blown the cut up
        hidden = twin.private(twin.train.images).flatten(1)
    mean_square = hidden.pow(2).mean(dim=1)
    assert bool((mean_square < 1).all()) and float(mean_square.min()) > 0.9
