"""`securemark audit`: what can the model owner reconstruct from what it sees?

`--run RUN` attacks one run's revealed features. `--sweep` trains short plaintext-twin
runs across the privacy knobs (split, reveal noise, defences) and draws the
privacy-utility-cost frontier.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from securemark_mpc.audit.attacks import ATTACKS
from securemark_mpc.audit.report import AuditConfig, audit_run
from securemark_mpc.audit.sweep import SweepConfig, run_sweep
from securemark_mpc.commands import Command
from securemark_mpc.config import TrainConfig
from securemark_mpc.data import DATASETS, DataConfig, load_splits
from securemark_mpc.run_folder import RunFolder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults, audit = TrainConfig(), AuditConfig()
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", type=Path, help="audit this training run folder")
    what.add_argument("--sweep", action="store_true", help="train and audit across the knobs")
    parser.add_argument("--images", type=int, default=audit.images, help="private images to attack")
    parser.add_argument(
        "--attacks",
        nargs="+",
        default=list(audit.attacks),
        help=f"attacks to run, among {sorted(ATTACKS)}",
    )
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument(
        "--out",
        type=Path,
        default=Path("runs/privacy-sweep"),
        help="sweep folder (default: runs/privacy-sweep)",
    )
    sweep.add_argument(
        "--dataset", default=defaults.data.dataset, help=f"one of {sorted(DATASETS)}"
    )
    sweep.add_argument("--data-root", help="folder holding the data set (all but digits)")
    sweep.add_argument("--max-images", type=int, help="use at most this many images")
    sweep.add_argument("--epochs", type=int, default=defaults.epochs)
    sweep.add_argument("--seed", type=int, default=defaults.seed)


def _summary(rows: list[dict[str, Any]]) -> str:
    """A table: one line per setting, the strongest attacker, then SSIM / PSNR (dB) per attack."""
    attacks = list(rows[0]["attacks"]) if rows else []
    lines = [
        f"{'setting':<30} {'accuracy':>8} {'max SSIM':>8}  "
        + "  ".join(f"{a:>21}" for a in attacks)
    ]
    for row in rows:
        accuracy = row.get("test_accuracy")
        shown = f"{accuracy:>8.4f}" if accuracy is not None else f"{'-':>8}"
        strongest = row.get("attacker_ssim_max")
        top = f"{strongest:>8.3f}" if strongest is not None else f"{'-':>8}"
        cells = "  ".join(
            f"{row['attacks'][a]['ssim']:>11.3f} /{row['attacks'][a]['psnr']:>5.1f} dB"
            if a in row["attacks"]
            else f"{'skipped':>21}"
            for a in attacks
        )
        lines.append(f"{row.get('name', 'run'):<30} {shown} {top}  {cells}")
    return "\n".join(lines)


def run_command(args: argparse.Namespace) -> int:
    # Tiny tensors: one thread per process is fastest, as for the MPC parties.
    torch.set_num_threads(int(os.environ.get("SECUREMARK_THREADS", "1")))
    audit = AuditConfig(images=args.images, attacks=tuple(args.attacks)).validate()
    if args.run is not None:
        report = audit_run(run=RunFolder(args.run), config=audit)
        known = report["attacker_images"]
        print(
            f"the attacks train on the owner's {known['count']} images of the run's {known['source']}"
        )
        print(_summary([report]))
        print(f"report: {args.run / 'reports' / 'privacy.json'}", file=sys.stderr)
        return 0
    data = DataConfig(
        dataset=args.dataset,
        data_root=str(Path(args.data_root).resolve()) if args.data_root else None,
        seed=args.seed,
        max_images=args.max_images,
    )
    base = TrainConfig(data=data, epochs=args.epochs, seed=args.seed)
    base = base.with_preset_optimisation(load_splits(data).image_shape).validate()
    report = run_sweep(config=SweepConfig(train=base, audit=audit), out=args.out)
    print(_summary(report["settings"]))
    print(f"reports: {args.out / 'reports'}", file=sys.stderr)
    return 0


COMMAND = Command(
    name="audit",
    help="measure what the model owner can reconstruct of the private training images",
    add_arguments=add_arguments,
    run=run_command,
)
