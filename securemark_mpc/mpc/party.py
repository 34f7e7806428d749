"""Run one party: the process each model owner, data owner or dealer starts.

    python -m securemark_mpc.mpc.party --rank R --world-size W --rendezvous URL --run RUN

The settings come from RUN/config.json (written by the launcher or copied to each
host). Exit status: 0 done, 1 a peer or the connection failed, 3 settings differ
between parties, 4 this party's own error.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from pathlib import Path

import torch.distributed as dist

from securemark_mpc.config import TrainConfig
from securemark_mpc.mpc.dealer import serve_triples
from securemark_mpc.mpc.session import (
    ConfigMismatch,
    Liveness,
    PartyAddress,
    PartyFailure,
    PeerLost,
    die,
    start_crypten,
    warn_if_not_loopback,
)
from securemark_mpc.run_folder import RunFolder

EXIT_PEER_FAILED, EXIT_CONFIG_MISMATCH, EXIT_OWN_ERROR = 1, 3, 4
_CONNECTION_WORDS = ("connection", "gloo", "timed out", "timeout", "socket", "peer", "broken pipe")


def _is_connection_error(error: BaseException) -> bool:
    if isinstance(error, dist.DistError):
        return True
    return isinstance(error, RuntimeError) and any(
        word in str(error).lower() for word in _CONNECTION_WORDS
    )


def _trainer_class(engine: str) -> type:
    """Engines by name: the split protocol, or everything under MPC (benchmark baseline)."""
    from securemark_mpc.mpc.full_mpc import FullMpcTrainer
    from securemark_mpc.mpc.protocol import SplitTrainer

    return {"split": SplitTrainer, "full": FullMpcTrainer}[engine]


def run_party(
    *, address: PartyAddress, config: TrainConfig, run: RunFolder, resume: bool, argv: list[str]
) -> None:
    """Start CrypTen, play this party's role, and exit naming whoever failed."""
    warn_if_not_loopback(address.rendezvous)
    if config.provider == "tfp" and address.rank == 0:
        warnings.warn(
            "INSECURE: the TFP provider lets the model owner generate the Beaver triples and so "
            "unmask every data owner's images. Use it only for testing.",
            stacklevel=2,
        )
    try:
        crypten = start_crypten(
            address, provider=config.provider, timeout_seconds=config.comm_timeout_seconds
        )
    except PartyFailure as error:
        die(f"[{address.role}] {error}", code=EXIT_PEER_FAILED)
    liveness = Liveness(address).start()
    try:
        if address.is_dealer:
            serve_triples(crypten)
        else:
            trainer = _trainer_class(config.engine)(
                crypten=crypten, config=config, address=address, run=run
            )
            trainer.train(resume=resume, argv=argv)
            crypten.uninit()
    except ConfigMismatch as error:
        liveness.report_own_failure(str(error))
        die(f"[{address.role}] {error}", code=EXIT_CONFIG_MISMATCH)
    except BaseException as error:  # noqa: BLE001 - every failure must end this process
        if isinstance(error, PeerLost) or _is_connection_error(error):
            cause = liveness.diagnose()
            die(f"[{address.role}] stopping: {cause}", code=EXIT_PEER_FAILED)
        message = f"{type(error).__name__}: {error}"
        liveness.report_own_failure(message)
        die(f"[{address.role}] failed: {message}\n{traceback.format_exc()}", code=EXIT_OWN_ERROR)
    liveness.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument(
        "--world-size", type=int, required=True, help="model owner + data owners (dealer excluded)"
    )
    parser.add_argument(
        "--rendezvous", required=True, help="tcp://HOST:PORT of the model owner, or file:///path"
    )
    parser.add_argument("--run", type=Path, required=True, help="run folder holding config.json")
    parser.add_argument("--config", type=Path, help="settings file (default: RUN/config.json)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from this party's last checkpoint"
    )
    args = parser.parse_args(argv)
    run = RunFolder(args.run)
    config = (
        run.load_config()
        if args.config is None
        else RunFolder(args.config.parent).load_config(args.config.name)
    )
    address = PartyAddress(
        rank=args.rank,
        world_size=args.world_size,
        rendezvous=args.rendezvous,
        use_dealer=config.provider == "ttp",
    )
    if not 0 <= args.rank <= args.world_size - (0 if address.use_dealer else 1):
        parser.error(f"--rank must be in 0..{args.world_size - (0 if address.use_dealer else 1)}")
    if args.world_size != config.data_owners + 1:
        parser.error(
            f"--world-size must be data owners + 1 = {config.data_owners + 1} for this run"
        )
    run_party(address=address, config=config, run=run, resume=args.resume, argv=sys.argv)


if __name__ == "__main__":
    main()
