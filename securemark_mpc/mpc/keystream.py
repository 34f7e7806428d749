"""Random ring elements from AES-128 in counter mode instead of torch's Mersenne Twister.

Every share of a Beaver triple, of the truncation's wrap randomness and of a fresh
sharing is a pseudo-random ring element that two processes draw in step from a
generator they seeded alike (a party and the dealer, or neighbouring parties).
CrypTen draws them with ``torch.randint`` from a ``torch.Generator``: the Mersenne
Twister, which is not a cryptographic generator (624 outputs give away its state) and
costs 0.45 ms per 131,072 ring elements here. This module draws them from AES-128 in
counter mode (OpenSSL through ``cryptography``, with the CPU's AES instructions),
keyed by SHA-256 of the generator's seed: 0.10 ms for the same 131,072, and a
generator whose outputs tell nothing about the next ones.

Each ``torch.Generator`` gets its own key stream, made the first time the generator
draws a ring element; both holders of a seed draw the same elements in the same order,
as before. The generator's own state still serves everything else drawn from it
(CrypTen's random bits for binary shares), alike on both sides. What is drawn is
different from CrypTen's values, so a run's shares differ from a run without this
module, never its results beyond fixed-point noise; every process of a run loads it
(`crypten_shim`).

Who learns what: unchanged. The key is derived from the seed CrypTen already shares
between exactly the processes that draw from that generator; its 64 bits are the
secret's size, as before.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch

RING_BITS = 64
_BLOCK = 16  # AES block: update_into needs this much spare room


class KeyStream:
    """AES-128-CTR from a 64-bit seed: int64 ring elements, in order."""

    def __init__(self, seed: int) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        key = hashlib.sha256(b"securemark ring elements" + seed.to_bytes(8, "little")).digest()
        self._cipher = Cipher(algorithms.AES(key[:16]), modes.CTR(bytes(16))).encryptor()
        self._zeros = bytearray()

    def ring_elements(self, count: int) -> torch.Tensor:
        """The next ``count`` elements, uniform over the int64 ring."""
        if count == 0:
            return torch.empty(0, dtype=torch.long)
        size = 8 * count
        if len(self._zeros) < size:
            self._zeros = bytearray(size)
        out = bytearray(size + _BLOCK - 1)
        self._cipher.update_into(memoryview(self._zeros)[:size], out)
        return torch.from_numpy(np.frombuffer(out, dtype=np.int64, count=count))


def register(crypten: Any) -> None:
    """Route CrypTen's ring elements from seeded CPU generators through key streams."""
    from crypten.mpc.primitives import arithmetic
    from crypten.mpc.provider import ttp_provider

    rng = crypten.common.rng
    original = rng.generate_random_ring_element
    if getattr(original, "securemark", False):
        return
    streams: dict[tuple[int, int], KeyStream] = {}

    def generate_random_ring_element(
        size: Any, ring_size: int = 2**RING_BITS, generator: Any = None, **kwargs: Any
    ) -> torch.Tensor:
        device = kwargs.get("device")
        seeded_on_cpu = (
            generator is not None
            and generator.device.type == "cpu"
            and (device is None or torch.device(device).type == "cpu")
        )
        if not seeded_on_cpu or ring_size != 2**RING_BITS:
            return original(size, ring_size=ring_size, generator=generator, **kwargs)
        seed = generator.initial_seed()
        key = (id(generator), seed)  # a new generator at a reused address has a new seed
        stream = streams.get(key)
        if stream is None:
            stream = streams[key] = KeyStream(seed)
        shape = torch.Size([size] if isinstance(size, int) else size)
        return stream.ring_elements(math.prod(shape)).view(shape)

    generate_random_ring_element.securemark = True
    generate_random_ring_element.crypten_original = original  # tests compare the two
    for module in (rng, ttp_provider, arithmetic):
        module.generate_random_ring_element = generate_random_ring_element
