"""The Classifier LightningModule: cross-entropy, error rates in percent, SGD on an iteration
schedule with the paper's warm-up rule. Every number comes from the config; nothing here knows
which network it trains."""

from __future__ import annotations

import contextlib
import math
import random
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import MeanMetric

from reslab.fast import StepGraph, batchnorm_in_fp32, cuda_graph_network
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
        cuda_graphs: on a CUDA device, launch from CUDA graphs instead of every kernel from
            Python: with ``fused_iterations`` > 1 on one device, the whole fused step (K
            forwards, backward passes and SGD steps, the interval's counts) is one graph, one
            launch per K iterations (:class:`reslab.fast.StepGraph`: the learning rate is read
            from the device, so the schedule needs no new capture; the warm-up runs eagerly);
            otherwise each iteration's forward and backward (with ``compile``, the compiler's
            own CUDA graphs: mode ``reduce-overhead``). Elsewhere it launches kernels, and
            says so.
        batchnorm_fp32: under mixed precision (``trainer.precision=bf16-mixed``), batch norm
            computes in fp32 (see :class:`reslab.fast.FP32BatchNorm2d`); no effect in fp32.
        warmup_lr: the paper's warm-up for its 110- and 1202-layer nets (section 4.2): train at
            this lr until the training error falls below ``warmup_until_error``, then return to
            the scheduled lr (0.1) and the normal schedule. None: no warm-up.
        warmup_until_error: the training error (percent) that ends the warm-up.
        warmup_window: iterations whose mean training error is compared with the threshold;
            the check reads one number from the device every ``warmup_window`` iterations, and
            only while warming up.
        fused_iterations: K > 1 runs K iterations (forward, backward, SGD step, schedule step)
            in one Lightning training step, over K batches indexed and augmented together
            (:class:`reslab.data.base.BatchLoader` with ``fused``), so Lightning's loop, hooks
            and the batch's preparation cost once per K iterations. Nothing a user sees
            changes: ``trainer.global_step`` counts iterations, the schedule and the warm-up
            step every iteration, and logging, validation and checkpoints come at the same
            iterations as with K = 1 (given in iterations, as always: ``fit`` turns the
            Trainer's ``val_check_interval`` into its steps of K, and refuses an interval that
            K does not divide). K = 1 is Lightning's automatic
            optimization; K > 1 its manual optimization (no gradient clipping or
            accumulation), on in-memory datasets.
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
        fused_iterations: int = 1,
    ) -> None:
        super().__init__()
        require_int("module.fused_iterations", fused_iterations, 1)
        self.fused_iterations = fused_iterations
        self.automatic_optimization = fused_iterations == 1
        self.log_every_n_iterations: int | None = None  # the Trainer's, once fit has begun
        require_number("optim.warmup.lr", warmup_lr, 0, low_open=True, optional=True)
        require_number("optim.warmup.until_train_error", warmup_until_error, 0, 100, low_open=True)
        require_int("optim.warmup.window", warmup_window, 1)
        self.channels_last = channels_last
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.compile_net, self.cuda_graphs = compile, cuda_graphs  # (nn.Module has .compile)
        self.batchnorm_fp32 = batchnorm_fp32
        self._prepared = False  # setup() applies the options once
        self._graph_pending = False  # the CUDA graphs are captured at the first training batch
        self._step_graph: StepGraph | None = None  # the whole fused step's, on one CUDA device
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.warmup_lr, self.warmup_until_error = warmup_lr, warmup_until_error
        self.warmup_window = warmup_window
        # (loss sum, wrong-image percent sum, iterations, images) of the current logging
        # interval, accumulated on the device: no host sync inside an iteration, and a nan
        # shows in the mean instead of being dropped. Each rank's own: not a buffer, which
        # DDP would overwrite with rank 0's at every forward pass.
        self._interval_sums = torch.zeros(4)
        self._counts: dict[int, torch.Tensor] = {}  # (1 iteration, B images) for each B
        # The evaluation errors: the default nan check reads every update back.
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
            # A sweep trains its nets one after another in one process: each compiles afresh,
            # not against the recompile limit that the nets before it used up
            torch.compiler.reset()
            self.net.compile(mode="reduce-overhead" if self.cuda_graphs and cuda else None)
        elif self.cuda_graphs and self.fused_iterations > 1 and stage == "fit":
            if self.trainer.world_size == 1:  # (off CUDA: the same steps without a graph)
                self._step_graph = StepGraph()  # the whole step: one launch for K iterations
            else:
                rank_zero_warn(
                    "module.cuda_graphs captures a whole fused step on one device; under DDP "
                    "each iteration's forward and backward are graphed instead"
                )
                self._graph_pending = True
        else:
            self._graph_pending = self.cuda_graphs and cuda
        if stage == "fit":
            self._count_trainer_steps()

    def _count_trainer_steps(self) -> None:
        """Lightning counts training steps (batches), reslab iterations: with K fused
        iterations a step is K of them. The logging interval (``log_every_n_steps``, in
        iterations) is kept here, the module logs at the iterations :func:`logging_iteration`
        names, and the Trainer's logging and validation intervals become steps of K (Lightning
        writes the logged values at the steps that end there). An interval or a training
        length that K does not divide, or a dataset whose loader cannot fuse batches, is
        refused."""
        trainer, k = self.trainer, self.fused_iterations
        self.log_every_n_iterations = trainer.log_every_n_steps
        if k == 1:
            return
        check_fused_iterations(
            k,
            getattr(trainer, "datamodule", None),
            {
                "trainer.log_every_n_steps": trainer.log_every_n_steps,
                "trainer.val_check_interval": getattr(trainer, "val_check_interval", None),
                "optim.max_steps": trainer.max_steps,
            },
            trainer,
        )
        trainer.log_every_n_steps //= k
        if isinstance(getattr(trainer, "val_check_interval", None), int):  # (not a time)
            trainer.val_check_interval //= k

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
    ) -> torch.Tensor | None:
        images, labels = batch
        if self.automatic_optimization:  # Lightning steps the optimizer and the schedule
            return self._iteration(images, labels)
        graph = self._step_graph
        if graph is not None and graph.captured and not self.warming_up:
            self._graphed_step(images, labels)
        else:
            self._fused_step(images, labels)
        return None

    def _fused_step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """A fused step run eagerly; with whole-step CUDA graphs, the first one after any
        warm-up runs on a side stream and the step's graph is captured after it."""
        graph = self._step_graph
        capture = graph is not None and not graph.captured and not self.warming_up
        with graph.warm_up(images.device) if capture else contextlib.nullcontext():
            self._eager_step(images, labels)
        if capture:
            graph.capture(self._device_step, images, labels, self.optimizers().optimizer)

    def _eager_step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """The K iterations of a fused step, each as :meth:`_iteration` and a backward pass,
        the optimizer's step and the schedule's. They call no Lightning hook each: the
        optimizer's own zero_grad and step, and the backward pass after the strategy's
        preparation (DDP: this backward pass all-reduces the gradients); trainer.global_step
        counts each iteration."""
        sgd = self.optimizers().optimizer
        schedulers = self._iteration_schedulers()  # once a step, not once an iteration
        for k in range(labels.shape[0]):  # the K batches (K, B, ...) of a fused step
            with self._iteration_lr(sgd):
                loss = self._iteration(images[k], labels[k])
                sgd.zero_grad()
                self.trainer.strategy.pre_backward(loss)
                loss.backward()
                sgd.step()
            self._count_iterations(1)
            for scheduler in schedulers:
                self.lr_scheduler_step(scheduler, None)

    def _count_iterations(self, n: int) -> None:
        """Advances ``trainer.global_step`` by ``n`` optimizer steps."""
        steps = _optimizer_steps(self.trainer)
        for _ in range(n):
            steps.increment_ready()
            steps.increment_completed()

    def _iteration_schedulers(self) -> list[Any]:
        """The schedules stepped every iteration (a plateau schedule: after validations)."""
        return [
            config.scheduler
            for config in self.trainer.lr_scheduler_configs
            if not isinstance(config.scheduler, ReduceLROnPlateau)
        ]

    def _device_step(
        self, images: torch.Tensor, labels: torch.Tensor, sgd: torch.optim.Optimizer
    ) -> None:
        """A fused step's device work only, as a CUDA graph captures it: for each batch, the
        forward, the interval's counts, the backward pass and the optimizer's step (at the
        learning rate the graph reads for that iteration)."""
        for k in range(labels.shape[0]):
            self._step_graph.use_lr(sgd, k)
            loss, _ = self._forward_and_count(images[k], labels[k])
            sgd.zero_grad(set_to_none=True)
            loss.backward()
            sgd.step()

    def _graphed_step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """A fused step replayed from its CUDA graph: the host steps the schedule through the
        K iterations first (each one's learning rate goes to the graph), then one launch runs
        them, and the logging iteration (a step's last, as K divides the interval) logs."""
        sgd = self.optimizers().optimizer
        schedulers, lrs = self._iteration_schedulers(), []
        for _ in range(labels.shape[0]):
            lrs.append([group["lr"] for group in sgd.param_groups])
            for scheduler in schedulers:
                self.lr_scheduler_step(scheduler, None)
        self._step_graph.replay(images, labels, lrs)
        self._count_iterations(labels.shape[0])
        if logging_iteration(self.trainer, self.global_step):
            self._log_interval(self.global_step, lr=lrs[-1][0])

    def _forward_and_count(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward pass, the loss, each image's wrong percent (0 or 100), and the
        interval's counts, all on the device."""
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        wrong = _wrong_percent(logits.detach(), labels)
        counts = self._counts.get(len(labels))
        if counts is None or counts.device != loss.device:
            counts = self._counts[len(labels)] = loss.new_tensor([1.0, float(len(labels))])
        if self._interval_sums.device != loss.device:  # once (and after a checkpoint loads)
            self._interval_sums = self._interval_sums.to(loss.device)
        # (add_: an in-place update, not an attribute set through nn.Module.__setattr__)
        self._interval_sums.add_(torch.cat([torch.stack([loss.detach(), wrong.sum()]), counts]))
        return loss, wrong

    def _iteration(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One iteration's forward, its counts, the warm-up's check and, at a logging iteration,
        the interval's means; returns the loss for the backward pass."""
        if self._graph_pending:
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            self.net = cuda_graph_network(self.net, images)
            self._graph_pending = False
        loss, wrong = self._forward_and_count(images, labels)
        iteration = self.global_step + 1  # this step's number once the optimizer has stepped
        if self.warming_up:
            self._check_warmup(wrong, iteration)
        if logging_iteration(self.trainer, iteration):
            self._log_interval(iteration)
        return loss

    def _log_interval(self, iteration: int, lr: float | None = None) -> None:
        """Logs the means of the interval that ends at ``iteration`` (over every rank) and the
        learning rate this iteration steps with (``lr``, or the optimizer's now), and starts
        the next interval."""
        sums = self._interval_sums.clone()
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        self.log("step", float(iteration))  # the x-axis: iterations done, not Lightning's count
        self.log("train/loss", sums[0] / sums[2], prog_bar=False)
        self.log("train/error", sums[1] / sums[3], prog_bar=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"] if lr is None else lr)
        every = self.log_every_n_iterations or 1
        if iteration % every:  # the run's last iteration, inside an interval: Lightning writes
            self.trainer.log_every_n_steps = 1  # rows at its logging steps only; this one too
        if self.warmup_ended_at is not None and (iteration - 1) // every * every < (
            self.warmup_ended_at
        ) <= iteration:  # it ended in this interval
            self.log("warmup_ended_at", float(self.warmup_ended_at))
        self._interval_sums.zero_()

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
            self.warmup_ended_at = iteration  # logged with its interval's means
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
        with self._iteration_lr(optimizer):  # (the closure runs the iteration's forward)
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)

    @contextlib.contextmanager
    def _iteration_lr(self, optimizer: Any) -> Iterator[None]:
        """The learning rate of one iteration: the scheduled one, or during the warm-up
        ``warmup_lr``; the scheduled lr is put back afterwards, so the schedule itself never
        sees the warm-up and resumes exactly where it stands."""
        if not self.warming_up:
            yield
            return
        scheduled = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = self.warmup_lr
        try:
            yield
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
        if not self.automatic_optimization and self.trainer.state.fn == TrainerFn.FITTING:
            # Lightning steps a plateau schedule after each validation in automatic
            # optimization only; fused iterations step it at the same point
            for config in self.trainer.lr_scheduler_configs:
                if isinstance(config.scheduler, ReduceLROnPlateau):
                    self.lr_scheduler_step(config.scheduler, value)

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
        # (train/loss, train/error) and warm-up window have accumulated so far: a checkpoint
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
            "interval_sums": _summed_over_ranks(self._interval_sums),
            "fused_iterations": self.fused_iterations,
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
        if "interval_sums" in state:
            self._interval_sums = state["interval_sums"].cpu() * float(first)
        fused = state.get("fused_iterations", 1)
        if fused != self.fused_iterations:
            raise ValueError(
                f"module.fused_iterations={self.fused_iterations}, but the checkpoint was "
                f"trained with module.fused_iterations={fused} (Lightning counts its progress "
                f"differently for each): resume with module.fused_iterations={fused}"
            )

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


def _wrong_percent(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """100 for every misclassified image, 0 for every correct one."""
    return (logits.argmax(dim=1) != labels).float() * 100.0


def logging_iteration(trainer: L.Trainer, iteration: int) -> bool:
    """Whether ``iteration`` (counted from 1) ends a logging interval: a multiple of
    ``log_every_n_steps`` iterations, or the last iteration (``max_steps``). The Classifier
    logs there, and the callbacks that read what it logged (the divergence guard; the signal
    stop's agreement between DDP ranks) look there, whatever the fused iterations."""
    every = getattr(trainer.lightning_module, "log_every_n_iterations", None)
    every = trainer.log_every_n_steps if every is None else every
    return every > 0 and (iteration % every == 0 or iteration == trainer.max_steps)


def check_fused_iterations(
    fused: int, datamodule: Any, intervals: dict[str, Any], trainer: L.Trainer | None = None
) -> None:
    """Refuses ``module.fused_iterations=fused`` (K > 1) with a dataset whose loader cannot
    group batches (``fuses_iterations``: the in-memory ones); with intervals in iterations
    (``{setting: value}``: logging, validation, checkpoints, the run's length) that K does not
    divide, as a fused step ends only at multiples of K (all of them named at once); and with
    ``trainer``'s settings that Lightning's manual optimization or a fused step cannot keep:
    a length in epochs, gradient clipping or accumulation, fp16's gradient scaler. Raises
    ``ValueError``."""
    if fused == 1:
        return
    if datamodule is not None and not getattr(datamodule, "fuses_iterations", False):
        raise ValueError(
            f"module.fused_iterations={fused} needs an in-memory dataset (cifar10, cifar100, "
            f"fashion_mnist, synthetic); {type(datamodule).__name__} loads its batches one at "
            "a time: use module.fused_iterations=1"
        )
    bad = {
        key: value
        for key, value in intervals.items()
        if isinstance(value, int) and not isinstance(value, bool) and value > 0 and value % fused
    }
    if bad:
        said = ", ".join(f"{key}={value}" for key, value in bad.items())
        raise ValueError(
            f"{said} {'is' if len(bad) == 1 else 'are'} not a multiple of "
            f"module.fused_iterations={fused}: a fused step of {fused} iterations ends only at "
            f"multiples of {fused}; valid: multiples of {fused}, or fused_iterations a divisor "
            f"of {math.gcd(*bad.values())}"
        )
    if trainer is None:
        return
    refused = []
    if trainer.max_epochs not in (None, -1):
        refused.append(
            f"trainer.max_epochs={trainer.max_epochs} (epochs of fused steps end elsewhere: "
            "train by optim.max_steps, with trainer.max_epochs=-1)"
        )
    if trainer.gradient_clip_val:
        refused.append(f"trainer.gradient_clip_val={trainer.gradient_clip_val}")
    if trainer.accumulate_grad_batches != 1:
        refused.append(f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}")
    if getattr(trainer.precision_plugin, "scaler", None) is not None:
        refused.append(
            f"trainer.precision={trainer.precision} (its gradient scaler; bf16-mixed needs none)"
        )
    if refused:
        raise ValueError(
            f"module.fused_iterations={fused} cannot run with {'; '.join(refused)}: use "
            "module.fused_iterations=1 for those"
        )


def _optimizer_steps(trainer: L.Trainer) -> Any:
    """The progress counter that ``trainer.global_step`` reads under manual optimization
    (Lightning's ``_ManualOptimization.optim_step_progress``; tests/test_upstream.py)."""
    return trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
