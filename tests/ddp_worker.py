"""What each DDP rank saw and ended with, for tests/test_ddp.py.

``RankRecorder`` is a Lightning callback that ``reslab-train`` instantiates on every rank from
``+callbacks.record._target_=ddp_worker.RankRecorder`` (this folder on ``PYTHONPATH``). It
writes ``rank<r>.pt`` into ``out_dir`` when testing ends: the raw uint8 training batches the
rank got (recorded before the mean subtraction and the random crop) and what the DataModule made
of them (``augmented``: mean subtracted, cropped and flipped), its own loss on each,
the weights (parameters and buffers) at the start and at the end of training and after
testing, how many of its own test images it got wrong, and the metrics as its trainer holds
them (synced over the ranks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


def weights(module: L.LightningModule) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer (batch-norm statistics included), on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class RankRecorder(Callback):
    """Records what this rank trained on and ended with; see the module's docstring."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.augmented: list[torch.Tensor] = []  # the same batches as the network got them
        self.losses: list[float] = []  # this rank's own loss of every training batch
        self.record: dict[str, Any] = {}
        self.test_wrong = 0
        self.test_seen = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if stage != "fit" or datamodule is None or "recording" in self.record:
            return
        self.record["recording"] = True
        transfer = datamodule.on_after_batch_transfer  # the DataModule's own hook, bound

        def record_then_transfer(batch: Any, dataloader_idx: int) -> Any:
            if not trainer.training:
                return transfer(batch, dataloader_idx)
            images, labels = batch  # the raw batch, before the mean and the augmentation
            self.batches.append((images.detach().cpu().clone(), labels.detach().cpu().clone()))
            transferred = transfer(batch, dataloader_idx)
            self.augmented.append(transferred[0].detach().cpu().clone())
            return transferred

        # Lightning looks the hook up on the DataModule instance at every batch.
        datamodule.on_after_batch_transfer = record_then_transfer

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["initial"] = weights(pl_module)  # after DDP has synced the start

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        if outputs:  # (fused iterations return none)
            self.losses.append(float(outputs["loss"]))  # the local loss: DDP averages gradients

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["trained"] = weights(pl_module)
        self.record["global_step"] = trainer.global_step
        self.record["fit_metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items()}

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        images, labels = batch
        with torch.no_grad():  # this rank's own share of the test set, not synced
            wrong = pl_module(images).argmax(dim=1) != labels
        self.test_wrong += int(wrong.sum())
        self.test_seen += len(labels)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record.update(
            rank=trainer.global_rank,
            node_rank=trainer.node_rank,
            world_size=trainer.world_size,
            environment=type(getattr(trainer.strategy, "cluster_environment", None)).__name__,
            batches=self.batches,
            augmented=self.augmented,
            losses=self.losses,
            tested=weights(pl_module),
            test_metrics={k: float(v) for k, v in trainer.callback_metrics.items()},
            test_wrong=self.test_wrong,
            test_seen=self.test_seen,
        )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.record, self.out_dir / f"rank{trainer.global_rank}.pt")


class BatchNormInEvalMode(Callback):
    """Every batch norm layer in eval mode while training (its running statistics, unchanged),
    so that no layer looks across the images of a batch: how the global batch is split over
    ranks cannot change what the network computes (tests/test_ddp.py)."""

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any
    ) -> None:
        for module in pl_module.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
