"""`securemark customers`: list the run's registered customers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from securemark_mpc.commands import Command
from securemark_mpc.config import ConfigError
from securemark_mpc.registry import Registry
from securemark_mpc.run_folder import RunFolder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="training run folder")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run_command(args: argparse.Namespace) -> int:
    run = RunFolder(args.run)
    if not run.root.is_dir():
        raise ConfigError(f"{run.root}: no such run folder")
    # Listing must not create a registry as a side effect.
    customers = Registry(run.registry_path).customers() if run.registry_path.exists() else []
    rows = [
        {
            "name": c.name,
            "index": c.index,
            "bits": int(c.codeword.size),
            "copy_sha256": c.copy_sha256,
            "issued_at": c.issued_at,
        }
        for c in customers
    ]
    if args.json:
        print(json.dumps({"customers": rows}, indent=2))
    elif not rows:
        print(f"no customers registered in {run.root}")
    else:
        for row in rows:
            print(
                f"#{row['index']:<4} {row['name']:<24} {row['bits']} bits  "
                f"issued {row['issued_at']}  sha256 {row['copy_sha256'][:16]}…"
            )
    return 0


COMMAND = Command(
    name="customers",
    help="list the customers who received fingerprinted copies",
    add_arguments=add_arguments,
    run=run_command,
)
