"""SGD with momentum on secret-shared weights, at two truncations per step.

`crypten.optim.SGD` multiplies by public scalars three times per parameter tensor
(momentum, the dampening factor 1, the learning rate), and every such product is
truncated: with more than two computing parties each truncation is a dealer request
and a round, so 3 x (parameter tensors) rounds per step. Here the public scalars
multiply the shares as integers and all parameters are truncated together, once per
line:

    buffer' = m * buffer + g + wd * weight
    weight' = weight - lr * buffer'

(One truncation for both lines would need lr * m as one constant at the values'
precision, 1% off for the small per-sample learning rates used here.) It computes the update of
`torch.optim.SGD(momentum=m, weight_decay=wd)`: a zero initial buffer makes the first
step buffer' = g + wd * weight, as in torch. Who learns what: nothing is opened except
inside the truncation, exactly as in CrypTen's own products.
"""

from __future__ import annotations

from typing import Any

import torch

from securemark_mpc.mpc.fast_beaver import truncated_shares

# The per-sample learning rate (lr / batch, e.g. 0.1 / 64) rounded to 16 fractional
# bits is off by up to 0.4%, which moves the weights by 1e-3 over two epochs; 8 more
# bits make it 0.002%. Only the step lr * buffer is computed at that scale, so the
# truncated values stay small (CrypTen's truncation fails with odds ~ |value| / 2^64).
LR_EXTRA_BITS = 8


class PrivateSGD:
    """A drop-in for `crypten.optim.SGD(params, lr, momentum)` used by the engine.

    `param_groups[0]["lr"]` and `["weight_decay"]` may be changed between steps, and
    `state[id(param)]["momentum_buffer"]` holds each buffer, as in CrypTen's optimiser,
    so checkpoints save and restore it the same way.
    """

    def __init__(
        self, crypten: Any, params: Any, *, lr: float, momentum: float, weight_decay: float = 0.0
    ) -> None:
        self.crypten = crypten
        self.params = list(params)
        self.param_groups = [
            {"params": self.params, "lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        ]
        self.state: dict[int, dict[str, Any]] = {}

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    def _buffer(self, param: Any) -> Any:
        state = self.state.setdefault(id(param), {})
        if "momentum_buffer" not in state:
            zeros = torch.zeros_like(param.share)  # every party's share 0: a sharing of 0
            state["momentum_buffer"] = self.crypten.mpc.MPCTensor.from_shares(zeros)
        return state["momentum_buffer"]

    def step(self) -> None:
        group = self.param_groups[0]
        trained = [param for param in self.params if param.grad is not None]
        if not trained:
            return
        scale = trained[0].encoder.scale  # 2^16: fixed-point values are shares / scale
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]

        buffers = [self._buffer(param) for param in trained]
        # buffer' = m * buffer + g + wd * weight, all buffers truncated together (wd at 16
        # bits: 0.007% off for the split engine's batch-scaled 5e-4 x 64, 0.7% unscaled)
        updated = truncated_shares(
            [
                buffer.share * round(momentum * scale)
                + param.grad.share * scale
                + param.share * round(decay * scale)
                for param, buffer in zip(trained, buffers, strict=True)
            ],
            scale,
        )
        for buffer, share in zip(buffers, updated, strict=True):
            buffer.share = share
        # weight' = weight - lr * buffer': the steps of all weights truncated together,
        # with lr at LR_EXTRA_BITS more bits than the values (the step is small)
        finer = scale << LR_EXTRA_BITS
        steps = truncated_shares([buffer.share * round(lr * finer) for buffer in buffers], finer)
        for param, step in zip(trained, steps, strict=True):
            param.share = param.share - step
