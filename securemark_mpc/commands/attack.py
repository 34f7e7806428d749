"""`securemark attack NAME[:STRENGTH] --run RUN --model IN.pt [--model IN2.pt ...] --out OUT.pt`."""

from __future__ import annotations

import argparse
from pathlib import Path

from securemark_mpc.attacks import ATTACKS, AttackContext, AttackError, parse_attack
from securemark_mpc.commands import Command
from securemark_mpc.config import ConfigError
from securemark_mpc.data import load_splits
from securemark_mpc.models import load_model, save_model
from securemark_mpc.models.model_file import read_run_spec
from securemark_mpc.run_folder import RunFolder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("attack", metavar="NAME[:STRENGTH]", help=f"one of {sorted(ATTACKS)}")
    parser.add_argument(
        "--run", type=Path, required=True, help="training run (architecture, attacker data)"
    )
    parser.add_argument(
        "--model", type=Path, action="append", required=True, help="input model; repeat to collude"
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the attacked model")
    parser.add_argument("--seed", type=int, default=0)


def run_command(args: argparse.Namespace) -> int:
    run = RunFolder(args.run)
    try:
        attack = parse_attack(args.attack)
    except AttackError as error:
        raise ConfigError(str(error)) from None
    spec = read_run_spec(run.model_path)
    models = [load_model(path, expected=spec)[0] for path in args.model]  # untrusted: weights only
    context = AttackContext(spec=spec, aux=load_splits(run.load_config().data).aux, seed=args.seed)
    if len(context.aux) == 0 and attack.name in {
        "finetune-last",
        "finetune-all",
        "retrain-last",
        "prune-finetune",
        "distill",
        "overwrite",
    }:
        raise ConfigError(
            f"{attack.name} trains on the attacker split, and this run has none (--aux-fraction 0)"
        )
    try:
        attacked = attack(models, context)
    except AttackError as error:
        raise ConfigError(str(error)) from None
    save_model(args.out, model=attacked, spec=spec)
    print(
        f"{attack.name} ({attack.strength_name} {attack.strength:g}) on {len(models)} model(s): wrote {args.out}"
    )
    return 0


COMMAND = Command(
    name="attack",
    help="run one removal attack on model files",
    add_arguments=add_arguments,
    run=run_command,
)
