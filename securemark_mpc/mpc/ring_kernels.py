"""Exact int64 bilinear ops (mod 2^64) computed with float64 BLAS, through limbs.

Every Beaver product of a convolution or matrix product computes ``op(x, y)`` on
64-bit ring elements, at the parties and at the dealer. On CPU, PyTorch's int64
convolution and matmul have no BLAS path and run 10-25x slower than float64 (measured
here at batch 64 on the MNIST preset's layers). CrypTen does the same trick on CUDA.

Each operand is split into signed limbs, ``x = x0 + x1·2^b + x2·2^2b (+ x3·2^3b)``
(mod 2^64), and only the limb products that land below bit 64 are computed, in
float64. Such a product sums at most ``fan_in`` terms, each below 2^(2b), so it is an
integer below 2^53 and float64 holds it (and every partial sum, in any order)
exactly. Converted back to int64 and shifted, the limb products add up to the int64
result bit for bit, including the wrap-around:

* 3 limbs of 22 bits with Karatsuba's trick for the middle shift, x0·y1 + x1·y0 =
  (x0 + x1)(y0 + y1) − x0·y0 − x1·y1 (x1·y1 is needed anyway): 5 products, exact for a
  fan-in up to 511;
* 3 limbs of 22 bits: 6 products, exact for a fan-in up to 1,023;
* 4 limbs of 16 bits: 10 products, exact for a fan-in up to 2^21 - 1.

A matrix product with a larger fan-in is cut into pieces along its inner dimension,
each exact. The kernel gradient of a convolution (``conv2d_weight``) is one matrix
product over the input patches. Only the arithmetic changes: operands and results
are those of ``getattr(torch, op)`` on int64 tensors.

Cutting into limbs costs a dozen int64 passes over every operand, and 6 float
products are not free, so limbs pay off only when each element takes part in many
multiply-accumulates: each call picks limbs or torch's int64 kernel by that count
(`MACS_PER_ELEMENT`). At batch 64 on the MNIST preset the gain is up to 1.2x on the
layers that take limbs; the ops' structure (`securemark_mpc.mpc.fast_beaver`) gains
more.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

FLOAT_MANTISSA_BITS = 53


@dataclass(frozen=True)
class LimbPlan:
    """How a 64-bit operand is cut: `count` balanced limbs of `bits` bits; with
    `karatsuba` (3 limbs), the middle shift comes from one product of limb sums."""

    bits: int
    count: int
    karatsuba: bool = False

    @property
    def max_fan_in(self) -> int:
        """The largest fan-in whose limb-product sums stay below 2^53 (exactly held).

        Balanced lower limbs lie in [-2^(b-1), 2^(b-1)], the top limb within
        2^(64-(count-1)·b-1) + 1, and the largest group of products with the same shift
        has `count` terms (or `count - 1` of full size when the top limb is smaller).
        """
        low = 1 << (self.bits - 1)
        top = (1 << (64 - (self.count - 1) * self.bits - 1)) + 1
        worst = 0
        for shift in range(self.count):
            pairs = [(i, shift - i) for i in range(shift + 1)]
            sizes = [
                (top if i == self.count - 1 else low) * (top if j == self.count - 1 else low)
                for i, j in pairs
            ]
            worst = max(worst, sum(sizes))
        if self.karatsuba:  # (x0 + x1)(y0 + y1), both sums of two lower limbs
            worst = max(worst, (2 * low) ** 2)
        return ((1 << FLOAT_MANTISSA_BITS) - 1) // worst


KARATSUBA = LimbPlan(bits=22, count=3, karatsuba=True)  # 5 limb products
WIDE = LimbPlan(bits=22, count=3)  # 6 limb products
NARROW = LimbPlan(bits=16, count=4)  # 10 limb products
PLANS = (KARATSUBA, WIDE, NARROW)  # the cheapest whose fan-in fits is used


def limbs(x: torch.Tensor, plan: LimbPlan) -> list[torch.Tensor]:
    """Balanced limbs of an int64 tensor as float64: sum(l_i · 2^(i·bits)) ≡ x mod 2^64.

    Written without adding Python scalars to int64 tensors (a slow path in PyTorch)."""
    mask = (1 << plan.bits) - 1
    pieces, rest = [], x
    for _ in range(plan.count - 1):
        low = rest & mask
        carry = low >> (plan.bits - 1)  # 1 where the low part is in the upper half
        low -= carry << plan.bits  # now in [-2^(bits-1), 2^(bits-1))
        pieces.append(low.to(torch.float64))
        rest = (rest >> plan.bits) + carry
    pieces.append(rest.to(torch.float64))
    return pieces


Op = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _limb_products(op: Op, xs: list[torch.Tensor], ys: list[torch.Tensor], plan: LimbPlan):
    """sum over i + j < count of op(x_i, y_j) · 2^((i+j)·bits), as int64 (mod 2^64)."""
    if plan.karatsuba:
        return _karatsuba_products(op, xs, ys, plan.bits)
    total: torch.Tensor | None = None
    for shift in range(plan.count):
        part = op(xs[0], ys[shift])
        for i in range(1, shift + 1):
            part += op(xs[i], ys[shift - i])
        exact = part.to(torch.int64)
        if shift:
            exact <<= plan.bits * shift  # int64 shifts wrap mod 2^64
        total = exact if total is None else total.add_(exact)
    assert total is not None
    return total


def _karatsuba_products(
    op: Op, xs: list[torch.Tensor], ys: list[torch.Tensor], bits: int
) -> torch.Tensor:
    """The 3-limb sum with x0·y1 + x1·y0 = (x0 + x1)(y0 + y1) − x0·y0 − x1·y1: 5 products."""
    low = op(xs[0], ys[0]).to(torch.int64)
    square = op(xs[1], ys[1]).to(torch.int64)
    middle = op(xs[0] + xs[1], ys[0] + ys[1]).to(torch.int64) - low - square
    high = (op(xs[0], ys[2]) + op(xs[2], ys[0])).to(torch.int64) + square
    return low.add_(middle << bits).add_(high << (2 * bits))  # int64 shifts wrap mod 2^64


def limb_product(op: Op, x: torch.Tensor, y: torch.Tensor, plan: LimbPlan) -> torch.Tensor:
    """op(x, y) on int64 tensors through `plan`'s limbs; exact while op's fan-in is at
    most plan.max_fan_in."""
    return _limb_products(op, limbs(x, plan), limbs(y, plan), plan)


def _plan_for(fan_in: int) -> LimbPlan | None:
    return next((plan for plan in PLANS if fan_in <= plan.max_fan_in), None)


def _limbs_pay_off(macs: int, *tensors_numel: int) -> bool:
    """Limbs cost a few int64 passes over every operand and result element and 6 float
    products; int64 kernels cost ~1 ns per multiply-accumulate. Measured on the MNIST
    preset's layers (batch 64, 1 thread), limbs win from ~40 multiply-accumulates per
    element touched and lose below ~25."""
    return macs >= MACS_PER_ELEMENT * sum(tensors_numel)


MACS_PER_ELEMENT = 32


def _matmul_limbs(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
    """The exact product from KARATSUBA limbs (cut like WIDE's), along the inner dimension
    in pieces whose fan-in KARATSUBA holds exactly (the same float work as one piece).
    At batch 256 on the MNIST preset's first linear layer (1,568 x 128): 15 ms against
    19 ms for WIDE's six products."""
    fan_in = xs[0].size(-1)
    pieces = math.ceil(fan_in / KARATSUBA.max_fan_in)
    step = math.ceil(fan_in / pieces)
    total: torch.Tensor | None = None
    for start in range(0, fan_in, step):
        part = _limb_products(
            torch.matmul,
            [x[..., start : start + step] for x in xs],
            [y[..., start : start + step, :] for y in ys],
            KARATSUBA,
        )
        total = part if total is None else total.add_(part)
    assert total is not None
    return total


def matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x @ y for int64 matrices (or batches), exact mod 2^64."""
    out_numel = x.numel() // x.size(-1) * y.size(-1)
    if not _limbs_pay_off(out_numel * x.size(-1), x.numel(), y.numel(), out_numel):
        return torch.matmul(x, y)
    return _matmul_limbs(limbs(x, KARATSUBA), limbs(y, KARATSUBA))


def _convolution(
    name: str, fan_in: int, x: torch.Tensor, weight: torch.Tensor, **kwargs: Any
) -> torch.Tensor:
    torch_op = getattr(torch, name)
    plan = _plan_for(fan_in)
    out_numel = output_size(name, x.size(), weight.size(), **kwargs).numel()
    if plan is None or not _limbs_pay_off(out_numel * fan_in, x.numel(), out_numel):
        return torch_op(x, weight, **kwargs)
    return limb_product(lambda a, b: torch_op(a, b, **kwargs), x, weight, plan)


# A kernel with this many weights or more runs faster as one matrix product over the
# input patches than as six float64 convolutions. Measured at batch 256, 1 thread, as
# limb products: the MNIST preset's second conv (32 x 8 x 3 x 3) 4.4 ms against 15 ms
# (digits': 1.4 against 7.4 ms), its input gradient (a transposed conv with the same
# kernel) 16 against 19 ms; the first conv (8 x 1 x 8 x 8, stride 4) 2.3 against 1.6 ms.
PATCHES_MIN_WEIGHTS = 2048


def _by_patches(weight: torch.Tensor, kwargs: dict[str, Any]) -> bool:
    plain = _pair(kwargs.get("dilation", 1)) == (1, 1) and kwargs.get("groups", 1) == 1
    return plain and weight.numel() >= PATCHES_MIN_WEIGHTS


def _conv2d_by_patches(
    x: torch.Tensor, weight: torch.Tensor, *, stride: Any = 1, padding: Any = 0, **_: Any
) -> torch.Tensor:
    """conv2d as one exact matrix product of the input patches with the flattened kernel."""
    size = output_size("conv2d", x.size(), weight.size(), stride=stride, padding=padding)
    patches = _columns(x, tuple(weight.shape[2:]), stride, padding, 1)
    product = matmul(patches, weight.reshape(weight.size(0), -1).T)
    return product.view(size[0], size[2], size[3], size[1]).permute(0, 3, 1, 2).contiguous()


def conv2d(x: torch.Tensor, weight: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """torch.conv2d on int64 tensors, exact mod 2^64."""
    if _by_patches(weight, kwargs):
        return _conv2d_by_patches(x, weight, **kwargs)
    fan_in = weight.size(1) * weight.size(2) * weight.size(3)
    return _convolution("conv2d", fan_in, x, weight, **kwargs)


def conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """torch.conv_transpose2d on int64 tensors, exact mod 2^64.

    With stride 1 it is the convolution with the kernel flipped and its channels
    swapped, padded by k - 1 - p (and then may run by patches). Otherwise each output
    sums over every input channel and every kernel tap (an upper bound on the fan-in
    whatever the stride)."""
    kernel = tuple(weight.shape[2:])
    padding = _pair(kwargs.get("padding", 0))
    if (
        _by_patches(weight, kwargs)
        and _pair(kwargs.get("stride", 1)) == (1, 1)
        and _pair(kwargs.get("output_padding", 0)) == (0, 0)
        and all(p <= k - 1 for p, k in zip(padding, kernel, strict=True))
    ):
        flipped = weight.flip(2, 3).transpose(0, 1).contiguous()
        around = tuple(k - 1 - p for p, k in zip(padding, kernel, strict=True))
        return _conv2d_by_patches(x, flipped, padding=around)
    fan_in = weight.size(0) * weight.size(2) * weight.size(3)
    return _convolution("conv_transpose2d", fan_in, x, weight, **kwargs)


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


def _columns(
    x: torch.Tensor, kernel_size: tuple[int, int], stride: Any, padding: Any, dilation: Any
) -> torch.Tensor:
    """The convolution's input patches as rows, (batch·positions, channels·kh·kw), for
    any dtype (F.unfold has no int64 kernel)."""
    (sy, sx), (py, px), (dy, dx) = _pair(stride), _pair(padding), _pair(dilation)
    ky, kx = kernel_size
    padded = F.pad(x, (px, px, py, py))
    windows = padded.unfold(2, dy * (ky - 1) + 1, sy).unfold(3, dx * (kx - 1) + 1, sx)
    windows = windows[..., ::dy, ::dx]  # (batch, channels, rows, cols, ky, kx)
    return windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, x.size(1) * ky * kx)


def conv2d_weight(
    x: torch.Tensor,
    grad_output: torch.Tensor,
    *,
    kernel_size: tuple[int, int],
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
) -> torch.Tensor:
    """∂(sum conv2d(x, w) · grad_output)/∂w for groups = 1: bilinear in x and grad_output,
    one matrix product of grad_output with the input patches, exact mod 2^64."""
    out_channels = grad_output.size(1)
    left = grad_output.transpose(0, 1).reshape(out_channels, -1)  # (out, batch·positions)
    right = _columns(x, kernel_size, stride, padding, dilation)
    return matmul(left, right).view(out_channels, x.size(1), *kernel_size)


def _mul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.mul(x, y)  # elementwise int64 is already fast


# op name (as CrypTen's Beaver protocol and its dealer requests name it) -> exact kernel
KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "mul": _mul,
    "matmul": matmul,
    "conv2d": conv2d,
    "conv_transpose2d": conv_transpose2d,
    "conv2d_weight": conv2d_weight,
}


def ring_op(op: str, x: torch.Tensor, y: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """`op(x, y)` on int64 ring elements, exact mod 2^64; ops not listed here (CrypTen's
    1-d convolutions) run as torch's own int64 kernels."""
    kernel = KERNELS.get(op)
    if kernel is None:
        return getattr(torch, op)(x, y, *args, **kwargs)
    return kernel(x, y, *args, **kwargs)


def _conv_size(size0: Any, size1: Any, kwargs: dict[str, Any], *, transposed: bool) -> torch.Size:
    stride, padding, dilation = (
        _pair(kwargs.get(key, default))
        for key, default in (("stride", 1), ("padding", 0), ("dilation", 1))
    )
    spatial = []
    for axis in range(2):
        size, kernel = size0[2 + axis], size1[2 + axis]
        reach = dilation[axis] * (kernel - 1)
        if transposed:
            extra = _pair(kwargs.get("output_padding", 0))[axis]
            spatial.append((size - 1) * stride[axis] - 2 * padding[axis] + reach + extra + 1)
        else:
            spatial.append((size + 2 * padding[axis] - reach - 1) // stride[axis] + 1)
    groups = kwargs.get("groups", 1)
    channels = size1[1] * groups if transposed else size1[0]
    return torch.Size((size0[0], channels, *spatial))


def output_size(
    op: str, size0: torch.Size, size1: torch.Size, *args: Any, **kwargs: Any
) -> torch.Size:
    """The size of `op`'s result from the operand sizes alone: a party that draws its
    share of c needs no product to learn its size. (Meta tensors would do it too, at
    ~0.5 ms a call and seconds for the first.)"""
    if op == "conv2d_weight":
        return torch.Size((size1[1], size0[1], *kwargs["kernel_size"]))
    if op == "mul":
        return torch.broadcast_shapes(size0, size1)
    if op == "matmul" and len(size0) >= 2 and len(size1) >= 2:
        batch = torch.broadcast_shapes(size0[:-2], size1[:-2])
        return torch.Size((*batch, size0[-2], size1[-1]))
    if op in ("conv2d", "conv_transpose2d") and not args:
        return _conv_size(size0, size1, kwargs, transposed=op == "conv_transpose2d")
    x = torch.empty(size0, device="meta", dtype=torch.float64)
    y = torch.empty(size1, device="meta", dtype=torch.float64)
    return getattr(torch, op)(x, y, *args, **kwargs).size()
