"""Small openings by direct exchange sum exactly what gloo's ring all-reduce sums.

Real party processes (2 and 3 computing parties + the dealer, through the launcher
harness; this file doubles as the party entry point) all-reduce rank-dependent int64
tensors, single and batched, below and above DIRECT_MAX_ELEMENTS, wrapping around the
ring; rank 0 records both paths' sums and CrypTen's round count.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from securemark_mpc.mpc.direct_exchange import DIRECT_MAX_ELEMENTS

SHAPES = {
    "single small": [(16, 16)],
    "batched small": [(7, 3), (5,), (2, 4, 4)],
    "single large": [(DIRECT_MAX_ELEMENTS + 1,)],
    "batched large": [(DIRECT_MAX_ELEMENTS // 2,), (DIRECT_MAX_ELEMENTS // 2 + 1,)],
}


def _tensors(rank: int, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(rank)
    return [torch.randint(-(2**63), 2**63 - 1, shape, generator=generator) for shape in shapes]


@pytest.mark.mpc
@pytest.mark.parametrize("computing_parties", [2, 3])
def test_direct_exchange_sums_what_the_ring_sums(tmp_path, computing_parties):
    from securemark_mpc.mpc.launcher import launch_local, script_parties
    from securemark_mpc.run_folder import RunFolder

    result = launch_local(
        run=RunFolder(tmp_path),
        data_owners=computing_parties - 1,
        echo_owner=False,
        time_limit=240,
        wrap_command=script_parties(Path(__file__).resolve()),
    )
    assert result.ok, result.report()
    sums = json.loads((tmp_path / "sums.json").read_text())
    for name, shapes in SHAPES.items():
        expected = [
            sum(parts)
            for parts in zip(*(_tensors(r, shapes) for r in range(computing_parties)), strict=True)
        ]
        for path in ("direct", "ring"):
            got = [
                torch.tensor(values).view(shape)
                for values, shape in zip(sums[name][path], shapes, strict=True)
            ]
            assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True)), (name, path)
        assert sums[name]["rounds"] == 1, name  # one round per opening, either path


def _party(argv: list[str]) -> None:
    from securemark_mpc.mpc.launcher import start_script_party

    started = start_script_party(argv)
    if started is None:
        return  # the dealer
    crypten, address, run_root = started
    comm = crypten.communicator.get()
    ring = type(comm).all_reduce.ring
    sums = {}
    for name, shapes in SHAPES.items():
        tensors = _tensors(address.rank, shapes)
        batched = name.startswith("batched")
        before = comm.get_communication_stats()["rounds"]
        direct = comm.all_reduce(tensors if batched else tensors[0], batched=batched)
        rounds = comm.get_communication_stats()["rounds"] - before
        by_ring = ring(comm, tensors if batched else tensors[0], batched=batched)
        sums[name] = {
            "direct": [t.flatten().tolist() for t in (direct if batched else [direct])],
            "ring": [t.flatten().tolist() for t in (by_ring if batched else [by_ring])],
            "rounds": rounds,
        }
    crypten.uninit()
    if address.rank == 0:
        (run_root / "sums.json").write_text(json.dumps(sums))


if __name__ == "__main__":
    _party(sys.argv[1:])
