"""CutNorm under MPC: y = x / √(mean(x²) + ε) per sample, with a hand-written backward.

Every opening and every truncation is a round between the parties, so this layer is
written for few rounds over a wide range: 63 forward, 7 backward with 3 computing
parties (32 and 3 with 2), for per-sample mean squares up to 210,000 (CrypTen's
``inv_sqrt`` route: 49 forward, 8 backward, exact to 1,280 only):

* **Argument.** v = (mean square + ε)/CUTNORM_RANGE, kept as v/2·2^HALF_EXTRA_BITS
  (16 fractional bits alone leave v/2 3% coarse near v = 0); one truncation, then a
  margin of a few units so that it never falls below v/2.
* **Start.** CrypTen's 2.2·exp(−(v/2 + 0.2)) + 0.2 − v/1024, good for v in
  [0.1, 160], with the factor 2.2 moved into the exponent and the exponential as
  (1 − t/128)^128: v/256 and v/1024 in one truncation, then seven squarings.
* **Newton steps** y ← 1.5·y − (v/2·y)·y², ten of them: the extra steps carry small
  v (a start 10× too low gains 1.5× a step; with nine, mean squares below 1 were
  still 0.2–0.3% short of converged). The two inner products share one
  opening and one truncation; 1.5·y is an integer multiple of the untruncated shares,
  so a step costs two openings and two truncations (CrypTen: three products and a
  public scaling). The last step divides by √RANGE, a power of two, by widening its
  truncation. A Newton step for 1/√v never overshoots (y(1.5 − v/2·y²) ≤ 1/√v for
  y ≥ 0), v/2 errs high, and the root finally loses a margin of as many units of 2^-16
  as there are parties, which covers its last truncation: the root is never too high,
  so the layer can under-normalise (more noise per signal: safe) but never
  over-normalise (`tests/test_activations.py` checks both).

Why the wide range: the cut's input grows while training (the layer in front of the
normalisation is scale-invariant, and SGD lengthens such weights). The MNIST-t10k
default reaches per-sample mean squares of 20,000; with the previous range (exact to
1,280) its MPC training went to NaN in the second epoch.

Error of the root, relative, measured through CrypTen (cut width 32, 1 to 3 data
owners, 6 runs of 64 per-sample mean squares from 1e-5 to 210,000, against the
encoded input): between −3.7e-3 and −2e-4 below mean square 1 (there the output's
own truncation dominates), −2.2e-3 to −1e-4 from 1 to 1,000, −1.7e-2 to −5e-4 up to
100,000 and −2.4e-2 to −7e-3 up to 210,000 (a root near 0.003 is 200 units of 2^-16,
and the margin takes up to 4 of them); never high. Wrong beyond 210,000, where the
start turns negative: see the README's residual risks.

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
NEWTON_STEPS = 10
EXP_SQUARINGS = 7  # exp(−t) ≈ (1 − t/128)^128; the base stays ≥ −1 up to mean squares of 520,000
FACTOR_BITS = 23  # precision of the public factor of Σx² (_half)
HALF_EXTRA_BITS = 6  # v/2 is kept ×64: at 16 bits alone it is 3% coarse near v = 0
POWER = 2**EXP_SQUARINGS
_START_SHIFT = 0.2 - math.log(2.2)  # 2.2·exp(−(h + 0.2)) = exp(−(h + _START_SHIFT))
_GAIN_BITS = round(math.log2(CUTNORM_RANGE)) // 2  # 1/√RANGE = 2^-_GAIN_BITS
if 4**_GAIN_BITS != CUTNORM_RANGE:
    raise ValueError(f"CUTNORM_RANGE must be a power of 4, got {CUTNORM_RANGE}")


def _newton_step(root: Any, half: Any, *, gain_bits: int = 0) -> Any:
    """(1.5·root − (half·root)·root²) / 2^gain_bits, two openings and two truncations;
    ``half`` is v/2 at HALF_EXTRA_BITS more bits (so v/2·2^HALF_EXTRA_BITS)."""
    scale = root._tensor.encoder.scale
    half_root, root_squared = fast_beaver.fixed_point_products(
        [("mul", half, root, {}), ("mul", root, root, {})]
    )
    (cubic,) = fast_beaver.untruncated_products(
        [("mul", half_root._tensor, root_squared._tensor, {})]
    )
    # both terms at scale²·2^HALF_EXTRA_BITS, so one truncation: 1.5·scale is a public
    # integer, and a power-of-two gain only widens the divisor (a gain folded into
    # `half` instead would leave it a few units of 2^-16 for small mean squares)
    linear = root._tensor.share * (round(1.5 * scale) << HALF_EXTRA_BITS)
    divisor = scale << (HALF_EXTRA_BITS + gain_bits)
    (share,) = fast_beaver.truncated_shares([linear - cubic.share], divisor)
    return fast_beaver.fixed_point_tensor(share)


def _margin_units() -> int:
    """Units of 2^-16 by which one truncation can err (one per share less one), plus one
    for rounding: added to v/2 and taken from the root, they keep the root below
    1/√(mean square + ε) whatever the truncations do."""
    from crypten import communicator  # imported by the shim before any party computes

    return communicator.get().get_world_size()


def _half(sum_of_squares: Any, *, width: int, epsilon: float) -> Any:
    """v/2·2^HALF_EXTRA_BITS in one truncation, never below it. CrypTen would encode the
    small public factor with 16 bits (1/3000 loses 4%); here it is an integer over
    2^FACTOR_BITS, rounded up, and the untruncated product stays below mean square·2^34,
    far from the ring's 2^63. Σx²'s own truncation errors (one per value) shrink by the
    factor, 2^HALF_EXTRA_BITS/(2·width·RANGE), to less than one unit here."""
    factor = 2**HALF_EXTRA_BITS / (2 * width * CUTNORM_RANGE)
    share = sum_of_squares._tensor.share * math.ceil(factor * 2**FACTOR_BITS)
    (truncated,) = fast_beaver.truncated_shares([share], 2**FACTOR_BITS)
    scale = sum_of_squares._tensor.encoder.scale
    return fast_beaver.fixed_point_tensor(truncated) + (
        epsilon * width * factor + _margin_units() / scale
    )


def _start(half: Any) -> Any:
    """CrypTen's start 2.2·exp(−(v/2 + 0.2)) + 0.2 − v/1024, the exponential as
    (1 − t/128)^128: v/256 and v/1024 are public shifts of `half`, one truncation."""
    divisor = 2 ** (HALF_EXTRA_BITS + 9)  # half / 2^HALF_EXTRA_BITS / 512 = v/1024
    shares = fast_beaver.truncated_shares(
        [half._tensor.share * (512 // POWER), half._tensor.share], divisor
    )
    exponent, linear = (fast_beaver.fixed_point_tensor(share) for share in shares)
    base = 1.0 - exponent - _START_SHIFT / POWER
    for _ in range(EXP_SQUARINGS):
        base = base.square()
    return base + 0.2 - linear


def inverse_square_root(sum_of_squares: Any, *, width: int, epsilon: float) -> Any:
    """1/√(mean square + ε) from Σx² over `width` values, never above it (module docstring)."""
    half = _half(sum_of_squares, width=width, epsilon=epsilon)
    root = _start(half)
    for _ in range(NEWTON_STEPS - 1):
        root = _newton_step(root, half)
    # the last step returns 1/√(mean square + ε) = 1/√v / √RANGE; a Newton step never
    # overshoots and v/2 errs high, so only this step's own truncation could put it above
    root = _newton_step(root, half, gain_bits=_GAIN_BITS)
    return root - _margin_units() / root._tensor.encoder.scale


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
