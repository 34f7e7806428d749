"""The split-training protocol of DESIGN.md, as run by one computing party.

Per batch: the private partition runs under MPC on shared images; its output h is
revealed to the model owner only; the owner runs the plaintext partition, loss and
backward; it shares ∂L/∂h back, and the private backward and update run under MPC.
Every party runs the same code: CrypTen's ops are collective, and `rank` decides who
holds plaintext.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from securemark_mpc.config import TrainConfig
from securemark_mpc.data import PartyData
from securemark_mpc.models import (
    ModelSpec,
    build_model,
    private_part,
    public_part,
    save_model,
)
from securemark_mpc.mpc import checkpoint
from securemark_mpc.mpc.handoff import HandedShards
from securemark_mpc.mpc.joint_init import draw_jointly
from securemark_mpc.mpc.prefetch import PrefetchingDealer
from securemark_mpc.mpc.private_partition import encrypt_layers
from securemark_mpc.mpc.private_sgd import PrivateSGD
from securemark_mpc.mpc.reveal import MODEL_OWNER, reveal
from securemark_mpc.mpc.reveal_noise import SharedRevealNoise
from securemark_mpc.mpc.session import PartyAddress, PartyFailure, exchange_handshake
from securemark_mpc.mpc.sharing import share_from
from securemark_mpc.mpc.wrap_guard import WrapGuard, garbled
from securemark_mpc.progress import progress_bar
from securemark_mpc.run_folder import RunFolder

EVAL_BATCH = 256
# A revealed value above this is a wrapped truncation, not data. CrypTen's truncation
# with a dealer ignores one wrap term (beaver.wraps: "eta_xr = 0 with probability
# 1 - |x| / Q"), so each truncated element fails with odds |x|/2^64 and then moves by
# about 2^64/divisor (2^32 in value units for a fixed-point product); a real value that
# large would already have overflowed its own square. One such row once turned the
# owner's loss to NaN and, through its gradient, every private weight (MNIST-t10k,
# third epoch), so the owner leaves such rows out of its step instead. (Wraps that ruin
# a private weight garble whole batches: `wrap_guard` goes back then.)
WRAPPED_VALUE = 1e5
# Keep every epoch's revealed activations (for the multi-epoch audit) up to this many values.
HISTORY_VALUES = 25_000_000


@dataclass
class RevealedActivations:
    """The activations the model owner received during training, by training row.

    The last epoch's are cached in features.pt for fingerprinting, instead of revealing
    the training set once more under the final weights (which would hand a white-box
    attacker activations and weights that match exactly). Every epoch's are kept too
    when small enough, for the audit's multi-epoch attacker.
    """

    epochs: list[torch.Tensor] = field(default_factory=list)  # (rows, *cut_shape) each
    seen: torch.Tensor | None = None  # rows revealed in the last epoch

    def start_epoch(self, *, rows: int, cut_shape: tuple[int, ...], keep_history: bool) -> None:
        if not keep_history:
            self.epochs.clear()
        self.epochs.append(torch.zeros(rows, *cut_shape))
        self.seen = torch.zeros(rows, dtype=torch.bool)

    def record(self, rows: torch.Tensor, revealed: torch.Tensor) -> None:
        assert self.seen is not None
        self.epochs[-1][rows] = revealed
        self.seen[rows] = True

    def cache(self, labels: torch.Tensor) -> dict[str, Any]:
        """features.pt: the last epoch's activations and labels of the rows it revealed."""
        seen = self.seen if self.seen is not None else torch.zeros(len(labels), dtype=torch.bool)
        last = self.epochs[-1] if self.epochs else torch.zeros(len(labels), 0)
        payload: dict[str, Any] = {"features": last[seen], "labels": labels[seen]}
        if len(self.epochs) > 1 and bool(seen.all()):
            payload["history"] = {
                "rows": torch.arange(len(labels)),
                "views": torch.stack(self.epochs),
            }
        return payload


@dataclass
class OwnerState:
    """What only the model owner holds in plaintext."""

    model: nn.Sequential
    optimizer: torch.optim.Optimizer
    labels: torch.Tensor
    history: list[dict[str, float]] = field(default_factory=list)
    revealed: RevealedActivations = field(default_factory=RevealedActivations)
    wrapped_rows: int = 0  # revealed rows left out as wrapped truncations (WRAPPED_VALUE)


def wrapped_free(revealed: torch.Tensor) -> torch.Tensor:
    """Per row: finite and no value above WRAPPED_VALUE."""
    flat = revealed.flatten(1)
    return torch.isfinite(flat).all(dim=1) & (flat.abs() <= WRAPPED_VALUE).all(dim=1)


def batch_order(*, seed: int, epoch: int, size: int) -> torch.Tensor:
    """The shared, seeded batch order: every party indexes its shares the same way."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(size, generator=generator)


class PhaseProfile:
    """Where a training epoch's time and communication go, phase by phase (built-in profile)."""

    def __init__(self, crypten: Any) -> None:
        self.crypten = crypten
        self.totals: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        comm = self.crypten.communicator.get()
        before, began = dict(comm.get_communication_stats()), time.perf_counter()
        yield
        after = comm.get_communication_stats()
        total = self.totals.setdefault(name, {"seconds": 0.0, "rounds": 0.0, "bytes": 0.0})
        total["seconds"] += time.perf_counter() - began
        total["rounds"] += after["rounds"] - before["rounds"]
        total["bytes"] += after["bytes"] - before["bytes"]


class SplitTrainer:
    """One computing party's view of a split-training run."""

    def __init__(
        self,
        *,
        crypten: Any,
        config: TrainConfig,
        address: PartyAddress,
        run: RunFolder,
        data: PartyData,
        handed: HandedShards | None = None,
    ) -> None:
        self.crypten = crypten
        self.config = config
        self.rank = address.rank
        self.address = address
        self.run = run
        self.is_owner = self.rank == MODEL_OWNER
        # Each party holds only its own data: the owner its test set, a data owner its shard.
        self.data = data
        self.spec: ModelSpec = config.model_spec(data.info)
        self.test = data.images if self.is_owner else None
        self.shard = data.images if not self.is_owner else None
        # --topology two: this party's shares of the shards that the other data owners
        # handed over instead of computing (`handoff`); empty when every data owner computes.
        self.handed = handed or HandedShards()
        self.noise = SharedRevealNoise(
            crypten,
            rank=self.rank,
            data_owners=config.computing_data_owners,
            sigma=config.reveal_noise_sigma,
        )
        self.profile = PhaseProfile(crypten)

    # -- set-up ---------------------------------------------------------------------
    def _handshake(self, resume_epoch: int) -> tuple[list[int], int]:
        own_size = len(self.shard) if self.shard is not None else 0
        test_size = len(self.test) if self.test is not None else 0
        rows = exchange_handshake(
            self.crypten.communicator.get().all_gather,
            self.address,
            digest=self.config.digest(),
            data_settings=self.data.info.settings(),
            values=[own_size, resume_epoch, test_size],
        )
        epochs = {row[1] for row in rows}
        if len(epochs) > 1:
            raise PartyFailure(
                f"the parties' checkpoints are at different epochs {sorted(epochs)}; cannot resume"
            )
        return [row[0] for row in rows[1:]], rows[0][2]

    def _share_per_owner(
        self, shard_sizes: list[int], values: Any, shape: tuple[int, ...]
    ) -> list[Any]:
        """Each computing data owner secret-shares its own tensor (`values(shard)`)."""
        shared = []
        for owner, size in enumerate(shard_sizes, start=1):
            mine = self.rank == owner
            plain = values(self.shard) if mine and self.shard is not None else None
            shared.append(
                share_from(
                    self.crypten, rank=self.rank, src=owner, value=plain, shape=(size, *shape)
                )
            )
        return shared

    def _from_handed(self, shares: list[torch.Tensor]) -> list[Any]:
        """The handed-over shards as CrypTen tensors (this party's ring shares, encoded)."""
        return [self.crypten.mpc.MPCTensor.from_shares(share) for share in shares]

    def _share_training_data(self, shard_sizes: list[int]) -> tuple[Any, torch.Tensor | None]:
        """Each data owner shares its own images (or has handed them over as shares);
        labels are revealed to the owner only. Rows: data owner 1's, 2's, ... in order."""
        images = self._share_per_owner(
            shard_sizes, lambda shard: shard.images, self.spec.input_shape
        ) + self._from_handed(self.handed.images)
        shared_labels = self._share_per_owner(
            shard_sizes, lambda shard: shard.labels.float(), ()
        ) + self._from_handed(self.handed.labels)
        labels = [reveal(part, kind="labels", rank=self.rank) for part in shared_labels]
        owner_labels = torch.cat(labels).round().long() if self.is_owner else None
        return self.crypten.cat(images, dim=0), owner_labels

    # -- training -------------------------------------------------------------------
    def train(self, *, resume: bool, argv: list[str]) -> dict[str, Any] | None:
        crypten, config = self.crypten, self.config
        start_seconds = time.perf_counter()
        saved = (
            checkpoint.load(self.run.checkpoint(self.rank), digest=config.digest())
            if resume
            else None
        )
        shard_sizes, test_size = self._handshake(saved["epoch"] if saved else 0)
        images, labels = self._share_training_data(shard_sizes)
        test_images = None  # the owner's own test images, shared once for per-epoch MPC evaluation
        if config.eval_each_epoch:
            test_images = share_from(
                crypten,
                rank=self.rank,
                src=MODEL_OWNER,
                value=self.test.images if self.test is not None else None,
                shape=(test_size, *self.spec.input_shape),
            )
        model = build_model(self.spec, seed=config.seed)  # the owner's head; private: see below
        private = encrypt_layers(crypten, private_part(model, self.spec), src=MODEL_OWNER)
        if not config.seeded_private_init:
            draw_jointly(
                crypten,
                private,
                spec=self.spec,
                rank=self.rank,
                data_owners=config.computing_data_owners,
            )
        private_optimizer = PrivateSGD(
            crypten, private.parameters(), lr=config.learning_rate, momentum=config.momentum
        )  # lr and weight decay are set per epoch, in the scaled gradient's units (_epoch)
        self.dealer = PrefetchingDealer(crypten, rank=self.rank, enabled=config.provider == "ttp")
        owner = None
        if self.is_owner:
            public = public_part(model, self.spec)
            owner = OwnerState(
                model=model,
                optimizer=torch.optim.SGD(
                    public.parameters(),
                    lr=config.learning_rate,
                    momentum=config.momentum,
                    weight_decay=config.weight_decay,
                ),
                labels=labels,
            )
        first_epoch = 0
        if saved:
            first_epoch = checkpoint.restore(
                saved, crypten=crypten, private=private, optimizer=private_optimizer, owner=owner
            )
        self.guard = WrapGuard(
            crypten, rank=self.rank, private=private, optimizer=private_optimizer
        )

        total = sum(shard_sizes) + self.handed.rows
        for epoch in range(first_epoch, config.epochs):
            began = time.perf_counter()
            loss, accuracy = self._epoch(epoch, images, total, private, private_optimizer, owner)
            checking = time.perf_counter()
            with self.profile.phase("wrap guard range check (MPC)"):
                self.guard.check(f"end of epoch {epoch + 1}")  # checkpoints hold checked weights
            seconds = time.perf_counter() - began
            record = {
                "epoch": epoch + 1,
                "train_loss": loss,
                "train_accuracy": accuracy,
                "seconds": seconds,
                "range_check_seconds": time.perf_counter() - checking,  # once per epoch
                "batches": len(self._batches(epoch, total)),
            }
            if config.eval_each_epoch:
                record["test_accuracy"] = self._mpc_test_accuracy(private, test_images, owner)
            if owner is not None:
                record["wrapped_rows"] = owner.wrapped_rows  # so far (WRAPPED_VALUE)
                record["rollbacks"] = self.guard.rollbacks.to_json()  # so far
                owner.history.append(record)
                print(json.dumps(record), file=sys.stderr, flush=True)
            checkpoint.save(
                self.run.checkpoint(self.rank),
                epoch=epoch + 1,
                digest=config.digest(),
                private=private,
                optimizer=private_optimizer,
                owner=owner,
            )

        final_weights = {
            name: reveal(param, kind="final_weights", rank=self.rank)
            for name, param in private.named_parameters()
        }
        comm = self._communication_totals()
        if owner is None:
            return None
        private_part(owner.model, self.spec).load_state_dict(final_weights)
        return self._finish(
            owner, comm, train_size=total, seconds=time.perf_counter() - start_seconds, argv=argv
        )

    def _batches(self, epoch: int, total: int) -> list[torch.Tensor]:
        """This epoch's batches of training rows (benchmarks may time only the first few)."""
        order = batch_order(seed=self.config.seed, epoch=epoch, size=total)
        return list(order.split(self.config.batch_size))[: self.config.max_batches_per_epoch]

    def _epoch(
        self,
        epoch: int,
        images: Any,
        total: int,
        private: Any,
        optimizer: Any,
        owner: OwnerState | None,
    ):
        # ∂L/∂h of a mean loss is tiny (≈1/batch), below what 16 fractional bits resolve
        # well; share it scaled up by the batch size and scale the private step down
        # (and the weight decay, added to that gradient, up).
        scale = float(self.config.batch_size)
        for group in optimizer.param_groups:
            group["lr"] = self.config.learning_rate_at(epoch) / scale
            group["weight_decay"] = self.config.weight_decay * scale
        for group in owner.optimizer.param_groups if owner else []:
            group["lr"] = self.config.learning_rate_at(epoch)
        batches = self._batches(epoch, total)
        if owner is not None:
            cut_shape = self.spec.cut_shape
            owner.revealed.start_epoch(
                rows=total,
                cut_shape=cut_shape,
                keep_history=self.config.epochs * total * math.prod(cut_shape) <= HISTORY_VALUES,
            )
        progress = progress_bar(
            batches, desc=f"epoch {epoch + 1}/{self.config.epochs}", enabled=owner is not None
        )
        loss_sum, correct, stepped = 0.0, 0, 0
        phase = self.profile.phase
        for number, indices in enumerate(progress):
            step = epoch * len(batches) + number
            with contextlib.ExitStack() as batch:
                with phase("dealer material (bulk)"):
                    following = batches[number + 1] if number + 1 < len(batches) else None
                    batch.enter_context(
                        self.dealer.batch(
                            len(indices), None if following is None else len(following)
                        )
                    )
                loss, hits, rows = self._batch(step, indices, images, private, optimizer, owner)
            loss_sum, correct, stepped = loss_sum + loss * rows, correct + hits, stepped + rows
            if owner is not None:
                progress.set_postfix(loss=f"{loss:.3f}")
        progress.close()
        stepped = max(stepped, 1)
        return loss_sum / stepped, correct / stepped

    def _batch(
        self,
        step: int,
        indices: torch.Tensor,
        images: Any,
        private: Any,
        optimizer: Any,
        owner: OwnerState | None,
    ) -> tuple[float, int, int]:
        """One training batch: private forward, reveal, owner step, private backward,
        update. Returns the owner's loss, correct predictions and rows stepped on (0
        elsewhere); a garbled batch is skipped and the update before it undone."""
        scale = float(self.config.batch_size)
        phase = self.profile.phase
        with phase("private forward (MPC)"):
            hidden = private(images[indices])
            noised = self.noise.add(hidden)
        with phase("reveal to owner"):
            revealed = reveal(noised, kind="activations", rank=self.rank)
        gradient, loss, hits, rows, verdict = None, 0.0, 0, 0, None
        with phase("owner plaintext step"):
            if owner is not None:
                intact = wrapped_free(revealed)
                owner.wrapped_rows += int((~intact).sum())
                verdict = garbled(intact)
                if verdict:
                    gradient = torch.zeros_like(revealed)
                else:
                    owner.revealed.record(indices[intact], revealed[intact])
                    gradient, loss, hits = self._owner_step(
                        owner, revealed, owner.labels[indices], intact=intact
                    )
                    rows = int(intact.sum())
            skip = self.guard.agree(verdict)
        with phase("share gradient"):
            shared_gradient = share_from(
                self.crypten,
                rank=self.rank,
                src=MODEL_OWNER,
                value=None if gradient is None else gradient * scale,
                shape=tuple(hidden.size()),
            )
        # A skipped batch still runs its backward and update: every party must draw the
        # dealer material planned for a batch, or their generators fall out of step.
        with phase("private backward (MPC)"):
            optimizer.zero_grad()
            hidden.backward(shared_gradient)
        with phase("private update (MPC)"):
            if skip:
                optimizer.step()
                self.guard.undo(f"step {step}")
            else:
                self.guard.batch_clean()
                self.guard.before_update()
                optimizer.step()
                self.guard.after_update(step)
        return loss, hits, rows

    def _owner_step(
        self,
        owner: OwnerState,
        revealed: torch.Tensor,
        labels: torch.Tensor,
        *,
        intact: torch.Tensor,
    ):
        """The plaintext head's step on the rows in ``intact``; the others get no gradient."""
        gradient = torch.zeros_like(revealed)
        if not intact.any():
            return gradient, 0.0, 0
        kept = revealed.detach()[intact].requires_grad_(True)
        public = public_part(owner.model, self.spec)
        public.train()
        logits = public(kept)
        loss = nn.functional.cross_entropy(
            logits, labels[intact], label_smoothing=self.config.label_smoothing
        )
        owner.optimizer.zero_grad()
        loss.backward()
        owner.optimizer.step()
        hits = int((logits.argmax(dim=1) == labels[intact]).sum())
        gradient[intact] = kept.grad.detach() * (len(kept) / len(revealed))
        return gradient, float(loss.detach()), hits

    def _forward_reveal(self, private: Any, images: Any) -> torch.Tensor | None:
        """Forward-only private pass in batches over the owner's own test images (which
        need no reveal noise), revealed to the owner."""
        chunks = []
        with self.crypten.no_grad():
            for start in range(0, images.size(0), EVAL_BATCH):
                hidden = private(images[start : start + EVAL_BATCH])
                chunks.append(reveal(hidden, kind="activations", rank=self.rank))
        return torch.cat(chunks) if self.is_owner and chunks else None

    def _mpc_test_accuracy(self, private: Any, test_images: Any, owner: OwnerState | None) -> float:
        revealed = self._forward_reveal(private, test_images)
        if owner is None:
            return float("nan")
        public = public_part(owner.model, self.spec)
        public.eval()
        with torch.no_grad():
            predictions = public(revealed).argmax(dim=1)
        assert self.test is not None
        return float((predictions == self.test.labels).float().mean())

    def _communication_totals(self) -> dict[str, Any]:
        """CrypTen's byte and round counters summed over the computing parties, and
        each party's peak memory (the dealer is not in this group and not counted)."""
        comm = self.crypten.communicator.get()
        stats = comm.get_communication_stats()
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        mine = torch.tensor([int(stats["bytes"]), int(stats["rounds"]), peak_rss], dtype=torch.long)
        rows = comm.all_gather(mine)
        return {
            "comm_bytes": float(sum(row[0] for row in rows)),
            "comm_rounds": float(sum(row[1] for row in rows)),
            "peak_rss_bytes_per_party": [int(row[2]) for row in rows],
        }

    def _finish(
        self,
        owner: OwnerState,
        comm: dict[str, float],
        *,
        train_size: int,
        seconds: float,
        argv: list[str],
    ) -> dict[str, Any]:
        assert self.test is not None
        owner.model.eval()
        with torch.no_grad():
            predictions = owner.model(self.test.images).argmax(dim=1)
        metrics = {
            "test_accuracy": float((predictions == self.test.labels).float().mean()),
            "seconds": seconds,
            "epochs": self.config.epochs,
            "history": owner.history,
            **comm,
            "private_nonlinear_elements_per_sample": self.spec.private_nonlinear_elements(),
            "wrapped_rows": owner.wrapped_rows,
            "rollbacks": self.guard.rollbacks.to_json(),
            "profile_owner": self.profile.totals,
            "train_size": train_size,
            "test_size": len(self.test),
        }
        save_model(self.run.model_path, model=owner.model, spec=self.spec)
        torch.save(owner.revealed.cache(owner.labels), self.run.features_path)
        self.run.write_json("metrics.json", metrics)
        return metrics
