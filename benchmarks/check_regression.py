#!/usr/bin/env python3
"""Exit non-zero when a fresh benchmark's ratios regress past the committed baseline.

    .venv/bin/python benchmarks/check_regression.py FRESH.json [--baseline benchmarks/results/baseline.json]

Absolute times on these shared 2-core machines vary by 2x between runs, so only
ratios measured within one run are compared (Opacus' check_threshold habit):
split-MPC / plaintext epoch time (the default partition and the deep one) must not
grow, full-MPC / split-MPC must not shrink, and the accuracy gap between plaintext and
split MPC must not widen, each beyond a tolerance. A ratio that the baseline does not
have yet is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BASELINE = Path(__file__).resolve().parent / "results" / "baseline.json"

# ratio name -> (direction that is worse, allowed relative or absolute slack)
CHECKS = {
    "split_over_plaintext": ("higher", 0.5),  # may grow by 50% before it counts as a regression
    "deep_over_plaintext": ("higher", 0.5),
    "two_over_plaintext": ("higher", 0.5),
    "full_over_split": ("lower", 0.5),
    "accuracy_gap_pp": ("higher_absolute", 1.0),  # may widen by 1 percentage point
}


def regressions(fresh: dict, baseline: dict) -> list[str]:
    problems = []
    for dataset, entry in fresh["datasets"].items():
        reference = baseline["datasets"].get(dataset)
        if reference is None:
            continue
        for name, (worse, slack) in CHECKS.items():
            if name not in entry["ratios"] or name not in reference["ratios"]:
                print(f"{dataset:12s} {name:22s} not in both files: skipped")
                continue
            now, before = entry["ratios"][name], reference["ratios"][name]
            limit = {
                "higher": before * (1 + slack),
                "lower": before * (1 - slack),
                "higher_absolute": before + slack,
            }[worse]
            bad = now < limit if worse == "lower" else now > limit
            status = "REGRESSION" if bad else "ok"
            print(
                f"{dataset:12s} {name:22s} now {now:8.2f}  baseline {before:8.2f}  limit {limit:8.2f}  {status}"
            )
            if bad:
                problems.append(f"{dataset}: {name} {now:.2f} past {limit:.2f}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("fresh", type=Path)
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    args = parser.parse_args()
    problems = regressions(
        json.loads(args.fresh.read_text()), json.loads(args.baseline.read_text())
    )
    if problems:
        print("regressions:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
