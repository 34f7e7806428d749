"""`securemark demo`: the whole story on the embedded digits, start to end.

Train under MPC, issue fingerprinted copies to five customers, leak one copy, and let
`verify` name the leaker, first from the model file, then black-box: from the answers
of the leaked copy served over HTTP. It prints what happened at each step.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

import torch

from securemark_mpc.blackbox.protocol import serving
from securemark_mpc.blackbox.store import AnswerSource, load_blackbox, verify_answers
from securemark_mpc.commands import Command
from securemark_mpc.commands.train import check_runnable, train
from securemark_mpc.commands.verify import describe
from securemark_mpc.config import ConfigError, TrainConfig
from securemark_mpc.data import load_splits
from securemark_mpc.fingerprint.copies import issue_copy, verify_file
from securemark_mpc.fingerprint.key import load_key
from securemark_mpc.fingerprint.trace import TraceReport
from securemark_mpc.models import load_model
from securemark_mpc.models.model_file import read_run_spec
from securemark_mpc.plaintext import accuracy
from securemark_mpc.run_folder import RunFolder

CUSTOMERS = ("alice", "bob", "carol", "dave", "erin")
INDENT = "      "


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="run folder (default: runs/demo)"
    )
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument(
        "--leaker", choices=CUSTOMERS, help="whose copy leaks (default: chosen at random)"
    )


def fingerprint_story(run: RunFolder, *, leaker: str) -> int:
    """Steps 2-4 on a trained run: issue, leak, verify. Exit 0 iff exactly the leaker is accused."""
    test = load_splits(run.load_config().data).test
    unmarked = accuracy(load_model(run.model_path)[0], test)
    print(f"[2/5] issuing fingerprinted copies to {len(CUSTOMERS)} customers")
    for name in CUSTOMERS:
        began = time.perf_counter()
        issued = issue_copy(run=run, name=name)
        seconds = time.perf_counter() - began
        copy_accuracy = accuracy(load_model(issued.path)[0], test)
        print(
            f"{INDENT}{name:<6} {issued.path}  test accuracy {copy_accuracy:.4f} "
            f"(unmarked {unmarked:.4f}, {100 * (copy_accuracy - unmarked):+.2f} pp)  {seconds:.1f} s"
        )
    key = load_key(run.key_path)
    print(
        f"{INDENT}each copy carries its own {key.length}-bit Tardos codeword in {key.carrier} "
        f"(margin {key.embed.margin:g}), the one tensor that differs from the unmarked model"
    )
    leaked = run.root / "leaked.pt"
    model, _ = load_model(run.copy_path(leaker))
    torch.save(model.state_dict(), leaked)
    print(
        f"[3/5] a copy leaks: {leaker}'s copy turns up as {leaked}, re-saved as a bare state dict"
    )
    print(f"[4/5] securemark verify --run {run.root} {leaked}")
    accused, correct = _show_verdict(*verify_file(run=run, suspect=leaked), leaker=leaker)
    print(
        f"who leaked it: {', '.join(accused) or 'nobody'} "
        f"({'correct' if correct else 'WRONG'}: the leaker was {leaker})"
    )
    return 0 if correct and blackbox_story(run, leaked=leaked, leaker=leaker) else 1


def _show_verdict(report: TraceReport, customers: int, *, leaker: str) -> tuple[list[str], bool]:
    """Print a verdict as `verify` does; return who was accused and whether that is right."""
    for line in describe(report, customers=customers):
        print(INDENT + line)
    accused = [a.customer for a in report.accused]
    return accused, accused == [leaker]


def blackbox_story(run: RunFolder, *, leaked: Path, leaker: str) -> bool:
    """Step 5: serve the leaked copy over HTTP and trace it from its answers alone."""
    key, queries = load_blackbox(run)
    spec = read_run_spec(run.model_path)
    model, _ = load_model(leaked, expected=spec)
    with serving(model=model, spec=spec) as server:
        print(
            f"[5/5] black-box: the leaked copy answers at {server.url}; securemark verify "
            f"--run {run.root} --endpoint {server.url} asks it {len(queries)} keyed queries"
        )
        report, customers = verify_answers(run=run, source=AnswerSource(endpoint=server.url))
    accused, correct = _show_verdict(report, customers, leaker=leaker)
    print(
        f"who leaked it, from {len(queries)} top-1 answers alone: {', '.join(accused) or 'nobody'} "
        f"({'correct' if correct else 'WRONG'}; {key.length}-position behavioural code, "
        f"P(any innocent accused) <= {key.code.epsilon:g})"
    )
    return correct


def run_command(args: argparse.Namespace) -> int:
    run = RunFolder(args.out)
    if run.model_path.exists() or run.checkpoint(0).exists():
        raise ConfigError(f"{args.out} already holds a run; remove it or pass --out NEW_FOLDER")
    config = TrainConfig(epochs=args.epochs).validate()
    check_runnable(config)
    print(
        f"[1/5] training on digits under MPC: 1 model owner, {config.data_owners} data owners, "
        "1 TTP dealer, each a separate process",
        flush=True,
    )
    run.save_config(config, argv=sys.argv)
    status = train(run, config)
    if status != 0:
        return status
    return fingerprint_story(run, leaker=args.leaker or secrets.choice(CUSTOMERS))


COMMAND = Command(
    name="demo",
    help="run the whole story on the embedded digits data",
    add_arguments=add_arguments,
    run=run_command,
)
