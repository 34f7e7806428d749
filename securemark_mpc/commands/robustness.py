"""`securemark robustness --run RUN [--attacks ...] [--chains ...] [--trials T] [--bits M]`.

Attack our own copies; one command reproduces the README's table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from securemark_mpc.attacks import ATTACKS, AttackContext, AttackError, parse_chain
from securemark_mpc.commands import Command
from securemark_mpc.config import ConfigError
from securemark_mpc.data import load_splits
from securemark_mpc.data.splits import attacker_half
from securemark_mpc.fingerprint.codes import CodeConfig
from securemark_mpc.fingerprint.copies import ensure_key
from securemark_mpc.fingerprint.key import FingerprintConfig, fresh_seed, keygen
from securemark_mpc.models import load_model
from securemark_mpc.models.model_file import read_run_spec
from securemark_mpc.registry import Registry
from securemark_mpc.robustness import RobustnessConfig, make_population, sweep
from securemark_mpc.robustness.plots import plot_robustness
from securemark_mpc.run_folder import RunFolder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = RobustnessConfig()
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument(
        "--attacks", nargs="+", default=list(defaults.attacks), help=f"subset of {sorted(ATTACKS)}"
    )
    parser.add_argument(
        "--trials", type=int, default=defaults.trials, help="leakers per single-copy point"
    )
    parser.add_argument("--collusion-trials", type=int, default=defaults.collusion_trials)
    parser.add_argument(
        "--population", type=int, default=defaults.population, help="simulated customers"
    )
    parser.add_argument(
        "--chains",
        nargs="*",
        default=list(defaults.chains),
        metavar="A:S,B:S",
        help="attack chains to run (none: --chains with no value)",
    )
    parser.add_argument(
        "--bits",
        type=int,
        help="measure with a throw-away in-memory key of this code length (e.g. 512, 1024) "
        "instead of the run's key",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)


def run_command(args: argparse.Namespace) -> int:
    unknown = sorted(set(args.attacks) - set(ATTACKS))
    if unknown:
        raise ConfigError(f"unknown attacks {unknown}; known: {sorted(ATTACKS)}")
    if args.trials < 1 or args.collusion_trials < 1 or args.population < 2:
        raise ConfigError(
            "--trials and --collusion-trials must be at least 1, --population at least 2"
        )
    if args.bits is not None and args.bits < 1:
        raise ConfigError(f"--bits must be positive, got {args.bits}")
    for text in args.chains:
        try:
            parse_chain(text)
        except AttackError as error:
            raise ConfigError(f"--chains {text!r}: {error}") from None
    run = RunFolder(args.run)
    spec = read_run_spec(run.model_path)
    model, _ = load_model(run.model_path, expected=spec)
    if args.bits is None:
        key, _ = ensure_key(run=run, spec=spec, config=None, seed=None)
    else:  # never saved: the run's real key and registry stay as they are
        config = FingerprintConfig(code=CodeConfig(length=args.bits))
        key = keygen(spec=spec, config=config, seed=fresh_seed())
    features, labels = run.load_features()
    splits = load_splits(run.load_config().data)
    aux, test = splits.aux, splits.test
    if len(aux) == 0:  # the thief needs data: half of the test split, disjoint from training
        aux, test = attacker_half(splits.test, seed=args.seed)
        print(
            f"this run has no attacker split (--aux-fraction 0): the thief trains on {len(aux)} "
            f"of its {len(splits.test)} test images, accuracy is measured on the other {len(test)}"
        )
    registered = Registry(run.registry_path).next_index() if run.registry_path.exists() else 0
    population = make_population(
        model=model,
        spec=spec,
        key=key,
        features=features,
        labels=labels,
        size=args.population,
        first_index=registered,
    )
    config = RobustnessConfig(
        attacks=tuple(args.attacks),
        chains=tuple(args.chains),
        trials=args.trials,
        collusion_trials=args.collusion_trials,
        population=args.population,
        seed=args.seed,
    )
    results = sweep(
        population=population,
        key=key,
        reference=model,
        context=AttackContext(spec=spec, aux=aux, seed=args.seed),
        test=test,
        features=features,
        labels=labels,
        config=config,
    )
    results["attacker_images"] = len(aux)
    results["test_images"] = len(test)
    reports = run.root / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    stem = "robustness" if args.bits is None else f"robustness_{args.bits}bits"
    (reports / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot = plot_robustness(results, reports / f"{stem}.png")
    for label, entry in results["attacks"].items():
        cells = ", ".join(
            f"{entry['strength_name']} {p['strength']:g}: BER {p['ber']:.2f} acc {p['test_accuracy']:.3f} traced {p['traced_rate']:.0%}"
            for p in entry["points"]
        )
        print(f"{label:16s} {cells}")
    print(f"targets: {json.dumps(results['targets'])}")
    verdict = (
        "an innocent customer WAS accused"
        if results["innocent_ever_accused"]
        else "no innocent accused"
    )
    print(f"{verdict}; wrote {reports / f'{stem}.json'} and {plot}")
    return 0


COMMAND = Command(
    name="robustness",
    help="sweep removal attacks over fingerprinted copies",
    add_arguments=add_arguments,
    run=run_command,
)
