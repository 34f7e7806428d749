"""`securemark evaluate`: the test accuracy of any model file, on the run's test split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from securemark_mpc.commands import Command
from securemark_mpc.data import load_splits
from securemark_mpc.models import load_model
from securemark_mpc.models.model_file import read_run_spec
from securemark_mpc.plaintext import accuracy
from securemark_mpc.run_folder import RunFolder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="training run folder")
    parser.add_argument("model", type=Path, help="model file (.pt or .safetensors)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run_command(args: argparse.Namespace) -> int:
    run = RunFolder(args.run)
    config = run.load_config()
    model, _ = load_model(args.model, expected=read_run_spec(run.model_path))
    score = accuracy(model, load_splits(config.data).test)
    if args.json:
        print(json.dumps({"test_accuracy": score, "model": str(args.model)}))
    else:
        print(f"test accuracy of {args.model}: {score:.4f}")
    return 0


COMMAND = Command(
    name="evaluate",
    help="report a model file's test accuracy",
    add_arguments=add_arguments,
    run=run_command,
)
