"""Shares' random ring elements from AES-128-CTR key streams, in step for equal seeds."""

from __future__ import annotations

import torch

from securemark_mpc.mpc.keystream import KeyStream


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_equal_seeds_draw_equal_elements_however_the_draws_are_cut():
    whole = KeyStream(2**63 + 12345).ring_elements(1000)
    stream = KeyStream(2**63 + 12345)
    pieces = torch.cat([stream.ring_elements(n) for n in (1, 0, 7, 492, 500)])
    assert torch.equal(whole, pieces)
    assert not torch.equal(whole, KeyStream(2**63 + 12346).ring_elements(1000))


def test_ring_elements_are_uniform_bit_by_bit():
    values = KeyStream(7).ring_elements(1_000_000)
    bits = torch.stack([(values >> shift) & 1 for shift in range(64)], dim=1).double()
    frequency = bits.mean(dim=0)
    assert ((frequency - 0.5).abs() < 0.004).all(), frequency  # 8 standard deviations
    assert values.unique().numel() == values.numel()


def test_crypten_draws_from_the_key_stream_for_seeded_generators():
    from securemark_mpc.mpc.crypten_shim import load_crypten

    crypten = load_crypten()
    draw = crypten.common.rng.generate_random_ring_element
    provider_draw = crypten.mpc.provider.ttp_provider.generate_random_ring_element
    assert draw is provider_draw and draw.securemark
    # a party and the dealer seed a generator alike: they draw the same shares
    first, second = _generator(99), _generator(99)
    shapes = [(3, 4), torch.Size([5]), 6]
    drawn = [(draw(shape, generator=first), draw(shape, generator=second)) for shape in shapes]
    assert all(torch.equal(a, b) for a, b in drawn)
    assert [a.shape for a, _ in drawn] == [torch.Size([3, 4]), torch.Size([5]), torch.Size([6])]
    # not the Mersenne Twister's values
    twister = draw.crypten_original((3, 4), generator=_generator(99))
    assert not torch.equal(drawn[0][0], twister)
    # other rings keep CrypTen's own generator
    small = draw((100,), ring_size=2**8, generator=_generator(1))
    assert torch.equal(
        small, draw.crypten_original((100,), ring_size=2**8, generator=_generator(1))
    )
