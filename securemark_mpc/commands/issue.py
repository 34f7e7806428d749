"""`securemark issue`: give a customer a fingerprinted copy of the run's model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from securemark_mpc.commands import Command
from securemark_mpc.config import ConfigError
from securemark_mpc.data import load_splits
from securemark_mpc.fingerprint.codes import CodeConfig
from securemark_mpc.fingerprint.copies import issue_copy
from securemark_mpc.fingerprint.embed import EmbeddingError
from securemark_mpc.fingerprint.key import FingerprintConfig
from securemark_mpc.models import load_model
from securemark_mpc.plaintext import accuracy
from securemark_mpc.run_folder import RunFolder

EXIT_EMBEDDING_FAILED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="training run folder")
    parser.add_argument(
        "--customer", required=True, help="customer name (also the copy's file name)"
    )
    parser.add_argument(
        "--reissue", action="store_true", help="replace a known customer's copy (same codeword)"
    )
    parser.add_argument(
        "--bits",
        type=int,
        help=f"code length when the run's key is made (default {CodeConfig().length})",
    )
    parser.add_argument(
        "--key-seed",
        type=int,
        help="seed for a new key (default: OS entropy; a known seed is a known key)",
    )


def run_command(args: argparse.Namespace) -> int:
    run = RunFolder(args.run)
    if args.bits is not None and args.bits < 1:
        raise ConfigError(f"--bits must be positive, got {args.bits}")
    if args.key_seed is not None and args.key_seed < 0:
        raise ConfigError(f"--key-seed must be non-negative, got {args.key_seed}")
    config = None if args.bits is None else FingerprintConfig(code=CodeConfig(length=args.bits))
    try:
        issued = issue_copy(
            run=run, name=args.customer, reissue=args.reissue, config=config, key_seed=args.key_seed
        )
    except EmbeddingError as error:
        print(f"securemark issue: embedding failed: {error}", file=sys.stderr)
        return EXIT_EMBEDDING_FAILED
    if issued.key_created:
        print(
            f"created the fingerprint key {run.key_path} (mode 0600): keep it secret",
            file=sys.stderr,
        )
    test = load_splits(run.load_config().data).test
    copy_accuracy = accuracy(load_model(issued.path)[0], test)
    unmarked_accuracy = accuracy(load_model(run.model_path)[0], test)
    customer = issued.customer
    print(
        f"issued {issued.path} to {customer.name!r} (customer #{customer.index}, "
        f"{customer.codeword.size}-bit codeword, sha256 {customer.copy_sha256[:16]}…); "
        f"test accuracy {copy_accuracy:.4f} (unmarked {unmarked_accuracy:.4f})"
    )
    return 0


COMMAND = Command(
    name="issue",
    help="issue a fingerprinted copy of the run's model to a customer",
    add_arguments=add_arguments,
    run=run_command,
)
