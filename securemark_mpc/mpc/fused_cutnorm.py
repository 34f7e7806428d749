"""CutNorm under MPC: y = x / √(mean(x²) + ε) per sample, with a hand-written backward.

Every opening and every truncation is a round between the parties, and on these
machines a round of a small tensor costs milliseconds whatever its size, so this layer
is written for few rounds (35 forward, 7 backward; CrypTen's ``inv_sqrt`` route took 49
forward, 8 backward):

* **Argument.** v = (mean square + ε)/CUTNORM_RANGE. The four public scalings of
  Σx² that the start and the steps need take one truncation together.
* **Start.** CrypTen's 2.2·exp(−(v/2 + 0.2)) + 0.2 − v/1024, with the factor 2.2
  moved into the exponent and the exponential as (1 − t/128)^128: seven squarings
  rather than CrypTen's eight, the same error over the range.
* **Newton steps** y ← 1.5·y − (v/2·y)·y², four of them. The two inner products share
  one opening and one truncation; 1.5·y is an integer multiple of the untruncated
  shares, so the step costs two openings and two truncations (CrypTen: three
  products and a public scaling). The last step also applies the public 1/√RANGE.
  A Newton step for 1/√v never overshoots (y(1.5 − v/2·y²) ≤ 1/√v for y ≥ 0), so an
  inaccurate root under-normalises, which only adds noise per signal.

Relative error (16-bit fixed point, simulated in float64, cut width 32): ≤ 3e-4 for
per-sample mean squares up to 100, ≤ 8e-4 up to 1,280. Past that the root shrinks in
magnitude (more noise per signal: safe; its sign may flip above 1,640) up to about
2,400, and is wrong beyond: see the README's residual risks.

Backward, from y_i = r·x_i with r = (mean(x²) + ε)^(-1/2) over D values:
∂y_i/∂x_j = r·(δ_ij − y_i·y_j / D), so

    grad_x = r · (g − y · mean(g·y))

three products of the saved y and r with the incoming gradient; no square root again.
Who learns what: only Beaver products and truncations, each opening masked values
only, as in any CrypTen layer.
"""

from __future__ import annotations

import math
from typing import Any

from securemark_mpc.models.layers import CUTNORM_RANGE
from securemark_mpc.mpc import fast_beaver

NAME = "securemark_cutnorm"
NEWTON_STEPS = 4
EXP_SQUARINGS = 7  # exp(−t) ≈ (1 − t/128)^128; the base stays ≥ −1 up to mean squares of 4,000
FACTOR_BITS = 22  # precision of the public factors of Σx² (_public_multiples)
POWER = 2**EXP_SQUARINGS
_START_SHIFT = 0.2 - math.log(2.2)  # 2.2·exp(−(h + 0.2)) = exp(−(h + _START_SHIFT))


def _newton_step(root: Any, half: Any, gain: float) -> Any:
    """1.5·gain·root − (half·root)·root², two openings and two truncations; `half` is
    already multiplied by `gain`."""
    scale = root._tensor.encoder.scale
    half_root, root_squared = fast_beaver.fixed_point_products(
        [("mul", half, root, {}), ("mul", root, root, {})]
    )
    (cubic,) = fast_beaver.untruncated_products(
        [("mul", half_root._tensor, root_squared._tensor, {})]
    )
    # both terms at scale², so one truncation: 1.5·gain·scale is a public integer
    linear = root._tensor.share * round(1.5 * gain * scale)
    (share,) = fast_beaver.truncated_shares([linear - cubic.share], scale)
    return fast_beaver.fixed_point_tensor(share)


def _public_multiples(shared: Any, factors: list[float]) -> list[Any]:
    """shared·c for each public c, in one truncation. CrypTen would encode a small c with
    16 bits (1/1024 becomes 64/65536, 1/3000 loses 4%); here each c is an integer over
    2^FACTOR_BITS; the untruncated products stay below mean square·2^34, far from the
    ring's 2^63."""
    shares = [shared._tensor.share * round(factor * 2**FACTOR_BITS) for factor in factors]
    truncated = fast_beaver.truncated_shares(shares, 2**FACTOR_BITS)
    return [fast_beaver.fixed_point_tensor(share) for share in truncated]


def inverse_square_root(sum_of_squares: Any, *, width: int, epsilon: float) -> Any:
    """1/√(mean square + ε) from Σx² over `width` values (module docstring)."""
    half_factor = 0.5 / (width * CUTNORM_RANGE)  # v/2 = Σx²·half_factor + offset
    offset = 0.5 * epsilon / CUTNORM_RANGE
    last_gain = 1.0 / math.sqrt(CUTNORM_RANGE)  # the last step returns 1/√(mean square + ε)
    half, exponent, linear, last_half = _public_multiples(
        sum_of_squares,
        [half_factor, half_factor / POWER, half_factor / 512, half_factor * last_gain],
    )
    half, last_half = half + offset, last_half + offset * last_gain
    base = 1.0 - exponent - (offset + _START_SHIFT) / POWER
    for _ in range(EXP_SQUARINGS):
        base = base.square()
    root = base + (0.2 - offset / 512) - linear
    for _ in range(NEWTON_STEPS - 1):
        root = _newton_step(root, half, 1.0)
    return _newton_step(root, last_half, last_gain)


def register(crypten: Any) -> None:
    """Add `MPCTensor.securemark_cutnorm(epsilon)` (with its backward) to CrypTen's autograd."""
    gradients = crypten.gradients
    if gradients.get_grad_fn(NAME) is not None:
        return

    @gradients.register_function(NAME)
    class AutogradCutNorm(gradients.AutogradFunction):
        @staticmethod
        def forward(ctx: Any, input: Any, epsilon: float) -> Any:
            width = input.size(1)
            sum_of_squares = input.square().sum(dim=1, keepdim=True)
            root = inverse_square_root(sum_of_squares, width=width, epsilon=epsilon)
            output = input * root
            ctx.save_multiple_for_backward([output, root])
            return output

        @staticmethod
        def backward(ctx: Any, grad_output: Any) -> Any:
            output, root = ctx.saved_tensors
            width = output.size(1)
            projection = (grad_output * output).sum(dim=1, keepdim=True) * (1.0 / width)
            return (grad_output - output * projection) * root
