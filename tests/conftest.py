"""Shared fixtures: small MPC runs launched through the one harness (real processes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from securemark_mpc.config import TrainConfig
from securemark_mpc.data import DataConfig, LabeledImages
from securemark_mpc.models import build_model, load_model
from securemark_mpc.mpc.launcher import LaunchResult, launch_local
from securemark_mpc.plaintext import train_plaintext
from securemark_mpc.run_folder import RunFolder

MNIST_T10K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-t10k"

# A few hundred digits: enough for several batches, quick under MPC.
# The tests replay MPC training in plaintext, so they need the initial weights that the
# data owners would otherwise draw in secret, and no reveal noise unless they add it.
SMALL = TrainConfig(
    data=DataConfig(max_images=300),
    epochs=1,
    eval_each_epoch=False,
    seeded_private_init=True,
    reveal_noise_sigma=0.0,
)


def launch(run: RunFolder, config: TrainConfig, **options) -> LaunchResult:
    """Write the config and start every party; fail with the failing party named."""
    if not options.pop("resume", False):
        run.save_config(config, argv=["pytest"])
    else:
        options["resume"] = True
    options.setdefault("time_limit", 300)
    options.setdefault("echo_owner", False)
    return launch_local(run=run, data_owners=config.data_owners, **options)


def write_image_folder(
    root: Path, images: LabeledImages, *, classes: list[str], first: int = 0
) -> Path:
    """Write `images` as 8-bit PNGs, one sub-folder per class (every class, even if empty),
    numbered from `first` so that the folder reads back in this order."""
    from PIL import Image

    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(images.images, images.labels, strict=True)):
        pixels = (image * 255).round().to(torch.uint8).squeeze(0).numpy()
        Image.fromarray(pixels).save(root / classes[label] / f"{first + index:06d}.png")
    return root


# Runs one party with an audit hook that logs every file it opens or lists (argv[1]).
_AUDITED_PARTY = """
import os, runpy, sys
log = open(sys.argv[1], "w", buffering=1)
def hook(event, args):
    if event in ("open", "os.listdir", "os.scandir") and isinstance(args[0], (str, bytes, os.PathLike)):
        log.write(os.fsdecode(args[0]) + "\\n")
sys.addaudithook(hook)
sys.argv = ["party", *sys.argv[2:]]
runpy.run_module("securemark_mpc.mpc.party", run_name="__main__")
"""


def audited(log_folder: Path):
    """A `wrap_command` for launch(): each rank logs what it opens to log_folder/rankR.txt."""
    log_folder.mkdir(parents=True, exist_ok=True)

    def wrap(rank: int, command: list[str]) -> list[str]:
        # command = [python, -m, securemark_mpc.mpc.party, --rank, ...]
        return [command[0], "-c", _AUDITED_PARTY, str(log_folder / f"rank{rank}.txt"), *command[3:]]

    return wrap


def opened_under(log: Path, folder: Path) -> set[Path]:
    """The paths under `folder` that a party opened or listed, from its audit log."""
    paths = {Path(os.path.abspath(line)) for line in log.read_text().splitlines() if line}
    return {path for path in paths if path.is_relative_to(folder)}


def assert_ok(result: LaunchResult) -> None:
    assert result.ok, result.report()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's small tensor ops on one thread, then restore the setting.

    With two threads on a 2-core machine, any other busy process makes every op wait
    for a descheduled worker: plaintext training and embedding then run ~40x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_config() -> TrainConfig:
    return SMALL


@pytest.fixture(scope="session")
def mpc_small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunFolder, Path]:
    """One short MPC run on 300 digits with every reveal recorded."""
    root = tmp_path_factory.mktemp("mpc-small")
    run, reveal_log = RunFolder(root / "run"), root / "reveals"
    assert_ok(launch(run, SMALL, extra_env={"SECUREMARK_REVEAL_LOG": str(reveal_log)}))
    return run, reveal_log


# Fixed point keeps 16 fractional bits (resolution 1.5e-5). Every product and
# truncation rounds, and SGD through the deep quad partition (8 weight layers, x²
# terms) carries those roundings on: after one epoch a few 1e-4 per tensor, after two
# (the resume and two-party tests) measured up to 2.1e-3, or 14% of what those steps
# moved the tensor. With cutnorm's inverse square root (1e-4 to 1e-3 relative under
# MPC) the head's output weights ended up to 7.9e-3 apart in the two-party test, where
# they move by 0.088 (9%). In the two-party test with weight decay every tensor ends
# 80-300 units of 2^-16 from the twin, the same in every run, so the tensors that move
# least come closest to the bound: 10.bias at 0.23 of its update in 12 of 12 runs,
# 8.bias at 0.18 and once, in about 40 runs, at 0.26. A lost momentum buffer or share
# would be of the size of the update, which the relative bound catches.
ABSOLUTE_TOLERANCE = 1e-2
RELATIVE_TO_UPDATE = 0.35


def assert_matches_plaintext(model_path: Path, config: TrainConfig) -> None:
    """MPC-trained weights equal the plaintext twin's within fixed-point tolerance."""
    mpc_model, spec = load_model(model_path)
    plain = train_plaintext(config).model.state_dict()
    initial = build_model(spec, seed=config.seed).state_dict()
    for name, mpc_weight in mpc_model.state_dict().items():
        error = float((mpc_weight - plain[name]).abs().max())
        update = float((plain[name] - initial[name]).abs().max())
        assert update > 0, f"{name} did not train: the comparison would be vacuous"
        assert error <= ABSOLUTE_TOLERANCE, f"{name}: MPC differs from plaintext by {error:.2e}"
        assert error <= RELATIVE_TO_UPDATE * update, (
            f"{name}: error {error:.2e} vs update {update:.2e}"
        )
