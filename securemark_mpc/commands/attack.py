"""`securemark attack NAME[:STRENGTH] | --chain A:S,B:S,... --run RUN --model IN.pt [...] --out OUT.pt`."""

from __future__ import annotations

import argparse
from pathlib import Path

from securemark_mpc.attacks import (
    ATTACKS,
    AttackContext,
    AttackError,
    Chain,
    parse_attack,
    parse_chain,
    spec_of,
)
from securemark_mpc.commands import Command
from securemark_mpc.config import ConfigError
from securemark_mpc.data import load_splits
from securemark_mpc.models import load_model, save_model
from securemark_mpc.models.model_file import read_run_spec
from securemark_mpc.run_folder import RunFolder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "attack", nargs="?", metavar="NAME[:STRENGTH]", help=f"one of {sorted(ATTACKS)}"
    )
    parser.add_argument(
        "--chain", metavar="A:S,B:S,...", help="run several attacks in order instead of one"
    )
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
    if (args.attack is None) == (args.chain is None):
        raise ConfigError("give either one attack NAME[:STRENGTH] or --chain A:S,B:S,...")
    try:
        chain = (
            parse_chain(args.chain)
            if args.chain is not None
            else Chain([parse_attack(args.attack)])
        )
    except AttackError as error:
        raise ConfigError(str(error)) from None
    spec = read_run_spec(run.model_path)
    models = [load_model(path, expected=spec)[0] for path in args.model]  # untrusted: weights only
    context = AttackContext(spec=spec, aux=load_splits(run.load_config().data).aux, seed=args.seed)
    trains = sorted({attack.name for attack in chain.attacks if attack.trains})
    if len(context.aux) == 0 and trains:
        raise ConfigError(
            f"{', '.join(trains)} trains on the attacker split, and this run has none "
            "(--aux-fraction 0)"
        )
    try:
        attacked = chain(models, context)
    except AttackError as error:
        raise ConfigError(str(error)) from None
    save_model(args.out, model=attacked, spec=spec_of(attacked, spec))
    print(f"{chain.name} on {len(models)} model(s): wrote {args.out}")
    return 0


COMMAND = Command(
    name="attack",
    help="run one removal attack on model files",
    add_arguments=add_arguments,
    run=run_command,
)
