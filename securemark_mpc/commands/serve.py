"""`securemark serve`: answer top-1 labels for a model file over HTTP.

The protocol is in :mod:`securemark_mpc.blackbox.protocol`. It lets a model owner try
black-box tracing end to end (serve a leaked copy, then ``verify --endpoint``); a
thief's API would answer the same way. Loopback only by default: a served model
answers anyone who can reach the port.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from securemark_mpc.blackbox.protocol import ModelServer
from securemark_mpc.commands import Command
from securemark_mpc.models import load_model
from securemark_mpc.models.model_file import read_run_spec
from securemark_mpc.run_folder import RunFolder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="training run folder")
    parser.add_argument("model", type=Path, help="model file to serve (.pt or .safetensors)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_command(args: argparse.Namespace) -> int:
    spec = read_run_spec(RunFolder(args.run).model_path)
    model, _ = load_model(args.model, expected=spec)
    if not _is_loopback(args.host):
        print(
            f"warning: serving on {args.host}: anyone who reaches it can query the model",
            file=sys.stderr,
        )
    with ModelServer(model=model, spec=spec, host=args.host, port=args.port) as server:
        print(f"serving {args.model} at {server.url} (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
    return 0


COMMAND = Command(
    name="serve",
    help="serve a model file's top-1 answers over HTTP (JSON), for black-box tracing",
    add_arguments=add_arguments,
    run=run_command,
)
