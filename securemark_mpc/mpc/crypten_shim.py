"""The one place that imports CrypTen 0.4.1, patched for current PyTorch.

Why each patch exists (see DESIGN.md, "Known CrypTen 0.4.1 pitfalls"):

* ``crypten.nn`` imports its ONNX converter, which needs ``onnx`` and
  ``torch.onnx._internal.registration`` (gone from torch 2.x). We never import ONNX
  models, so the converter is replaced by a stub module before ``import crypten``.
* CrypTen calls ``dist.init_process_group`` without a timeout, so gloo would wait
  30 minutes for a dead peer. We bound every collective with ``COMM_TIMEOUT``.
* CrypTen's conv2d backward always computes the input gradient, a full-size Beaver
  product, even for the first layer whose input is data. It is skipped when the
  input needs no gradient (and the kernel gradient when the kernel is public).
* The quadratic activation x + a·x² gets its own autograd function with one
  truncation each way (`securemark_mpc.mpc.fused_quadratic`).
* Beaver products run two kernels per party instead of three (exact float64 limbs
  where they pay off), a convolution's kernel gradient is one matrix product, and a
  layer's input and weight gradients are opened and truncated together
  (`securemark_mpc.mpc.fast_beaver`).
* With three or more computing parties, CrypTen's dealer truncation runs the same
  protocol in fewer tensor passes (`securemark_mpc.mpc.fast_truncation`).
* Small openings go to every party directly instead of through gloo's ring
  all-reduce (`securemark_mpc.mpc.direct_exchange`).
* Pseudo-random shares come from AES-128 in counter mode instead of the Mersenne
  Twister (`securemark_mpc.mpc.keystream`): cryptographic, and 4× cheaper.
* CrypTen decodes a negative fixed-point value by dividing by the scale less one,
  which puts a value 1 to k − 1 units of 2^-16 above a negative integer −k one whole
  unit low: −131,071/2^16 = −1.99998 came back as −2.99998 (a cut value revealed
  during training, a weight at the end). Decoding floors by the scale.
* Every attribute lookup on a CrypTensor asked CrypTen's (omegaconf) config whether
  its debug validation mode is on, a few µs each and thousands of times per batch;
  with validation off (CrypTen's default, never changed here) the lookup is used
  unwrapped.

Everything else in the package gets CrypTen through :func:`load_crypten`.
"""

from __future__ import annotations

import datetime
import functools
import sys
import types
from typing import Any

from securemark_mpc.mpc import direct_exchange, fast_beaver, fast_truncation, keystream
from securemark_mpc.mpc.fused_cutnorm import register as register_fused_cutnorm
from securemark_mpc.mpc.fused_quadratic import register as register_fused_quadratic

COMM_TIMEOUT_SECONDS = 45.0

_crypten: Any = None


def _stub_onnx_converter() -> None:
    stub = types.ModuleType("crypten.nn.onnx_converter")

    def _unavailable(*_args: Any, **_kwargs: Any) -> None:
        raise NotImplementedError("CrypTen's ONNX importer is disabled in securemark_mpc")

    stub.from_onnx = stub.from_pytorch = stub.from_tensorflow = _unavailable
    stub.TF_AND_TF2ONNX = False
    sys.modules.setdefault("crypten.nn.onnx_converter", stub)


def _bound_process_group_timeout(timeout_seconds: float) -> None:
    import torch.distributed as dist

    if getattr(dist.init_process_group, "_securemark_patched", False):
        return
    original = dist.init_process_group

    @functools.wraps(original)
    def init_with_timeout(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", datetime.timedelta(seconds=timeout_seconds))
        return original(*args, **kwargs)

    init_with_timeout._securemark_patched = True  # type: ignore[attr-defined]
    dist.init_process_group = init_with_timeout


def _conv2d_backward_only_what_is_needed() -> None:
    from crypten.gradients import AutogradConv2D
    from crypten.mpc import MPCTensor

    original = AutogradConv2D.backward
    if getattr(original, "_securemark_patched", False):
        return

    def backward(ctx: Any, grad_output: Any) -> Any:
        inputs, kernel = ctx.saved_tensors[0], ctx.saved_tensors[1]
        input_needed = getattr(inputs, "requires_grad", False)
        kernel_needed = getattr(kernel, "requires_grad", False)
        padding, stride, dilation, groups = ctx.saved_tensors[2:]
        private = all(isinstance(t, MPCTensor) for t in (inputs, kernel))
        if groups != 1 or not private:
            if input_needed and kernel_needed:
                return original(ctx, grad_output)
            grad_input = grad_kernel = None
            if input_needed:
                grad_input = _input_gradient(
                    grad_output, inputs, kernel, stride, padding, dilation, groups
                )
            if kernel_needed:
                grad_kernel = _kernel_gradient(
                    inputs, kernel, grad_output, stride, padding, dilation, groups
                )
            return (grad_input, grad_kernel)
        # groups = 1, both shared: the needed gradients as products opened and truncated together
        wanted = {}
        if input_needed:
            wanted["input"] = (
                "conv_transpose2d",
                grad_output,
                kernel,
                {
                    "stride": stride,
                    "padding": padding,
                    "output_padding": _output_padding(
                        grad_output, inputs, kernel, stride, padding, dilation
                    ),
                    "dilation": dilation,
                },
            )
        if kernel_needed:
            wanted["kernel"] = (
                "conv2d_weight",
                inputs,
                grad_output,
                {
                    "kernel_size": tuple(kernel.size()[2:]),
                    "stride": stride,
                    "padding": padding,
                    "dilation": dilation,
                },
            )
        products = fast_beaver.fixed_point_products(list(wanted.values()))
        results = dict(zip(wanted, products, strict=True))
        grad_input, grad_kernel = results.get("input"), results.get("kernel")
        return (grad_input, grad_kernel)

    backward._securemark_patched = True  # type: ignore[attr-defined]
    AutogradConv2D.backward = staticmethod(backward)


def _input_gradient(
    grad_output: Any,
    inputs: Any,
    kernel: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
) -> Any:
    return grad_output.conv_transpose2d(
        kernel,
        stride=stride,
        padding=padding,
        output_padding=_output_padding(grad_output, inputs, kernel, stride, padding, dilation),
        groups=groups,
        dilation=dilation,
    )


def _output_padding(
    grad_output: Any, inputs: Any, kernel: Any, stride: Any, padding: Any, dilation: Any
) -> Any:
    from crypten.gradients import _grad_input_padding

    return _grad_input_padding(
        grad_output, inputs.size(), stride, padding, tuple(kernel.size()[2:]), dilation=dilation
    )


def _kernel_gradient(
    inputs: Any,
    kernel: Any,
    grad_output: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
) -> Any:
    """∂L/∂kernel, as CrypTen's AutogradConv2D computes it (one Beaver convolution)."""
    batch_size = inputs.size(0)
    out_channels, in_channels, kernel_y, kernel_x = kernel.size()
    in_channels *= groups
    grad_output = grad_output.repeat(1, in_channels // groups, 1, 1)
    grad_output = grad_output.view(
        grad_output.size(0) * grad_output.size(1), 1, *grad_output.size()[2:]
    )
    flat_input = inputs.view(1, batch_size * in_channels, *inputs.size()[2:])
    # dilation and stride swap places, as in PyTorch's conv2d_weight
    grad = flat_input.conv2d(
        grad_output,
        stride=dilation,
        padding=padding,
        dilation=stride,
        groups=in_channels * batch_size,
    )
    grad = grad.view(batch_size, grad.size(1) // batch_size, grad.size(2), grad.size(3))
    grad = (
        grad.sum(0)
        .view(in_channels // groups, out_channels, grad.size(2), grad.size(3))
        .transpose(0, 1)
    )
    return grad.narrow(2, 0, kernel_y).narrow(3, 0, kernel_x)


def _exact_fixed_point_decode() -> None:
    from crypten.encoder import FixedPointEncoder

    original = FixedPointEncoder.decode
    if hasattr(original, "crypten_original"):
        return

    @functools.wraps(original)
    def decode(self: Any, tensor: Any) -> Any:
        """value = whole + fraction/scale with whole = ⌊t/scale⌋, so fraction ∈ [0, scale),
        summed in float64 and rounded to float32 once."""
        if tensor is None or self._scale <= 1:
            return original(self, tensor)
        whole = tensor.div(self._scale, rounding_mode="floor")
        fraction = tensor - whole * self._scale
        return (whole.double() + fraction.double() / self._scale).float()

    decode.crypten_original = original  # type: ignore[attr-defined]
    FixedPointEncoder.decode = decode


def _lookup_without_validation_check() -> None:
    from crypten.config import cfg
    from crypten.cryptensor import CrypTensor

    lookup = CrypTensor.__getattribute__
    if not cfg.debug.validation_mode and hasattr(lookup, "__wrapped__"):
        CrypTensor.__getattribute__ = lookup.__wrapped__


def load_crypten(*, timeout_seconds: float = COMM_TIMEOUT_SECONDS) -> Any:
    """Import CrypTen once, with the shims above applied, and return the module."""
    global _crypten
    if _crypten is None:
        _stub_onnx_converter()
        _bound_process_group_timeout(timeout_seconds)
        import crypten

        _conv2d_backward_only_what_is_needed()
        _exact_fixed_point_decode()
        _lookup_without_validation_check()
        keystream.register(crypten)
        fast_beaver.register(crypten)
        fast_truncation.register(crypten)
        direct_exchange.register(crypten)
        register_fused_quadratic(crypten)
        register_fused_cutnorm(crypten)
        _crypten = crypten
    return _crypten
