"""`securemark train` fills in the batch size and learning rate from the model preset."""

from __future__ import annotations

import pytest
import torch

from securemark_mpc.cli import main
from securemark_mpc.config import ConfigError, TrainConfig
from securemark_mpc.data.sources import LabeledImages
from securemark_mpc.models import PRESETS, recommended_optimisation
from securemark_mpc.run_folder import RunFolder
from tests.conftest import write_image_folder


def configured(tmp_path, *options: str):
    out = tmp_path / "run"
    assert main(["train", "--config-only", "--out", str(out), *options]) == 0
    config = RunFolder(out).load_config()
    return config.batch_size, config.learning_rate


def test_learning_rate_scales_linearly_with_the_batch():
    assert recommended_optimisation("digits-cnn") == (64, 0.1)
    assert recommended_optimisation("mnist-cnn") == (256, pytest.approx(0.4))
    assert recommended_optimisation("mnist-cnn", 64) == (64, pytest.approx(0.1))
    for name, preset in PRESETS.items():
        batch, lr = recommended_optimisation(name, 2 * preset.batch_size)
        assert (batch, lr) == (2 * preset.batch_size, pytest.approx(2 * preset.learning_rate))


def test_digits_keeps_batch_64_and_says_whose_it_is(tmp_path, capsys):
    assert configured(tmp_path, "--dataset", "digits") == (64, pytest.approx(0.1))
    assert "batch 64, lr 0.1 (the digits-cnn preset's" in capsys.readouterr().err


def test_mnist_sized_images_get_the_mnist_presets_batch(tmp_path):
    generator = torch.Generator().manual_seed(0)
    images = LabeledImages(
        images=torch.rand(40, 1, 28, 28, generator=generator), labels=torch.arange(40) % 10
    )
    folder = write_image_folder(
        tmp_path / "data", images, classes=[str(label) for label in range(10)]
    )
    options = ("--dataset", "imagefolder", "--data-root", str(folder), "--test-fraction", "0.25")
    assert configured(tmp_path, *options) == (256, pytest.approx(0.4))
    given = configured(tmp_path / "given", *options, "--batch-size", "128")
    assert given == (128, pytest.approx(0.2))
    assert configured(tmp_path / "both", *options, "--batch-size", "32", "--lr", "0.3") == (
        32,
        pytest.approx(0.3),
    )


def test_a_config_without_data_names_what_it_chose(tmp_path, capsys):
    assert configured(tmp_path, "--dataset", "imagefolder") == (64, pytest.approx(0.1))
    assert "no data here to pick the model preset by" in capsys.readouterr().err
    named = configured(tmp_path / "named", "--dataset", "imagefolder", "--model", "mnist-cnn")
    assert named == (256, pytest.approx(0.4))


def test_an_unknown_shape_or_preset_keeps_the_given_settings():
    config = TrainConfig()
    assert config.with_preset_optimisation((3, 9, 9)) == config
    scaled = config.with_preset_optimisation(None, batch_size=32)
    assert (scaled.batch_size, scaled.learning_rate) == (32, pytest.approx(0.05))
    with pytest.raises(ConfigError, match="--batch-size must be at least 1"):
        config.with_preset_optimisation((1, 28, 28), batch_size=0).validate()
