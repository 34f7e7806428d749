#!/usr/bin/env python3
"""Training speed: plaintext PyTorch vs split MPC vs full MPC, measured side by side.

    .venv/bin/python benchmarks/bench_training.py            # digits (quick, a few minutes)
    .venv/bin/python benchmarks/bench_training.py --full     # also MNIST-t10k (../shared/data/mnist-t10k)

The same model, initialisation, batches and optimiser run several ways in one go, all
with the default settings except the data and the epochs (those of `securemark train`:
TrainConfig's, and the MNIST preset's batch 256 and lr 0.4 for MNIST-t10k):

- `plaintext`: the plaintext twin in PyTorch, over `--seeds` seeds;
- `split_mpc`: the default partition under MPC, over `--mpc-seeds` seeds;
- `split_mpc_deep`: a partition with at least 2,000 private nonlinear elements per
  sample. When the default is already that deep it is the same run (`same_as`);
  otherwise all but the last layer are private;
- `split_mpc_two`: the default partition with two computing parties (`--topology
  two`: the second data owner hands its shard over as shares);
- `full_mpc`: every layer and the loss under MPC, with the same primitives.

Per engine: per-epoch wall time (median, min, max over the epochs of the first
seed), test accuracy (median over seeds, and `test_accuracy_seeds`), communication and
rounds per training sample, peak memory per process, and private nonlinear elements
per sample. Full MPC is slow, so only `--full-mpc-batches` batches of one epoch are
timed (`--mpc-batches` does the same for split MPC) and the epoch time is
extrapolated from them (marked in the output; its accuracy
is then that of a barely trained model). Writes benchmarks/results/training.json and
training.md. Quote ratios: these 2-core machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from securemark_mpc.config import TrainConfig
from securemark_mpc.data import DataConfig, load_splits
from securemark_mpc.models import PRESETS, ModelSpec
from securemark_mpc.mpc.launcher import launch_local
from securemark_mpc.plaintext import train_plaintext
from securemark_mpc.run_folder import RunFolder

RESULTS = Path(__file__).resolve().parent / "results"
MNIST_T10K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-t10k"

# The settings `securemark train` picks: the preset's batch size and learning rate.
DATASETS: dict[str, TrainConfig] = {
    "digits": TrainConfig().with_preset_optimisation(PRESETS["digits-cnn"].input_shape),
    "mnist-t10k": TrainConfig(
        data=DataConfig(
            dataset="idx", data_root=str(MNIST_T10K), file_order=True, aux_fraction=0.0
        ),
    ).with_preset_optimisation(PRESETS["mnist-cnn"].input_shape),
}
DEEP_ELEMENTS = 2000  # private nonlinear elements per sample of the deep partition (issue 9)


ENGINES = ("plaintext", "split_mpc", "split_mpc_deep", "split_mpc_two", "full_mpc")


def spread(values: list[float]) -> dict[str, float]:
    return {
        "epoch_seconds_median": statistics.median(values),
        "epoch_seconds_min": min(values),
        "epoch_seconds_max": max(values),
    }


def _plaintext_child(config: TrainConfig, seeds: list[int], queue: multiprocessing.Queue) -> None:
    torch.set_num_threads(1)  # as each MPC party runs: the same arithmetic resources
    results = [train_plaintext(replace(config, seed=seed)) for seed in seeds]
    queue.put(
        {
            "epoch_seconds": results[0].epoch_seconds,
            "test_accuracy_seeds": [result.test_accuracy for result in results],
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "private_nonlinear_elements_per_sample": results[0].spec.private_nonlinear_elements(),
        }
    )


def run_plaintext(config: TrainConfig, train_size: int, seeds: list[int]) -> dict[str, Any]:
    """In a child process, so its peak memory is its own."""
    queue: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    child = multiprocessing.get_context("spawn").Process(
        target=_plaintext_child, args=(config, seeds, queue)
    )
    child.start()
    measured = queue.get(timeout=3600)
    child.join()
    return {
        **spread(measured["epoch_seconds"]),
        **accuracy_over(seeds, measured["test_accuracy_seeds"]),
        "comm_bytes_per_sample": 0.0,
        "rounds_per_sample": 0.0,
        "peak_rss_bytes_per_process": [measured["peak_rss_bytes"]],
        "epochs": config.epochs,
        "train_size": train_size,
        "private_nonlinear_elements_per_sample": 0,
        "threads": 1,
    }


def accuracy_over(seeds: list[int], accuracies: list[float]) -> dict[str, Any]:
    return {
        "test_accuracy": statistics.median(accuracies),
        "test_accuracy_seeds": accuracies,
        "seeds": seeds,
    }


def run_mpc_seeds(config: TrainConfig, workdir: Path, seeds: list[int]) -> dict[str, Any]:
    """The first seed's run gives the timings; every seed's its test accuracy."""
    runs = [run_mpc(replace(config, seed=seed), workdir / f"seed{seed}") for seed in seeds]
    return {**runs[0], **accuracy_over(seeds, [run["test_accuracy"] for run in runs])}


def run_mpc(config: TrainConfig, workdir: Path) -> dict[str, Any]:
    run = RunFolder(workdir / f"{config.engine}-split{config.split}")
    run.save_config(config, argv=sys.argv)
    result = launch_local(run=run, data_owners=config.data_owners, echo_owner=True, time_limit=7200)
    if not result.ok:
        raise SystemExit(f"{config.engine} MPC run failed:\n{result.report()}")
    metrics = run.read_json("metrics.json")
    history = metrics["history"]
    batches_per_epoch = -(-metrics["train_size"] // config.batch_size)
    timed_batches = history[0].get("batches", batches_per_epoch)
    # The batches scale with the epoch; the epoch-end range check does not.
    epoch_seconds = [
        (record["seconds"] - record.get("range_check_seconds", 0.0))
        * batches_per_epoch
        / timed_batches
        + record.get("range_check_seconds", 0.0)
        for record in history
    ]
    samples = min(timed_batches * config.batch_size, metrics["train_size"]) * len(history)
    return {
        **spread(epoch_seconds),
        "test_accuracy": metrics["test_accuracy"],
        "comm_bytes_per_sample": metrics["comm_bytes"] / samples,
        "rounds_per_sample": metrics["comm_rounds"] / samples,
        "peak_rss_bytes_per_process": metrics["peak_rss_bytes_per_party"],
        "epochs": len(history),
        "train_size": metrics["train_size"],
        "extrapolated_from_batches": None if timed_batches == batches_per_epoch else timed_batches,
        "profile": metrics.get("profile_owner"),
        "private_nonlinear_elements_per_sample": metrics.get(
            "private_nonlinear_elements_per_sample", _all_nonlinear(config)
        ),
        "split": config.split,
        "batch_size": config.batch_size,
    }


def _spec(config: TrainConfig) -> ModelSpec:
    return config.model_spec(load_splits(config.data))


def _all_nonlinear(config: TrainConfig) -> int:
    """Full MPC keeps every layer private (the last layer is linear)."""
    spec = _spec(config)
    return replace(spec, split=len(spec.layers) - 1).private_nonlinear_elements()


def deep_split(config: TrainConfig) -> int | None:
    """None when the default partition already keeps DEEP_ELEMENTS private; else the
    deepest split (all but the last layer)."""
    spec = _spec(config)
    if spec.private_nonlinear_elements() >= DEEP_ELEMENTS:
        return None
    return len(spec.layers) - 1


def bench_dataset(
    name: str,
    config: TrainConfig,
    *,
    epochs: int,
    full_mpc_batches: int,
    seeds: list[int],
    mpc_seeds: list[int],
    mpc_batches: int | None,
) -> dict[str, Any]:
    config = replace(config, epochs=epochs, eval_each_epoch=False)
    deep = deep_split(config)
    plain_config = config
    config = replace(config, max_batches_per_epoch=mpc_batches)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"== {name}: split MPC (default partition), seeds {mpc_seeds}", file=sys.stderr)
        split = run_mpc_seeds(config, Path(tmp), mpc_seeds)
        print(f"== {name}: plaintext (1 thread), seeds {seeds}", file=sys.stderr)
        plaintext = run_plaintext(plain_config, split["train_size"], seeds)
        if deep is None:
            split_deep = {**split, "same_as": "split_mpc"}
        else:
            print(f"== {name}: split MPC, deep partition (split {deep})", file=sys.stderr)
            split_deep = run_mpc_seeds(replace(config, split=deep), Path(tmp), mpc_seeds)
            deep_plain = run_plaintext(
                replace(plain_config, split=deep), split["train_size"], seeds
            )
            split_deep["plaintext_twin_test_accuracy"] = deep_plain["test_accuracy"]
        print(f"== {name}: split MPC, two computing parties", file=sys.stderr)
        two = run_mpc_seeds(replace(config, topology="two"), Path(tmp) / "two", mpc_seeds)
        two["topology"] = "two"
        print(f"== {name}: full MPC ({full_mpc_batches} batches)", file=sys.stderr)
        full = run_mpc(
            replace(config, engine="full", epochs=1, max_batches_per_epoch=full_mpc_batches),
            Path(tmp),
        )
        full.update(accuracy_over(mpc_seeds[:1], [full["test_accuracy"]]))
    entry = {
        "plaintext": plaintext,
        "split_mpc": split,
        "split_mpc_deep": split_deep,
        "split_mpc_two": two,
        "full_mpc": full,
    }
    plain_seconds = plaintext["epoch_seconds_median"]
    entry["ratios"] = {
        "split_over_plaintext": split["epoch_seconds_median"] / plain_seconds,
        "deep_over_plaintext": split_deep["epoch_seconds_median"] / plain_seconds,
        "two_over_plaintext": two["epoch_seconds_median"] / plain_seconds,
        "two_over_split": two["epoch_seconds_median"] / split["epoch_seconds_median"],
        "full_over_plaintext": full["epoch_seconds_median"] / plain_seconds,
        "full_over_split": full["epoch_seconds_median"] / split["epoch_seconds_median"],
        "accuracy_gap_pp": 100 * (plaintext["test_accuracy"] - split["test_accuracy"]),
    }
    return entry


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor() or "unknown",
    )
    return {
        "cores": multiprocessing.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        # the machine may be shared: other processes' load slows the 4 MPC processes most
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
    }


def markdown(results: dict[str, Any]) -> str:
    info = results["machine"]
    lines = [
        f"Machine: {info['cores']} cores, {info['cpu']}; all parties on this one machine; "
        f"load average (1, 5, 15 min) {info.get('load_average_at_start', 'not recorded')} at "
        f"the start, {info.get('load_average_at_end', 'not recorded')} at the end.",
        "",
        "| data | engine | private nonlinear/sample | epoch s (median [min, max]) | test acc, median (seeds) | comm MB/sample | rounds/sample | peak RSS MB/process |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for dataset, entry in results["datasets"].items():
        for engine in ENGINES:
            row = entry[engine]
            note = (
                f" (extrapolated from {row['extrapolated_from_batches']} batches)"
                if row.get("extrapolated_from_batches")
                else ""
            )
            note += f" (= {row['same_as']})" if row.get("same_as") else ""
            peak = max(row["peak_rss_bytes_per_process"]) / 2**20
            seeds = ", ".join(f"{value:.4f}" for value in row["test_accuracy_seeds"])
            lines.append(
                f"| {dataset} | {engine}{note} | {row['private_nonlinear_elements_per_sample']} | "
                f"{row['epoch_seconds_median']:.2f} [{row['epoch_seconds_min']:.2f}, "
                f"{row['epoch_seconds_max']:.2f}] | {row['test_accuracy']:.4f} ({seeds}) | "
                f"{row['comm_bytes_per_sample'] / 1e6:.2f} | {row['rounds_per_sample']:.1f} | {peak:.0f} |"
            )
        ratios = entry["ratios"]
        lines.append(
            f"| {dataset} | **ratios** | | split/plaintext {ratios['split_over_plaintext']:.1f}×, "
            f"deep/plaintext {ratios['deep_over_plaintext']:.1f}×, "
            f"two-party/plaintext {ratios['two_over_plaintext']:.1f}×, "
            f"two-party/split {ratios['two_over_split']:.2f}×, "
            f"full/plaintext {ratios['full_over_plaintext']:.1f}×, "
            f"full/split {ratios['full_over_split']:.1f}× | gap {ratios['accuracy_gap_pp']:+.2f} pp | | | |"
        )
    for dataset, entry in results["datasets"].items():
        profile = entry["split_mpc"].get("profile") or {}
        total = sum(phase["seconds"] for phase in profile.values()) or 1.0
        lines += [
            "",
            f"Where split-MPC training time goes on {dataset} (as seen by the model owner):",
            "",
        ]
        lines += ["| phase | share of time | rounds | MB |", "| --- | --- | --- | --- |"]
        for name, phase in sorted(profile.items(), key=lambda item: -item[1]["seconds"]):
            lines.append(
                f"| {name} | {100 * phase['seconds'] / total:.0f}% | {phase['rounds']:.0f} | {phase['bytes'] / 1e6:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--full", action="store_true", help="also MNIST-t10k (skipped with a message when absent)"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs per engine (default: each config's)"
    )
    parser.add_argument("--full-mpc-batches", type=int, default=8)
    parser.add_argument(
        "--mpc-batches",
        type=int,
        default=None,
        help="time only this many batches per split-MPC epoch and extrapolate (default: all)",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=sorted(DATASETS),
        help="default: digits (+ mnist-t10k with --full)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="plaintext")
    parser.add_argument(
        "--mpc-seeds", type=int, nargs="+", default=[0], help="split MPC (the first is timed)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    chosen = args.datasets or (["digits", "mnist-t10k"] if args.full else ["digits"])
    if "mnist-t10k" in chosen and not MNIST_T10K.is_dir():
        print(f"skipping mnist-t10k: {MNIST_T10K} is missing", file=sys.stderr)
        chosen.remove("mnist-t10k")
    results = {"machine": machine(), "datasets": {}}
    for name in chosen:
        config = DATASETS[name]
        results["datasets"][name] = bench_dataset(
            name,
            config,
            epochs=args.epochs or config.epochs,
            full_mpc_batches=args.full_mpc_batches,
            seeds=args.seeds,
            mpc_seeds=args.mpc_seeds,
            mpc_batches=args.mpc_batches,
        )
    results["machine"]["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "training.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
