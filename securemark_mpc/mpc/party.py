"""Run one party: the process each model owner, data owner or dealer starts.

    python -m securemark_mpc.mpc.party --rank R --world-size W --rendezvous URL --run RUN
        [--data DIR | --test-data DIR] [--secret-file FILE]

The settings come from RUN/config.json (written by the launcher or copied to each
host), the run secret from RUN/run.secret (or --secret-file). A data owner brings its
own images with --data, the model owner its test set with --test-data; without them
the party simulates its share of the run's one data set (local runs). Exit status: 0
done, 1 a peer or the connection failed, 3 settings or data differ between parties,
4 this party's own error, 5 authentication refused.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from pathlib import Path

import torch.distributed as dist

from securemark_mpc.config import ConfigError, TrainConfig
from securemark_mpc.data import DataError, PartyData, load_own_folder, simulated_party_data
from securemark_mpc.mpc.auth import SecretFileError, read_secret
from securemark_mpc.mpc.crypten_shim import load_crypten
from securemark_mpc.mpc.dealer import serve_triples
from securemark_mpc.mpc.handoff import hand_over
from securemark_mpc.mpc.session import (
    AuthenticationRefused,
    ConfigMismatch,
    Liveness,
    PartyAddress,
    PartyFailure,
    PeerLost,
    computing_address,
    die,
    open_store,
    start_crypten,
    warn_if_not_loopback,
)
from securemark_mpc.run_folder import RunFolder

EXIT_PEER_FAILED, EXIT_CONFIG_MISMATCH, EXIT_OWN_ERROR, EXIT_REFUSED = 1, 3, 4, 5
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


def party_data(address: PartyAddress, config: TrainConfig, folder: Path | None) -> PartyData:
    """This party's own images: its folder if it brought one, else its simulated share."""
    if folder is not None:
        return load_own_folder(folder, dataset=config.data.dataset)
    return simulated_party_data(
        config.data,
        rank=address.rank,
        num_owners=config.data_owners,
        scheme=config.partition,
        seed=config.seed,
    )


def run_party(
    *,
    address: PartyAddress,
    config: TrainConfig,
    run: RunFolder,
    resume: bool,
    argv: list[str],
    secret: bytes,
    folder: Path | None = None,
) -> None:
    """Load this party's data, start CrypTen, play its role, and exit naming whoever failed."""
    warn_if_not_loopback(address.rendezvous)
    data = None
    if not address.is_dealer:  # the dealer holds no data
        try:
            data = party_data(address, config, folder)
        except (DataError, ConfigError) as error:
            die(f"[{address.role}] cannot use its data: {error}", code=EXIT_OWN_ERROR)
    if config.provider == "tfp" and address.rank == 0:
        warnings.warn(
            "INSECURE: the TFP provider lets the model owner generate the Beaver triples and so "
            "unmask every data owner's images. Use it only for testing.",
            stacklevel=2,
        )
    handed = None
    compute = computing_address(address, config.topology)
    try:
        store = None
        if compute is not address:  # two computing parties: the others hand over first
            store = open_store(
                address,
                parties=address.world_size + int(address.use_dealer),
                timeout_seconds=config.comm_timeout_seconds,
            )
            if not address.is_dealer:
                handed = hand_over(
                    address,
                    config,
                    data,
                    store=store,
                    secret=secret,
                    encode=load_crypten(timeout_seconds=config.comm_timeout_seconds)
                    .encoder.FixedPointEncoder()
                    .encode,
                )
            if compute is None:
                print(
                    f"[{address.role}] handed its {len(data.images)} images over as shares to "
                    "the model owner and data owner 1, who compute; it leaves the run",
                    flush=True,
                )
                return
        crypten = start_crypten(
            compute,
            provider=config.provider,
            timeout_seconds=config.comm_timeout_seconds,
            secret=secret,
            store=store,
        )
    except AuthenticationRefused as error:
        die(f"[{address.role}] {error}", code=EXIT_REFUSED)
    except ConfigMismatch as error:
        die(f"[{address.role}] {error}", code=EXIT_CONFIG_MISMATCH)
    except PartyFailure as error:
        die(f"[{address.role}] {error}", code=EXIT_PEER_FAILED)
    address = compute
    liveness = Liveness(address).start()
    try:
        if address.is_dealer:
            serve_triples(crypten)
        else:
            trainer = _trainer_class(config.engine)(
                crypten=crypten,
                config=config,
                address=address,
                run=run,
                data=data,
                handed=handed,
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
    own = parser.add_mutually_exclusive_group()
    own.add_argument(
        "--data", type=Path, help="data owner: its own training images (image folder, IDX, ...)"
    )
    own.add_argument("--test-data", type=Path, help="model owner: its own test images")
    parser.add_argument("--secret-file", type=Path, help="the run secret (default: RUN/run.secret)")
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
    if args.data is not None and (args.rank == 0 or address.is_dealer):
        parser.error(f"--data is for data owners; {address.role} takes --test-data or nothing")
    if args.test_data is not None and args.rank != 0:
        parser.error(f"--test-data is for the model owner (rank 0), not {address.role}")
    try:
        secret = read_secret(args.secret_file or run.secret_path)
    except SecretFileError as error:
        parser.error(str(error))
    run_party(
        address=address,
        config=config,
        run=run,
        resume=args.resume,
        argv=sys.argv,
        secret=secret,
        folder=args.data or args.test_data,
    )


if __name__ == "__main__":
    main()
