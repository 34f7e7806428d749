"""Shared fixtures: small MPC runs launched through the one harness (real processes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from securemark_mpc.config import TrainConfig
from securemark_mpc.data import DataConfig
from securemark_mpc.models import build_model, load_model
from securemark_mpc.mpc.launcher import LaunchResult, launch_local
from securemark_mpc.plaintext import train_plaintext
from securemark_mpc.run_folder import RunFolder

MNIST_T10K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-t10k"

# A few hundred digits: enough for several batches, quick under MPC.
SMALL = TrainConfig(data=DataConfig(max_images=300), epochs=1, eval_each_epoch=False)


def launch(run: RunFolder, config: TrainConfig, **options) -> LaunchResult:
    """Write the config and start every party; fail with the failing party named."""
    if not options.pop("resume", False):
        run.save_config(config, argv=["pytest"])
    else:
        options["resume"] = True
    options.setdefault("time_limit", 300)
    options.setdefault("echo_owner", False)
    return launch_local(run=run, data_owners=config.data_owners, **options)


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


# Fixed point keeps 16 fractional bits (resolution 1.5e-5). Over a few SGD steps with
# momentum the rounding of products and truncations accumulates to a few 1e-4, about
# 3% of what those steps moved each tensor.
ABSOLUTE_TOLERANCE = 1e-3
RELATIVE_TO_UPDATE = 0.1


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
