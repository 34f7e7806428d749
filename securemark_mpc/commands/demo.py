"""`securemark demo`: the whole story on the embedded digits, start to end."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from securemark_mpc.commands import Command
from securemark_mpc.commands.train import check_runnable, train
from securemark_mpc.config import ConfigError, TrainConfig
from securemark_mpc.run_folder import RunFolder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="run folder (default: runs/demo)"
    )
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)


def run_command(args: argparse.Namespace) -> int:
    run = RunFolder(args.out)
    if run.model_path.exists() or run.checkpoint(0).exists():
        raise ConfigError(f"{args.out} already holds a run; remove it or pass --out NEW_FOLDER")
    config = TrainConfig(epochs=args.epochs).validate()
    check_runnable(config)
    print(
        f"[1/1] training on digits under MPC: 1 model owner, {config.data_owners} data owners, "
        "1 TTP dealer, each a separate process",
        file=sys.stderr,
    )
    run.save_config(config, argv=sys.argv)
    return train(run, config)


COMMAND = Command(
    name="demo",
    help="run the whole story on the embedded digits data",
    add_arguments=add_arguments,
    run=run_command,
)
