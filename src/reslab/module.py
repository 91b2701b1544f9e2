"""The Classifier LightningModule: cross-entropy, error rates in percent, SGD on an iteration
schedule. Every number comes from the config; nothing here knows which network it trains."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class Classifier(L.LightningModule):
    """Trains ``net`` (images → logits) with cross-entropy.

    Logs, stepped by the global iteration: ``train/loss`` and ``train/error`` averaged over the
    last ``log_every_n_steps`` iterations (the smoothed curves of the paper's figures), ``lr``,
    and ``val/error`` / ``test/error`` over the whole evaluation set. Errors are in percent.

    Args:
        net: the network.
        optimizer: builds the optimizer from the parameters (a ``_partial_`` config).
        scheduler: builds the learning-rate schedule from the optimizer; it is stepped every
            iteration, so its milestones are iterations, as in the paper.
        channels_last: keep weights and activations in NHWC memory order (faster on recent CPUs
            and GPUs); the same model and arithmetic up to float rounding.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # Accumulated on the device between logging steps: no host sync inside a step.
        self.train_loss = MeanMetric()
        self.train_error = MeanMetric()
        self.val_error = MeanMetric()
        self.test_error = MeanMetric()
        self.validated_at: int | None = None  # the iteration of the last validation

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.train_loss.update(loss.detach(), weight=labels.numel())
        self.train_error.update(_wrong_percent(logits.detach(), labels))
        iteration = self.global_step + 1  # this step's number once the optimizer has stepped
        if iteration % self.trainer.log_every_n_steps == 0 or iteration == self.trainer.max_steps:
            self.log("step", float(iteration))  # the x-axis: iterations done, not Lightning's count
            self.log("train/loss", self.train_loss.compute(), prog_bar=False)
            self.log("train/error", self.train_error.compute(), prog_bar=True)
            self.log("lr", self.optimizers().param_groups[0]["lr"])
            self.train_loss.reset()
            self.train_error.reset()
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.val_error.update(_wrong_percent(self(images), labels))
        self.log("val/error", self.val_error, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.log("step", float(self.global_step))
        self.validated_at = self.global_step

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.test_error.update(_wrong_percent(self(images), labels))
        self.log("test/error", self.test_error, on_step=False, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        self.log("step", float(self.global_step))

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def _wrong_percent(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """100 for every misclassified image, 0 for every correct one."""
    return (logits.argmax(dim=1) != labels).float() * 100.0
