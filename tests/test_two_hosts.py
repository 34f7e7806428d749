"""Slow: parties on two 'hosts' (network namespaces joined by a veth pair) train together."""

from __future__ import annotations

import os
import subprocess

import pytest

from securemark_mpc.mpc.launcher import free_port
from securemark_mpc.run_folder import RunFolder
from tests.conftest import SMALL, assert_matches_plaintext, assert_ok, launch

pytestmark = [pytest.mark.slow, pytest.mark.mpc]

OWNER_ADDRESS, OTHER_ADDRESS = "10.231.7.1", "10.231.7.2"


def _ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True, timeout=10)


@pytest.fixture
def two_hosts():
    """Namespaces A (model owner and dealer) and B (data owners), or skip if not permitted."""
    tag = f"sm{os.getpid() % 100000}"
    hosts = {
        "A": (f"{tag}a", f"{tag}va", OWNER_ADDRESS),
        "B": (f"{tag}b", f"{tag}vb", OTHER_ADDRESS),
    }
    try:
        for namespace, _, _ in hosts.values():
            _ip("netns", "add", namespace)
        _ip("link", "add", hosts["A"][1], "type", "veth", "peer", "name", hosts["B"][1])
        for namespace, interface, address in hosts.values():
            _ip("link", "set", interface, "netns", namespace)
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", interface)
            _ip("-n", namespace, "link", "set", interface, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
    except (OSError, subprocess.SubprocessError) as error:
        for namespace, _, _ in hosts.values():
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        pytest.skip(f"network namespaces are not permitted here ({error})")
    yield hosts
    for namespace, _, _ in hosts.values():
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def test_parties_on_two_hosts_train_together(tmp_path, two_hosts):
    def on_host(rank: int, command: list[str]) -> list[str]:
        namespace, interface, _ = two_hosts["A" if rank in (0, 3) else "B"]
        return [
            "ip",
            "netns",
            "exec",
            namespace,
            "env",
            f"GLOO_SOCKET_IFNAME={interface}",
            *command,
        ]

    run = RunFolder(tmp_path / "run")
    result = launch(
        run, SMALL, rendezvous=f"tcp://{OWNER_ADDRESS}:{free_port()}", wrap_command=on_host
    )
    assert_ok(result)
    assert "not loopback" in result.outcomes[1].log.read_text()  # the unencrypted-transport warning
    assert_matches_plaintext(run.model_path, SMALL)
