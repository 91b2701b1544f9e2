"""The Classifier LightningModule: cross-entropy, error rates in percent, SGD on a schedule in
iterations, and speed options that change how the network runs, never what it computes (batch
norm in fp32 under mixed precision, CUDA graphs). Every number comes from the config."""

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import MeanMetric


class Classifier(L.LightningModule):
    """Trains ``net`` (images → logits) with cross-entropy.

    Logs, stepped by the global iteration: ``train/loss`` and ``train/error`` averaged over the
    logging interval (the paper's smoothed curves), the ``lr`` each optimizer step used, and
    ``val/error`` / ``test/error`` (100 classes or more: ``*/error_top5`` too), in percent. An
    evaluation batch (B, crops, C, H, W) gets its crops' mean softmax (ImageNet's 10-crop test).

    Args:
        optimizer: builds the optimizer from the parameters (a ``_partial_`` config).
        scheduler: builds the schedule from the optimizer, stepped every iteration (milestones
            in iterations, as in the paper); a ``ReduceLROnPlateau`` once after each validation,
            on ``val/error`` (a ``ValueError`` at fit without a validation set).
        channels_last: NHWC memory order: the same arithmetic up to float rounding.
        compile: ``torch.compile`` the network.
        cuda_graphs: on a CUDA device, replay each training forward and backward from CUDA
            graphs (with ``compile``, the compiler's: mode ``reduce-overhead``).
        batchnorm_fp32: under mixed precision, batch norm in fp32 (:class:`FP32BatchNorm2d`).
    """

    iterations_per_step = 1  # training iterations per Lightning training step
    _checkpointed = ("validated_at", "best_val_error", "best_val_step")

    def __init__(
        self, net: nn.Module, optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        channels_last: bool = False, compile: bool = False, cuda_graphs: bool = False,
        batchnorm_fp32: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(memory_format=self.memory_format)
        self.compile_net, self.cuda_graphs = compile, cuda_graphs  # (nn.Module has .compile)
        self.batchnorm_fp32 = batchnorm_fp32
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self._prepared = False  # setup() applies the speed options once
        self._graph_pending = False  # the network's CUDA graphs: captured at the first batch
        # the logging interval's (loss sum, wrong-percent sum, iterations, images), on the device
        # (no host sync; a nan shows in the mean); not a buffer, which DDP would sync
        self._interval_sums = torch.zeros(4)
        self.train_wrong: torch.Tensor | None = None  # the last training batch's wrong percents
        for name in ("val_error", "val_error_top5", "test_error", "test_error_top5"):
            setattr(self, name, MeanMetric(nan_strategy="disable"))  # (nan checks read back)
        self.validated_at: int | None = None  # the iteration of the last validation
        self.best_val_error: float | None = None  # the lowest val/error so far, and when
        self.best_val_step: int | None = None
        self._rng_to_restore: dict[str, Any] | None = None  # from a checkpoint, for on_train_start

    def setup(self, stage: str) -> None:
        """Applies the speed options once the device and precision are known."""
        if self._prepared:
            return
        self._prepared = True
        device = self.trainer.strategy.root_device.type
        graphs = self.cuda_graphs and device == "cuda"
        if self.batchnorm_fp32 and "mixed" in str(self.trainer.precision):
            batchnorm_in_fp32(self.net)
        if self.cuda_graphs and device != "cuda":
            rank_zero_warn(
                f"module.cuda_graphs needs a CUDA device; training on {device} without CUDA graphs"
            )
        self._graph_pending = graphs and not self.compile_net
        if self.compile_net:
            # each net of a sweep compiles afresh, not against the recompile limit of those before
            torch.compiler.reset()
            self.net.compile(mode="reduce-overhead" if graphs else None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 5:  # (B, crops, C, H, W): the mean softmax over the crops
            b, crops = images.shape[:2]
            probs = self.forward(images.flatten(0, 1)).softmax(dim=1)
            return probs.view(b, crops, -1).mean(dim=1).log()
        return self.net(images.contiguous(memory_format=self.memory_format))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        """The forward, its counts and at a logging iteration the interval's means: the loss."""
        images, labels = batch
        if self._graph_pending:
            sample = images.contiguous(memory_format=self.memory_format)
            self.net = cuda_graph_network(self.net, sample)
            self._graph_pending = False
        loss = self.forward_and_count(images, labels)
        self.log_interval(self.global_step + 1)  # its number once the optimizer has stepped
        return loss

    def forward_and_count(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The forward pass and the loss, and the interval's counts, all on the device."""
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.train_wrong = _wrong_percent(logits.detach(), labels)
        one = torch.ones_like(loss.detach())  # (no host-to-device copy)
        self._interval_sums.add_(
            torch.stack([loss.detach(), self.train_wrong.sum(), one, one * len(labels)])
        )
        return loss

    def log_interval(self, iteration: int) -> None:
        """At a logging iteration, logs the interval's means (over every rank) and starts the
        next; the last iteration stops the Trainer, so that Lightning writes its row."""
        if not logging_iteration(self.trainer, iteration):
            return
        sums = self.trainer.strategy.reduce(self._interval_sums.clone(), reduce_op="sum")
        self.log("step", float(iteration))  # the x-axis: iterations done, not Lightning's count
        self.log("train/loss", sums[0] / sums[2])
        self.log("train/error", sums[1] / sums[3], prog_bar=True)
        self._interval_sums.zero_()
        if iteration == self.trainer.max_steps:
            self.trainer.should_stop = True

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # after every callback's: the learning rate this optimizer step uses
        if logging_iteration(self.trainer, self.global_step + 1):
            self.log("lr", float(optimizer.param_groups[0]["lr"]))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        split = "test" if self.trainer.testing else "val"
        logits, labels = self(batch[0]), batch[1]
        error, error_top5 = getattr(self, f"{split}_error"), getattr(self, f"{split}_error_top5")
        error.update(_wrong_percent(logits, labels))
        self.log(f"{split}/error", error, on_step=False, on_epoch=True, prog_bar=split == "val")
        if logits.shape[1] >= 100:  # 100 classes or more (CIFAR-100, ImageNet): top-5 too
            top5 = logits.topk(5, dim=1).indices
            error_top5.update((top5 != labels[:, None]).all(dim=1).float() * 100.0)
            self.log(f"{split}/error_top5", error_top5, on_step=False, on_epoch=True)

    test_step = validation_step

    def on_validation_epoch_end(self) -> None:
        self.log("step", float(self.global_step), sync_dist=True)  # the same on every rank
        self.validated_at = self.global_step

    def on_validation_end(self) -> None:
        # After Lightning has reduced the epoch's metrics: one host read per validation.
        value, trainer = self.trainer.callback_metrics.get("val/error"), self.trainer
        if value is None or trainer.sanity_checking:
            return
        if self.best_val_error is None or float(value) < self.best_val_error:
            self.best_val_error, self.best_val_step = float(value), self.global_step
        if trainer.state.fn != "fit":
            return
        for config in trainer.lr_scheduler_configs:  # a plateau schedule: once per validation
            if isinstance(config.scheduler, ReduceLROnPlateau):
                config.scheduler.step(value)

    def on_test_epoch_end(self) -> None:
        self.log("step", float(self.global_step), sync_dist=True)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": "step"}
        if isinstance(scheduler, ReduceLROnPlateau):
            config.update(monitor="val/error", strict=False)  # stepped in on_validation_end
            warnings.filterwarnings("ignore", "ReduceLROnPlateau conditioned on metric val/error")
        return {"optimizer": optimizer, "lr_scheduler": config}

    def lr_scheduler_step(self, scheduler: Any, metric: Any | None) -> None:
        if not isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step()

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        has_val = getattr(datamodule, "has_val", True) and self.trainer.limit_val_batches != 0
        configs = self.trainer.lr_scheduler_configs
        if not has_val and any(isinstance(c.scheduler, ReduceLROnPlateau) for c in configs):
            raise ValueError(
                "the learning rate decays on a plateau of val/error, but there is no "
                "validation set: set data.val_size > 0, or use a schedule with milestones "
                "(e.g. optim=paper_imagenet_steps)"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # All that shapes what comes next: the interval's sums (over the ranks; rank 0 gets them
        # back) and torch's generators (reslab draws from no other), as weights_only tensors
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["reslab"] = {
            **{key: getattr(self, key) for key in self._checkpointed},
            "rng": rng,
            "interval_sums": summed_over_ranks(self._interval_sums),
            "iterations_per_step": self.iterations_per_step,  # (check_resume)
        }

    @classmethod
    def check_resume(cls, checkpoint: dict[str, Any], **options: Any) -> None:
        """Refuses (``ValueError``) a ``checkpoint`` that this class built with ``options`` (the
        config's arguments) cannot continue; train.py asks before the run folder changes. A
        Classifier checks nothing: its subclasses with other ``iterations_per_step`` do."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["reslab"]
        for key in self._checkpointed:
            setattr(self, key, state[key])
        self._rng_to_restore = state["rng"]
        self._interval_sums = state["interval_sums"].cpu() * float(self.global_rank == 0)

    def on_train_start(self) -> None:
        self._interval_sums = self._interval_sums.to(self.device)  # (a checkpoint's is on the CPU)
        # as late as possible: a resumed run's augmentation draws what the interrupted one would
        if (rng := self._rng_to_restore) is not None:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            self._rng_to_restore = None


def summed_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of ``tensor`` summed over the DDP ranks (as itself on one process), on the CPU."""
    tensor = tensor.detach().clone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.cpu()


def _wrong_percent(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=1) != labels).float() * 100.0


def logging_iteration(trainer: L.Trainer, iteration: int) -> bool:
    """Whether ``iteration`` (from 1) ends a logging interval (``log_every_n_steps`` Lightning
    steps of the module's ``iterations_per_step``), or is ``max_steps``."""
    every = trainer.log_every_n_steps * getattr(trainer.lightning_module, "iterations_per_step", 1)
    return every > 0 and (iteration % every == 0 or iteration == trainer.max_steps)


class FP32BatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that under autocast (bf16 or fp16) normalises in fp32: input cast up,
    statistics, affine parameters and output fp32 (the next convolution casts it down)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if x.dtype == torch.float32 or not torch.is_autocast_enabled(device):
            return super().forward(x)
        with torch.autocast(device, enabled=False):
            return super().forward(x.float())


def batchnorm_in_fp32(net: nn.Module) -> int:
    """Makes every ``nn.BatchNorm2d`` of ``net`` an :class:`FP32BatchNorm2d` in place (same
    parameters, buffers and state dict); returns how many it changed."""
    batchnorms = [m for m in net.modules() if type(m) is nn.BatchNorm2d]
    for module in batchnorms:
        module.__class__ = FP32BatchNorm2d
    return len(batchnorms)


def cuda_graph_network(net: nn.Module, sample: torch.Tensor) -> nn.Module:
    """``net`` with its training forward and backward in CUDA graphs (``make_graphed_callables``)
    for inputs like ``sample`` (shape, dtype, memory format); evaluation runs eagerly. The
    capture leaves the BN running statistics as they were. ``sample`` is on a CUDA device."""
    buffers = [b.detach().clone() for b in net.buffers()]
    with graph_autocast():
        graphed = torch.cuda.make_graphed_callables(net, (sample.detach().clone(),))
    with torch.no_grad():
        for buffer, saved in zip(net.buffers(), buffers, strict=True):
            buffer.copy_(saved)
    return graphed


def graph_autocast() -> torch.autocast:
    """The CUDA autocast in force (off, bf16 or fp16) without its weight cache, which a CUDA
    graph's capture must not hold across replays."""
    enabled, dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    return torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False)
