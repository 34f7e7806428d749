"""Robustness plots: BER and accuracy against attack strength, traced and framed marked."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_robustness(results: dict[str, Any], path: Path) -> Path:
    """One panel per attack: BER (left axis) and test accuracy (right axis) by strength.

    Green dots: the leaker (or a colluder) was traced in every trial; orange: in some;
    red crosses: an innocent customer was accused.
    """
    attacks = results["attacks"]
    columns = 4
    rows = math.ceil(len(attacks) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for axis, (label, entry) in zip(axes.flat, attacks.items(), strict=False):
        points = entry["points"]
        strengths = [p["strength"] for p in points]
        axis.plot(strengths, [p["ber"] for p in points], "o-", color="tab:blue", label="BER")
        axis.set_ylim(-0.02, 0.6)
        axis.set_xlabel(entry["strength_name"])
        axis.set_ylabel("bit error rate", color="tab:blue")
        accuracy_axis = axis.twinx()
        accuracy_axis.plot(
            strengths,
            [p["test_accuracy"] for p in points],
            "s--",
            color="tab:gray",
            label="accuracy",
        )
        accuracy_axis.axhline(results["unmarked_test_accuracy"], color="tab:gray", linewidth=0.6)
        accuracy_axis.set_ylim(0, 1.02)
        for point in points:
            colour = (
                "tab:green"
                if point["traced_rate"] == 1
                else "tab:orange"
                if point["traced_rate"] > 0
                else "black"
            )
            axis.scatter([point["strength"]], [0.55], color=colour, s=40, zorder=3)
            if point["framed_rate"] > 0:
                axis.scatter(
                    [point["strength"]], [0.5], color="tab:red", marker="x", s=50, zorder=3
                )
        axis.set_title(label, fontsize=10)
    for axis in list(axes.flat)[len(attacks) :]:
        axis.axis("off")
    figure.suptitle(
        "Robustness: BER (blue), test accuracy (grey, line = unmarked); top dots: traced in all / some / no "
        "trials (green / orange / black), red x: an innocent accused",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
