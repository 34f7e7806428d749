"""The audit's pictures: reconstruction grids and the privacy-utility curve (matplotlib Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

UNRECOGNISABLE_SSIM = 0.3  # He et al., ACSAC 2019
MARKERS = "osD^vP*Xph"
COLOURS = ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def plot_reconstructions(
    *, path: Path, rows: Sequence[tuple[str, torch.Tensor]], count: int = 8
) -> Path:
    """One labelled row per image batch (originals first), `count` images each."""
    columns = min(count, min(len(images) for _, images in rows))
    figure, axes = plt.subplots(
        len(rows), columns, figsize=(1.0 * columns + 2.2, 1.0 * len(rows)), squeeze=False
    )
    for row, (label, images) in enumerate(rows):
        for column in range(columns):
            axis = axes[row][column]
            image = images[column].detach().clamp(0, 1)
            if image.shape[0] == 1:
                axis.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                axis.imshow(image.permute(1, 2, 0).numpy())
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


@dataclass(frozen=True)
class FrontierPoint:
    """One setting on the frontier: its strongest attacker, its accuracy and MPC cost."""

    label: str
    ssim: float
    accuracy: float
    cost: float  # private nonlinear elements per sample
    role: str  # "setting", "default", "noise-only" or "full-mpc"


ROLE_STYLE = {
    "default": {"marker": "*", "color": "tab:red", "s": 160},
    "full-mpc": {"marker": "X", "color": "black", "s": 90},
}
FLOOR_COLOURS = ("tab:green", "tab:purple")


def plot_privacy_utility(
    *,
    path: Path,
    points: Sequence[FrontierPoint],
    floors: dict[str, float | None],
    dataset: str,
) -> Path:
    """Accuracy (left) and MPC cost (right) against the strongest attacker's SSIM.

    The noise-only baseline (raw images + noise) is drawn as a dashed curve, the
    default as a red star, full MPC (nothing revealed during training) as a black
    cross; `floors` are vertical lines, e.g. the labels-only floor, which no
    label-revealing protocol can go below.
    """
    figure, axes = plt.subplots(1, 2, figsize=(13.0, 5.2))
    baseline = sorted((p for p in points if p.role == "noise-only"), key=lambda p: p.ssim)
    others = [p for p in points if p.role != "noise-only"]
    for axis, value, name in (
        (axes[0], lambda p: p.accuracy, "test accuracy"),
        (axes[1], lambda p: max(p.cost, 1), "private nonlinear elements per sample (log)"),
    ):
        if baseline:
            axis.plot(
                [p.ssim for p in baseline],
                [value(p) for p in baseline],
                "s--",
                color="tab:gray",
                label="noise-only baseline (raw images + noise)",
            )
            for point in baseline:
                axis.annotate(
                    point.label.removeprefix("noise-only "),
                    (point.ssim, value(point)),
                    fontsize=7,
                    color="tab:gray",
                    xytext=(3, -9),
                    textcoords="offset points",
                )
        for index, point in enumerate(others):
            style = ROLE_STYLE.get(
                point.role,
                {"marker": MARKERS[index % len(MARKERS)], "color": COLOURS[index % len(COLOURS)]},
            )
            axis.scatter(
                [point.ssim],
                [value(point)],
                marker=style["marker"],
                color=style["color"],
                s=style.get("s", 50),
                zorder=3,
                label=point.label,
            )
        for (label, floor), colour in zip(floors.items(), FLOOR_COLOURS, strict=False):
            if floor is not None:
                axis.axvline(floor, color=colour, linestyle=":", label=f"{label} ({floor:.2f})")
        axis.axvline(
            UNRECOGNISABLE_SSIM, color="tab:red", linestyle=":", label="unrecognisable (He et al.)"
        )
        axis.set_xlabel("strongest attacker's SSIM (max over all attackers)")
        axis.set_ylabel(name)
        axis.set_xlim(0, 1.02)
        axis.grid(alpha=0.3)
    accuracies = [p.accuracy for p in points]
    if accuracies:
        axes[0].set_ylim(min(accuracies) - 0.01, max(accuracies) + 0.005)
    axes[1].set_yscale("log")
    axes[0].set_title(f"{dataset}: accuracy (up and left is better)")
    axes[1].set_title(f"{dataset}: MPC cost (down and left is cheaper)")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, fontsize=7, loc="center right")
    figure.tight_layout(rect=(0, 0, 0.8, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
