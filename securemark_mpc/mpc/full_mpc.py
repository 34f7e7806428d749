"""Full MPC: the whole model AND the loss under CrypTen, labels kept secret-shared.

This is the benchmark baseline that split training is measured against (DESIGN.md:
"Every op kept out of MPC is speed"). Nothing is revealed until the final weights.
It does not checkpoint; `max_batches_per_epoch` lets a benchmark time part of an epoch.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from tqdm import tqdm

from securemark_mpc.models import build_model, save_model
from securemark_mpc.mpc.prefetch import PrefetchingDealer
from securemark_mpc.mpc.private_partition import encrypt_layers
from securemark_mpc.mpc.private_sgd import PrivateSGD
from securemark_mpc.mpc.protocol import SplitTrainer, batch_order
from securemark_mpc.mpc.reveal import MODEL_OWNER, reveal
from securemark_mpc.mpc.session import PartyFailure
from securemark_mpc.plaintext import accuracy


class FullMpcTrainer(SplitTrainer):
    """Train every layer under MPC; only the final weights reach the model owner."""

    def train(self, *, resume: bool, argv: list[str]) -> dict[str, Any] | None:
        if resume:
            raise PartyFailure("full-MPC runs are benchmark baselines and cannot resume")
        crypten, config = self.crypten, self.config
        started = time.perf_counter()
        shard_sizes, _ = self._handshake(0)
        num_classes = self.spec.num_classes
        images = crypten.cat(
            self._share_per_owner(shard_sizes, lambda s: s.images, self.spec.input_shape)
        )
        smoothing = config.label_smoothing

        def soft_targets(
            shard: Any,
        ) -> torch.Tensor:  # the same smoothed targets as the owner's loss
            one_hot = torch.nn.functional.one_hot(shard.labels, num_classes).float()
            return one_hot * (1 - smoothing) + smoothing / num_classes

        targets = crypten.cat(self._share_per_owner(shard_sizes, soft_targets, (num_classes,)))
        model = build_model(self.spec, seed=config.seed)
        encrypted = encrypt_layers(crypten, model, src=MODEL_OWNER)
        optimizer = PrivateSGD(
            crypten,
            encrypted.parameters(),
            lr=config.learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        dealer = PrefetchingDealer(crypten, rank=self.rank, enabled=config.provider == "ttp")
        loss_function = crypten.nn.CrossEntropyLoss()
        history = []
        for epoch in range(config.epochs):
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate_at(epoch)
            batches = batch_order(seed=config.seed, epoch=epoch, size=sum(shard_sizes)).split(
                config.batch_size
            )
            batches = batches[: config.max_batches_per_epoch]
            began = time.perf_counter()
            for number, indices in enumerate(
                tqdm(
                    batches,
                    desc=f"full MPC epoch {epoch + 1}",
                    disable=not self.is_owner,
                    file=sys.stderr,
                )
            ):
                following = batches[number + 1] if number + 1 < len(batches) else None
                with dealer.batch(len(indices), None if following is None else len(following)):
                    loss = loss_function(encrypted(images[indices]), targets[indices])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            history.append(
                {
                    "epoch": epoch + 1,
                    "seconds": time.perf_counter() - began,
                    "batches": len(batches),
                }
            )
        weights = {
            name: reveal(param, kind="final_weights", rank=self.rank)
            for name, param in encrypted.named_parameters()
        }
        comm = self._communication_totals()
        if not self.is_owner:
            return None
        model.load_state_dict(weights)
        assert self.test is not None
        metrics = {
            "engine": "full",
            "test_accuracy": accuracy(model, self.test),
            "seconds": time.perf_counter() - started,
            "epochs": config.epochs,
            "history": history,
            "train_size": sum(shard_sizes),
            **comm,
        }
        save_model(self.run.model_path, model=model, spec=self.spec)
        self.run.write_json("metrics.json", metrics)
        return metrics
