"""`securemark verify`: is a suspect model ours, and who does it trace to?

From a model file, or black-box from its top-1 answers on the run's keyed queries
(``--answers FILE``, ``--endpoint URL``; see :mod:`securemark_mpc.blackbox`).

Exit status: 0 traced to at least one customer, 1 not ours or traced to nobody, 2 bad
input (the suspect file is untrusted: truncated, not a model, another architecture,
wrongly shaped or non-finite weights all end here with a one-line message).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from securemark_mpc.blackbox.store import AnswerSource, verify_answers
from securemark_mpc.commands import Command
from securemark_mpc.config import ConfigError
from securemark_mpc.fingerprint.align import describe_alignment
from securemark_mpc.fingerprint.copies import verify_file
from securemark_mpc.fingerprint.trace import TraceReport
from securemark_mpc.run_folder import RunFolder

EXIT_TRACED = 0
EXIT_NOT_TRACED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="training run folder")
    parser.add_argument(
        "suspect", type=Path, nargs="?", help="suspect model file (.pt or .safetensors)"
    )
    answers = parser.add_mutually_exclusive_group()
    answers.add_argument(
        "--answers", type=Path, help='trace from top-1 answers instead: {"labels": [...]}'
    )
    answers.add_argument("--endpoint", help="trace from the answers of a served model (URL)")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")


def describe(report: TraceReport, *, customers: int) -> list[str]:
    """The verdict in a few lines of plain words."""
    match = f"best agreement with a registered codeword {report.matching_bits}/{report.length} bits"
    if customers == 0:
        return ["not traced: no customers are registered in this run"]
    aligned = describe_alignment(report.alignment)
    if not report.ours:
        return [
            *aligned,
            f"not ours: {match}, p = {report.ours_p_value:.2g} for an independent model "
            f"(needs <= {report.epsilon:g})",
            "accused: nobody",
        ]
    lines = [*aligned, f"ours: {match}, p = {report.ours_p_value:.2g} for an independent model"]
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
    run = RunFolder(args.run)
    if args.answers is None and args.endpoint is None:
        if args.suspect is None:
            raise ConfigError("give a suspect model file, --answers FILE or --endpoint URL")
        suspect = str(args.suspect)
        report, customers = verify_file(run=run, suspect=args.suspect)
    else:  # black-box: the suspect's answers on the keyed queries
        if args.suspect is not None:
            raise ConfigError("give either a suspect model file or --answers/--endpoint, not both")
        source = AnswerSource(answers=args.answers, endpoint=args.endpoint)
        suspect = str(source)
        report, customers = verify_answers(run=run, source=source)
    if args.json:
        print(json.dumps({"suspect": suspect, "customers": customers, **report.to_json()}))
    else:
        print(f"suspect: {suspect}")
        print("\n".join(describe(report, customers=customers)))
    return EXIT_TRACED if report.accused else EXIT_NOT_TRACED


COMMAND = Command(
    name="verify",
    help="trace a suspect model file to the customers whose copies it descends from",
    add_arguments=add_arguments,
    run=run_command,
)
