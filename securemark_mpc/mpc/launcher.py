"""Start every party of a run on this machine as real processes, and watch them.

This is the one multi-party harness: `securemark train`, `parties/run_all_local.py`
and the tests all launch through it. Parties rendezvous on a free loopback port,
each writes RUN/logs/rankR.log, and when one fails the result names it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securemark_mpc.mpc.auth import ensure_secret
from securemark_mpc.mpc.session import SECRET_FILE_VARIABLE, PartyAddress, role_name
from securemark_mpc.progress import PROGRESS_VARIABLE, final_states
from securemark_mpc.run_folder import RunFolder

POLL_SECONDS = 0.1


def free_port() -> int:
    """A free TCP port on loopback (never a fixed port: parallel runs must not collide)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class PartyOutcome:
    rank: int
    role: str
    returncode: int | None  # None: still running when killed by the harness
    exited_at: float  # seconds since launch
    log: Path

    def describe(self) -> str:
        code = self.returncode
        if code is None:
            return f"{self.role} was killed by the harness after hanging"
        if code < 0:
            return f"{self.role} was killed by {signal.Signals(-code).name}"
        return f"{self.role} exited with status {code}"

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log.read_text(errors="replace").replace("\r", "\n")
        except OSError:
            return ""
        kept = [line for line in text.splitlines() if line.strip()][-lines:]
        return "\n".join(f"    {line}" for line in kept)


@dataclass
class LaunchResult:
    outcomes: list[PartyOutcome] = field(default_factory=list)
    first_failure: PartyOutcome | None = None
    timed_out: bool = False
    started_at: float = 0.0  # time.monotonic() at launch; exited_at is relative to it

    @property
    def ok(self) -> bool:
        return not self.timed_out and all(o.returncode == 0 for o in self.outcomes)

    def report(self) -> str:
        """A user-facing summary that names the failed party first."""
        if self.ok:
            return "all parties finished"
        lines = []
        if self.timed_out:
            lines.append("the run exceeded its time limit and was stopped")
        if self.first_failure is not None:
            lines.append(f"first failure: {self.first_failure.describe()}")
        for outcome in self.outcomes:
            if outcome.returncode != 0:
                lines.append(
                    f"- {outcome.describe()} after {outcome.exited_at:.1f} s; its last output:"
                )
                lines.append(outcome.log_tail())
        return "\n".join(lines)


def _tee(stream, log_path: Path, echo) -> None:  # type: ignore[no-untyped-def]
    """Copy a party's output to its log (final line states only, no bar frames) and echo."""
    pending = bytearray()
    with open(log_path, "ab") as log:
        for chunk in iter(lambda: stream.read1(4096), b""):
            log.write(final_states(pending, chunk))
            log.flush()
            if echo is not None:
                echo.write(chunk)
                echo.flush()
        log.write(final_states(pending, b"\n"))


def parse_party_arguments(argv: list[str]) -> tuple[PartyAddress, Path]:
    """The address and run folder that `launch_local` passes every rank.

    For custom party entry points (benchmarks, MPC unit tests) that `wrap_command`
    starts in place of `securemark_mpc.mpc.party`; other arguments are ignored.
    """
    parser = argparse.ArgumentParser()
    for name in ("--rank", "--world-size"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--rendezvous", required=True)
    parser.add_argument("--run", type=Path, required=True)
    args, _ = parser.parse_known_args(argv)
    address = PartyAddress(rank=args.rank, world_size=args.world_size, rendezvous=args.rendezvous)
    return address, args.run


def script_parties(script: Path, *arguments: str) -> Callable[[int, list[str]], list[str]]:
    """A `wrap_command` that starts `script` (with `arguments`) as every rank, in place of
    `securemark_mpc.mpc.party`, passing the party arguments on: benchmarks and MPC unit
    tests that are their own party entry point (see :func:`start_script_party`)."""

    def wrap(rank: int, command: list[str]) -> list[str]:
        # command = [python, -m, securemark_mpc.mpc.party, --rank, ...]: keep the party args
        return [command[0], str(script), *arguments, *command[3:]]

    return wrap


def start_script_party(
    argv: list[str], *, timeout_seconds: float = 120
) -> tuple[Any, PartyAddress, Path] | None:
    """Start CrypTen (TTP dealer) as the rank `argv` names, for a `script_parties` entry
    point: the computing ranks get (crypten, address, run folder); the dealer serves
    triples until they are done and gets None."""
    from securemark_mpc.mpc.dealer import serve_triples
    from securemark_mpc.mpc.session import start_crypten

    address, run_root = parse_party_arguments(argv)
    crypten = start_crypten(address, provider="ttp", timeout_seconds=timeout_seconds)
    if address.is_dealer:
        serve_triples(crypten)
        return None
    return crypten, address, run_root


def launch_local(
    *,
    run: RunFolder,
    data_owners: int,
    use_dealer: bool = True,
    resume: bool = False,
    echo_owner: bool = True,
    time_limit: float | None = None,
    grace_seconds: float = 60.0,
    extra_env: dict[str, str] | None = None,
    party_args: dict[int, list[str]] | None = None,
    rendezvous: str | None = None,
    wrap_command: Callable[[int, list[str]], list[str]] | None = None,
    on_started: Callable[[list[subprocess.Popen]], None] | None = None,
) -> LaunchResult:
    """Run all parties of `run` (its config.json must exist) and wait for them.

    When one party fails, the others get `grace_seconds` to notice and exit on their
    own; any still running after that are killed and reported as hanging. Every party
    here shares the run folder, so they share its run secret (created if missing).
    `party_args` adds command-line arguments for single ranks (e.g. another --config);
    `wrap_command` lets a rank run elsewhere, e.g. in a network namespace, reaching the
    others at `rendezvous` (default: a free loopback port).
    """
    world_size = data_owners + 1
    ranks = list(range(world_size + (1 if use_dealer else 0)))
    rendezvous = rendezvous or f"tcp://127.0.0.1:{free_port()}"
    (run.root / "logs").mkdir(parents=True, exist_ok=True)
    secret = ensure_secret(run.secret_path)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        SECRET_FILE_VARIABLE: str(secret.resolve()),
        **(extra_env or {}),
    }
    show_bar = echo_owner and sys.stderr.isatty()  # the owner's bar goes to a person
    processes, tees = [], []
    started = time.monotonic()
    for rank in ranks:
        run.log(rank).write_bytes(b"")
        command = [sys.executable, "-m", "securemark_mpc.mpc.party", "--rank", str(rank)]
        command += [
            "--world-size",
            str(world_size),
            "--rendezvous",
            rendezvous,
            "--run",
            str(run.root),
        ]
        command += (["--resume"] if resume else []) + (party_args or {}).get(rank, [])
        if wrap_command is not None:
            command = wrap_command(rank, command)
        process = subprocess.Popen(
            command,
            env={**env, PROGRESS_VARIABLE: "bar"} if (show_bar and rank == 0) else env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        echo = sys.stderr.buffer if (echo_owner and rank == 0) else None
        tee = threading.Thread(target=_tee, args=(process.stdout, run.log(rank), echo), daemon=True)
        tee.start()
        processes.append(process)
        tees.append(tee)
    if on_started is not None:
        on_started(processes)

    result = LaunchResult(started_at=started)
    exited: dict[int, float] = {}
    deadline = None if time_limit is None else started + time_limit
    try:
        while len(exited) < len(ranks):
            now = time.monotonic()
            for rank, process in zip(ranks, processes, strict=True):
                if rank not in exited and process.poll() is not None:
                    exited[rank] = now - started
                    if process.returncode != 0 and result.first_failure is None:
                        result.first_failure = _outcome(
                            rank, world_size, process, exited[rank], run
                        )
                        deadline = min(deadline or float("inf"), now + grace_seconds)
            if deadline is not None and now > deadline and len(exited) < len(ranks):
                result.timed_out = result.first_failure is None
                break
            time.sleep(POLL_SECONDS)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for tee in tees:
            tee.join(timeout=5)
    for rank, process in zip(ranks, processes, strict=True):
        code = process.returncode if rank in exited else None
        outcome = _outcome(
            rank, world_size, process, exited.get(rank, time.monotonic() - started), run
        )
        outcome.returncode = code
        result.outcomes.append(outcome)
    return result


def _outcome(
    rank: int, world_size: int, process: subprocess.Popen, at: float, run: RunFolder
) -> PartyOutcome:
    return PartyOutcome(
        rank=rank,
        role=role_name(rank, world_size),
        returncode=process.returncode,
        exited_at=at,
        log=run.log(rank),
    )
