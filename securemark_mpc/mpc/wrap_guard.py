"""Going back to good private weights after a wrapped truncation.

CrypTen's dealer truncation fails with odds |x|/2^64 per element (``beaver.wraps``
drops one wrap term) and then moves the value by 2^64/divisor: 2^24 to 2^32 in value
units for a weight or momentum value. In the private backward or update such a wrap
silently ruins a private weight, which nobody sees in plaintext: a MNIST-t10k run
trained cleanly for nine epochs, then one wrap in epoch 10 turned every later row to
garbage. The parties therefore keep their shares of the last good state and go back:

* **Garbled batch.** A ruined weight garbles every revealed row of the next batch
  (quadratic activations and cutnorm's square overflow), so when most of a batch's
  rows are wrapped the owner calls for a rollback: the batch is skipped and the update
  before it undone. When updates keep failing (garbled batches with no working update
  in between) the parties go back to the last checked state, and after four the run
  stops: the values themselves are out of range then, not hit by one wrap.
* **Range check.** At the end of every epoch, before the checkpoint and the final
  reveal, the private weight and momentum values are checked under MPC, by groups of
  SKETCH_GROUP: each group's sum with public pseudo-random weights (odd integers up to
  ±SKETCH_WEIGHT, fresh per check) is compared with ±RANGE_BOUND. The sum is linear,
  so each party sums its own shares; only the comparisons are private, 64× fewer
  than one per value (MNIST-t10k's default: 415,000 values, the check took 4-5 s of
  a 48 s epoch with three computing parties). Healthy values stay below 10 (below
  3,400 even in a run gone out of range), and while all lie below 64 in size no group
  sum can pass the bound (255·64·64 < 2^20; a group of values in the thousands can,
  which a bound on each value did not); a wrapped value moves by 2^24 or more
  and always pushes its group past it, unless another wrap of the same size in the
  same group cancels it (odds 1/256 for that pair). Only the number of groups outside
  is opened, to the owner: 0 in healthy training. If it is not 0, the last update is
  undone, then the last checked state restored, until it is.

Who learns what: the owner learns the count of out-of-range groups (a wrap's
footprint, not data) and every party learns the owner's one-bit verdicts. The
updates undone are lost: each rollback costs the steps since that state.

``SECUREMARK_INJECT_WRAP`` (comma-separated global step numbers, counted from 0) makes
data owner 1 wrap one element of its share after those updates: the fault-injection
test drives both recoveries through real parties with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from securemark_mpc.mpc.checkpoint import momentum_shares, restore_momentum
from securemark_mpc.mpc.private_partition import export_shares, import_shares
from securemark_mpc.mpc.reveal import MODEL_OWNER, reveal
from securemark_mpc.mpc.session import PartyFailure

# Values beyond this are wraps: honest weights and momentum buffers (gradients scaled
# by the batch size) stayed below 3,400 even in a run gone out of range; a wrap moves
# a value by at least 2^24.
RANGE_BOUND = 2.0**20
# The range check compares weighted sums of groups of values (module docstring); the
# weights are public: wraps are chance events, not an adversary.
SKETCH_GROUP = 64
SKETCH_WEIGHT = 255  # odd weights in [-255, 255]: 255 * 64 * 64 < RANGE_BOUND
SKETCH_SEED = 20_26_12
# The owner calls a batch garbled when at least this fraction of its rows wrapped; a
# wrap in the forward pass itself garbles one row, a ruined weight all of them.
GARBLED_FRACTION = 0.5
# Failed updates in a row (each followed by a garbled batch, whatever came between)
# after which going back is not helping: the values themselves are out of fixed-point
# range (e.g. the cut's input past cutnorm's), not hit by one wrap.
MAX_FAILED_IN_A_ROW = 4
INJECT_VARIABLE = "SECUREMARK_INJECT_WRAP"
_INJECTING_RANK = 1
_WRAP = 1 << 48  # what a failed truncation by 2^16 adds to a share

State = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]  # weight, momentum shares


@dataclass
class Rollbacks:
    """Why and how often the private weights went back (the run's metrics)."""

    garbled_batches: int = 0  # batches skipped because most revealed rows wrapped
    range_failures: int = 0  # epoch-end range checks that found wrapped values
    restored: list[str] = field(default_factory=list)  # "epoch E step S: what" per rollback

    def to_json(self) -> dict[str, Any]:
        return {
            "garbled_batches": self.garbled_batches,
            "range_failures": self.range_failures,
            "restored": list(self.restored),
        }


def garbled(intact: torch.Tensor) -> bool:
    """The owner's call on one batch: most rows wrapped means a ruined private weight."""
    return bool((~intact).float().mean() >= GARBLED_FRACTION)


def group_sums(values: torch.Tensor, keys: torch.Generator) -> torch.Tensor:
    """Σ w_i·v_i over each group of SKETCH_GROUP values (zero-padded), with odd weights
    w_i drawn from ``keys`` in [−SKETCH_WEIGHT, SKETCH_WEIGHT], in the int64 ring: the
    sums of a party's shares are its shares of the sums."""
    groups = -(-values.numel() // SKETCH_GROUP)
    padded = torch.zeros(groups * SKETCH_GROUP, dtype=torch.long)
    padded[: values.numel()] = values
    weights = 2 * torch.randint(0, (SKETCH_WEIGHT + 1) // 2, padded.shape, generator=keys) + 1
    weights *= 1 - 2 * torch.randint(0, 2, padded.shape, generator=keys)
    return (padded * weights).view(groups, SKETCH_GROUP).sum(dim=1)


class WrapGuard:
    """One party's copies of its shares of the last good private state."""

    def __init__(self, crypten: Any, *, rank: int, private: Any, optimizer: Any) -> None:
        self.crypten = crypten
        self.rank = rank
        self.private = private
        self.optimizer = optimizer
        self.rollbacks = Rollbacks()
        self._checked = self._state()
        self._before_step: State | None = None
        self._failed_in_a_row = 0  # garbled batches since an update was seen to work
        self._checks = 0  # range checks so far: each draws fresh group weights
        self._updated = False  # the last thing done to the weights was an update
        self._inject_at = {
            int(step) for step in os.environ.get(INJECT_VARIABLE, "").split(",") if step.strip()
        }

    # -- this party's shares (as its checkpoint holds them) -----------------------------
    def _state(self) -> State:
        return export_shares(self.private), momentum_shares(self.private, self.optimizer)

    def _load(self, state: State) -> None:
        weights, momentum = state
        import_shares(self.private, weights)
        restore_momentum(self.crypten, self.private, self.optimizer, momentum)

    # -- around each update -----------------------------------------------------------
    def before_update(self) -> None:
        self._before_step = self._state()

    def after_update(self, step: int) -> None:
        self._updated = True
        if step in self._inject_at and self.rank == _INJECTING_RANK:
            _, param = next(iter(self.private.named_parameters()))
            param.share.view(-1)[0] += _WRAP

    def agree(self, verdict: bool | None) -> bool:
        """The owner's verdict, sent to every party (the others pass None)."""
        flag = torch.tensor([int(bool(verdict))], dtype=torch.long)
        self.crypten.communicator.get().broadcast(flag, MODEL_OWNER)
        return bool(flag.item())

    def batch_clean(self) -> None:
        """A batch came out clean: the update before it, if any, worked."""
        if self._updated:
            self._failed_in_a_row = 0

    def undo(self, where: str) -> None:
        """A garbled batch: undo the update before it; when updates keep failing, go back
        to the last checked state, and stop when that does not help either."""
        self.rollbacks.garbled_batches += 1
        self._failed_in_a_row += 1
        if self._failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            raise PartyFailure(
                f"{where}: {MAX_FAILED_IN_A_ROW} garbled batches without a working update in "
                "between, also from the last checked weights: the private values are out of "
                "fixed-point range, not hit by one wrapped truncation; try a smaller --lr or "
                "a --weight-decay"
            )
        if self._failed_in_a_row == 1 and self._before_step is not None:
            self._load(self._before_step)
            self.rollbacks.restored.append(f"{where}: undid the previous update")
        else:
            self._load(self._checked)
            self.rollbacks.restored.append(f"{where}: back to the last checked state")
        self._updated = False

    # -- at the end of an epoch ---------------------------------------------------------
    def _owner_sees_wraps(self) -> bool | None:
        """Whether a weighted group sum of the private weight and momentum values lies
        beyond ±RANGE_BOUND: only their count is opened, to the owner (None elsewhere)."""
        weights, momentum = self._state()
        shares = [share.flatten() for share in (*weights.values(), *momentum.values())]
        keys = torch.Generator().manual_seed(SKETCH_SEED + self._checks)
        self._checks += 1  # every party checks as often, so all draw the same weights
        sums = group_sums(torch.cat(shares), keys)
        values = self.crypten.mpc.MPCTensor.from_shares(sums)
        outside = self.crypten.cat([values - RANGE_BOUND, -values - RANGE_BOUND]) > 0
        count = reveal(outside.sum(), kind="weight_range", rank=self.rank)
        return None if count is None else bool(count > 0.5)

    def check(self, where: str) -> None:
        """Range-check the private state; go back until it passes, then remember it."""
        fallbacks = [
            (what, state)
            for what, state in (
                ("undid the last update", self._before_step),
                ("back to the last checked state", self._checked),
            )
            if state is not None
        ]
        while self.agree(self._owner_sees_wraps()):
            self.rollbacks.range_failures += 1
            if not fallbacks:
                raise PartyFailure("the last checked private state fails its range check")
            what, state = fallbacks.pop(0)
            self._load(state)
            self.rollbacks.restored.append(f"{where}: range check failed, {what}")
        self._checked = self._state()
        self._before_step = None
