"""The keyed query set: boundary mixups of the owner's own images.

Query q mixes two of the owner's images of different classes a_q and b_q, drawn from
the key's query seed, at the point of the segment where the unmarked model's logits
for a_q and b_q are equal: x = (1 - λ)·x_a + λ·x_b. There the model hesitates between
exactly two labels, so the smallest change of the logits decides its answer (a
"boundary example", cf. IPGuard and Lukas et al., ICLR 2021): a copy's tilt
(:mod:`securemark_mpc.blackbox.tilt`) shows in which of the two it answers. Queries
sit between real images, so a detector of distance to real data lets them through;
but every model hesitates on them, so a detector of the served model's confidence
flags most of them (:func:`detectability` measures both).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from securemark_mpc.config import ConfigError

BISECTION_STEPS = 30
OVERSAMPLE = 4  # candidate pairs drawn per query; some have no clean a/b boundary


@dataclass(frozen=True)
class QuerySet:
    images: torch.Tensor  # (N, C, H, W) float32
    first: torch.Tensor  # (N,) int64: a_q, the answer to a positive gap
    second: torch.Tensor  # (N,) int64: b_q, the answer to a negative gap

    def __len__(self) -> int:
        return len(self.first)


def base_indices(count: int, *, seed: int) -> torch.Tensor:
    """The keyed half of the owner's ``count`` images that queries are mixed from.

    Embedding also keeps each copy's logits on these images; the other half is never
    touched, so test accuracy measured on it says what a mark costs on unseen images.
    """
    chosen = np.random.default_rng([seed, 1]).permutation(count)[: max(2, count // 2)]
    return torch.from_numpy(np.sort(chosen))


def _logit_gap(
    model: nn.Module, start: torch.Tensor, end: torch.Tensor, lam: torch.Tensor, a, b
) -> tuple[torch.Tensor, torch.Tensor]:
    """logit_a - logit_b at (1 - λ)·start + λ·end, and the top-1 label there."""
    with torch.no_grad():
        logits = model(start + lam.view(-1, 1, 1, 1) * (end - start))
    rows = torch.arange(len(a))
    return logits[rows, a] - logits[rows, b], logits.argmax(dim=1)


def make_queries(
    *, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, count: int, seed: int
) -> QuerySet:
    """``count`` keyed boundary mixups of ``images`` (the owner's own) under the unmarked ``model``.

    Deterministic given the seed and the model. A pair is kept only if the model gets
    both ends right and its top-1 label at the boundary is a or b.
    """
    if count < 1:
        raise ConfigError(f"the query set needs at least one query, got {count}")
    model.eval()
    rng = np.random.default_rng(seed)
    draws = OVERSAMPLE * count
    i, j = rng.integers(len(labels), size=draws), rng.integers(len(labels), size=draws)
    keep = (labels[i] != labels[j]).numpy()
    i, j = torch.from_numpy(i[keep]), torch.from_numpy(j[keep])
    a, b, start, end = labels[i], labels[j], images[i], images[j]
    low, high = torch.zeros(len(i)), torch.ones(len(i))
    at_start, _ = _logit_gap(model, start, end, low, a, b)
    at_end, _ = _logit_gap(model, start, end, high, a, b)
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        gap, _ = _logit_gap(model, start, end, middle, a, b)
        low, high = torch.where(gap > 0, middle, low), torch.where(gap > 0, high, middle)
    lam = (low + high) / 2
    _, top = _logit_gap(model, start, end, lam, a, b)
    valid = (at_start > 0) & (at_end < 0) & ((top == a) | (top == b))
    chosen = torch.nonzero(valid).squeeze(1)[:count]
    if len(chosen) < count:
        raise ConfigError(
            f"only {len(chosen)} of the owner's image pairs give a clean two-label boundary; "
            f"{count} queries need more (or better classified) images"
        )
    mixed = start[chosen] + lam[chosen].view(-1, 1, 1, 1) * (end[chosen] - start[chosen])
    return QuerySet(images=mixed.float().contiguous(), first=a[chosen], second=b[chosen])


def answers(model: nn.Module, images: torch.Tensor, *, batch_size: int = 512) -> np.ndarray:
    """The model's top-1 label on each image, as a served model would answer."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(part).argmax(dim=1) for part in images.split(batch_size)]).numpy()


def _nearest_distance(points: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return torch.cdist(points.flatten(1), reference.flatten(1)).min(dim=1).values


def _flag_rate(query_scores: torch.Tensor, real_scores: torch.Tensor, *, high: bool) -> dict:
    """A detector that flags 5% of real inputs: how many queries it flags."""
    threshold = torch.quantile(real_scores, 0.95 if high else 0.05)
    flagged = query_scores > threshold if high else query_scores < threshold
    return {
        "queries_median": float(query_scores.median()),
        "real_median": float(real_scores.median()),
        "queries_flagged_at_5pct_false_alarms": float(flagged.float().mean()),
    }


def detectability(
    *,
    models: dict[str, nn.Module],
    queries: torch.Tensor,
    real: torch.Tensor,
    reference: torch.Tensor,
) -> dict:
    """How simple detectors would flag the queries, next to real images of the same task.

    Confidence: the max softmax of each model in ``models`` (e.g. the unmarked model and
    a served copy), flagged when low. Distance: L2 distance to the nearest image of
    ``reference`` (data a detector holds, e.g. the attacker's own), flagged when large.
    Each detector's threshold lets 5% of ``real`` through as false alarms.
    """
    report = {}
    for name, model in models.items():
        model.eval()
        with torch.no_grad():
            confidence = [torch.softmax(model(x), dim=1).max(dim=1).values for x in (queries, real)]
        report[f"confidence_{name}"] = _flag_rate(*confidence, high=False)
    report["nearest_distance"] = _flag_rate(
        _nearest_distance(queries, reference), _nearest_distance(real, reference), high=True
    )
    return report
