"""What the owner knows about its carrier, used to pair and clean a suspect's carrier units.

Alignment (:mod:`.align`) pairs a suspect's units with the reference's by what
identifies them: their response on the owner's images and their incoming and outgoing
weights. A thief who has read this code can erase most of that: the dormant-direction
attacks rewrite every weight the data never excites (the unused part of a unit's
incoming weights, and nearly all of its outgoing weights, since 256 hidden units span
only a few dozen directions on data). What is left is each unit's response on data,
and the mark itself moves that response, so among the carrier's many units the
assignment becomes ambiguous (measured on digits: about half of the 256 head units
paired correctly after permute, dummy and dormant-project; a fifth after
dormant-reinit).

The owner knows two more things, both in this guide:
- **Where the mark can be.** Embedding moves each carrier row only within the
  subspace E of its inputs that the owner's data excites (``embed.mark_subspace``);
  outside E a copy's rows are the unmarked model's. So a suspect row's part outside E
  is explained by the reference row's (least squares, a coefficient k >= 0) and the
  rest is dropped (``restore``): an untouched row (even rescaled) comes back exactly;
  junk a thief wrote there (``dormant-reinit``) or zeros (``dormant-project``) no
  longer dilute the reading.
- **The projection X of its key.** Under the right pairing the carrier reads with
  large margins |z|; under a wrong one z is noise. So the carrier layer's assignment
  alternates two steps (``pair``): read z under the current pairing and weigh each bit
  by s_i = tanh(z_i / τ), then re-solve the assignment on the similarity plus
  GUIDE_WEIGHT times the gain that putting (restored) suspect unit u at position r
  adds to Σ_i s_i z_i, which is linear in the pairing, so ``linear_sum_assignment``
  solves each step exactly.

Why this cannot frame anyone: the guide reads X, E and the unmarked model only, never a
codeword or the Tardos biases. An innocent customer's codeword is drawn independently
of all three and of the suspect, so trace's Chernoff bound, which conditions on the
suspect's bits and confidences, still holds; and flipping the sign of a row of X flips
that bit and changes nothing else, so an unrelated model's bits stay fair coins
('is it ours').
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from securemark_mpc.fingerprint.embed import mark_subspace
from securemark_mpc.fingerprint.key import FingerprintKey, projection_matrix
from securemark_mpc.models import ModelSpec

GUIDE_WEIGHT = 0.5  # gain of a correct pair ≈ 1.4 on digits; more overrides the similarity
GUIDE_CANDIDATES = 20  # a position may take only its most similar suspect units
GUIDE_ROUNDS = 30  # alternations; it settles in a handful
TINY = 1e-300
INTACT_COSINE = 0.99  # a row's part outside E still the reference's, up to scale


@dataclass(frozen=True)
class CarrierGuide:
    """The owner's key and the subspace E its marks live in (``embed.mark_subspace``)."""

    key: FingerprintKey
    excited: torch.Tensor  # projector onto E, (inputs, inputs)

    @classmethod
    def of(
        cls, *, key: FingerprintKey, model: nn.Sequential, spec: ModelSpec, features: torch.Tensor
    ) -> CarrierGuide:
        """The guide for copies of the unmarked ``model``, E from the owner's cut-layer features."""
        return cls(
            key=key, excited=mark_subspace(model=model, spec=spec, key=key, features=features)
        )

    @property
    def layer(self) -> str:
        """The name of the carrier's module in the model (e.g. "9" for "9.weight")."""
        return self.key.carrier.rpartition(".")[0]

    def _parts(
        self, rows: torch.Tensor, reference: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Suspect rows' part in E, the reference rows' part outside E, and k (positions × units)."""
        excited = self.excited.double()
        rows, reference = rows.double().flatten(1), reference.double().flatten(1)
        inside = rows @ excited
        dormant = reference - reference @ excited
        k = (rows - inside) @ dormant.T / dormant.pow(2).sum(1).clamp_min(TINY)
        return inside, dormant, k.T.clamp_min(0.0)

    def similarity(self, rows: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
        """Cosine of each reference row with each suspect row restored at its position
        (positions × units): what identifies a unit once a thief rewrote its dormant part."""
        inside, dormant, k = self._parts(rows, reference)
        reference = reference.double().flatten(1)
        energy = dormant.pow(2).sum(1, keepdim=True)
        dot = (reference @ self.excited.double()) @ inside.T + k * energy
        norm = (inside.pow(2).sum(1).unsqueeze(0) + k.pow(2) * energy).sqrt()
        return (
            dot / norm.clamp_min(TINY) / reference.norm(dim=1, keepdim=True).clamp_min(TINY)
        ).numpy()

    def dormant_scales(
        self, rows: torch.Tensor, reference: torch.Tensor, *, fallback: torch.Tensor
    ) -> torch.Tensor:
        """Each paired row's positive scale against the reference's, read outside E.

        Both marks move a carrier unit's magnitude (the weight mark its response, the
        behavioural tilt its outgoing weights), but neither touches a row's part outside
        E, so there an untouched row has scale exactly 1 and a thief's rescaling shows
        as it is. Where a thief rewrote that part (its cosine with the reference's below
        INTACT_COSINE), ``fallback`` stays.
        """
        _, dormant, k = self._parts(rows, reference)
        rows = rows.double().flatten(1)
        outside = rows - rows @ self.excited.double()
        norms = outside.norm(dim=1) * dormant.norm(dim=1)
        cosine = (outside * dormant).sum(1) / norms.clamp_min(TINY)
        return torch.where(cosine >= INTACT_COSINE, k.diagonal(), fallback.double())

    def restore(self, rows: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Row r of the suspect (already at reference position r), its part outside E
        replaced by its least-squares multiple (>= 0) of reference row r's."""
        inside, dormant, k = self._parts(rows, reference)
        restored = inside + k.diagonal().unsqueeze(1) * dormant
        return restored.reshape(rows.shape).to(rows.dtype)

    def pair(
        self,
        *,
        similarity: np.ndarray,
        rows: torch.Tensor,
        reference: torch.Tensor,
        chosen: torch.Tensor,
    ) -> torch.Tensor:
        """The suspect unit for every carrier position, starting from ``chosen``.

        ``similarity`` is (reference units, suspect units); ``rows`` are the suspect's
        incoming weights in the reference's input units, one row per suspect unit, and
        ``reference`` the reference's.
        """
        positions = similarity.shape[0]
        if (positions, math.prod(rows.shape[1:])) != (
            self.key.carrier_shape[0],
            math.prod(self.key.carrier_shape[1:]),
        ):
            return chosen  # not the key's carrier: extraction will say so
        x = projection_matrix(self.key).double().reshape(self.key.length, positions, -1)
        inside, dormant, k = self._parts(rows, reference)
        # the key's gain may only choose among each position's most similar units: over
        # all units the assignment would find wrong pairings that read with large |z|
        candidates = min(GUIDE_CANDIDATES, similarity.shape[1])
        top = np.argpartition(-similarity, candidates - 1, axis=1)[:, :candidates]
        allowed = np.full_like(similarity, -1e6)
        np.put_along_axis(allowed, top, 0.0, axis=1)
        allowed[np.arange(positions), chosen.numpy()] = 0.0  # the start stays feasible
        # |restored row (r, u)|: its two parts are orthogonal
        norm = inside.pow(2).sum(1).unsqueeze(0) + k.pow(2) * dormant.pow(2).sum(1, keepdim=True)
        norm = norm.sqrt().clamp_min(TINY)
        excited = self.excited.double()
        normaliser = positions**0.5  # as in extract.project
        for _ in range(GUIDE_ROUNDS):
            picked_rows = inside[chosen] + k[torch.arange(positions), chosen].unsqueeze(1) * dormant
            picked_rows = picked_rows / picked_rows.norm(dim=1, keepdim=True).clamp_min(TINY)
            z = torch.einsum("mpc,pc->m", x, picked_rows) / normaliser
            weights = torch.tanh(z / self.key.embed.margin)
            pull = torch.einsum("m,mpc->pc", weights, x) / normaliser  # (positions, inputs)
            along_dormant = ((pull - pull @ excited) * dormant).sum(1, keepdim=True)
            gain = ((pull @ excited) @ inside.T + k * along_dormant) / norm
            score = similarity + allowed + GUIDE_WEIGHT * gain.numpy()
            order, picked = linear_sum_assignment(-score)
            new = torch.as_tensor(picked[np.argsort(order)])
            if torch.equal(new, chosen):
                break
            chosen = new
        return chosen
