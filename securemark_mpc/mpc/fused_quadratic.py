"""x + a·x² under MPC at one truncation forward and one backward.

Written with CrypTen's ops, ``x.square().mul(a).add(x)`` truncates three times
forward and back (after the square, after the public ``a``, and inside the
backward's ``input.mul(2.0)``) besides its two Beaver openings, and with more than
two computing parties every truncation is a dealer request and a round. Here the
public ``a = p/q`` is applied to the untruncated Beaver result (scale 2^32) as the
integer ``p``, the linear term is lifted to the same scale, and one truncation by
``q·2^16`` brings the sum back:

    forward   y  = (p·[x²]₃₂ + q·2^16·[x]) / (q·2^16)
    backward  gx = (2p·[g·x]₃₂ + q·2^16·[g]) / (q·2^16)

It uses CrypTen's own Beaver square and product and its own truncation, so who
learns what is unchanged: the parties open only the masked Beaver differences and,
inside the truncation, the masked value, exactly as in any CrypTen product.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

NAME = "securemark_quadratic"
MAX_DENOMINATOR = 256  # a ≈ p/q within 1/(2·256²); a larger p would also raise the scale


def as_fraction(a: float) -> tuple[int, int]:
    """The public coefficient as p/q with small integers."""
    fraction = Fraction(a).limit_denominator(MAX_DENOMINATOR)
    return fraction.numerator, fraction.denominator


def register(crypten: Any) -> None:
    """Add `MPCTensor.securemark_quadratic(a)` (with its backward) to CrypTen's autograd."""
    gradients = crypten.gradients
    if gradients.get_grad_fn(NAME) is not None:
        return
    primitives = crypten.mpc.primitives

    def rescaled(raw_product: Any, linear: Any, numerator: int, denominator: int) -> Any:
        """linear + (numerator/denominator)·raw_product/scale, with one truncation."""
        divisor = denominator * linear.encoder.scale
        total = raw_product.share * numerator + linear.share * divisor
        result = primitives.ArithmeticSharedTensor.from_shares(total, precision=0)
        # with more than two parties the dealer truncation of fast_truncation, whose wrap
        # correction 2^64 // d is exact also for a divisor d that is not a power of two
        result.div_(divisor)
        return crypten.mpc.MPCTensor.from_shares(result.share)

    @gradients.register_function(NAME)
    class AutogradQuadratic(gradients.AutogradFunction):
        @staticmethod
        def forward(ctx: Any, input: Any, a: float) -> Any:
            ctx.save_multiple_for_backward([input, a])
            p, q = as_fraction(a)
            return rescaled(primitives.beaver.square(input._tensor), input, p, q)

        @staticmethod
        def backward(ctx: Any, grad_output: Any) -> Any:
            input, a = ctx.saved_tensors
            p, q = as_fraction(a)
            product = primitives.beaver.mul(grad_output._tensor, input._tensor)
            return rescaled(product, grad_output, 2 * p, q)
