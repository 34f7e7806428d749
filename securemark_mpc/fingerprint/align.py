"""Alignment: undo function-preserving transformations of a suspect before reading its mark.

A thief holds the whole decrypted model, so without changing what it computes it can
permute the units of any hidden layer (conv channels, the cut units, the head's hidden
units, with the matching inputs of the next layer), rescale a unit by a > 0 across a
ReLU, and add dummy units whose contributions vanish or cancel (Yan et al., USENIX
Security 2023, "Rethinking white-box watermarks on deep learning models under neural
structural obfuscation"). Any of these scrambles the carrier's layout.

The owner undoes them layer by layer against its own unmarked reference model, on its
own images (test split, never the private training images):
- match each reference unit to one suspect unit by the correlation of their
  pre-activations (``scipy.optimize.linear_sum_assignment``; rectangular when the
  suspect is wider), and undo its positive scale by least squares;
- fold suspect units that copy a matched unit (a split unit) into it, and drop every
  other extra unit (dummies: they never fire, never matter, or cancel out);
- carry the matching into the next layer's inputs (through pooling and flattening).
The result is a model of the reference's own shapes that computes what the suspect
computes on the reference's units; the mark is read from it.

The carrier layer gets more care, as it is what a thief who has read this code
attacks: its incoming weights are refitted on the images (:func:`_refit`), and a
guide (:mod:`.guide`: the key's projections and where marks live) cleans its units
and, on models where the mark blurs which unit is which, pairs them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from securemark_mpc.models import ModelFileError

WEIGHTED = (nn.Conv2d, nn.Linear)
COPY_CORRELATION = 1 - 1e-4  # a suspect unit this correlated with a matched one is a copy of it
RESCALE_TOLERANCE = 0.05  # |scale - 1| above this counts as rescaled (a mark alone moves it ~1%)
SILENT = 1e-12  # units whose activations never leave zero: no scale to estimate
ALIGNMENT_IMAGES = 512  # of the owner's test images: enough to tell every unit apart
RIDGE = 1e-2  # refit: directions holding less than this share of the mean energy keep the match
OUTGOING_INTACT = 0.9  # matched outgoing cosine: 0.99 after fine-tuning, ~0.5 after dormant attacks
IDENTITY_PRIOR = 1.0  # similarity bonus for a unit's own position (similarities sum 3 cosines)
# Share of units paired in place without the prior from which the layout counts as
# kept (a random permutation of 256 units keeps about one).
LAYOUT_KEPT = 0.05


class Guide(Protocol):
    """Pairs and cleans one layer's units with what the owner knows (see :mod:`.guide`)."""

    @property
    def layer(self) -> str: ...

    @property
    def responses_identify(self) -> bool: ...

    def pair(
        self,
        *,
        similarity: np.ndarray,
        rows: torch.Tensor,
        reference: torch.Tensor,
        chosen: torch.Tensor,
    ) -> torch.Tensor: ...

    def similarity(self, rows: torch.Tensor, reference: torch.Tensor) -> np.ndarray: ...

    def restore(self, rows: torch.Tensor, reference: torch.Tensor) -> torch.Tensor: ...


class AlignmentError(ModelFileError):
    """The suspect's layers do not correspond to the reference's (exit 2 on the command line)."""


@dataclass(frozen=True)
class LayerAlignment:
    """What alignment undid in one layer's output units."""

    layer: str
    units: int  # in the reference
    suspect_units: int
    permuted: int  # reference units matched to a suspect unit at another position
    rescaled: int  # matched with a scale other than 1
    folded: int  # extra suspect units that copy a matched unit (split units), merged back
    dropped: int  # extra suspect units that match nothing (dummies), ignored

    def to_json(self) -> dict[str, int | str]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Alignment:
    model: nn.Sequential  # the suspect in the reference's shapes and unit order
    layers: tuple[LayerAlignment, ...]

    @property
    def changed(self) -> bool:
        return any(
            layer.permuted or layer.rescaled or layer.folded or layer.dropped
            for layer in self.layers
        )

    def to_json(self) -> dict[str, object]:
        return {"changed": self.changed, "layers": [layer.to_json() for layer in self.layers]}


def _units(tensor: torch.Tensor) -> torch.Tensor:
    """Activations as (samples × positions, units): conv channels or features are the units."""
    if tensor.ndim == 4:
        return tensor.permute(0, 2, 3, 1).reshape(-1, tensor.shape[1])
    return tensor.reshape(tensor.shape[0], -1)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Pearson correlation of every column of a with every column of b (0 for constant ones)."""
    a = a.double() - a.double().mean(0)
    b = b.double() - b.double().mean(0)
    a = a / a.norm(dim=0).clamp_min(1e-300)
    b = b / b.norm(dim=0).clamp_min(1e-300)
    return (a.T @ b).numpy()


def _scales(suspect: torch.Tensor, reference: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Least-squares a with suspect ≈ a · reference per unit; `fallback` where reference is silent."""
    energy = (reference.double() ** 2).sum(0)
    scale = (suspect.double() * reference.double()).sum(0) / energy.clamp_min(SILENT)
    return torch.where(energy > SILENT, scale, fallback.double())


@dataclass
class _Units:
    """How the reference's units of one activation tensor sit in the suspect's.

    Suspect unit j carries ``weight[j, i]`` times reference unit i (a scaled selection:
    at most one nonzero per row), so a consumer's weights W on the suspect's units act as
    W @ weight on the reference's.
    """

    weight: torch.Tensor  # (suspect units, reference units), float64

    @classmethod
    def identity(cls, units: int) -> _Units:
        return cls(torch.eye(units, dtype=torch.float64))

    def flattened(self, positions: int) -> _Units:
        """Channels → the channel-major features nn.Flatten makes of them."""
        return _Units(torch.kron(self.weight, torch.eye(positions, dtype=torch.float64)))

    def rescaled(self, suspect: torch.Tensor, reference: torch.Tensor) -> _Units:
        """Re-estimate each scale after an elementwise layer (a ReLU keeps it, x² squares it)."""
        rows = self.weight.abs().sum(1) > 0
        owner = self.weight.abs().argmax(1)
        picked = suspect[:, rows]
        target = reference[:, owner[rows]]
        new = self.weight.clone()
        new[rows, owner[rows]] = _scales(picked, target, self.weight[rows, owner[rows]])
        return _Units(new)


def _outgoing(consumer: nn.Module, units: int) -> torch.Tensor:
    """Each unit's outgoing weights into the output layer, one row per unit."""
    weight = consumer.weight.detach().double()
    return weight.reshape(weight.shape[0], units, -1).transpose(0, 1).reshape(units, -1)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-300)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return (a @ b.T).numpy()


def _intact(outgoing: tuple[torch.Tensor, torch.Tensor]) -> bool:
    """Whether outgoing weights still tell units apart: every reference unit finds a
    suspect unit sending nearly the same weights on. A thief who kept the output layer's
    response on its data may have rewritten them (``dormant-reinit``); then they are
    noise, and would only blur the match."""
    cosine = _cosine(*outgoing)
    rows, chosen = linear_sum_assignment(-cosine)
    return bool(cosine[rows, chosen].mean() >= OUTGOING_INTACT)


def _match_outputs(
    name: str,
    suspect_out: torch.Tensor,
    reference_out: torch.Tensor,
    incoming: tuple[torch.Tensor, torch.Tensor],
    outgoing: tuple[torch.Tensor, torch.Tensor] | None,
    guide: Guide | None = None,
) -> tuple[torch.Tensor, _Units, LayerAlignment]:
    """One suspect unit per reference unit, its scale, and the suspect's copies folded in.

    Units are matched on the correlation of their pre-activations plus the cosines of
    their incoming weights (in the reference's input units; with a ``guide``, of the
    suspect's rows restored at each position, and only where the guide found that
    responses alone do not identify the carrier's units: ``responses_identify``) and,
    for the units that feed the output layer (whose classes keep their order), of
    their outgoing weights while these still tell units apart (:func:`_intact`).
    A mark moves a unit's response, so the assignment also prefers a unit's own
    position (IDENTITY_PRIOR): a suspect with the reference's layout keeps it unless
    another unit matches clearly better. Only while the layout looks kept (LAYOUT_KEPT
    of the units pair in place without the preference): after a thief's permutation it
    would pull the ambiguous units onto positions that mean nothing (digits MPC copy,
    permute + dormant-reinit 0.99 + fine-tune 10, 4 trials: BER 0.31, 2 traced, with
    it; 0.22, 4 traced, without). This looks at the suspect alone, never at a
    codeword, so the false-accusation bound is untouched. Where responses do not
    identify them, a ``guide`` then re-pairs the carrier's units, reading the key's
    projections (:mod:`.guide`).
    The scale: for the carrier's units (with a ``guide``), from each row's part outside
    the mark subspace, which no mark moves (:meth:`.guide.CarrierGuide.dormant_scales`);
    for the other units feeding the output layer, from the outgoing weights (a unit
    scaled by a sends 1/a of its weights on); elsewhere the activations' ratio.
    Returns the chosen suspect index per reference unit, the unit map for the next
    layer's inputs, and the report line.
    """
    s, r = _units(suspect_out), _units(reference_out)
    n_s, n_r = s.shape[1], r.shape[1]
    if n_s < n_r:
        raise AlignmentError(f"layer {name}: the suspect has {n_s} units, the reference {n_r}")
    guided = guide is not None and not guide.responses_identify
    correlation = _correlation(r, s)
    if guide is None:
        correlation = correlation + _cosine(*incoming)
    elif guided:
        correlation = correlation + guide.similarity(incoming[1], incoming[0])
    if outgoing is not None and _intact(outgoing):
        correlation = correlation + _cosine(*outgoing)
    rows, chosen = linear_sum_assignment(-correlation)
    if (chosen[np.argsort(rows)][:n_r] == np.arange(n_r)).mean() >= LAYOUT_KEPT:
        correlation[np.arange(n_r), np.arange(n_r)] += IDENTITY_PRIOR
        rows, chosen = linear_sum_assignment(-correlation)
    chosen_t = torch.as_tensor(chosen[np.argsort(rows)])
    if guided:
        chosen_t = guide.pair(
            similarity=correlation, rows=incoming[1], reference=incoming[0], chosen=chosen_t
        )
    scale = _scales(s[:, chosen_t], r, torch.ones(n_r, dtype=torch.float64))
    if guide is not None:
        scale = guide.dormant_scales(incoming[1][chosen_t], incoming[0], fallback=scale)
    weight = torch.zeros(n_s, n_r, dtype=torch.float64)
    weight[chosen_t, torch.arange(n_r)] = scale
    extra = sorted(set(range(n_s)) - set(chosen_t.tolist()))
    folded = 0
    if extra:
        among = _correlation(s[:, extra], s[:, chosen_t])
        for row, unit in enumerate(extra):
            best = int(among[row].argmax())
            if among[row, best] >= COPY_CORRELATION:
                ratio = _scales(
                    s[:, [unit]], s[:, [int(chosen_t[best])]], torch.ones(1, dtype=torch.float64)
                )
                weight[unit, best] = float(ratio) * float(scale[best])
                folded += 1
    if outgoing is not None and guide is None:
        # each member's scale against its representative (a dead representative: none)
        relative = torch.where(scale.abs() > SILENT, weight / scale.clamp_min(SILENT), 0.0)
        sent = (relative.T @ outgoing[1]).norm(dim=1)
        scale = torch.where(sent > SILENT, outgoing[0].norm(dim=1) / sent.clamp_min(SILENT), scale)
        weight = relative * scale.unsqueeze(0)
    report = LayerAlignment(
        layer=name,
        units=n_r,
        suspect_units=n_s,
        permuted=int((chosen_t != torch.arange(n_r)).sum()),
        rescaled=int(((scale - 1).abs() > RESCALE_TOLERANCE).sum()),
        folded=folded,
        dropped=len(extra) - folded,
    )
    return chosen_t, _Units(weight), report


def _refit(
    weight: torch.Tensor, bias: torch.Tensor, inputs: torch.Tensor, outputs: torch.Tensor
) -> torch.Tensor:
    """A Linear layer's weights in the reference's input units, refitted on the images.

    Least squares of the suspect's own pre-activations on the reference's inputs, with a
    ridge toward the matched weights: along the directions the images excite, the
    suspect's response decides (whatever the thief did to the units feeding this layer,
    the response on data is what survives); along the dormant ones, which the images
    cannot tell apart, the matched weights stay. An untouched copy refits to itself.
    """
    x = inputs.double().reshape(len(inputs), -1)
    gram = x.T @ x
    ridge = RIDGE * gram.trace() / gram.shape[0] * torch.eye(gram.shape[0], dtype=torch.float64)
    target = (outputs.double() - bias).T @ x + weight @ ridge
    return torch.linalg.solve(gram + ridge, target.T).T


def _consume(module: nn.Module, inputs: _Units) -> tuple[torch.Tensor, torch.Tensor]:
    """The suspect layer's weight and bias acting on the reference's input units."""
    weight = module.weight.detach().double()
    if isinstance(module, nn.Conv2d):
        mixed = torch.einsum("oihw,ir->orhw", weight, inputs.weight)
    else:
        mixed = weight @ inputs.weight
    return mixed, module.bias.detach().double()


@torch.no_grad()
def align(
    *,
    suspect: nn.Sequential,
    reference: nn.Sequential,
    images: torch.Tensor,
    guide: Guide | None = None,
) -> Alignment:
    """Express ``suspect`` in ``reference``'s units, layer by layer, using ``images``.

    The last weighted layer's outputs (the classes) are kept in order; ``guide``
    re-pairs the units of the layer it names. Raises AlignmentError when the two
    models' layers differ in kind or the suspect's weights are not finite.
    """
    if not all(torch.isfinite(p).all() for p in suspect.parameters()):
        raise AlignmentError("the suspect has non-finite weights (NaN or infinity)")
    kinds = [type(m) for m in reference], [type(m) for m in suspect]
    if kinds[0] != kinds[1]:
        raise AlignmentError("the suspect's layers differ in kind from the reference's")
    aligned = copy.deepcopy(reference).eval()
    suspect, reference = suspect.eval(), reference.eval()
    weighted = [i for i, m in enumerate(reference) if isinstance(m, WEIGHTED)]
    x_s = x_r = images.float()
    units = _Units.identity(images.shape[1])
    layers = []
    for index, (s_module, r_module) in enumerate(zip(suspect, reference, strict=True)):
        y_s, y_r = s_module(x_s), r_module(x_r)
        if isinstance(r_module, WEIGHTED):
            weight, bias = _consume(s_module, units)
            guided = guide if guide is not None and guide.layer == str(index) else None
            if guided is not None and isinstance(r_module, nn.Linear):
                weight = _refit(weight, bias, x_r, y_s)
            if index == weighted[-1]:
                chosen = torch.arange(weight.shape[0])
                scale = torch.ones(len(chosen), dtype=torch.float64)
                units = _Units.identity(len(chosen))
            else:
                incoming = (r_module.weight.detach().double().flatten(1), weight.flatten(1))
                outgoing = (
                    (
                        _outgoing(reference[weighted[-1]], r_module.weight.shape[0]),
                        _outgoing(suspect[weighted[-1]], weight.shape[0]),
                    )
                    if index == weighted[-2]
                    else None
                )
                chosen, units, report = _match_outputs(
                    str(index),
                    y_s,
                    y_r,
                    incoming,
                    outgoing,
                    guided,
                )
                scale = units.weight[chosen, torch.arange(len(chosen))]
                layers.append(report)
            if guided is not None:
                weight = weight.clone()
                weight[chosen] = guided.restore(weight[chosen], r_module.weight.detach().double())
            divide = scale.clamp_min(SILENT).reshape(-1, *([1] * (weight.ndim - 1)))
            # a unit that is silent in both (e.g. pruned) stays zero, never NaN
            aligned[index].weight.copy_((weight[chosen] / divide).nan_to_num(0.0, 0.0, 0.0))
            aligned[index].bias.copy_((bias[chosen] / divide.flatten()).nan_to_num(0.0, 0.0, 0.0))
        elif isinstance(r_module, nn.Flatten):
            units = units.flattened(int(np.prod(x_r.shape[2:])))
        elif y_r.shape[1:2] == x_r.shape[1:2]:  # elementwise or pooling: same units
            units = units.rescaled(_units(y_s), _units(y_r))
        else:
            raise AlignmentError(f"layer {index} ({type(r_module).__name__}) cannot be aligned")
        x_s, x_r = y_s, y_r
    return Alignment(model=aligned, layers=tuple(layers))


def describe_alignment(alignment: dict | None) -> list[str]:
    """One line saying what alignment undid (nothing when the layout was untouched)."""
    if not alignment or not alignment["changed"]:
        return []
    parts = [
        f"layer {layer['layer']}: "
        + ", ".join(
            f"{layer[what]} {what}"
            for what in ("permuted", "rescaled", "folded", "dropped")
            if layer[what]
        )
        for layer in alignment["layers"]
        if any(layer[what] for what in ("permuted", "rescaled", "folded", "dropped"))
    ]
    return ["aligned with our model before reading: " + "; ".join(parts)]
