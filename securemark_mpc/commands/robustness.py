"""`securemark robustness --run RUN [--attacks ...] [--trials T]`: attack our own copies."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from securemark_mpc.attacks import ATTACKS, AttackContext
from securemark_mpc.attacks.plots import plot_robustness
from securemark_mpc.attacks.robustness import RobustnessConfig, make_population, sweep
from securemark_mpc.commands import Command
from securemark_mpc.config import ConfigError
from securemark_mpc.data import load_splits
from securemark_mpc.fingerprint.copies import ensure_key, load_features
from securemark_mpc.models import load_model
from securemark_mpc.models.model_file import read_run_spec
from securemark_mpc.plaintext import accuracy
from securemark_mpc.registry import Registry
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
    parser.add_argument("--seed", type=int, default=defaults.seed)


def run_command(args: argparse.Namespace) -> int:
    unknown = sorted(set(args.attacks) - set(ATTACKS))
    if unknown:
        raise ConfigError(f"unknown attacks {unknown}; known: {sorted(ATTACKS)}")
    if args.trials < 1 or args.collusion_trials < 1 or args.population < 2:
        raise ConfigError(
            "--trials and --collusion-trials must be at least 1, --population at least 2"
        )
    run = RunFolder(args.run)
    spec = read_run_spec(run.model_path)
    model, _ = load_model(run.model_path, expected=spec)
    key, _ = ensure_key(run=run, spec=spec, config=None, seed=None)
    features, labels = load_features(run)
    splits = load_splits(run.load_config().data)
    if len(splits.aux) == 0:
        raise ConfigError(
            "the robustness report needs an attacker split: this run has --aux-fraction 0"
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
        trials=args.trials,
        collusion_trials=args.collusion_trials,
        population=args.population,
        seed=args.seed,
    )
    results = sweep(
        population=population,
        key=key,
        context=AttackContext(spec=spec, aux=splits.aux, seed=args.seed),
        test=splits.test,
        unmarked_accuracy=accuracy(model, splits.test),
        config=config,
    )
    reports = run.root / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "robustness.json").write_text(json.dumps(results, indent=2) + "\n")
    plot = plot_robustness(results, reports / "robustness.png")
    for label, entry in results["attacks"].items():
        cells = ", ".join(
            f"{entry['strength_name']} {p['strength']:g}: BER {p['ber']:.2f} acc {p['test_accuracy']:.3f} traced {p['traced_rate']:.0%}"
            for p in entry["points"]
        )
        print(f"{label:16s} {cells}")
    verdict = (
        "an innocent customer WAS accused"
        if results["innocent_ever_accused"]
        else "no innocent accused"
    )
    print(f"{verdict}; wrote {reports / 'robustness.json'} and {plot}")
    return 0


COMMAND = Command(
    name="robustness",
    help="sweep removal attacks over fingerprinted copies",
    add_arguments=add_arguments,
    run=run_command,
)
