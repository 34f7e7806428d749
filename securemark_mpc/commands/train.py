"""`securemark train`: start every party on this machine and train under MPC."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from securemark_mpc.commands import Command
from securemark_mpc.config import SCHEDULES, TOPOLOGIES, ConfigError, TrainConfig
from securemark_mpc.data import (
    DATASETS,
    PARTITIONERS,
    DataConfig,
    DatasetSplits,
    load_splits,
    partition_shards,
)
from securemark_mpc.models import PRESETS
from securemark_mpc.mpc.auth import ensure_secret
from securemark_mpc.mpc.launcher import launch_local
from securemark_mpc.run_folder import RunFolder

EXIT_PARTY_FAILED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=defaults.data.dataset, help=f"one of {sorted(DATASETS)}")
    data.add_argument("--data-root", help="folder holding the data set (all but digits)")
    data.add_argument("--test-fraction", type=float, default=defaults.data.test_fraction)
    data.add_argument(
        "--aux-fraction",
        type=float,
        default=defaults.data.aux_fraction,
        help="attacker/auxiliary split",
    )
    data.add_argument("--max-images", type=int, help="use at most this many images (quick runs)")
    data.add_argument(
        "--file-order",
        action="store_true",
        help="split in file order (test = last images), e.g. MNIST-t10k's reference split",
    )
    data.add_argument("--data-owners", type=int, default=defaults.data_owners)
    data.add_argument(
        "--topology",
        default=defaults.topology,
        choices=sorted(TOPOLOGIES),
        help="who computes: all (every data owner, default) or two (the model owner and data "
        "owner 1; the others hand over their data as two shares: faster, but the model owner "
        "and data owner 1 must not collude; README: Who computes)",
    )
    data.add_argument(
        "--partition", default=defaults.partition, help=f"one of {sorted(PARTITIONERS)}"
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model", help=f"preset, one of {sorted(PRESETS)} (default: by image shape)"
    )
    model.add_argument(
        "--split", type=int, help="number of layers kept under MPC (default: the preset's)"
    )
    model.add_argument(
        "--private-channels", type=int, help="width of the first private conv (privacy knob)"
    )
    model.add_argument(
        "--private-pool", type=int, help="size of the first private pooling (privacy knob)"
    )
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=defaults.epochs)
    optim.add_argument(
        "--batch-size",
        type=int,
        help="default: the model preset's (64 for digits, 256 for MNIST-sized images)",
    )
    optim.add_argument(
        "--lr", type=float, help="default: the preset's, scaled linearly with --batch-size"
    )
    optim.add_argument(
        "--lr-schedule", default=defaults.lr_schedule, help=f"one of {sorted(SCHEDULES)}"
    )
    optim.add_argument("--momentum", type=float, default=defaults.momentum)
    optim.add_argument(
        "--weight-decay",
        type=float,
        default=defaults.weight_decay,
        help="L2 on every weight; keeps private values (and truncation wrap odds) small",
    )
    optim.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    optim.add_argument("--seed", type=int, default=defaults.seed)
    optim.add_argument(
        "--no-eval", action="store_true", help="skip the per-epoch MPC test evaluation"
    )
    mpc = parser.add_argument_group("MPC")
    mpc.add_argument(
        "--noise-sigma",
        type=float,
        default=defaults.reveal_noise_sigma,
        help="std of the Gaussian noise the data owners add under MPC to the normalised cut "
        "(mean square < 1) before each reveal; 0 turns it off (README: Privacy)",
    )
    mpc.add_argument(
        "--provider",
        default=defaults.provider,
        help="ttp (default, dealer process) or tfp (insecure)",
    )
    mpc.add_argument(
        "--insecure",
        action="store_true",
        help="allow --provider tfp, which lets rank 0 unmask the data",
    )
    parser.add_argument("--out", type=Path, help="run folder to create")
    parser.add_argument(
        "--resume", type=Path, metavar="RUN", help="continue RUN from its last checkpoint"
    )
    parser.add_argument(
        "--config-only",
        action="store_true",
        help="only write RUN/config.json and RUN/run.secret, for parties on several hosts",
    )


def data_at_hand(args: argparse.Namespace, data: DataConfig) -> bool:
    """False for a multi-host config that leaves the data to each party."""
    return not (args.config_only and data.data_root is None and data.dataset != "digits")


def data_from_args(args: argparse.Namespace) -> DataConfig:
    return DataConfig(
        dataset=args.dataset,
        data_root=str(Path(args.data_root).resolve()) if args.data_root else None,
        test_fraction=args.test_fraction,
        aux_fraction=args.aux_fraction,
        seed=args.seed,
        max_images=args.max_images,
        file_order=args.file_order,
    )


def config_from_args(
    args: argparse.Namespace, data: DataConfig, splits: DatasetSplits | None
) -> TrainConfig:
    """The run's config; ``splits`` (None when the data is left to each party) tells
    the model preset, whose batch size and learning rate fill in what is not given."""
    config = TrainConfig(
        data=data,
        data_owners=args.data_owners,
        topology=args.topology,
        partition=args.partition,
        model=args.model,
        split=args.split,
        private_channels=args.private_channels,
        private_pool=args.private_pool,
        reveal_noise_sigma=args.noise_sigma,
        epochs=args.epochs,
        lr_schedule=args.lr_schedule,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        seed=args.seed,
        provider=args.provider,
        insecure=args.insecure,
        eval_each_epoch=not args.no_eval,
    )
    shape = None if splits is None else splits.image_shape
    config = config.with_preset_optimisation(
        shape, batch_size=args.batch_size, learning_rate=args.lr
    ).validate()
    preset = config.known_preset(shape)
    if None in (args.batch_size, args.lr) and (preset is not None or shape is None):
        why = (
            f"the {preset} preset's; --batch-size and --lr change them"
            if preset is not None
            else "no data here to pick the model preset by; --model PRESET picks its own"
        )
        print(
            f"securemark train: batch {config.batch_size}, lr {config.learning_rate:g} ({why})",
            file=sys.stderr,
        )
    return config


def check_runnable(config: TrainConfig, splits: DatasetSplits | None = None) -> None:
    """Fail fast, before any process starts: data, model and shard count must fit."""
    splits = load_splits(config.data) if splits is None else splits
    config.model_spec(splits)
    partition_shards(
        labels=splits.train.labels,
        num_owners=config.data_owners,
        scheme=config.partition,
        seed=config.seed,
    )


def train(run: RunFolder, config: TrainConfig, *, resume: bool = False) -> int:
    """Launch all parties for `run` and report; returns the exit status."""
    result = launch_local(
        run=run,
        data_owners=config.data_owners,
        use_dealer=config.provider == "ttp",
        resume=resume,
        grace_seconds=config.comm_timeout_seconds + 15,
    )
    if not result.ok:
        print(f"securemark train: training failed\n{result.report()}", file=sys.stderr)
        return EXIT_PARTY_FAILED
    metrics = run.read_json("metrics.json")
    print(
        f"test accuracy {metrics['test_accuracy']:.4f} after {metrics['epochs']} epochs "
        f"in {metrics['seconds']:.1f} s; {metrics['comm_bytes'] / 1e6:.0f} MB exchanged; "
        f"model: {run.model_path}"
    )
    return 0


def run_command(args: argparse.Namespace) -> int:
    if args.resume is not None:
        run = RunFolder(args.resume)
        config = run.load_config()
        return train(run, config, resume=True)
    if args.out is None:
        raise ConfigError("--out RUN is required (or --resume RUN)")
    data = data_from_args(args)
    splits = load_splits(data) if data_at_hand(args, data) else None  # read once
    config = config_from_args(args, data, splits)
    if splits is not None:
        check_runnable(config, splits)
    run = RunFolder(args.out)
    if run.model_path.exists() or run.checkpoint(0).exists():
        raise ConfigError(
            f"{args.out} already holds a run; choose a new --out or use --resume {args.out}"
        )
    run.save_config(config, argv=sys.argv)
    if args.config_only:
        ensure_secret(run.secret_path)
        print(
            f"wrote {run.config_path} and {run.secret_path} (mode 0600); copy both to every "
            "host out of band (e.g. scp -p) and start parties/run_party.py there"
        )
        return 0
    return train(run, config)


COMMAND = Command(
    name="train",
    help="train a split model under MPC with every party on this machine",
    add_arguments=add_arguments,
    run=run_command,
)
