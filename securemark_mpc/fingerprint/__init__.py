"""Fingerprints: Tardos codes, keys, embedding, extraction and traitor tracing."""

from securemark_mpc.fingerprint.codes import CodeConfig, sample_biases, sample_codeword
from securemark_mpc.fingerprint.trace import (
    Accusation,
    TraceReport,
    soft_decisions,
    symmetric_scores,
    trace,
)

__all__ = [
    "Accusation",
    "CodeConfig",
    "TraceReport",
    "sample_biases",
    "sample_codeword",
    "soft_decisions",
    "symmetric_scores",
    "trace",
]
