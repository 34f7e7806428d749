"""The one place that imports CrypTen 0.4.1, patched for current PyTorch.

Why each patch exists (see DESIGN.md, "Known CrypTen 0.4.1 pitfalls"):

* ``crypten.nn`` imports its ONNX converter, which needs ``onnx`` and
  ``torch.onnx._internal.registration`` (gone from torch 2.x). We never import ONNX
  models, so the converter is replaced by a stub module before ``import crypten``.
* CrypTen calls ``dist.init_process_group`` without a timeout, so gloo would wait
  30 minutes for a dead peer. We bound every collective with ``COMM_TIMEOUT``.

Everything else in the package gets CrypTen through :func:`load_crypten`.
"""

from __future__ import annotations

import datetime
import functools
import sys
import types
from typing import Any

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


def load_crypten(*, timeout_seconds: float = COMM_TIMEOUT_SECONDS) -> Any:
    """Import CrypTen once, with the shims above applied, and return the module."""
    global _crypten
    if _crypten is None:
        _stub_onnx_converter()
        _bound_process_group_timeout(timeout_seconds)
        import crypten

        _crypten = crypten
    return _crypten
