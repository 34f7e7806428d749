"""`securemark queries`: export the run's keyed query set, to ask a suspect model.

The file holds the array ``images`` only (float32, N×C×H×W): the key, the two labels
each query hesitates between and every codeword stay in the run folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from securemark_mpc.blackbox.store import ensure_blackbox, key_path, write_query_images
from securemark_mpc.commands import Command
from securemark_mpc.models import load_model
from securemark_mpc.run_folder import RunFolder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="training run folder")
    parser.add_argument("--out", type=Path, required=True, help="where to write the .npz")


def run_command(args: argparse.Namespace) -> int:
    run = RunFolder(args.run)
    model, _ = load_model(run.model_path)
    _, queries = ensure_blackbox(run=run, model=model)
    write_query_images(args.out, queries.images)
    shape = "×".join(str(d) for d in queries.images.shape)
    print(
        f"wrote {len(queries)} keyed queries ({shape} float32) to {args.out}; ask the suspect "
        f"for one top-1 label each, in this order. The key stays in {key_path(run)} (mode 0600)."
    )
    return 0


COMMAND = Command(
    name="queries",
    help="write the run's keyed query set (images only) for black-box tracing",
    add_arguments=add_arguments,
    run=run_command,
)
