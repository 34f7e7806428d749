"""The lean dealer truncation (three or more computing parties) against CrypTen's own.

The unit tests check the local arithmetic (wrap counts, division) against CrypTen's and
torch's on random and extreme ring elements. The MPC test runs both protocols in real
party processes (3 computing parties + the dealer, through the launcher harness; this
file doubles as the party entry point) on the same shared values and compares what
they open, bit for bit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from securemark_mpc.mpc.fast_truncation import count_wraps, divide_truncating

LOW, HIGH = -(2**63), 2**63 - 1
EXTREMES = torch.tensor([LOW, LOW + 1, -(2**62), -1, 0, 1, 2**62, HIGH - 1, HIGH])
DIVISORS = (1, 2, 3, 2**16, 3 * 2**16, 2**23, 2**62)


def _exact_wraps(shares: list[torch.Tensor]) -> torch.Tensor:
    """Σ shares = ring value + 2^64·wraps, with Python's unbounded integers."""
    sums = [sum(int(share[i]) for share in shares) for i in range(shares[0].numel())]
    return torch.tensor([(total - (((total - LOW) % 2**64) + LOW)) // 2**64 for total in sums])


@pytest.mark.parametrize("parties", [2, 3, 4])
def test_wrap_counts_equal_cryptens_on_random_shares(parties):
    from securemark_mpc.mpc.crypten_shim import load_crypten

    crypten_count_wraps = load_crypten().common.util.count_wraps
    generator = torch.Generator().manual_seed(parties)
    shares = [torch.randint(LOW, HIGH, (100_000,), generator=generator) for _ in range(parties)]
    ours = count_wraps(shares)
    assert torch.equal(ours, crypten_count_wraps(shares))
    assert (ours != 0).any() and int(ours.abs().max()) < parties
    assert torch.equal(ours[:500], _exact_wraps([share[:500] for share in shares]))


def test_wrap_counts_are_exact_at_the_ring_extremes():
    first = EXTREMES.repeat_interleave(len(EXTREMES))
    second = EXTREMES.repeat(len(EXTREMES))
    assert torch.equal(count_wraps([first, second]), _exact_wraps([first, second]))
    third = second.flip(0)
    assert torch.equal(count_wraps([first, second, third]), _exact_wraps([first, second, third]))


@pytest.mark.parametrize("divisor", DIVISORS)
def test_division_rounds_toward_zero_as_torch(divisor):
    generator = torch.Generator().manual_seed(divisor % 1000)
    shares = torch.cat([EXTREMES, torch.randint(LOW, HIGH, (10_000,), generator=generator)])
    assert torch.equal(
        divide_truncating(shares, divisor), shares.div(divisor, rounding_mode="trunc")
    )


def test_division_refuses_a_divisor_below_one():
    with pytest.raises(ValueError, match="positive divisor"):
        divide_truncating(torch.zeros(3, dtype=torch.long), 0)


@pytest.mark.mpc
def test_lean_truncation_opens_what_cryptens_opens_with_three_parties(tmp_path):
    from securemark_mpc.mpc.launcher import launch_local, script_parties
    from securemark_mpc.run_folder import RunFolder

    result = launch_local(
        run=RunFolder(tmp_path),
        data_owners=2,
        echo_owner=False,
        time_limit=240,
        wrap_command=script_parties(Path(__file__).resolve()),
    )
    assert result.ok, result.report()
    opened = json.loads((tmp_path / "truncation.json").read_text())
    values = torch.tensor(opened["values"])
    true_wraps = torch.tensor(opened["true_wraps"])
    assert torch.equal(torch.tensor(opened["lean_wraps"]), true_wraps)
    assert true_wraps.abs().sum() > 0, "the shares never wrapped: the test checks nothing"
    for divisor in DIVISORS[1:]:
        lean = torch.tensor(opened["lean"][str(divisor)])
        exact = values.div(divisor, rounding_mode="floor")
        # each of 3 parties rounds its own share: at most 3 units from the exact quotient
        assert int((lean - exact).abs().max()) <= 3, divisor
        if divisor & (divisor - 1) == 0:  # CrypTen's correction is exact only for these
            assert torch.equal(lean, torch.tensor(opened["crypten"][str(divisor)])), divisor


def _party(argv: list[str]) -> None:
    """One party: truncate the same shared values with both protocols, open to rank 0."""
    from securemark_mpc.mpc.launcher import start_script_party

    started = start_script_party(argv)
    if started is None:
        return  # the dealer
    crypten, address, run_root = started
    primitives = crypten.mpc.primitives
    beaver = primitives.beaver
    values = torch.randint(-(2**32), 2**32, (4096,), generator=torch.Generator().manual_seed(0))
    x = primitives.ArithmeticSharedTensor(values, precision=0, src=0)
    gathered = crypten.communicator.get().gather(x.share, 0)
    payload = {"values": values.tolist(), "lean": {}, "crypten": {}}
    lean_wraps, lean_truncate = beaver.wraps, beaver.truncate
    payload["lean_wraps"] = lean_wraps(x).reveal(dst=0)
    if address.rank == 0:
        payload["true_wraps"] = count_wraps(gathered).tolist()
    for divisor in DIVISORS[1:]:
        payload["lean"][str(divisor)] = lean_truncate(x.clone(), divisor).reveal(dst=0)
        # CrypTen's truncate calls the module's `wraps`: its own, for the comparison
        beaver.wraps = lean_wraps.crypten_original
        try:
            crypten_result = lean_truncate.crypten_original(x.clone(), divisor)
        finally:
            beaver.wraps = lean_wraps
        payload["crypten"][str(divisor)] = crypten_result.reveal(dst=0)
    crypten.uninit()
    if address.rank == 0:
        payload["lean_wraps"] = payload["lean_wraps"].tolist()
        for name in ("lean", "crypten"):
            payload[name] = {key: value.tolist() for key, value in payload[name].items()}
        (run_root / "truncation.json").write_text(json.dumps(payload))


if __name__ == "__main__":
    _party(sys.argv[1:])
