#!/usr/bin/env python3
"""Privacy audit: what the model owner reconstructs, per privacy setting, on digits and MNIST.

    .venv/bin/python benchmarks/bench_privacy.py                        # digits, 3 seeds
    .venv/bin/python benchmarks/bench_privacy.py --datasets digits mnist  # + MNIST-t10k, 1 seed

For every setting of the sweep (split depth, private channels, reveal noise, and the
noise-only baseline that reveals raw images plus noise) it trains the plaintext twin
with the default schedule (TrainConfig: 10 epochs, lr 0.1 cosine, batch 32), runs the
attacks on 128 private training images and reports test accuracy and SSIM / PSNR per
attack as median, min and max over seeds, with training and attack times. Writes
benchmarks/results/privacy.json and exits 1 when a check fails:

- the raw reveal scores SSIM >= 0.99, and revealing conv1 alone (He et al.'s anchor,
  SSIM ~0.997) lets the attacker reach >= 0.95: the attacks work;
- the inverse network never does worse than the labels-only reference minus 0.05;
- the recommended setting keeps test accuracy >= 0.97 (digits) / 0.975 (MNIST-t10k);
- at equal accuracy it leaks less than the noise-only baseline.

The issue's target "attacker SSIM <= 0.3" is reported, and marked unattainable when the
labels-only floor (the class-mean image of the revealed label) already scores above
0.3: no setting can then meet it against a label-aware attacker.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from securemark_mpc.audit.report import AuditConfig
from securemark_mpc.audit.sweep import SETTINGS, SweepConfig, run_sweep
from securemark_mpc.config import TrainConfig
from securemark_mpc.data import DataConfig

RESULTS = Path(__file__).resolve().parent / "results"
MNIST_T10K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-t10k"
DATASETS = {
    "digits": DataConfig(),
    "mnist": DataConfig(dataset="idx", data_root=str(MNIST_T10K)),
}
ACCURACY_TARGETS = {"digits": 0.97, "mnist": 0.975}
RECOMMENDED = "split 8 σ=0.2"
CURRENT_DEFAULT = "default"
ANCHOR = "split 1 (conv)"
UNRECOGNISABLE = 0.3  # He et al., ACSAC 2019
EQUAL_ACCURACY_SLACK = 0.005  # "equal accuracy": within half a percentage point
FLOAT32_SLACK = 1e-6  # accuracies are float32: 1950/2000 reads 0.97499999


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per setting name: accuracy, per-attack SSIM/PSNR, attacker SSIM and times over seeds."""
    table: dict[str, dict[str, Any]] = {}
    for setting in runs[0]["settings"]:
        name = setting["name"]
        rows = [next(s for s in run["settings"] if s["name"] == name) for run in runs]
        table[name] = {
            "split": setting["split"],
            "private_channels": setting["private_channels"],
            "private_pool": setting["private_pool"],
            "noise_sigma": setting["noise_sigma"],
            "noise_only": setting["noise_only"],
            "private_nonlinear_elements": setting["private_nonlinear_elements"],
            "test_accuracy": spread([row["test_accuracy"] for row in rows]),
            "attacker_ssim": spread([row["attacker_ssim"] for row in rows]),
            "attacks": {
                attack: {
                    metric: spread([row["attacks"][attack][metric] for row in rows])
                    for metric in ("ssim", "psnr", "mse")
                }
                for attack in setting["attacks"]
            },
            "train_seconds": spread([row["train_seconds"] for row in rows]),
            "attack_seconds": {
                attack: spread([row["attack_seconds"][attack] for row in rows])
                for attack in setting["attack_seconds"]
            },
        }
    return table


def print_table(dataset: str, table: dict[str, dict[str, Any]], seeds: list[int]) -> None:
    attacks = list(next(iter(table.values()))["attacks"])
    print(f"\n{dataset}: median [min, max] over seeds {seeds}; SSIM / PSNR dB per attack")
    print(
        f"{'setting':<20} {'ReLUs':>6} {'accuracy':>22}  " + "  ".join(f"{a:>30}" for a in attacks)
    )
    for name, row in table.items():
        accuracy = row["test_accuracy"]
        cells = "  ".join(
            "{median:.3f} [{min:.3f},{max:.3f}] / {psnr:4.1f}".format(
                **row["attacks"][a]["ssim"], psnr=row["attacks"][a]["psnr"]["median"]
            )
            for a in attacks
        )
        print(
            f"{name:<20} {row['private_nonlinear_elements']:>6} "
            f"{accuracy['median']:.4f} [{accuracy['min']:.4f},{accuracy['max']:.4f}]  {cells}"
        )
    times = [row["train_seconds"]["median"] for row in table.values()]
    print(
        "train seconds per setting: median {median:.1f}, min {min:.1f}, max {max:.1f}".format(
            **spread(times)
        )
    )
    for attack in next(iter(table.values()))["attack_seconds"]:
        values = [row["attack_seconds"][attack]["median"] for row in table.values()]
        print(
            f"{attack} seconds: median {{median:.1f}}, min {{min:.1f}}, max {{max:.1f}}".format(
                **spread(values)
            )
        )


def noise_only_ssim_at(table: dict[str, dict[str, Any]], *, accuracy: float) -> float:
    """The noise-only baseline's lowest attacker SSIM among its settings at least as
    accurate as `accuracy` (within EQUAL_ACCURACY_SLACK), or else its most accurate ones."""
    baseline = [row for row in table.values() if row["noise_only"]]
    needed = min(
        accuracy - EQUAL_ACCURACY_SLACK, max(row["test_accuracy"]["median"] for row in baseline)
    )
    return min(
        row["attacker_ssim"]["median"]
        for row in baseline
        if row["test_accuracy"]["median"] >= needed
    )


def check(dataset: str, table: dict[str, dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """Failed checks, and the verdicts on the issue's targets."""
    problems = []
    for name, row in table.items():
        if row["attacks"]["raw"]["ssim"]["min"] < 0.99:
            problems.append(f"{dataset} {name}: raw reveal SSIM below 0.99")
        floor = row["attacks"]["labels-only"]["ssim"]["median"]
        if row["attacks"]["inverse-network"]["ssim"]["median"] < floor - 0.05:
            problems.append(
                f"{dataset} {name}: the inverse network fell below the labels-only floor"
            )
    if table[ANCHOR]["attacker_ssim"]["median"] < 0.95:
        problems.append(f"{dataset}: revealing conv1 should leak SSIM >= 0.95 (He et al.)")
    verdicts: dict[str, Any] = {"recommended": RECOMMENDED}
    for role, name in (("recommended", RECOMMENDED), ("current_default", CURRENT_DEFAULT)):
        accuracy = table[name]["test_accuracy"]["median"]
        ssim = table[name]["attacker_ssim"]["median"]
        baseline = noise_only_ssim_at(table, accuracy=accuracy)
        verdicts |= {
            f"{role}_accuracy": accuracy,
            f"{role}_attacker_ssim": ssim,
            f"{role}_noise_only_at_equal_accuracy_ssim": baseline,
            f"{role}_beats_noise_only": ssim < baseline,
        }
    if verdicts["recommended_accuracy"] < ACCURACY_TARGETS[dataset] - FLOAT32_SLACK:
        problems.append(
            f"{dataset} {RECOMMENDED}: accuracy {verdicts['recommended_accuracy']:.4f} "
            f"< {ACCURACY_TARGETS[dataset]}"
        )
    if not verdicts["recommended_beats_noise_only"]:
        problems.append(
            f"{dataset} {RECOMMENDED}: attacker SSIM {verdicts['recommended_attacker_ssim']:.3f} "
            "not below the noise-only baseline's "
            f"{verdicts['recommended_noise_only_at_equal_accuracy_ssim']:.3f} at equal accuracy"
        )
    floor = table[RECOMMENDED]["attacks"]["labels-only"]["ssim"]["median"]
    accurate_baseline = [
        row["attacker_ssim"]["median"]
        for row in table.values()
        if row["noise_only"] and row["test_accuracy"]["median"] >= 0.95
    ]
    verdicts |= {
        "noise_only_at_95pct_min_attacker_ssim": min(accurate_baseline, default=None),
        "labels_only_floor_ssim": floor,
        "ssim_at_most_0.3": verdicts["recommended_attacker_ssim"] <= UNRECOGNISABLE,
        "ssim_at_most_0.3_attainable": floor <= UNRECOGNISABLE,
    }
    return problems, verdicts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["digits"], choices=sorted(DATASETS))
    parser.add_argument("--digits-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--mnist-seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--images", type=int, default=AuditConfig().images)
    parser.add_argument("--out", type=Path, default=RESULTS / "privacy.json")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("SECUREMARK_THREADS", "1")))
    results: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": os.getloadavg(),
        },
        "datasets": {},
    }
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            if dataset == "mnist" and not MNIST_T10K.is_dir():
                print(f"skipping mnist: {MNIST_T10K} not found")
                continue
            seeds = args.digits_seeds if dataset == "digits" else args.mnist_seeds
            runs = [
                run_sweep(
                    config=SweepConfig(
                        train=TrainConfig(data=DATASETS[dataset], seed=seed),
                        settings=SETTINGS,
                        audit=AuditConfig(images=args.images),
                    ),
                    out=Path(tmp) / dataset / f"seed{seed}",
                )
                for seed in seeds
            ]
            table = aggregate(runs)
            print_table(dataset, table, seeds)
            failed, verdicts = check(dataset, table)
            problems += failed
            results["datasets"][dataset] = {"seeds": seeds, "settings": table, "verdicts": verdicts}
            print(json.dumps(verdicts, indent=2))
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["problems"] = problems
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    for problem in problems:
        print(f"TARGET MISSED: {problem}")
    for dataset, entry in results["datasets"].items():
        if not entry["verdicts"]["ssim_at_most_0.3_attainable"]:
            print(
                f"TARGET UNATTAINABLE: {dataset}: SSIM <= 0.3; the labels-only floor is "
                f"{entry['verdicts']['labels_only_floor_ssim']:.3f}, since labels are revealed"
            )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
