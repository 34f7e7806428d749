"""`securemark`: the command line. Exit 2 on bad input, with a message and no traceback."""

from __future__ import annotations

import argparse
import sys

from securemark_mpc.commands import load_commands
from securemark_mpc.config import ConfigError
from securemark_mpc.data import DataError
from securemark_mpc.models import ModelFileError
from securemark_mpc.registry import RegistryError

USER_ERRORS = (ConfigError, DataError, ModelFileError, RegistryError)
EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securemark",
        description="Private split training under CrypTen MPC, fingerprinted model copies, traitor tracing.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in load_commands().values():
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(handler=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except USER_ERRORS as error:
        print(f"securemark {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("securemark: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
