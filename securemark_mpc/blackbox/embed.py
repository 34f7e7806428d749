"""Behavioural embedding: tilt a copy's output layer by its codeword (see :mod:`.tilt`).

It runs on the weight-marked copy and moves only the weight of the model's last
Linear layer, which must not be the weight mark's carrier (in the default presets the
carrier is the head's first layer), so the weight mark stays bit for bit what it was
and the private partition of every copy stays identical. The tilt Δ = Σ_k s_k A_k is
added, then ``steps`` full-batch Adam steps minimise

    mean_q (gap_q − target_q)² + retention_weight · mean_i relu(margin − m_i)²

over that weight: target_q = (C s)_q is the gap the tilt asks of query q (the unmarked
model's gap there is 0; the weight mark shifts it a little, and this pulls it back),
and m_i is the margin (true logit minus the best other) of each of the owner's
images and cached training features that the copy classified right before the tilt.
The hinge only holds images near a class boundary in place: everywhere else the tilt
stays visible in the logits, which is what a distilled student learns. Full-batch,
no randomness: one codeword gives one copy.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from securemark_mpc.blackbox.key import BehaviourEmbedConfig
from securemark_mpc.blackbox.tilt import Tilt, output_layer, weight_change


def _margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.max(dim=1).values


def embed_tilt(
    *,
    model: nn.Sequential,
    tilt: Tilt,
    codeword: np.ndarray,
    first: torch.Tensor,
    second: torch.Tensor,
    query_inputs: torch.Tensor,
    data_inputs: torch.Tensor,
    data_labels: torch.Tensor,
    config: BehaviourEmbedConfig,
    carrier: str | None = None,
) -> tuple[nn.Sequential, float]:
    """A new model carrying ``codeword``'s tilt; also the share of queries on the asked side.

    ``query_inputs`` and ``data_inputs`` are the output layer's inputs in ``model`` on
    the queries and on the retained data (with ``data_labels``). ``carrier`` (a
    state-dict name such as ``"10.weight"``) must not be the output layer's weight.
    ``model`` is left untouched.
    """
    index = output_layer(model)
    if carrier is not None and carrier == f"{index}.weight":
        raise ValueError(f"the weight mark's carrier {carrier} is the layer the tilt moves")
    marked = copy.deepcopy(model).eval()
    layer: nn.Linear = marked[index]
    target = torch.from_numpy(tilt.design @ (2.0 * np.asarray(codeword, dtype=np.float64) - 1))
    target = target.float()
    rows = torch.arange(len(first))
    query_inputs, data_inputs = query_inputs.float(), data_inputs.float()
    data_labels = data_labels.long()
    with torch.no_grad():
        kept = layer(data_inputs).argmax(dim=1) == data_labels
        layer.weight += weight_change(tilt, codeword)
    weight = layer.weight.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([weight], lr=config.learning_rate)
    bias = layer.bias.detach()
    for _ in range(config.steps):
        logits = query_inputs @ weight.T + bias
        pull = (logits[rows, first] - logits[rows, second] - target).pow(2).mean()
        margins = _margins(data_inputs[kept] @ weight.T + bias, data_labels[kept])
        hold = torch.relu(config.margin - margins).pow(2).mean() if kept.any() else 0.0
        loss = pull + config.retention_weight * hold
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        layer.weight.copy_(weight)
        logits = layer(query_inputs)
        gaps = logits[rows, first] - logits[rows, second]
        right = float(((gaps > 0) == (target > 0)).float().mean())
    return marked.eval(), right
