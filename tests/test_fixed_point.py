"""CrypTen's fixed-point decoding, as patched by the shim: exact for every value."""

from __future__ import annotations

import torch


def test_decoding_is_exact_next_to_negative_integers():
    from securemark_mpc.mpc.crypten_shim import load_crypten

    encoder = load_crypten().encoder.FixedPointEncoder(precision_bits=16)
    scale = 2**16
    # every encoded value within 8 units of the integers −6 … 6, and a few large ones
    near_integers = torch.arange(-8, 9).unsqueeze(0) + scale * torch.arange(-6, 7).unsqueeze(1)
    encoded = torch.cat([near_integers.flatten(), torch.tensor([-(2**40) - 1, 2**40 + 1])])
    expected = (encoded.double() / scale).float()
    assert torch.equal(encoder.decode(encoded), expected)
    # CrypTen's own decoding puts −1.99998 (−131,071 units) one whole unit low
    original = type(encoder).decode.crypten_original
    assert float(original(encoder, torch.tensor([-131_071]))) == -3 + 1 / scale
    assert float(encoder.decode(torch.tensor([-131_071]))) == -2 + 1 / scale
