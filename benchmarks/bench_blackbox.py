#!/usr/bin/env python3
"""Black-box tracing: from top-1 answers alone, after removal attacks, distillation, collusion.

    .venv/bin/python benchmarks/bench_blackbox.py                       # digits, plaintext twin
    .venv/bin/python benchmarks/bench_blackbox.py --dataset idx \\
        --data-root ../shared/data/mnist-t10k --trials 5                 # MNIST-t10k

Trains the plaintext twin of the default run, makes the run's black-box key, keyed
queries and tilt, and gives ``--customers`` simulated customers their behavioural
marks in memory (the output layer's tilt, as ``issue`` does after the weight mark;
nothing enters a registry). For each scenario and trial a leaker (or a coalition) is
drawn, its copy is attacked, its top-1 answers on the queries are traced against every
customer's behavioural codeword, and the report counts trials in which the leaker (or
at least one colluder) is accused and innocent customers accused. Scenarios: no
attack, fine-tuning every layer for 10 epochs, 50% magnitude pruning, distillation
into a fresh model on the attacker's aux split (30 epochs, soft labels at T = 4, and
hard top-1 labels), two colluders answering each query from a random one of their
copies, three answering by majority vote, and independently trained models (which
must accuse nobody). A training attack whose model ends near chance accuracy (the
distillation's lr 0.05 sometimes diverges on these quad-activation students) is rerun
with another seed, a distillation also with half the learning rate, as a thief would,
and the reruns are counted. It also reports the copies' test accuracy against
the unmarked model and how simple detectors flag the queries. Writes
benchmarks/results/blackbox.json; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from securemark_mpc.attacks.base import AttackContext, parse_attack, train_on_aux
from securemark_mpc.blackbox.key import codeword_for
from securemark_mpc.blackbox.queries import answers, base_indices, detectability
from securemark_mpc.blackbox.store import ensure_blackbox, load_tilt, mark_copy
from securemark_mpc.blackbox.tilt import signs
from securemark_mpc.blackbox.trace import read_bits, trace_answers
from securemark_mpc.config import TrainConfig
from securemark_mpc.data import DataConfig, LabeledImages, load_splits
from securemark_mpc.fingerprint.key import default_carrier
from securemark_mpc.models import build_model
from securemark_mpc.plaintext import accuracy, train_plaintext, write_plaintext_run
from securemark_mpc.run_folder import RunFolder

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {
    "accuracy_drop_pp_max": 0.5,
    "answers_max": 1000,
    "answers_alone_traced_min": 1.0,  # unattacked, fine-tuned, pruned: every trial
    "distill_traced_min": 0.5,  # stretch 0.9
    "collusion_traced_min": 0.9,
    "innocents_max": 0,
}
ATTACKS = {"none": None, "finetune-all:10": "finetune-all:10", "prune:0.5": "prune:0.5"}
DIVERGED = 0.5  # test accuracy below this: the attack's training diverged; rerun it
RERUNS = 3
DISTILL_LR, TEMPERATURE = 0.05, 4.0  # as the registered distill attack


def distill(
    teacher: torch.nn.Module, context: AttackContext, *, epochs: int, lr: float, soft: bool
) -> torch.nn.Module:
    """A fresh model trained on the aux images with the teacher's soft labels (T = 4), as the
    registered ``distill`` attack does, or with its top-1 labels (``soft=False``)."""
    student = build_model(context.spec, seed=context.seed + 1)
    if soft:
        train_on_aux(
            student,
            list(student.parameters()),
            context,
            epochs=epochs,
            learning_rate=lr,
            targets=teacher,
            temperature=TEMPERATURE,
        )
        return student
    with torch.no_grad():
        labels = teacher.eval()(context.aux.images).argmax(dim=1)
    relabelled = replace(context, aux=LabeledImages(context.aux.images, labels))
    train_on_aux(student, list(student.parameters()), relabelled, epochs=epochs, learning_rate=lr)
    return student


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-root")
    parser.add_argument("--aux-fraction", type=float, default=DataConfig().aux_fraction)
    parser.add_argument("--customers", type=int, default=8)
    parser.add_argument("--trials", type=int, default=10, help="per attack scenario")
    parser.add_argument("--collusion-trials", type=int, default=50)
    parser.add_argument("--distill-epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "blackbox.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    config = TrainConfig(
        data=DataConfig(
            dataset=args.dataset, data_root=args.data_root, aux_fraction=args.aux_fraction
        )
    )
    splits = load_splits(config.data)
    began = time.perf_counter()
    run = RunFolder(Path(tempfile.mkdtemp(prefix="bench-blackbox-")) / "run")
    trained = write_plaintext_run(run, config)
    model, spec = trained.model, trained.spec
    features, labels = run.load_features()
    key, queries = ensure_blackbox(run=run, model=model, seed=args.seed)
    tilt = load_tilt(run, key)
    unmarked = accuracy(model, splits.test)
    print(
        f"trained ({time.perf_counter() - began:.0f} s): test accuracy {unmarked:.4f}; {len(queries)} queries"
    )

    carrier = default_carrier(spec)
    codewords = np.stack([codeword_for(key=key, index=j) for j in range(args.customers)])
    names = [f"customer{j}" for j in range(args.customers)]
    held_out = torch.ones(len(splits.test), dtype=torch.bool)
    held_out[base_indices(len(splits.test), seed=key.query_seed)] = False
    unseen = splits.test.subset(torch.nonzero(held_out).squeeze(1))
    unmarked_unseen = accuracy(model, unseen)
    copies, drops, drops_unseen, right, seconds = [], [], [], [], []
    for j in range(args.customers):
        began = time.perf_counter()
        copy = mark_copy(
            run=run,
            unmarked=model,
            model=model,
            spec=spec,
            index=j,
            features=features,
            labels=labels,
            carrier=carrier,
            seed=args.seed,
        )
        seconds.append(time.perf_counter() - began)
        copies.append(copy)
        asked = np.where(tilt.design @ signs(codewords[j]) > 0, key.first, key.second)
        right.append(float((answers(copy, queries.images) == asked).mean()))
        drops.append(100 * (unmarked - accuracy(copy, splits.test)))
        drops_unseen.append(100 * (unmarked_unseen - accuracy(copy, unseen)))
    print(
        f"marked {args.customers} copies: accuracy drop (pp) {summary(drops)}, on test images "
        f"no query mixes {summary(drops_unseen)}, right {summary(right)}"
    )

    def verdict(labels: np.ndarray, guilty: set[int]) -> dict:
        report = trace_answers(key=key, tilt=tilt, labels=labels, names=names, codewords=codewords)
        accused = {names.index(a.customer) for a in report.accused}
        bits, _, _ = read_bits(key=key, tilt=tilt, labels=labels)
        errors = [float((bits != codewords[g]).mean()) for g in guilty] or [0.5]
        return {
            "traced": bool(accused & guilty),
            "innocents": len(accused - guilty),
            "ber": min(errors),
        }

    rng = np.random.default_rng(args.seed)
    scenarios: dict[str, dict] = {}

    def run_scenario(
        name: str, trials: int, make: Callable[[int], tuple[np.ndarray, set[int]]]
    ) -> None:
        began = time.perf_counter()
        rows = [verdict(*make(trial)) for trial in range(trials)]
        scenarios[name] = {
            "trials": trials,
            "traced": sum(r["traced"] for r in rows) / trials,
            "innocents_accused": sum(r["innocents"] for r in rows),
            "ber": summary([r["ber"] for r in rows]),
            "seconds": time.perf_counter() - began,
        }
        print(
            f"{name:<18} traced {scenarios[name]['traced']:.2f}  innocents {scenarios[name]['innocents_accused']}  "
            f"BER {scenarios[name]['ber']['median']:.3f}",
            flush=True,
        )

    def attacked(
        attack: Callable | None, *, extra: dict
    ) -> Callable[[int], tuple[np.ndarray, set[int]]]:
        def make(trial: int) -> tuple[np.ndarray, set[int]]:
            leaker = trial % args.customers
            suspect = copies[leaker]
            if attack is not None:
                for rerun in range(RERUNS + 1):
                    context = AttackContext(spec=spec, aux=splits.aux, seed=trial + 1000 * rerun)
                    suspect = attack(copies[leaker], context, rerun)
                    if accuracy(suspect, splits.test) >= DIVERGED:
                        break
                    extra["reruns"] = extra.get("reruns", 0) + 1
                extra.setdefault("accuracy", []).append(accuracy(suspect, splits.test))
            return answers(suspect, queries.images), {leaker}

        return make

    def registered(text: str) -> Callable:
        return lambda teacher, context, rerun: parse_attack(text)([teacher], context)

    def distilled(soft: bool) -> Callable:
        # a thief whose student diverges halves the learning rate and tries again
        return lambda teacher, context, rerun: distill(
            teacher, context, epochs=args.distill_epochs, lr=DISTILL_LR / 2**rerun, soft=soft
        )

    attacks: dict[str, Callable | None] = {
        name: None if text is None else registered(text) for name, text in ATTACKS.items()
    }
    attacks["distill"] = distilled(soft=True)
    attacks["distill-hard"] = distilled(soft=False)
    for name, attack in attacks.items():
        extra: dict = {}
        run_scenario(name, args.trials, attacked(attack, extra=extra))
        if "accuracy" in extra:
            scenarios[name]["test_accuracy"] = summary(extra["accuracy"])
            scenarios[name]["diverged_reruns"] = extra.get("reruns", 0)

    copy_answers = np.stack([answers(copy, queries.images) for copy in copies])

    def colluders(
        size: int, combine: Callable[[np.ndarray], np.ndarray]
    ) -> Callable[[int], tuple[np.ndarray, set[int]]]:
        def make(trial: int) -> tuple[np.ndarray, set[int]]:
            coalition = rng.choice(args.customers, size=size, replace=False)
            return combine(copy_answers[coalition]), set(coalition.tolist())

        return make

    def pick_random(stacked: np.ndarray) -> np.ndarray:
        return stacked[
            rng.integers(len(stacked), size=stacked.shape[1]), np.arange(stacked.shape[1])
        ]

    def majority(stacked: np.ndarray) -> np.ndarray:
        votes = np.stack([(stacked == label).sum(0) for label in range(spec.num_classes)])
        ties = rng.random(votes.shape) * 0.5  # a random label among the most voted
        return (votes + ties).argmax(0)

    run_scenario("collude-random-2", args.collusion_trials, colluders(2, pick_random))
    run_scenario("collude-majority-3", args.collusion_trials, colluders(3, majority))

    def independent(trial: int) -> tuple[np.ndarray, set[int]]:
        other = train_plaintext(replace(config, seed=1000 + trial), splits=splits).model
        return answers(other, queries.images), set()

    run_scenario("independent", min(args.trials, 5), independent)

    stealth = detectability(
        models={"unmarked": model, "copy": copies[0]},
        queries=queries.images,
        real=splits.test.images,
        reference=splits.aux.images,
    )
    print("detectability", json.dumps(stealth, indent=1))

    checks = {
        # on the test images that no query mixes: embedding holds the other half in place
        "accuracy": max(drops_unseen) <= TARGETS["accuracy_drop_pp_max"],
        "answers": len(queries) <= TARGETS["answers_max"],
        "answers_alone": all(
            scenarios[s]["traced"] >= TARGETS["answers_alone_traced_min"] for s in ATTACKS
        ),
        "distill": scenarios["distill"]["traced"] >= TARGETS["distill_traced_min"],
        "collusion": all(
            scenarios[s]["traced"] >= TARGETS["collusion_traced_min"]
            for s in ("collude-random-2", "collude-majority-3")
        ),
        "innocents": all(
            s["innocents_accused"] <= TARGETS["innocents_max"] for s in scenarios.values()
        ),
        "independent_accuses_nobody": scenarios["independent"]["innocents_accused"] == 0,
    }
    result = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "dataset": args.dataset,
        "preset": spec.preset,
        "queries": len(queries),
        "embed": asdict(key.embed),
        "code": {
            "length": key.length,
            "collusion_size": key.code.collusion_size,
            "epsilon": key.code.epsilon,
        },
        "customers": args.customers,
        "unmarked_test_accuracy": unmarked,
        "copies": {
            "accuracy_drop_pp": summary(drops),
            "accuracy_drop_pp_on_unseen_half": summary(drops_unseen),
            "answers_as_codeword": summary(right),
            "embed_seconds": summary(seconds),
        },
        "scenarios": scenarios,
        "detectability": stealth,
        "targets": TARGETS,
        "met": checks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}; targets met: {checks}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
