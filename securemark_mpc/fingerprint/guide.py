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

Only where it is needed: on some models the mark moves each carrier unit's response
less than units differ from each other (digits MPC copy: a marked unit's response
correlates 0.95 with its unmarked unit's, 0.82 with the next most similar), and there
the response alone pairs best; rewritten rows and the key's gain only blur it (permute
+ dummy + dormant-reinit 0.99: 95% of units paired right on the response alone, 85%
with the rows, 55% after the key's re-pairing; with fine-tune 10 after it: 8 of 8
traced against 1 of 4). On others the mark turns responses past that (the digits
plaintext twin: 0.82 against 0.84; 140 of 256 units closer to another unit), and the
rows and the key's gain are what pair them (same chain without fine-tuning, 3 trials:
BER 0.05-0.08 with them, 0.27-0.31 on the response alone). Which holds is measured
once per model and key (``responses_identify``), on a throw-away copy marked with a
codeword that no customer holds.

Why this cannot frame anyone: the guide reads X, E, the unmarked model and the code's
biases (to draw that throw-away codeword), never a customer's codeword. An innocent
customer's codeword is drawn independently of all of these and of the suspect, so
trace's Chernoff bound, which conditions on the suspect's bits and confidences,
still holds; and flipping the sign of a row of X flips that bit and changes nothing
else, so an unrelated model's bits stay fair coins ('is it ours').
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from securemark_mpc.fingerprint.codes import sample_codeword
from securemark_mpc.fingerprint.embed import (
    EmbeddingError,
    embed,
    mark_subspace,
    split_at_carrier,
)
from securemark_mpc.fingerprint.key import FingerprintKey, projection_matrix
from securemark_mpc.models import ModelSpec, public_part

# Share of a throw-away copy's carrier units whose response is closest to their own
# unmarked unit's, from which units pair on their response alone (digits MPC models
# 0.98-1.0, the digits plaintext twin 0.47).
RESPONSES_IDENTIFY = 0.9
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
    responses_identify: bool = False  # pair carrier units on their response alone

    @classmethod
    def of(
        cls,
        *,
        key: FingerprintKey,
        model: nn.Sequential,
        spec: ModelSpec,
        features: torch.Tensor,
        labels: torch.Tensor,
        responses_identify: bool | None = None,
    ) -> CarrierGuide:
        """The guide for copies of the unmarked ``model``, from the owner's cut-layer
        features; ``responses_identify`` is measured unless given (a cached measurement)."""
        if responses_identify is None:
            responses_identify = _responses_identify(
                key=key, model=model, spec=spec, features=features, labels=labels
            )
        return cls(
            key=key,
            excited=mark_subspace(model=model, spec=spec, key=key, features=features),
            responses_identify=responses_identify,
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


def _responses_identify(
    *,
    key: FingerprintKey,
    model: nn.Sequential,
    spec: ModelSpec,
    features: torch.Tensor,
    labels: torch.Tensor,
) -> bool:
    """Whether a marked copy's carrier units still answer most like their own unmarked units.

    Marks a throw-away copy with a codeword drawn from a stream no customer's is drawn
    from (theirs are seeded by (codeword seed, index)), and compares the carrier's
    pre-activations on the owner's features.
    """
    rng = np.random.default_rng([key.projection_seed, key.codeword_seed])
    codeword = sample_codeword(biases=key.bias_array(), rng=rng)
    try:
        marked = embed(
            model=model, spec=spec, key=key, codeword=codeword, features=features, labels=labels
        )
    except EmbeddingError:  # nothing to measure: keep the key's pairing
        return False
    front, ours, _ = split_at_carrier(public_part(model, spec), key)
    _, theirs, _ = split_at_carrier(public_part(marked, spec), key)
    with torch.no_grad():
        inputs = front.eval()(features.float())
        ours, theirs = ours(inputs), theirs(inputs)
    return share_closest_to_own(ours=ours, theirs=theirs) >= RESPONSES_IDENTIFY


def share_closest_to_own(*, ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Share of units (columns) whose response in ``theirs`` correlates more with the
    same unit's in ``ours`` than with any other unit's (rows: samples)."""
    ours = (ours - ours.mean(0)) / ours.std(0).clamp_min(1e-12)
    theirs = (theirs - theirs.mean(0)) / theirs.std(0).clamp_min(1e-12)
    closest = (theirs.T @ ours).argmax(1)
    return float((closest == torch.arange(len(closest))).float().mean())
