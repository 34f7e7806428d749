"""Verification: is a suspect model ours, and which registered customers does it trace to?"""

from __future__ import annotations

import numpy as np
from torch import nn

from securemark_mpc.fingerprint.extract import extract
from securemark_mpc.fingerprint.key import FingerprintKey
from securemark_mpc.fingerprint.trace import TraceReport, soft_decisions, trace


def verify_model(
    *, model: nn.Module, key: FingerprintKey, names: list[str], codewords: np.ndarray
) -> TraceReport:
    """Extract the suspect's bits and trace them against the registered codewords.

    Scores use soft decisions, confidence tanh(|z| / τ) with τ the embedding margin: a
    bit that an attack pushed near zero weighs little. The confidences depend on the
    suspect alone, never on a customer's codeword, so trace's bound on accusing an
    innocent customer stays rigorous. The 'ours' test uses the hard bits.
    """
    bits, projections = extract(model=model, key=key)
    _, confidence = soft_decisions(projections=projections, scale=key.embed.margin)
    return trace(
        names=names,
        codewords=codewords,
        suspect_bits=bits,
        biases=key.bias_array(),
        epsilon=key.code.epsilon,
        confidence=confidence,
    )
