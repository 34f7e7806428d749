"""Tracing from answers: the suspect's top-1 labels on the keyed queries, read as code bits.

Query q's first label counts +1, its second −1, any other answer is erased. The tilt's
least-squares read-out (:func:`securemark_mpc.blackbox.tilt.read_positions`) turns
them into one estimate ŝ_k per code position: bit ŝ_k > 0, confidence
tanh(|ŝ_k| / median |ŝ|), so that positions the answers barely decide weigh little
(soft decisions; distilled, fine-tuned or colluder-mixed answers give many of those).
Bits and confidences depend on the suspect's answers alone, never on a customer's
codeword, so :func:`securemark_mpc.fingerprint.trace.trace` keeps both of its bounds:
an innocent customer's codeword is independent of them (Chernoff bound on the soft
score, union over the registered customers), and a model trained without our key
agrees with any codeword on each position with probability 1/2 (binomial 'ours' test),
because the biases are symmetric about 1/2 and secret.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from securemark_mpc.blackbox.key import BlackboxKey
from securemark_mpc.blackbox.tilt import Tilt, answer_values, read_positions
from securemark_mpc.config import ConfigError
from securemark_mpc.fingerprint.trace import BOUND, TraceReport, soft_decisions, trace


class AnswersError(ConfigError):
    """Answers that are malformed, of the wrong length, or not labels of this task (exit 2)."""


def check_labels(labels: object, *, count: int, num_classes: int, source: str) -> np.ndarray:
    """Validate untrusted answers: a list of ``count`` integers in [0, num_classes)."""
    if not isinstance(labels, list):
        raise AnswersError(f'{source}: "labels" must be a list, got {type(labels).__name__}')
    if len(labels) != count:
        raise AnswersError(
            f"{source}: {len(labels)} labels, but the query set has {count} queries "
            "(one label per query, in query order)"
        )
    for position, label in enumerate(labels):
        # bool is an int subclass in Python, and 3.0 is not an integer label
        if not isinstance(label, int) or isinstance(label, bool):
            raise AnswersError(
                f"{source}: label {position} is {label!r}, not an integer class label"
            )
        if not 0 <= label < num_classes:
            raise AnswersError(
                f"{source}: label {position} is {label}, outside the {num_classes} classes "
                f"0..{num_classes - 1}"
            )
    return np.asarray(labels, dtype=np.int64)


def read_answers(path: Path, *, count: int, num_classes: int) -> np.ndarray:
    """Labels from an answers file ``{"labels": [...]}``, validated (AnswersError otherwise)."""
    try:
        payload = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AnswersError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise AnswersError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(payload, dict) or "labels" not in payload:
        raise AnswersError(f'{path}: expected a JSON object {{"labels": [...]}}')
    return check_labels(payload["labels"], count=count, num_classes=num_classes, source=str(path))


def read_bits(
    *, key: BlackboxKey, tilt: Tilt, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Code bits, their confidences in [0, 1], and the mask of answers that used a query's labels."""
    values = answer_values(np.asarray(labels), np.asarray(key.first), np.asarray(key.second))
    estimate = read_positions(tilt, values)
    typical = float(np.median(np.abs(estimate)))
    bits, confidence = soft_decisions(projections=estimate, scale=typical if typical > 0 else 1.0)
    return bits, confidence, values != 0


def trace_answers(
    *, key: BlackboxKey, tilt: Tilt, labels: np.ndarray, names: list[str], codewords: np.ndarray
) -> TraceReport:
    """Trace validated answers against the customers' behavioural codewords (n × m)."""
    bits, confidence, answered = read_bits(key=key, tilt=tilt, labels=labels)
    if len(names) and not answered.any():  # no answer uses either label: nothing of ours to read
        scores = dict.fromkeys(names, 0.0)
        return TraceReport(
            False, 1.0, 0, key.length, [], scores, float("inf"), key.code.epsilon, BOUND
        )
    return trace(
        names=names,
        codewords=codewords,
        suspect_bits=bits,
        biases=key.bias_array(),
        epsilon=key.code.epsilon,
        confidence=confidence,
    )
