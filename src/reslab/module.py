"""The Classifier LightningModule: cross-entropy, error rates in percent, SGD on an iteration
schedule with the paper's warm-up rule. Every number comes from the config; nothing here knows
which network it trains."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import MeanMetric

from reslab.fast import batchnorm_in_fp32, cuda_graph_network
from reslab.validation import require_int, require_number

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

TOP5_MIN_CLASSES = 100  # top-5 error is logged for 100 classes or more (CIFAR-100, ImageNet)


class Classifier(L.LightningModule):
    """Trains ``net`` (images → logits) with cross-entropy.

    Logs, stepped by the global iteration: ``train/loss`` and ``train/error`` averaged over the
    last ``log_every_n_steps`` iterations (the smoothed curves of the paper's figures), ``lr``,
    and ``val/error`` / ``test/error`` over the whole evaluation set (plus ``val/error_top5``
    and ``test/error_top5`` with 100 classes or more). Errors are in percent. An evaluation
    batch of shape (B, crops, C, H, W) is classified by the mean softmax over its crops (the
    10-crop testing of ImageNet).

    Args:
        net: the network.
        optimizer: builds the optimizer from the parameters (a ``_partial_`` config).
        scheduler: builds the learning-rate schedule from the optimizer; it is stepped every
            iteration, so its milestones are iterations, as in the paper. A
            ``ReduceLROnPlateau`` is stepped once after each validation, on ``val/error``.
        channels_last: keep weights and activations in NHWC memory order (faster on recent CPUs
            and GPUs); the same model and arithmetic up to float rounding.
        compile: ``torch.compile`` the network (fused kernels; the first iterations compile).
        cuda_graphs: on a CUDA device, replay each training iteration's forward and backward
            from CUDA graphs instead of launching every kernel from Python (with ``compile``,
            the compiler's own CUDA graphs: mode ``reduce-overhead``). Elsewhere it does
            nothing, and says so.
        batchnorm_fp32: under mixed precision (``trainer.precision=bf16-mixed``), batch norm
            computes in fp32 (see :class:`reslab.fast.FP32BatchNorm2d`); no effect in fp32.
        warmup_lr: the paper's warm-up for its 110- and 1202-layer nets (section 4.2): train at
            this lr until the training error falls below ``warmup_until_error``, then return to
            the scheduled lr (0.1) and the normal schedule. None: no warm-up.
        warmup_until_error: the training error (percent) that ends the warm-up.
        warmup_window: iterations whose mean training error is compared with the threshold;
            the check reads one number from the device every ``warmup_window`` iterations, and
            only while warming up.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        channels_last: bool = False,
        compile: bool = False,
        cuda_graphs: bool = False,
        batchnorm_fp32: bool = True,
        warmup_lr: float | None = None,
        warmup_until_error: float = 80.0,
        warmup_window: int = 10,
    ) -> None:
        super().__init__()
        require_number("optim.warmup.lr", warmup_lr, 0, low_open=True, optional=True)
        require_number("optim.warmup.until_train_error", warmup_until_error, 0, 100, low_open=True)
        require_int("optim.warmup.window", warmup_window, 1)
        self.channels_last = channels_last
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.compile_net, self.cuda_graphs = compile, cuda_graphs  # (nn.Module has .compile)
        self.batchnorm_fp32 = batchnorm_fp32
        self._prepared = False  # setup() applies the options once
        self._graph_pending = False  # the CUDA graphs are captured at the first training batch
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.warmup_lr, self.warmup_until_error = warmup_lr, warmup_until_error
        self.warmup_window = warmup_window
        # Accumulated on the device between logging steps: no host sync inside a step (the
        # default nan check reads every update back; a nan must show, not be dropped).
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.train_error = MeanMetric(nan_strategy="disable")
        self.val_error = MeanMetric(nan_strategy="disable")
        self.val_error_top5 = MeanMetric(nan_strategy="disable")
        self.test_error = MeanMetric(nan_strategy="disable")
        self.test_error_top5 = MeanMetric(nan_strategy="disable")
        # Progress that a checkpoint must carry (see on_save_checkpoint).
        self.validated_at: int | None = None  # the iteration of the last validation
        self.plateau_stepped_at: int | None = None  # the validation a plateau schedule last saw
        self.warming_up = warmup_lr is not None
        self.warmup_ended_at: int | None = None
        self.best_val_error: float | None = None  # the lowest val/error so far, and when
        self.best_val_step: int | None = None
        self._warmup_wrong = torch.zeros(2)  # (wrong images, images) of the current window
        self._rng_to_restore: dict[str, Any] | None = None  # from a checkpoint, for on_train_start

    def setup(self, stage: str) -> None:
        """Applies the speed options once the device and precision are known."""
        if self._prepared:
            return
        self._prepared = True
        cuda = self.trainer.strategy.root_device.type == "cuda"
        if self.batchnorm_fp32 and "mixed" in str(self.trainer.precision):
            batchnorm_in_fp32(self.net)
        if self.cuda_graphs and not cuda:
            rank_zero_warn(
                "module.cuda_graphs needs a CUDA device; training on "
                f"{self.trainer.strategy.root_device.type} without CUDA graphs"
            )
        if self.compile_net:
            self.net.compile(mode="reduce-overhead" if self.cuda_graphs and cuda else None)
        else:
            self._graph_pending = self.cuda_graphs and cuda

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 5:  # (B, crops, C, H, W): the mean softmax over the crops
            b, crops = images.shape[:2]
            probs = self.forward(images.flatten(0, 1)).softmax(dim=1)
            return probs.view(b, crops, -1).mean(dim=1).log()
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    # --- training -------------------------------------------------------------------------------
    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        images, labels = batch
        if self._graph_pending:
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            self.net = cuda_graph_network(self.net, images)
            self._graph_pending = False
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        wrong = _wrong_percent(logits.detach(), labels)
        self.train_loss.update(loss.detach())  # the batches are of one size: a plain mean
        self.train_error.update(wrong)
        iteration = self.global_step + 1  # this step's number once the optimizer has stepped
        if self.warming_up:
            self._check_warmup(wrong, iteration)
        if iteration % self.trainer.log_every_n_steps == 0 or iteration == self.trainer.max_steps:
            self.log("step", float(iteration))  # the x-axis: iterations done, not Lightning's count
            self.log("train/loss", self.train_loss.compute(), prog_bar=False)
            self.log("train/error", self.train_error.compute(), prog_bar=True)
            self.log("lr", self.optimizers().param_groups[0]["lr"])
            self.train_loss.reset()
            self.train_error.reset()
        return loss

    def _check_warmup(self, wrong: torch.Tensor, iteration: int) -> None:
        """Count this batch into the warm-up window; at the window's end, end the warm-up if
        the window's training error (over all ranks) is below the threshold."""
        counts = torch.stack([wrong.sum() / 100.0, wrong.new_tensor(float(wrong.numel()))])
        self._warmup_wrong = self._warmup_wrong.to(wrong.device) + counts
        if iteration % self.warmup_window:
            return
        total = self.trainer.strategy.reduce(self._warmup_wrong.clone(), reduce_op="sum")
        error = 100.0 * float(total[0]) / max(float(total[1]), 1.0)
        self._warmup_wrong = torch.zeros_like(self._warmup_wrong)
        if error < self.warmup_until_error:
            self.warming_up = False
            self.warmup_ended_at = iteration
            self.log("warmup_ended_at", float(iteration))
            rank_zero_info(
                f"[reslab] warm-up ended at iteration {iteration}: training error {error:.1f}% "
                f"< {self.warmup_until_error:g}%; lr back to the schedule"
            )

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Any,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        if not self.warming_up:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
            return
        # During the warm-up the step uses warmup_lr; the scheduled lr is put back afterwards,
        # so the schedule itself never sees the warm-up and resumes exactly where it stands.
        scheduled = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = self.warmup_lr
        try:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        finally:
            for group, lr in zip(optimizer.param_groups, scheduled, strict=True):
                group["lr"] = lr

    # --- evaluation -----------------------------------------------------------------------------
    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> None:
        images, labels = batch
        logits = self(images)
        error, error_top5 = getattr(self, f"{split}_error"), getattr(self, f"{split}_error_top5")
        error.update(_wrong_percent(logits, labels))
        self.log(f"{split}/error", error, on_step=False, on_epoch=True, prog_bar=split == "val")
        if logits.shape[1] >= TOP5_MIN_CLASSES:
            top5 = logits.topk(5, dim=1).indices
            error_top5.update((top5 != labels[:, None]).all(dim=1).float() * 100.0)
            self.log(f"{split}/error_top5", error_top5, on_step=False, on_epoch=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.log("step", float(self.global_step))
        self.validated_at = self.global_step

    def on_validation_end(self) -> None:
        # After Lightning has reduced the epoch's metrics: one host read per validation.
        value = self.trainer.callback_metrics.get("val/error")
        if value is None or self.trainer.sanity_checking:
            return
        if self.best_val_error is None or float(value) < self.best_val_error:
            self.best_val_error, self.best_val_step = float(value), self.global_step

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.log("step", float(self.global_step))

    # --- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": "step"}
        if isinstance(scheduler, ReduceLROnPlateau):
            # Offered to lr_scheduler_step after every iteration; it steps after validations only.
            config.update(monitor="val/error", strict=False)
        return {"optimizer": optimizer, "lr_scheduler": config}

    def lr_scheduler_step(self, scheduler: Any, metric: Any | None) -> None:
        if not isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step()
        elif self.validated_at is not None and self.validated_at != self.plateau_stepped_at:
            scheduler.step(metric)  # once per validation: patience counts validations
            self.plateau_stepped_at = self.validated_at

    def on_fit_start(self) -> None:
        for config in self.trainer.lr_scheduler_configs:
            if not isinstance(config.scheduler, ReduceLROnPlateau):
                continue
            # Expected before the first validation: lr_scheduler_step waits for one.
            warnings.filterwarnings(
                "ignore", message="ReduceLROnPlateau conditioned on metric val/error which is not"
            )
            if not self._has_val():
                raise ValueError(
                    "the learning rate decays on a plateau of val/error, but there is no "
                    "validation set: set data.val_size > 0, or use a schedule with milestones "
                    "(e.g. optim=paper_imagenet_steps)"
                )

    def _has_val(self) -> bool:
        datamodule = getattr(self.trainer, "datamodule", None)
        return bool(getattr(datamodule, "has_val", True)) and self.trainer.limit_val_batches != 0

    # --- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Everything that shapes what comes next, including what the current logging interval
        # (train_loss, train_error) and warm-up window have accumulated so far: a checkpoint
        # in the middle of either resumes to the same numbers. Callbacks keep their own
        # (their state_dict). The sums are over all ranks; rank 0 gets them back.
        checkpoint["reslab"] = {
            "rng": rng_states(),
            "validated_at": self.validated_at,
            "plateau_stepped_at": self.plateau_stepped_at,
            "warming_up": self.warming_up,
            "warmup_ended_at": self.warmup_ended_at,
            "best_val_error": self.best_val_error,
            "best_val_step": self.best_val_step,
            "warmup_wrong": _summed_over_ranks(self._warmup_wrong),
            "train_loss": _metric_sums(self.train_loss),
            "train_error": _metric_sums(self.train_error),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("reslab", {})
        self.validated_at = state.get("validated_at", self.validated_at)
        self.plateau_stepped_at = state.get("plateau_stepped_at", self.plateau_stepped_at)
        self.warming_up = state.get("warming_up", self.warming_up)
        self.warmup_ended_at = state.get("warmup_ended_at", self.warmup_ended_at)
        self.best_val_error = state.get("best_val_error", self.best_val_error)
        self.best_val_step = state.get("best_val_step", self.best_val_step)
        self._rng_to_restore = state.get("rng")
        first = self.global_rank == 0  # the other ranks start their share from zero
        if "warmup_wrong" in state:
            self._warmup_wrong = state["warmup_wrong"].cpu() * float(first)
        for name in ("train_loss", "train_error"):
            if name in state:
                _set_metric_sums(getattr(self, name), state[name], keep=first)

    def on_train_start(self) -> None:
        # As late as possible before the first batch of a resumed run: the augmentation's next
        # random numbers are those the interrupted run would have drawn.
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None


def rng_states() -> dict[str, Any]:
    """The states of every random number generator training draws from (torch on the CPU and
    each CUDA device, numpy, Python), as plain types and tensors: a checkpoint that holds them
    still loads with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restores what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _summed_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of ``tensor`` summed over the DDP ranks (as itself on one process), on the CPU."""
    tensor = tensor.detach().clone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.cpu()


def _metric_sums(metric: MeanMetric) -> dict[str, torch.Tensor]:
    """A mean metric's running sums (``mean_value``: the weighted sum, ``weight``), over all
    ranks: what its next ``compute`` averages."""
    return {name: _summed_over_ranks(value) for name, value in metric.metric_state.items()}


def _set_metric_sums(metric: MeanMetric, sums: dict[str, torch.Tensor], keep: bool) -> None:
    """Puts back what :func:`_metric_sums` saved (``keep``), or zeros of the same shapes."""
    metric.reset()
    for name, value in sums.items():
        current = getattr(metric, name)
        setattr(metric, name, (value if keep else torch.zeros_like(value)).to(current.device))


def _wrong_percent(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """100 for every misclassified image, 0 for every correct one."""
    return (logits.argmax(dim=1) != labels).float() * 100.0
