#!/usr/bin/env python3
"""The MPC engine's primitives, timed one by one, and a cost model built from them.

    .venv/bin/python benchmarks/bench_primitives.py            # short: a few minutes
    .venv/bin/python benchmarks/bench_primitives.py --long     # more repetitions
    .venv/bin/python benchmarks/bench_primitives.py --check-epoch mnist-t10k

Each primitive runs as real party processes started through the launcher harness
(`securemark_mpc.mpc.launcher`), with 2 and with 3 computing parties plus the TTP
dealer, at batch 64, 128 and 256. The model owner (rank 0) times every call; the
report gives µs per unit (element, multiply-accumulate or call) as median [min, max]
over repetitions, and the communication operations the owner counts per call
(CrypTen's round counter: each open, and each send/receive/broadcast of a dealer
request, is one).

The cost model (`benchmarks/cost_model.py`) fits, per primitive, seconds per call =
latency + units x per-unit cost over the three batch sizes, counts the primitives a
model spec runs per batch (forward, backward, update), and predicts an epoch. With
`--check-epoch` it trains one epoch of the current default partition through the
real protocol (at `--check-batch-size`, one of the sizes timed) and states the
prediction's error. Results go to
benchmarks/results/primitives.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cost_model import fit_primitives, predict_epoch  # noqa: E402

from securemark_mpc.config import TOPOLOGIES, TrainConfig  # noqa: E402
from securemark_mpc.data import DataConfig, load_splits  # noqa: E402
from securemark_mpc.models.layers import (  # noqa: E402
    NONLINEAR_KINDS,
    QUAD_COEFFICIENT,
    build_layer,
)
from securemark_mpc.mpc.launcher import (  # noqa: E402
    launch_local,
    script_parties,
    start_script_party,
)
from securemark_mpc.mpc.prefetch import PrefetchingDealer  # noqa: E402
from securemark_mpc.run_folder import RunFolder  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MNIST_T10K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-t10k"
WIDTH = 512  # elements per sample for elementwise primitives
CUT_WIDTH = 32  # the presets' cut: values per sample that cutnorm normalises
# per_request: CrypTen's client, one dealer round trip per product or truncation;
# prefetched: the engine's client (securemark_mpc.mpc.prefetch), as training runs.
MODES = ("per_request", "prefetched")
# without --long, CrypTen's per-request client is timed only for these (the A/B)
PER_REQUEST_SHORT = ("beaver_mul", "conv2d", "truncation", "quad_forward_backward")
CHECK_DATA = {
    "digits": DataConfig(),
    "mnist-t10k": DataConfig(
        dataset="idx", data_root=str(MNIST_T10K), file_order=True, aux_fraction=0.0
    ),
}


@dataclass(frozen=True)
class Primitive:
    """One engine operation: `make(crypten, batch)` returns (one call, units per call)."""

    unit: str  # "element", "MAC" or "call"
    make: Callable[[Any, int], tuple[Callable[[], Any], int]]


def _shared(crypten: Any, *shape: int) -> Any:
    return crypten.cryptensor(torch.randn(*shape), src=0)


def _beaver_mul(crypten: Any, batch: int) -> tuple[Callable[[], Any], int]:
    x, y = _shared(crypten, batch, WIDTH), _shared(crypten, batch, WIDTH)
    return (lambda: x.mul(y)), batch * WIDTH


def _conv(crypten: Any, batch: int) -> tuple[Callable[[], Any], int]:
    # the MNIST preset's first convolution: 8 filters of 5x5 over 28x28, padding 2
    x, w = _shared(crypten, batch, 1, 28, 28), _shared(crypten, 8, 1, 5, 5)
    return (lambda: x.conv2d(w, padding=2)), batch * 8 * 28 * 28 * 25


def _conv_by_patches(crypten: Any, batch: int) -> tuple[Callable[[], Any], int]:
    # the MNIST preset's second convolution: 32 filters of 3x3 over 8 channels of 7x7,
    # a kernel large enough to run by patches (ring_kernels.PATCHES_MIN_WEIGHTS)
    x, w = _shared(crypten, batch, 8, 7, 7), _shared(crypten, 32, 8, 3, 3)
    return (lambda: x.conv2d(w, padding=1)), batch * 32 * 7 * 7 * 8 * 9


def _matmul(crypten: Any, batch: int) -> tuple[Callable[[], Any], int]:
    x, w = _shared(crypten, batch, 512), _shared(crypten, 512, 128)
    return (lambda: x.matmul(w)), batch * 512 * 128


def _open(crypten: Any, batch: int) -> tuple[Callable[[], Any], int]:
    x = _shared(crypten, batch, WIDTH)
    return (lambda: x.get_plain_text()), batch * WIDTH


def _truncation(crypten: Any, batch: int) -> tuple[Callable[[], Any], int]:
    x = _shared(crypten, batch, WIDTH)
    return (lambda: x.mul(0.5)), batch * WIDTH  # a public fixed-point scalar: one truncation


def _activation(
    kind: str, *, backward: bool, width: int = WIDTH
) -> Callable[[Any, int], tuple[Callable[[], Any], int]]:
    """Any nonlinear layer kind of models/layers.py, converted as the engine converts it."""

    def make(crypten: Any, batch: int) -> tuple[Callable[[], Any], int]:
        from securemark_mpc.mpc.private_partition import encrypt_layers

        layer, _ = build_layer({"kind": kind}, (width,))
        module = encrypt_layers(crypten, nn.Sequential(layer), src=0)
        x = _shared(crypten, batch, width)
        if not backward:

            def forward() -> Any:
                with crypten.no_grad():
                    return module(x)

            return forward, batch * width
        x.requires_grad = True
        gradient = _shared(crypten, batch, width)

        def forward_backward() -> Any:
            module(x).backward(gradient)

        return forward_backward, batch * width

    return make


def _quad_with_crypten_ops(
    *, backward: bool
) -> Callable[[Any, int], tuple[Callable[[], Any], int]]:
    """x + a·x² written with CrypTen's own ops, for comparison with the fused layer."""

    def make(crypten: Any, batch: int) -> tuple[Callable[[], Any], int]:
        x = _shared(crypten, batch, WIDTH)
        x.requires_grad = backward
        gradient = _shared(crypten, batch, WIDTH)

        def call() -> Any:
            y = x.square().mul(QUAD_COEFFICIENT).add(x)
            if backward:
                y.backward(gradient)

        return call, batch * WIDTH

    return make


def primitives() -> dict[str, Primitive]:
    """Registry: every primitive of the engine, activations taken from the layer registry."""
    table = {
        "beaver_mul": Primitive("element", _beaver_mul),
        "conv2d": Primitive("MAC", _conv),
        "conv2d_patches": Primitive("MAC", _conv_by_patches),
        "matmul": Primitive("MAC", _matmul),
        "open": Primitive("element", _open),
        "truncation": Primitive("element", _truncation),
    }
    for kind in sorted(NONLINEAR_KINDS):
        table[f"{kind}_forward"] = Primitive("element", _activation(kind, backward=False))
        table[f"{kind}_forward_backward"] = Primitive("element", _activation(kind, backward=True))
    # The normalised cut: an inverse square root per image, so its cost is mostly
    # rounds; measured at the presets' cut width, as the cost model counts it.
    for backward, suffix in ((False, "forward"), (True, "forward_backward")):
        table[f"cutnorm_{suffix}"] = Primitive(
            "element", _activation("cutnorm", backward=backward, width=CUT_WIDTH)
        )
    table["quad_crypten_ops_forward_backward"] = Primitive(
        "element", _quad_with_crypten_ops(backward=True)
    )
    return table


# -- inside each party process -------------------------------------------------------


def _time_primitive(
    crypten: Any,
    primitive: Primitive,
    batch: int,
    *,
    calls: int,
    reps: int,
    dealer: PrefetchingDealer | None,
) -> dict[str, Any]:
    """Time one primitive; with `dealer`, each call is one "batch" whose dealer material
    was requested in bulk during the previous call, as in training."""
    call, units = primitive.make(crypten, batch)

    def in_batch(key: Any, following: Any) -> Any:
        return contextlib.nullcontext() if dealer is None else dealer.batch(key, following)

    with in_batch(batch, None):
        call()  # warm-up: allocations, and the prefetching client records its requests
    comm = crypten.communicator.get()
    per_call, rounds = [], []
    for _ in range(reps):
        before = comm.get_communication_stats()["rounds"]
        began = time.perf_counter()
        for number in range(calls):
            with in_batch(batch, batch if number + 1 < calls else None):
                call()
        per_call.append((time.perf_counter() - began) / calls)
        rounds.append((comm.get_communication_stats()["rounds"] - before) / calls)
    per_unit = [1e6 * seconds / units for seconds in per_call]
    return {
        "unit": primitive.unit,
        "units_per_call": units,
        "us_per_unit_median": statistics.median(per_unit),
        "us_per_unit_min": min(per_unit),
        "us_per_unit_max": max(per_unit),
        "ms_per_call_median": 1e3 * statistics.median(per_call),
        "rounds_per_call": statistics.median(rounds),
    }


def worker(argv: list[str]) -> None:
    """One party: start CrypTen like `securemark_mpc.mpc.party`, then time or deal."""
    started = start_script_party(argv)
    if started is None:
        return  # the dealer
    crypten, address, run_root = started
    plan = json.loads((run_root / "plan.json").read_text())
    table = primitives()
    results: dict[str, Any] = {}
    for mode in MODES:
        for name in plan["primitives"]:
            if mode == "per_request" and not (plan["long"] or name in PER_REQUEST_SHORT):
                continue
            # a fresh client per primitive: its recorded plans are per batch size
            dealer = PrefetchingDealer(crypten, rank=address.rank) if mode == "prefetched" else None
            for batch in plan["batches"]:
                results.setdefault(mode, {}).setdefault(name, {})[str(batch)] = _time_primitive(
                    crypten,
                    table[name],
                    batch,
                    calls=plan["calls"],
                    reps=plan["reps"],
                    dealer=dealer,
                )
            if dealer is not None:
                dealer.close()
    crypten.uninit()
    if address.rank == 0:
        (run_root / "primitives.json").write_text(json.dumps(results, indent=2))


# -- the parent ------------------------------------------------------------------------


def run_parties(
    *,
    computing_parties: int,
    batches: list[int],
    names: list[str],
    calls: int,
    reps: int,
    long: bool,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        run = RunFolder(Path(tmp))
        plan = {
            "batches": batches,
            "primitives": names,
            "calls": calls,
            "reps": reps,
            "long": long,
        }
        (run.root / "plan.json").write_text(json.dumps(plan))

        result = launch_local(
            run=run,
            data_owners=computing_parties - 1,
            echo_owner=False,
            time_limit=3600,
            wrap_command=script_parties(Path(__file__).resolve(), "--worker"),
        )
        if not result.ok:
            raise SystemExit(f"primitive benchmark failed:\n{result.report()}")
        return json.loads((run.root / "primitives.json").read_text())


def fss_comparison(batch: int, reps: int) -> dict[str, Any] | None:
    """AriaNN's FSS comparison keys (`sycret`, 32-bit ring): dealer keygen and one party's
    evaluation, per element, timed locally (2 computing parties; add one open of the
    masked input for the online round)."""
    try:
        import numpy as np
        import sycret
    except ImportError:
        print("skipping FSS comparison: `sycret` is not installed", file=sys.stderr)
        return None
    factory = sycret.LeFactory(n_threads=1)
    n = batch * WIDTH // 8
    keygen, evaluation = [], []
    for _ in range(reps):
        began = time.perf_counter()
        keys_a, _ = factory.keygen(n)
        keygen.append(1e6 * (time.perf_counter() - began) / n)
        masked = np.random.randint(0, 2**31, size=n, dtype=np.int64)
        began = time.perf_counter()
        factory.eval(0, masked, keys_a)
        evaluation.append(1e6 * (time.perf_counter() - began) / n)
    return {
        "elements": n,
        "key_bytes_per_element": int(keys_a.shape[1]),
        "keygen_us_per_element_median": statistics.median(keygen),
        "eval_us_per_element_median": statistics.median(evaluation),
        "eval_us_per_element_min": min(evaluation),
        "eval_us_per_element_max": max(evaluation),
    }


def check_epoch(
    dataset: str, fitted: dict[str, Any], batch_size: int, topology: str = "all"
) -> dict[str, Any]:
    """Train one epoch of the default partition at `batch_size` (one the primitives were
    timed at) through the real protocol, and compare its time with the prediction."""
    config = replace(
        TrainConfig(data=CHECK_DATA[dataset]),
        epochs=1,
        eval_each_epoch=False,
        batch_size=batch_size,
        topology=topology,
    )
    spec = config.model_spec(load_splits(config.data))
    with tempfile.TemporaryDirectory() as tmp:
        run = RunFolder(Path(tmp) / "run")
        run.save_config(config, argv=sys.argv)
        result = launch_local(run=run, data_owners=config.data_owners, echo_owner=False)
        if not result.ok:
            raise SystemExit(f"check-epoch training failed:\n{result.report()}")
        metrics = run.read_json("metrics.json")
    # The epoch-end range check (wrap_guard) runs once per epoch; it is not modelled.
    measured = metrics["history"][0]["seconds"] - metrics["history"][0]["range_check_seconds"]
    batches = -(-metrics["train_size"] // batch_size)
    predicted = predict_epoch(
        spec=spec,
        batch_size=config.batch_size,
        batches=batches,
        parties=config.computing_data_owners + 1,
        fitted=fitted,
    )
    return {
        "dataset": dataset,
        "topology": topology,
        "computing_parties": config.computing_data_owners + 1,
        "batch_size": config.batch_size,
        "batches": batches,
        "split": spec.split,
        "measured_seconds": measured,  # without the epoch-end range check
        "range_check_seconds": metrics["history"][0]["range_check_seconds"],
        "predicted_seconds": predicted["seconds"],
        "predicted_by_phase": predicted["by_phase"],
        "predicted_rounds_by_phase": predicted["rounds_by_phase"],
        "measured_by_phase": {
            name: {"seconds": phase["seconds"], "rounds": phase["rounds"]}
            for name, phase in metrics["profile_owner"].items()
        },
        "relative_error": (predicted["seconds"] - measured) / measured,
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        "| parties | dealer | primitive | unit | batch | µs/unit median [min, max] | ms/call | comm ops/call |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for parties, by_mode in results["parties"].items():
        for mode, measured in by_mode.items():
            for name, by_batch in measured.items():
                for batch, row in by_batch.items():
                    lines.append(
                        f"| {parties} | {mode} | {name} | {row['unit']} | {batch} | "
                        f"{row['us_per_unit_median']:.4f} [{row['us_per_unit_min']:.4f}, "
                        f"{row['us_per_unit_max']:.4f}] | {row['ms_per_call_median']:.2f} | "
                        f"{row['rounds_per_call']:.1f} |"
                    )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--long", action="store_true", help="more calls and repetitions")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--parties", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--only", nargs="+", help="primitive names (default: all)")
    parser.add_argument(
        "--check-epoch",
        choices=sorted(CHECK_DATA),
        help="also train one epoch of the default partition and check the cost model",
    )
    parser.add_argument("--check-batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument(
        "--check-topology", choices=sorted(TOPOLOGIES), default=TrainConfig().topology
    )
    parser.add_argument(
        "--check-only",
        action="store_true",
        help="keep the primitives already in OUT/primitives.json; only rerun --check-epoch",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    calls, reps = (5, 7) if args.long else (2, 3)
    known = list(primitives())
    unknown = sorted(set(args.only or []) - set(known))
    if unknown:
        parser.error(f"unknown primitive(s) {unknown}; known: {known}")
    names = args.only or known
    results: dict[str, Any] = {
        "method": "real party processes on this machine through the launcher; rank 0 times "
        f"{calls} calls per repetition, {reps} repetitions, after one warm-up call",
        "parties": {},
    }
    if args.check_only:
        results = json.loads((args.out / "primitives.json").read_text())
    for parties in [] if args.check_only else args.parties:
        print(f"== {parties} computing parties + dealer", file=sys.stderr)
        results["parties"][str(parties)] = run_parties(
            computing_parties=parties,
            batches=args.batches,
            names=names,
            calls=calls,
            reps=reps,
            long=args.long,
        )
    if not args.check_only:
        results["fss_comparison_sycret"] = fss_comparison(max(args.batches), reps)
    results["cost_model"] = fit_primitives(results["parties"])
    results.pop("epoch_check", None)  # files written before the checks were a list
    checks = results.get("epoch_checks", []) if args.check_only else []
    if args.check_epoch:
        check = check_epoch(
            args.check_epoch, results["cost_model"], args.check_batch_size, args.check_topology
        )
        same = ("dataset", "topology", "batch_size")
        checks = [old for old in checks if any(old.get(k) != check[k] for k in same)] + [check]
    results["epoch_checks"] = checks
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "primitives.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    for check in checks:
        print(
            f"cost model: predicted {check['predicted_seconds']:.2f} s for an epoch of "
            f"{check['dataset']} ({check['batches']} batches of {check['batch_size']}, "
            f"{check['computing_parties']} computing parties), measured "
            f"{check['measured_seconds']:.2f} s (error {100 * check['relative_error']:+.0f}%)"
        )


if __name__ == "__main__":
    main()
