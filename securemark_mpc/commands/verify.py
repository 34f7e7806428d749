"""`securemark verify`: is a suspect model ours, and who does it trace to?

Exit status: 0 traced to at least one customer, 1 not ours or traced to nobody, 2 bad
input (the suspect file is untrusted: truncated, not a model, another architecture,
wrongly shaped or non-finite weights all end here with a one-line message).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from securemark_mpc.commands import Command
from securemark_mpc.fingerprint.copies import verify_file
from securemark_mpc.fingerprint.trace import TraceReport
from securemark_mpc.run_folder import RunFolder

EXIT_TRACED = 0
EXIT_NOT_TRACED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="training run folder")
    parser.add_argument("suspect", type=Path, help="suspect model file (.pt or .safetensors)")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")


def describe(report: TraceReport, *, customers: int) -> list[str]:
    """The verdict in a few lines of plain words."""
    match = f"best agreement with a registered codeword {report.matching_bits}/{report.length} bits"
    if customers == 0:
        return ["not traced: no customers are registered in this run"]
    if not report.ours:
        return [
            f"not ours: {match}, p = {report.ours_p_value:.2g} for an independent model "
            f"(needs <= {report.epsilon:g})",
            "accused: nobody",
        ]
    lines = [f"ours: {match}, p = {report.ours_p_value:.2g} for an independent model"]
    if report.accused:
        lines += [
            f"accused: {a.customer}  score {a.score:.1f}  p-value {a.p_value:.2g}"
            for a in report.accused
        ]
    else:
        lines.append("accused: nobody (no score reaches the threshold)")
    threshold = f"{report.threshold:.1f}" if math.isfinite(report.threshold) else "unreachable"
    lines.append(
        f"threshold Z = {threshold} over {customers} customers "
        f"({report.bound} bound: P(any innocent accused) <= {report.epsilon:g})"
    )
    return lines


def run_command(args: argparse.Namespace) -> int:
    report, customers = verify_file(run=RunFolder(args.run), suspect=args.suspect)
    if args.json:
        print(
            json.dumps({"suspect": str(args.suspect), "customers": customers, **report.to_json()})
        )
    else:
        print(f"suspect: {args.suspect}")
        print("\n".join(describe(report, customers=customers)))
    return EXIT_TRACED if report.accused else EXIT_NOT_TRACED


COMMAND = Command(
    name="verify",
    help="trace a suspect model file to the customers whose copies it descends from",
    add_arguments=add_arguments,
    run=run_command,
)
