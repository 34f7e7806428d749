"""Predict a split-MPC training epoch from the primitive benchmark and a model spec.

Each primitive's time per call is fitted as latency + units x per-unit cost over the
batch sizes measured (`fit_primitives`); `batch_counts` lists the primitive calls one
training batch runs (forward, reveal, backward, update, with the units of each), the
way `securemark_mpc.mpc.private_partition` builds the private partition; and
`predict_epoch` adds them up. The owner's plaintext step is not modelled (about 1%).
"""

from __future__ import annotations

from typing import Any

from securemark_mpc.models import ModelSpec, build_model, private_part
from securemark_mpc.models.layers import NONLINEAR_KINDS, build_layer
from securemark_mpc.mpc.ring_kernels import PATCHES_MIN_WEIGHTS

Call = tuple[str, str, float]  # (phase, primitive, units per call)


Fitted = dict[str, dict[str, dict[str, dict[str, float]]]]  # parties -> mode -> primitive -> line


def fit_primitives(measured: dict[str, dict[str, dict[str, Any]]]) -> Fitted:
    """parties -> dealer mode -> primitive -> {latency_s, seconds_per_unit}, least
    squares over the batch sizes measured."""
    fitted: Fitted = {}
    for parties, by_mode in measured.items():
        for mode, by_name in by_mode.items():
            for name, by_batch in by_name.items():
                points = [
                    (row["units_per_call"], row["ms_per_call_median"] / 1e3)
                    for row in by_batch.values()
                ]
                line = _line(points)
                line["rounds_per_call"] = max(row["rounds_per_call"] for row in by_batch.values())
                fitted.setdefault(parties, {}).setdefault(mode, {})[name] = line
    return fitted


def _line(points: list[tuple[float, float]]) -> dict[str, float]:
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = (
        sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else mean_y / mean_x
    )
    latency = mean_y - slope * mean_x
    if latency < 0 or slope < 0:  # noise: fall back to a line through the origin
        latency, slope = 0.0, sum(y for _, y in points) / sum(x for x, _ in points)
    return {"latency_s": latency, "seconds_per_unit": slope}


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def batch_counts(spec: ModelSpec, batch_size: int) -> list[Call]:
    """The primitive calls of one training batch of the private partition."""
    layers = list(private_part(build_model(spec, seed=0), spec))
    specs = list(spec.layers[: spec.split])
    calls: list[Call] = []
    shape: tuple[int, ...] = spec.input_shape
    index, first, parameters = 0, True, 0
    while index < len(specs):
        kind = specs[index]["kind"]
        if kind == "conv":
            conv = layers[index]
            module, out_shape = build_layer(specs[index], shape)
            kernel = conv.kernel_size[0]
            fused = index + 1 < len(specs) and specs[index + 1]["kind"] == "avgpool"
            if fused:  # conv + pool run as one strided conv with a (k + p - 1)^2 kernel
                pool = specs[index + 1]["size"]
                _, out_shape = build_layer(specs[index + 1], out_shape)
                kernel += pool - 1
                index += 1
                # blurring the shared kernel with the public box: a truncation each way
                blurred = conv.weight.numel() // conv.kernel_size[0] ** 2 * kernel**2
                calls += [("forward", "truncation", blurred), ("backward", "truncation", blurred)]
            macs = batch_size * _numel(out_shape) * shape[0] * kernel * kernel
            weights = conv.out_channels * shape[0] * kernel * kernel
            large = weights >= PATCHES_MIN_WEIGHTS  # then ring_kernels runs it by patches
            calls += _linear_calls("conv2d_patches" if large else "conv2d", macs, first)
            parameters += conv.weight.numel() + conv.bias.numel()
            shape = out_shape
        elif kind == "linear":
            _, out_shape = build_layer(specs[index], shape)
            macs = batch_size * shape[0] * out_shape[0]
            calls += _linear_calls("matmul", macs, first)
            parameters += (shape[0] + 1) * out_shape[0]
            shape = out_shape
        elif kind in NONLINEAR_KINDS or kind == "cutnorm":  # cutnorm: timed at the cut width
            elements = batch_size * _numel(shape)
            calls += [
                ("forward", f"{kind}_forward", elements),
                ("backward", f"{kind}_forward_backward", elements),
                ("backward", f"-{kind}_forward", elements),
            ]
        elif kind == "avgpool":
            _, shape = build_layer(specs[index], shape)
            calls += [("forward", "truncation", batch_size * _numel(shape))]
        else:
            _, shape = build_layer(specs[index], shape)
        first = first and kind not in {"conv", "linear"}
        index += 1
    calls.append(("reveal", "open", batch_size * _numel(spec.cut_shape)))
    # the SGD step (securemark_mpc.mpc.private_sgd): the momentum buffers of every
    # parameter in one truncation, then the weights in one more
    calls += [("update", "truncation", parameters)] * 2
    return calls


def _linear_calls(primitive: str, macs: int, first: bool) -> list[Call]:
    """Forward product; backward: the kernel gradient, and the input gradient unless the
    input is the data (the engine skips it)."""
    calls = [("forward", primitive, macs), ("backward", primitive, macs)]
    return calls if first else [*calls, ("backward", primitive, macs)]


def predict_epoch(
    *,
    spec: ModelSpec,
    batch_size: int,
    batches: int,
    parties: int,
    fitted: Fitted,
    mode: str = "prefetched",
) -> dict[str, Any]:
    """Seconds for `batches` batches, in total and by phase (training prefetches its
    dealer material, so `mode` defaults to the prefetched figures)."""
    table = fitted[str(parties)][mode]
    by_phase: dict[str, float] = {}
    rounds: dict[str, float] = {}
    for phase, name, units in batch_counts(spec, batch_size):
        sign = -1.0 if name.startswith("-") else 1.0
        line = table[name.lstrip("-")]
        seconds = sign * (line["latency_s"] + units * line["seconds_per_unit"])
        by_phase[phase] = by_phase.get(phase, 0.0) + batches * seconds
        rounds[phase] = rounds.get(phase, 0.0) + batches * sign * line["rounds_per_call"]
    return {"seconds": sum(by_phase.values()), "by_phase": by_phase, "rounds_by_phase": rounds}
