#!/usr/bin/env python3
"""Training speed: plaintext PyTorch vs split MPC vs full MPC, measured side by side.

    .venv/bin/python benchmarks/bench_training.py            # digits (quick, a few minutes)
    .venv/bin/python benchmarks/bench_training.py --full     # also MNIST-t10k (../shared/data/mnist-t10k)

The same model, initialisation, batches and optimiser run three ways in one go. Per
engine it reports per-epoch wall time (median, min, max over epochs), test accuracy,
communication and rounds per training sample, and peak memory per process. Full MPC
is slow, so only `--full-mpc-batches` batches of one epoch are timed and the epoch
time is extrapolated from them (marked in the output; its accuracy is then that of a
barely trained model). Writes benchmarks/results/training.json and training.md.
Quote ratios: these 2-core machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from securemark_mpc.config import TrainConfig
from securemark_mpc.data import DataConfig
from securemark_mpc.mpc.launcher import launch_local
from securemark_mpc.plaintext import train_plaintext
from securemark_mpc.run_folder import RunFolder

RESULTS = Path(__file__).resolve().parent / "results"
MNIST_T10K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-t10k"

DATASETS: dict[str, TrainConfig] = {
    "digits": TrainConfig(),
    "mnist-t10k": TrainConfig(
        data=DataConfig(
            dataset="idx", data_root=str(MNIST_T10K), file_order=True, aux_fraction=0.0
        ),
        batch_size=64,
        learning_rate=0.1,
    ),
}


def spread(values: list[float]) -> dict[str, float]:
    return {
        "epoch_seconds_median": statistics.median(values),
        "epoch_seconds_min": min(values),
        "epoch_seconds_max": max(values),
    }


def _plaintext_child(config: TrainConfig, queue: multiprocessing.Queue) -> None:
    result = train_plaintext(config)
    queue.put(
        {
            "epoch_seconds": result.epoch_seconds,
            "test_accuracy": result.test_accuracy,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
    )


def run_plaintext(config: TrainConfig, train_size: int) -> dict[str, Any]:
    """In a child process, so its peak memory is its own."""
    queue: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    child = multiprocessing.get_context("spawn").Process(
        target=_plaintext_child, args=(config, queue)
    )
    child.start()
    measured = queue.get(timeout=3600)
    child.join()
    return {
        **spread(measured["epoch_seconds"]),
        "test_accuracy": measured["test_accuracy"],
        "comm_bytes_per_sample": 0.0,
        "rounds_per_sample": 0.0,
        "peak_rss_bytes_per_process": [measured["peak_rss_bytes"]],
        "epochs": config.epochs,
        "train_size": train_size,
    }


def run_mpc(config: TrainConfig, workdir: Path) -> dict[str, Any]:
    run = RunFolder(workdir / config.engine)
    run.save_config(config, argv=sys.argv)
    result = launch_local(run=run, data_owners=config.data_owners, echo_owner=True, time_limit=7200)
    if not result.ok:
        raise SystemExit(f"{config.engine} MPC run failed:\n{result.report()}")
    metrics = run.read_json("metrics.json")
    history = metrics["history"]
    batches_per_epoch = -(-metrics["train_size"] // config.batch_size)
    timed_batches = history[0].get("batches", batches_per_epoch)
    epoch_seconds = [record["seconds"] * batches_per_epoch / timed_batches for record in history]
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
    }


def bench_dataset(
    name: str, config: TrainConfig, *, epochs: int, full_mpc_batches: int
) -> dict[str, Any]:
    config = replace(config, epochs=epochs, eval_each_epoch=False)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"== {name}: split MPC", file=sys.stderr)
        split = run_mpc(config, Path(tmp))
        print(f"== {name}: plaintext (all cores)", file=sys.stderr)
        plaintext = run_plaintext(config, split["train_size"])
        print(f"== {name}: full MPC ({full_mpc_batches} batches)", file=sys.stderr)
        full = run_mpc(
            replace(config, engine="full", epochs=1, max_batches_per_epoch=full_mpc_batches),
            Path(tmp),
        )
    entry = {"plaintext": plaintext, "split_mpc": split, "full_mpc": full}
    entry["ratios"] = {
        "split_over_plaintext": split["epoch_seconds_median"] / plaintext["epoch_seconds_median"],
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
    return {"cores": multiprocessing.cpu_count(), "cpu": model, "python": platform.python_version()}


def markdown(results: dict[str, Any]) -> str:
    info = results["machine"]
    lines = [
        f"Machine: {info['cores']} cores, {info['cpu']}; all parties on this one machine.",
        "",
        "| data | engine | epoch s (median [min, max]) | test acc | comm MB/sample | rounds/sample | peak RSS MB/process |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for dataset, entry in results["datasets"].items():
        for engine in ("plaintext", "split_mpc", "full_mpc"):
            row = entry[engine]
            note = (
                f" (extrapolated from {row['extrapolated_from_batches']} batches)"
                if row.get("extrapolated_from_batches")
                else ""
            )
            peak = max(row["peak_rss_bytes_per_process"]) / 2**20
            lines.append(
                f"| {dataset} | {engine}{note} | {row['epoch_seconds_median']:.2f} [{row['epoch_seconds_min']:.2f}, "
                f"{row['epoch_seconds_max']:.2f}] | {row['test_accuracy']:.4f} | {row['comm_bytes_per_sample'] / 1e6:.2f} | "
                f"{row['rounds_per_sample']:.1f} | {peak:.0f} |"
            )
        ratios = entry["ratios"]
        lines.append(
            f"| {dataset} | **ratios** | split/plaintext {ratios['split_over_plaintext']:.1f}×, "
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
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    chosen = ["digits"]
    if args.full:
        if MNIST_T10K.is_dir():
            chosen.append("mnist-t10k")
        else:
            print(f"skipping mnist-t10k: {MNIST_T10K} is missing", file=sys.stderr)
    results = {"machine": machine(), "datasets": {}}
    for name in chosen:
        config = DATASETS[name]
        results["datasets"][name] = bench_dataset(
            name,
            config,
            epochs=args.epochs or config.epochs,
            full_mpc_batches=args.full_mpc_batches,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "training.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
