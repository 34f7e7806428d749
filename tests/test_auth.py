"""Who may join a run: the run secret, the challenge-response, and what strangers can do.

Most tests run the challenge-response of several ranks as threads against a real
TCPStore (no CrypTen); one launches real party processes with an impostor dealer.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from datetime import timedelta

import pytest
from torch.distributed import TCPStore

from securemark_mpc.cli import main
from securemark_mpc.mpc.auth import (
    AuthenticationFailure,
    PartyMissing,
    RunAuthenticator,
    SecretFileError,
    read_secret,
    write_secret,
)
from securemark_mpc.mpc.launcher import free_port
from securemark_mpc.mpc.session import role_name
from securemark_mpc.run_folder import RunFolder
from tests.conftest import SMALL, launch

PARTIES = 4  # model owner, two data owners, dealer
SECRET = bytes(range(32))
DEADLINE_SECONDS = 60


@pytest.fixture
def store_port():
    """A rendezvous store on a free port, hosted here as the model owner's would be."""
    port = free_port()
    host = TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=10))
    yield port
    del host


def client(port: int) -> TCPStore:
    return TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=10))


def authenticator(port: int, rank: int, secret: bytes = SECRET, **options) -> RunAuthenticator:
    return RunAuthenticator(
        store=client(port),
        rank=rank,
        parties=PARTIES,
        secret=secret,
        describe=lambda r: role_name(r, PARTIES - 1),
        join_seconds=options.pop("join_seconds", 10),
        proof_seconds=options.pop("proof_seconds", 3),
    )


def run_ranks(port: int, ranks: list[int], **options) -> dict[int, BaseException | None]:
    """Authenticate `ranks` concurrently; each rank's outcome (None when accepted)."""
    return run_gates({rank: authenticator(port, rank, **options) for rank in ranks})


def run_gates(gates: dict[int, RunAuthenticator]) -> dict[int, BaseException | None]:
    outcomes: dict[int, BaseException | None] = {}
    ranks = list(gates)

    def one(rank: int) -> None:
        try:
            gates[rank].authenticate()
            outcomes[rank] = None
        except (AuthenticationFailure, PartyMissing) as error:
            outcomes[rank] = error

    threads = [threading.Thread(target=one, args=(rank,)) for rank in ranks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


def test_parties_that_know_the_secret_are_accepted(store_port):
    assert run_ranks(store_port, list(range(PARTIES))) == dict.fromkeys(range(PARTIES))


def test_an_impostor_dealer_is_refused_by_name(store_port):
    outcomes: dict[int, BaseException | None] = {}

    def impostor() -> None:
        try:
            authenticator(store_port, 3, secret=b"x" * 32).authenticate()
        except AuthenticationFailure as error:
            outcomes[3] = error

    thread = threading.Thread(target=impostor)
    thread.start()
    outcomes.update(run_ranks(store_port, [0, 1, 2]))
    thread.join(timeout=30)
    for rank in (0, 1, 2):
        assert "party 3 (TTP dealer) failed authentication" in str(outcomes[rank])
    assert "every other party failed" in str(outcomes[3])  # the impostor's own view


def test_a_replayed_proof_is_refused(store_port):
    """A stranger copies proofs: from an earlier run, and from another rank of this run."""
    earlier_port = free_port()
    earlier_host = TCPStore("127.0.0.1", earlier_port, is_master=True)
    assert run_ranks(earlier_port, list(range(PARTIES))) == dict.fromkeys(range(PARTIES))
    old_proof = earlier_host.get("securemark/auth/proof/1")

    def replay() -> None:
        stranger = client(store_port)
        stranger.compare_set("securemark/auth/nonce/1", "", os.urandom(32).hex())
        stranger.set("securemark/auth/proof/1", old_proof)

    threading.Thread(target=replay).start()
    outcomes = run_ranks(store_port, [0, 2, 3])
    for rank in (0, 2, 3):
        assert "party 1 (data owner 1) failed authentication" in str(outcomes[rank])

    same_run_port = free_port()
    _host = TCPStore("127.0.0.1", same_run_port, is_master=True)

    def copy_from_rank_2() -> None:
        stranger = client(same_run_port)
        stranger.compare_set("securemark/auth/nonce/1", "", os.urandom(32).hex())
        stranger.wait(["securemark/auth/proof/2"])
        stranger.set("securemark/auth/proof/1", stranger.get("securemark/auth/proof/2"))

    threading.Thread(target=copy_from_rank_2).start()
    outcomes = run_ranks(same_run_port, [0, 2, 3])
    for rank in (0, 2, 3):
        assert "party 1 (data owner 1) failed authentication" in str(outcomes[rank])


def test_a_rank_already_taken_is_refused_and_the_run_goes_on(store_port):
    outcomes = run_ranks(store_port, [0, 1, 2, 3])
    assert outcomes == dict.fromkeys(range(PARTIES))
    with pytest.raises(AuthenticationFailure, match="rank 2 is already taken"):
        authenticator(store_port, 2).authenticate()


def test_a_stranger_writing_into_the_store_is_refused_in_time_by_rank(store_port):
    """Garbage under the dealer's keys, then silence: the others stop, naming rank 3."""
    stranger = client(store_port)
    stranger.compare_set("securemark/auth/nonce/3", "", "not a nonce \x00\xff")
    started = time.monotonic()
    outcomes = run_ranks(store_port, [0, 1, 2])
    assert time.monotonic() - started < DEADLINE_SECONDS
    for rank in (0, 1, 2):
        assert "party 3 (TTP dealer) failed authentication" in str(outcomes[rank])
    silent_port = free_port()
    _host = TCPStore("127.0.0.1", silent_port, is_master=True)
    client(silent_port).compare_set("securemark/auth/nonce/3", "", os.urandom(32).hex())
    outcomes = run_ranks(silent_port, [0, 1, 2])
    for rank in (0, 1, 2):
        assert "party 3 (TTP dealer) did not prove" in str(outcomes[rank])


def test_a_party_that_never_joins_is_named(store_port):
    outcomes = run_gates({rank: authenticator(store_port, rank, join_seconds=1) for rank in (0, 1)})
    for rank in (0, 1):
        assert isinstance(outcomes[rank], PartyMissing)
        assert "party 2 (data owner 2) and party 3 (TTP dealer) never joined" in str(outcomes[rank])


def test_garbage_on_the_rendezvous_port_does_not_disturb_the_parties(store_port):
    def garbage() -> None:
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", store_port), timeout=5) as connection:
                connection.sendall(os.urandom(4096))
                connection.sendall(b"\xff" * 64 + b"GET / HTTP/1.1\r\n\r\n")

    thread = threading.Thread(target=garbage)
    thread.start()
    outcomes = run_ranks(store_port, list(range(PARTIES)))
    thread.join(timeout=30)
    assert outcomes == dict.fromkeys(range(PARTIES))


def test_a_stranger_answering_on_the_data_connections_is_refused(store_port):
    """Someone rewrote gloo's addresses in the store: the proof over gloo catches it."""
    gates = {rank: authenticator(store_port, rank) for rank in range(PARTIES)}
    assert run_gates(gates) == dict.fromkeys(range(PARTIES))
    tags = [gates[rank].channel_tag() for rank in range(PARTIES)]
    gates[0].check_channel_tags(tags)
    tags[3] = os.urandom(32)
    with pytest.raises(AuthenticationFailure, match=r"party 3 \(TTP dealer\) failed"):
        gates[0].check_channel_tags(tags)


def test_the_run_secret_is_private_and_checked(tmp_path):
    path = write_secret(tmp_path / "run.secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(read_secret(path)) == 32
    path.chmod(0o644)
    with pytest.raises(SecretFileError, match="chmod 600"):
        read_secret(path)
    with pytest.raises(SecretFileError, match="make_config"):
        read_secret(tmp_path / "missing.secret")


def test_make_config_writes_the_secret_beside_the_config(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--config-only", "--dataset", "imagefolder", "--out", str(out)]
    assert main(argv) == 0
    assert "run.secret" in capsys.readouterr().out
    assert stat.S_IMODE((out / "run.secret").stat().st_mode) == 0o600


@pytest.mark.mpc
def test_real_parties_refuse_an_impostor_dealer_within_a_minute(tmp_path):
    run = RunFolder(tmp_path / "run")
    impostor_secret = write_secret(tmp_path / "impostor.secret")
    result = launch(run, SMALL, party_args={3: ["--secret-file", str(impostor_secret)]})
    assert not result.ok
    first_exit = min(outcome.exited_at for outcome in result.outcomes)
    for outcome in result.outcomes:
        assert outcome.returncode == 5, outcome.describe()
        waited = outcome.exited_at - first_exit  # start-up under load is not the parties' delay
        assert waited < DEADLINE_SECONDS, f"{outcome.role} stopped {waited:.0f} s after the first"
        if outcome.rank != 3:
            assert "party 3 (TTP dealer) failed authentication" in outcome.log.read_text()
    assert not run.model_path.exists() and not run.checkpoint(0).exists()
