"""Verification: is a suspect model ours, and which registered customers does it trace to?"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from securemark_mpc.fingerprint.align import align
from securemark_mpc.fingerprint.extract import extract
from securemark_mpc.fingerprint.guide import CarrierGuide
from securemark_mpc.fingerprint.key import FingerprintKey
from securemark_mpc.fingerprint.trace import TraceReport, soft_decisions, trace


def verify_model(
    *,
    model: nn.Module,
    key: FingerprintKey,
    names: list[str],
    codewords: np.ndarray,
    reference: nn.Sequential | None = None,
    images: torch.Tensor | None = None,
    guide: CarrierGuide | None = None,
) -> TraceReport:
    """Align the suspect with the owner's reference, extract its bits, trace them.

    With ``reference`` (the unmarked model) and ``images`` (the owner's own, never the
    private training images), the suspect is first expressed in the reference's units
    (:mod:`.align`), which undoes permuted, rescaled and dummy units; with ``guide``
    (the key and the subspace the marks live in) the carrier's units are paired and
    cleaned with the owner's knowledge too (:mod:`.guide`). The report says what was
    undone. Scores use soft decisions, confidence tanh(|z| / τ) with τ the
    embedding margin: a bit that an attack pushed near zero weighs little. The
    confidences depend on the suspect alone, never on a customer's codeword, so trace's
    bound on accusing an innocent customer stays rigorous. The 'ours' test uses the
    hard bits.
    """
    alignment = None
    if reference is not None and images is not None:
        aligned = align(suspect=model, reference=reference, images=images, guide=guide)
        model, alignment = aligned.model, aligned.to_json()
    bits, projections = extract(model=model, key=key)
    _, confidence = soft_decisions(projections=projections, scale=key.embed.margin)
    report = trace(
        names=names,
        codewords=codewords,
        suspect_bits=bits,
        biases=key.bias_array(),
        epsilon=key.code.epsilon,
        confidence=confidence,
    )
    return dataclasses.replace(report, alignment=alignment)
