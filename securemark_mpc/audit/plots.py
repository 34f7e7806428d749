"""The audit's pictures: reconstruction grids and the privacy-utility curve (matplotlib Agg)."""

from __future__ import annotations

from collections.abc import Sequence
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


def plot_privacy_utility(
    *,
    path: Path,
    points: Sequence[tuple[str, float, float]],
    baseline: Sequence[tuple[str, float, float]],
    floor: float | None,
    dataset: str,
) -> Path:
    """Test accuracy against the strongest attacker's SSIM, one point per setting.

    `points` and `baseline` are (label, attacker SSIM, accuracy); the noise-only
    baseline is drawn as its own curve. `floor`, when known, is the labels-only SSIM,
    which no accurate model can go below.
    """
    figure, axis = plt.subplots(figsize=(7.5, 5.0))
    if baseline:
        ordered = sorted(baseline, key=lambda point: point[1])
        axis.plot(
            [ssim for _, ssim, _ in ordered],
            [accuracy for _, _, accuracy in ordered],
            "s--",
            color="tab:gray",
            label="noise-only baseline (raw images + noise)",
        )
        for label, ssim, accuracy in ordered:
            axis.annotate(
                label,
                (ssim, accuracy),
                fontsize=7,
                color="tab:gray",
                xytext=(3, -9),
                textcoords="offset points",
            )
    for index, (label, ssim, accuracy) in enumerate(points):
        # Settings often share an accuracy (the split alone does not change training),
        # so each gets its own marker in the legend instead of a text label.
        axis.scatter(
            [ssim],
            [accuracy],
            marker=MARKERS[index % len(MARKERS)],
            color=COLOURS[index % len(COLOURS)],
            s=50,
            zorder=3,
            label=label,
        )
    if floor is not None:
        axis.axvline(
            floor, color="tab:green", linestyle=":", label=f"labels-only floor ({floor:.2f})"
        )
    axis.axvline(
        UNRECOGNISABLE_SSIM, color="tab:red", linestyle=":", label="unrecognisable (He et al.)"
    )
    axis.set_xlabel("attacker SSIM (best of inverse network and white-box)")
    axis.set_ylabel("test accuracy")
    axis.set_title(f"Privacy-utility trade-off on {dataset}: up and to the left is better")
    accuracies = [accuracy for _, _, accuracy in (*points, *baseline)]
    axis.set_xlim(0, 1.02)
    if accuracies:
        axis.set_ylim(min(accuracies) - 0.01, max(accuracies) + 0.005)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
