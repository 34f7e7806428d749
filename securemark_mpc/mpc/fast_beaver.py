"""CrypTen's Beaver products, with less arithmetic per party and the same messages.

With triple (a, b, c = op(a, b)) and the opened ε = x - a, δ = y - b, CrypTen's
party i computes ``c_i + op(ε, b_i) + op(a_i, δ) (+ op(ε, δ) at party 0)``: three
bilinear kernels, in int64. Here:

* **Two kernels, not three.** op is bilinear, so party 0 computes
  ``op(ε, b_0 + δ) + op(a_0, δ)`` and the others ``op(ε, b_i) + op(a_i, δ)``: the
  same shares, bit for bit.
* **Exact float64 kernels** (`securemark_mpc.mpc.ring_kernels`) where they are
  cheaper than int64, here and at the dealer (c = op(a, b)).
* **No product for a size.** CrypTen's TTP client computes op(a, b) at every party
  other than 0 only to learn the size of its random share of c; it is computed on
  shapes (meta tensors).
* **A convolution's kernel gradient as one Beaver product** (``conv2d_weight``, a
  matrix product over the unfolded input), instead of CrypTen's grouped convolution
  whose masked operand is the output gradient repeated once per input channel.
* **A layer's two gradients together.** The input and weight gradients of a linear
  layer or convolution are independent products: their ε, δ are opened in one round
  and both results truncated in one (CrypTen: two of each).

Who learns what is unchanged: the parties open only ε and δ of a fresh triple, as in
every CrypTen product, and the dealer sees the same kinds of request (op and shapes).
"""

from __future__ import annotations

from typing import Any

import torch

from securemark_mpc.mpc.ring_kernels import output_size, ring_op

CONV2D_WEIGHT = "conv2d_weight"

_crypten: Any = None  # set by register()


Request = tuple[str, Any, Any, dict[str, Any]]  # op, x, y (ArithmeticSharedTensors), kwargs


def untruncated_products(requests: list[Request]) -> list[Any]:
    """Independent Beaver products with ONE opening round for all of them; results are
    untruncated (precision 0), as CrypTen's protocol returns them."""
    primitives = _crypten.mpc.primitives
    provider = _crypten.mpc.get_default_provider()
    triples = [
        provider.generate_additive_triple(x.size(), y.size(), op, x.device, **kwargs)
        for op, x, y, kwargs in requests
    ]
    operands = [
        t for (_, x, y, _), (a, b, _) in zip(requests, triples, strict=True) for t in (x, y, a, b)
    ]
    with primitives.beaver.IgnoreEncodings(operands):
        masked = [
            t
            for (_, x, y, _), (a, b, _) in zip(requests, triples, strict=True)
            for t in (x - a, y - b)
        ]
        opened = primitives.ArithmeticSharedTensor.reveal_batch(masked)
    results = []
    for index, ((op, x, _, kwargs), (a, b, c)) in enumerate(zip(requests, triples, strict=True)):
        epsilon, delta = opened[2 * index], opened[2 * index + 1]
        right = b.share + delta if x.rank == 0 else b.share
        c.share += ring_op(op, epsilon, right, **kwargs)
        c.share += ring_op(op, a.share, delta, **kwargs)
        results.append(c)
    return results


def _protocol(crypten: Any, original: Any) -> Any:
    cfg = crypten.config.cfg

    def beaver_protocol(op: str, x: Any, y: Any, **kwargs: Any) -> Any:
        if cfg.mpc.active_security:  # CrypTen's triple check: keep its own protocol
            return original(op, x, y, **kwargs)
        return untruncated_products([(op, x, y, kwargs)])[0]

    return beaver_protocol


def truncated_shares(shares: list[torch.Tensor], divisor: int) -> list[torch.Tensor]:
    """Divide many shared tensors by a public integer in ONE truncation (one round with
    more than two computing parties, none with two)."""
    flat = _crypten.mpc.primitives.ArithmeticSharedTensor.from_shares(
        torch.cat([share.flatten() for share in shares]), precision=0
    )
    flat.div_(divisor)
    pieces = flat.share.split([share.numel() for share in shares])
    return [piece.view_as(share).clone() for piece, share in zip(pieces, shares, strict=True)]


def fixed_point_products(requests: list[Request]) -> list[Any]:
    """Independent products of fixed-point MPCTensors (e.g. a layer's input and weight
    gradients): one opening round and one truncation for all, where CrypTen's ops take
    one of each per product."""
    if not requests:
        return []
    scales = {t._tensor.encoder.scale for _, x, y, _ in requests for t in (x, y)}
    if len(scales) != 1:
        raise ValueError(f"fixed-point products need one scale, got {sorted(scales)}")
    raw = untruncated_products(
        [(op, x._tensor, y._tensor, kwargs) for op, x, y, kwargs in requests]
    )
    shares = truncated_shares([product.share for product in raw], scales.pop())
    return [fixed_point_tensor(share) for share in shares]


def fixed_point_tensor(share: torch.Tensor) -> Any:
    """The MPCTensor (CrypTen's fixed-point encoding) of which this party holds `share`."""
    return _crypten.mpc.MPCTensor.from_shares(share)


def _matmul_backward(crypten: Any) -> Any:
    gradients = crypten.gradients
    original = gradients.AutogradMatMul.backward

    def backward(ctx: Any, grad_output: Any) -> Any:
        """Both gradients of a product of two shared matrices (a linear layer) in one
        round each of opening and truncation; vectors and public operands keep
        CrypTen's own backward."""
        input, other = ctx.saved_tensors
        shared = all(isinstance(t, crypten.mpc.MPCTensor) for t in (input, other))
        if not shared or input.dim() < 2 or other.dim() < 2:
            return original(ctx, grad_output)
        input_grad, other_grad = fixed_point_products(
            [
                ("matmul", grad_output, other.transpose(-2, -1), {}),
                ("matmul", input.transpose(-2, -1), grad_output, {}),
            ]
        )
        return (
            gradients._inverse_broadcast(input_grad, input.size()),
            gradients._inverse_broadcast(other_grad, other.size()),
        )

    return staticmethod(backward)


def _ttp_triple(crypten: Any) -> Any:
    random_ring_element = crypten.common.rng.generate_random_ring_element
    ArithmeticSharedTensor = crypten.mpc.primitives.ArithmeticSharedTensor
    TTPClient = crypten.mpc.provider.ttp_provider.TTPClient

    def generate_additive_triple(
        self: Any, size0: Any, size1: Any, op: str, device: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        """CrypTen's TTP triple, the size of c taken from shapes (module docstring)."""
        generator = TTPClient.get().get_generator(device=device)
        a = random_ring_element(size0, generator=generator, device=device)
        b = random_ring_element(size1, generator=generator, device=device)
        if crypten.communicator.get().get_rank() == 0:
            c = TTPClient.get().ttp_request("additive", device, size0, size1, op, *args, **kwargs)
        else:
            size = output_size(op, size0, size1, *args, **kwargs)
            c = random_ring_element(size, generator=generator, device=device)
        return tuple(ArithmeticSharedTensor.from_shares(t, precision=0) for t in (a, b, c))

    return generate_additive_triple


def _tfp_triple(crypten: Any) -> Any:
    random_ring_element = crypten.common.rng.generate_random_ring_element
    ArithmeticSharedTensor = crypten.mpc.primitives.ArithmeticSharedTensor

    def generate_additive_triple(
        self: Any, size0: Any, size1: Any, op: str, device: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        """CrypTen's TFP triple (the insecure testing provider) through the ring kernels."""
        a = random_ring_element(size0, device=device)
        b = random_ring_element(size1, device=device)
        c = ring_op(op, a, b, *args, **kwargs)
        return tuple(ArithmeticSharedTensor(t, precision=0, src=0) for t in (a, b, c))

    return generate_additive_triple


def register(crypten: Any) -> None:
    """Install the protocol above in CrypTen (idempotent)."""
    global _crypten
    beaver = crypten.mpc.primitives.beaver
    original = beaver.__dict__["__beaver_protocol"]
    if getattr(original, "_securemark_patched", False):
        return
    _crypten = crypten
    protocol = _protocol(crypten, original)
    protocol._securemark_patched = True  # type: ignore[attr-defined]
    # mul, matmul, conv2d, ... look the protocol up in the module at call time
    setattr(beaver, "__beaver_protocol", protocol)
    providers = crypten.mpc.provider
    providers.ttp_provider.TrustedThirdParty.generate_additive_triple = _ttp_triple(crypten)
    providers.tfp_provider.TrustedFirstParty.generate_additive_triple = _tfp_triple(crypten)
    crypten.gradients.AutogradMatMul.backward = _matmul_backward(crypten)
