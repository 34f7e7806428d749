#!/usr/bin/env python3
"""What a U-shaped split would hide: the labels, read back from the gradient the owner needs.

    .venv/bin/python benchmarks/bench_label_leak.py                          # digits, 3 seeds
    .venv/bin/python benchmarks/bench_label_leak.py --dataset idx \\
        --data-root ../shared/data/mnist-t10k --seeds 0                      # MNIST-t10k

Issue 10 asks for a label-private option: the last layer and the loss under MPC
("U-shaped"), so that the model owner learns neither images nor labels. The owner
still runs its plaintext middle (cut → 256 → ReLU) and must back-propagate through
it, so every step it receives g_i = ∂L/∂z_i for each of its training rows, z_i the
input of the private last layer W. For softmax cross-entropy g_i = W^T (p_i - y_i)/B:
a class's rows all point along -W[y], and the owner decrypts W with the model at the
end. This benchmark trains the default model in plaintext exactly as MPC would (same
batches, schedule, loss; the head's gradient does not depend on the reveal noise,
which is left out), records every g_i, and runs two label attackers on them:

- ``final-weights``: u_i = pinv(W_final^T) g_i, label = argmax |u_i| (p - y is
  largest in magnitude at the label: negative while the row is not yet fitted,
  positive once label smoothing's target is overshot). Uses the model the owner
  receives at the end.
- ``clusters``: k-means (2·classes clusters, for the two signs) on the directions
  g_i / |g_i| of one epoch; only each cluster's name comes from the final weights
  (the same read-out on its centre), so per row it needs no weights at all.

Both per epoch, median over seeds; and ``all-epochs``: the final-weights read-out's
|p - y| / ‖p - y‖ summed over every epoch the owner saw, per row. Writes
benchmarks/results/label_leak.json. It measures, it checks no target: the result is
why the U-shaped option is not built.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from sklearn.cluster import KMeans
from torch import nn

from securemark_mpc.blackbox.tilt import output_layer
from securemark_mpc.config import TrainConfig
from securemark_mpc.data import DataConfig, load_splits
from securemark_mpc.models import build_model
from securemark_mpc.mpc.protocol import batch_order
from securemark_mpc.plaintext import accuracy, fit, training_order

RESULTS = Path(__file__).resolve().parent / "results"


def record_gradients(
    config: TrainConfig,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, float]:
    """Train as MPC does; per epoch, ∂L/∂z of every training row in training order.

    Returns the per-epoch gradients, the training labels, the final last-layer
    weight and the test accuracy.
    """
    splits = load_splits(config.data)
    train = training_order(config, splits)
    model = build_model(config.model_spec(splits), seed=config.seed)
    last: nn.Linear = model[output_layer(model)]
    seen: list[torch.Tensor] = []

    def keep_gradient(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if module.training:
            inputs[0].register_hook(lambda grad: seen.append(grad.detach().clone()))

    last.register_forward_pre_hook(keep_gradient)
    fit(model, train, config)
    per_batch = -(-len(train) // config.batch_size)  # batches per epoch, the last one short
    per_epoch = []
    for epoch in range(config.epochs):
        batches = seen[epoch * per_batch : (epoch + 1) * per_batch]
        order = batch_order(seed=config.seed, epoch=epoch, size=len(train))
        gradients = torch.empty(len(train), last.in_features)
        gradients[order] = torch.cat(batches)
        per_epoch.append(gradients)
    return per_epoch, train.labels, last.weight.detach().clone(), accuracy(model, splits.test)


def residuals(gradients: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Least-squares p - y per row (rows, classes), from g = W^T (p - y)."""
    return torch.linalg.lstsq(weight.T.double(), gradients.T.double()).solution.T


def final_weights_attack(estimate: torch.Tensor) -> torch.Tensor:
    """Labels from the estimated p - y: its entry largest in magnitude."""
    return estimate.abs().argmax(dim=1)


def all_epochs_attack(estimates: list[torch.Tensor]) -> torch.Tensor:
    """Every epoch's evidence summed: |p - y| / ‖p - y‖ per row, largest total wins. A row
    whose p_y sits near label smoothing's target in one epoch hides its label there only."""
    return sum(nn.functional.normalize(e, dim=1).abs() for e in estimates).argmax(dim=1)


def cluster_attack(gradients: torch.Tensor, weight: torch.Tensor, *, seed: int) -> torch.Tensor:
    """k-means on gradient directions; each cluster named by the final weights on its centre."""
    directions = nn.functional.normalize(gradients.double(), dim=1)
    clusters = KMeans(n_clusters=2 * weight.shape[0], n_init=4, random_state=seed).fit(
        directions.numpy()
    )
    names = final_weights_attack(residuals(torch.from_numpy(clusters.cluster_centers_), weight))
    return names[torch.from_numpy(clusters.labels_).long()]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-root")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS / "label_leak.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = DataConfig(dataset=args.dataset, data_root=args.data_root)
    if args.dataset == "idx":
        data = replace(data, file_order=True, aux_fraction=0.0)
    runs = []
    for seed in args.seeds:
        began = time.perf_counter()
        config = TrainConfig(data=data, seed=seed)
        per_epoch, labels, weight, test_accuracy = record_gradients(config)
        classes = weight.shape[0]
        estimates = [residuals(g, weight) for g in per_epoch]
        final = [float((final_weights_attack(e) == labels).float().mean()) for e in estimates]
        clusters = [
            float((cluster_attack(g, weight, seed=seed) == labels).float().mean())
            for g in per_epoch
        ]
        combined = float((all_epochs_attack(estimates) == labels).float().mean())
        runs.append(
            {
                "seed": seed,
                "all_epochs": combined,
                "test_accuracy": test_accuracy,
                "final_weights": final,
                "clusters": clusters,
                "seconds": time.perf_counter() - began,
            }
        )
        print(
            f"seed {seed}: test accuracy {test_accuracy:.4f}; labels recovered per epoch, "
            f"final weights {min(final):.3f}-{max(final):.3f}, clusters {min(clusters):.3f}-{max(clusters):.3f}; "
            f"all epochs {combined:.3f}",
            flush=True,
        )

    def summary_of(values: list[float]) -> dict:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    def summary(name: str) -> dict:
        return summary_of([value for run in runs for value in run[name]])

    result = {
        "dataset": args.dataset,
        "torch": torch.__version__,  # what is measured is not a speed: no machine block
        "training_rows": len(labels),
        "classes": classes,
        "label_recovery": {
            "final_weights": summary("final_weights"),
            "clusters": summary("clusters"),
        },
        "label_recovery_first_epoch": {
            name: statistics.median(run[name][0] for run in runs)
            for name in ("final_weights", "clusters")
        },
        "label_recovery_all_epochs": summary_of([run["all_epochs"] for run in runs]),
        "chance": 1 / classes,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}: {json.dumps(result['label_recovery'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
