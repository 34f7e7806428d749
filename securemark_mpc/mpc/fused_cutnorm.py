"""CutNorm under MPC: y = x / √(mean(x²) + ε) per sample, with a hand-written backward.

Forward: one Beaver square of x, an inverse square root of one value per sample
(CrypTen's exp-based start and four Newton steps, ``inverse_square_root``), then one
product x·r. It is accurate to 1e-4 for arguments in [0.1, 160] (checked in
float64); the argument is (mean square + ε)/CUTNORM_RANGE, so per-sample mean squares
up to about 1,280 are normalised exactly (ε keeps the argument above 0.1). Past that the root is underestimated up to an argument of ~300
(more noise per signal: safe), and wrong beyond: see the README's residual risks.

Backward, from y_i = r·x_i with r = (mean(x²) + ε)^(-1/2) over D values:
∂y_i/∂x_j = r·(δ_ij − y_i·y_j / D), so

    grad_x = r · (g − y · mean(g·y))

three products of the saved y and r with the incoming gradient; no square root again.
Who learns what: only CrypTen's products, truncations and its own approximations,
each opening masked values only, as in any CrypTen layer.
"""

from __future__ import annotations

import math
from typing import Any

from securemark_mpc.models.layers import CUTNORM_RANGE

NAME = "securemark_cutnorm"
NEWTON_STEPS = 4


def inverse_square_root(half: Any) -> Any:
    """1/√v from half = v/2, for v in [0.1, 160]: CrypTen's start, then Newton's steps.

    CrypTen's ``inv_sqrt`` starts from 2.2·exp(−(v/2 + 0.2)) + 0.2 − v/1024 and takes
    three steps y·(3 − v·y²)/2. Written as y·(1.5 − (v/2)·y²) a step needs no division
    by 2 (with three parties each public division is a truncation round), and a fourth
    step takes the error from 3e-3 to 1e-4 over the range (checked in float64).
    """
    root = (-(half + 0.2)).exp() * 2.2 + 0.2 - half * (1 / 512)
    for _ in range(NEWTON_STEPS):
        root = root * (1.5 - half * root.square())
    return root


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
            # half of (mean square + ε)/CUTNORM_RANGE, with one public scaling
            half = input.square().sum(dim=1, keepdim=True) * (0.5 / (width * CUTNORM_RANGE))
            half = half + 0.5 * epsilon / CUTNORM_RANGE
            # 1/√argument ∈ [0.08, 3.2] keeps its fixed-point precision; the public
            # 1/√CUTNORM_RANGE is applied to the products, not to the small root.
            root = inverse_square_root(half)
            output = (input * root) * (1.0 / math.sqrt(CUTNORM_RANGE))
            ctx.save_multiple_for_backward([output, root])
            return output

        @staticmethod
        def backward(ctx: Any, grad_output: Any) -> Any:
            output, root = ctx.saved_tensors
            width = output.size(1)
            projection = (grad_output * output).sum(dim=1, keepdim=True) * (1.0 / width)
            return ((grad_output - output * projection) * root) * (1.0 / math.sqrt(CUTNORM_RANGE))
